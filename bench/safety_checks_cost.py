"""What the run's safety checks cost, against the work they guard, measured in the same run.

- Weights finiteness, once per checkpoint (`checks.weights_finite` over every parameter), against the save it
  guards (`torch.save` of the same checkpoint: weights and AdamW state, to the same directory).
  Target: check / save <= 0.05.
- The smallest-id check of signed token ids, once per batch, against reading that batch without it
  (`TokenWindows.__getitems__` over an int32 .npy, the same windows in the same order).
  Target: with / without <= 1.05.

    python bench/safety_checks_cost.py [--rounds 7] [--dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from tlama_core.data import create_dataloader
from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training.checks import weights_finite
from tlama_core.training.optim import build_optimizer

CONFIG = TlamaConfig(vocab_size=8192, d_model=384, n_layers=6, n_heads=6, max_seq_len=256)
BATCH, SEQ = 16, 256


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def checkpoint_of(model: Transformer) -> dict:
    """What a run saves: the weights and a stepped AdamW's state (two moments per weight)."""
    optimizer = build_optimizer(model, 1e-3, 0.1, "cpu")
    x = torch.randint(0, CONFIG.vocab_size, (2, 64))
    model(x, targets=x)[1].backward()
    optimizer.step()
    return {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()]}


def bench_weights(rounds: int, directory: Path) -> float:
    model = Transformer(CONFIG)
    checkpoint = checkpoint_of(model)
    path = directory / "bench.ckpt"
    check, save = [], []
    for _ in range(rounds):
        check.append(seconds(lambda: bool(weights_finite(model.parameters()))))
        save.append(seconds(lambda: torch.save(checkpoint, path)))
        path.unlink()
    ratio = statistics.median(check) / statistics.median(save)
    print(f"weights check: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"{statistics.median(check) * 1e3:.2f} ms; torch.save of the checkpoint {statistics.median(save) * 1e3:.0f} "
          f"ms; check / save = {ratio:.4f} (target <= 0.05)")
    return ratio


def bench_ids(rounds: int, directory: Path) -> float:
    path = directory / "ids.npy"
    np.save(path, np.random.default_rng(0).integers(0, 50257, 20_000_000, dtype=np.int32))
    dataset = create_dataloader(path, None, BATCH, SEQ, shuffle=False).dataset
    batches = [list(range(i, i + BATCH)) for i in range(0, 400 * BATCH, BATCH)]

    def read_all() -> None:
        for indices in batches:
            dataset.__getitems__(indices)

    with_check, without = [], []
    for _ in range(rounds):
        dataset.tokens.signed = True
        with_check.append(seconds(read_all))
        dataset.tokens.signed = False  # what an unsigned stream (every .bin, uint .npy, the text cache) does
        without.append(seconds(read_all))
    ratio = statistics.median(with_check) / statistics.median(without)
    per_batch = (statistics.median(with_check) - statistics.median(without)) / len(batches)
    print(f"smallest-id check: {BATCH} x {SEQ} int32 ids per batch, {per_batch * 1e6:.1f} us per batch; "
          f"batch read with / without = {ratio:.3f} (target <= 1.05)")
    return ratio


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--dir", default=None, help="where the checkpoint and ids are written (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as directory:
        bench_weights(args.rounds, Path(directory))
        bench_ids(args.rounds, Path(directory))


if __name__ == "__main__":
    main()
