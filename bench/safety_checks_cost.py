"""What the run's safety checks cost, against the work they guard, measured in the same run.

- Weights finiteness, once per checkpoint (`finite.weights_finite` over every parameter), against the save it
  guards (`torch.save` of the same checkpoint: weights and AdamW state, to the same directory).
  Target: check / save <= 0.05.
- The smallest-id check of signed token ids, once per batch, against reading that batch
  (`TokenWindows.__getitems__` over an int32 .npy, the check included), and against the training step the
  batch feeds (forward and backward of the model above). Target: check / read <= 0.10.

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
from tlama_core.training import build_optimizer, weights_finite

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
    windows = [np.stack([dataset.window(i) for i in indices]) for indices in batches]  # what the check sees

    def read_all() -> None:
        for indices in batches:
            dataset.__getitems__(indices)

    def check_all() -> None:
        for ids in windows:
            int(ids.min()) < 0  # noqa: B015 - the check's own work, as TokenWindows does it

    read, check = [], []
    for _ in range(rounds):
        read.append(seconds(read_all))
        check.append(seconds(check_all))
    per_batch = statistics.median(check) / len(batches)
    ratio = statistics.median(check) / statistics.median(read)
    model = Transformer(CONFIG)
    x = torch.from_numpy(windows[0][:, :-1].astype(np.int64)) % CONFIG.vocab_size
    step = statistics.median(seconds(lambda: model(x, targets=x)[1].backward()) for _ in range(3))
    print(f"smallest-id check: {BATCH} x {SEQ + 1} int32 ids per batch, {per_batch * 1e6:.1f} us per batch; "
          f"check / batch read (which includes it) = {ratio:.4f} (target <= 0.10); check / forward+backward of "
          f"that batch = {per_batch / step:.1e}")
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
