"""What a checkpoint costs: save and load of a ~100M-parameter model with AdamW state, against one training step.

Saves go through `AtomicCheckpointIO` (torch.save to NAME.tmp in the caller; fsync and rename in a background
thread) and are compared with a plain `torch.save` of the same dict to the same directory, and with the same
atomic save done synchronously (fsync and rename in the caller). Each measurement is what a run does: a training
step, a save of a new file (a run writes step=N files), a training step; the time a save blocks the caller is
what training loses. The three take turns at going first, each starts with no dirty pages or pending block
frees left by the previous one, and medians over the rounds let drifting machine load hit all alike.
Target: torch.save time / atomic save time >= 0.9.

    python bench/checkpoint_cost.py [--rounds 6] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch

from tlama_core.atomic import atomic_path
from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training import AtomicCheckpointIO, build_optimizer

CONFIG = TlamaConfig(vocab_size=32000, d_model=768, n_layers=12, n_heads=12, max_seq_len=256)
BATCH, SEQ = 4, 256


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir on the system disk)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = Transformer(CONFIG)
    optimizer = build_optimizer(model, 6e-4, 0.1)
    tokens = torch.randint(0, CONFIG.vocab_size, (BATCH, SEQ + 1))
    x, y = tokens[:, :-1], tokens[:, 1:]

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        model(x, targets=y)[1].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    train_step()  # warm-up; also creates the AdamW state that the checkpoint carries
    step = statistics.median(seconds(train_step) for _ in range(args.rounds))

    checkpoint = {"state_dict": model.state_dict(), "optimizer_states": [optimizer.state_dict()],
                  "model_config": CONFIG.to_dict(), "global_step": 1}
    io = AtomicCheckpointIO()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        directory = Path(tmp)

        def sync_save(path: Path) -> None:
            with atomic_path(path) as tmp_path:
                torch.save(checkpoint, tmp_path)

        saves = {"ours": lambda path: io.save_checkpoint(checkpoint, path),
                 "plain": lambda path: torch.save(checkpoint, path), "sync": sync_save}
        times: dict[str, list[float]] = {name: [] for name in saves}
        leftover = []
        for i in range(args.rounds + 1):  # round 0 warms up the page cache and the allocator
            for name in list(saves)[i % 3:] + list(saves)[:i % 3]:  # none always goes first
                path = directory / f"{name}-step={i}.ckpt"  # a new file each time, as step files are in a run
                train_step()  # a save follows a step, as in a run; our commit overlaps the step after it
                elapsed = seconds(partial(saves[name], path))
                train_step()
                leftover.append(seconds(io.wait))  # commit time the step did not hide (0 when it finished in time)
                size = path.stat().st_size
                path.unlink()
                os.sync()  # the next save starts with no dirty pages and no pending block frees left by this one
                if i:
                    times[name].append(elapsed)
        ours_path = directory / "ours.ckpt"
        durable = statistics.median(seconds(lambda: (io.save_checkpoint(checkpoint, ours_path), io.wait()))
                                    for _ in range(3))
        load = statistics.median(seconds(lambda: io.load_checkpoint(ours_path)) for _ in range(args.rounds))

    ours, plain, sync = (statistics.median(times[name]) for name in ("ours", "plain", "sync"))
    print(f"model: {model.num_params() / 1e6:.1f}M parameters; checkpoint {size / 1e9:.2f} GB (weights + AdamW)")
    print(f"training step ({BATCH} x {SEQ}, fwd+bwd+AdamW, CPU, {torch.get_num_threads()} threads): {step:.3f} s")
    print(f"atomic save  {ours:.3f} s = {ours / step:.2f} training steps of blocking (durable after {durable:.3f} s;"
          f" commit not hidden by the next step: {statistics.median(leftover):.3f} s)")
    print(f"load         {load:.3f} s = {load / step:.2f} training steps")
    print(f"torch.save   {plain:.3f} s (no fsync, not atomic)")
    print(f"the same atomic save with fsync and rename in the caller: {sync:.3f} s, ratio {plain / sync:.3f}")
    print(f"torch.save / atomic save = {plain / ours:.3f} (target >= 0.9); median of {args.rounds} rounds")

if __name__ == "__main__":
    main()
