"""How long a checkpoint stalls training: a ~50M-parameter model on 2 CPU processes, under DDP (one file, written by
rank 0) and FSDP2 (a sharded directory, each process its shards), saving every 4th step.

Rank 0 times every step end to the next (the run's own clock, through an on_step_end hook). A step that saves is
followed by a longer interval; the figure is the median interval after a saving step over the median interval after
a plain one (1.0: the save costs training nothing). Both come from the same run, so machine load hits them alike.
Each strategy runs twice: saving in the background (the run's way), and the `synchronous` mode's reference, the
same save waited for inside the step (what Lightning's own saving costs: rank 0's torch.save, or its distributed
checkpoint, while the other processes wait at their next collective).

    python bench/checkpoint_stall.py [--strategies ddp fsdp2] [--steps 33] [--modes background synchronous]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = "TLAMA_CHECKPOINT_STALL_CHILD"
EVERY = 4


def child(out: Path, strategy: str, steps: int, mode: str) -> None:
    """One training run (Lightning's launcher re-runs this script for rank 1)."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from tlama_core.models import TlamaConfig, Transformer
    from tlama_core.training import Trainer
    from tlama_core.training.files.run_checkpoints import RunCheckpoints

    if mode == "synchronous":  # every process waits for the save to be written, durable and in place
        save = RunCheckpoints.save

        def synchronous_save(self, trainer, step, **kwargs):
            save(self, trainer, step, **kwargs)
            self.wait()

        RunCheckpoints.save = synchronous_save

    config = TlamaConfig(vocab_size=32000, d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, max_seq_len=64)
    data = torch.randint(0, config.vocab_size, (4 * 2 * steps * 2, 65), generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=4, drop_last=True)
    loader.seq_length, loader.vocab_size = 64, config.vocab_size
    torch.manual_seed(0)
    with torch.device("meta" if strategy == "fsdp2" else "cpu"):
        model = Transformer(config)

    class Clock:
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_end(self, trainer, metrics) -> None:
            self.times.append(time.perf_counter())

    clock = Clock()
    trainer = Trainer(model, loader, total_batch_size=4 * 64 * 2, steps=steps, log_steps=10**6,
                      checkpoint_steps=EVERY, use_mixed_precision=False, checkpoints_dir=str(out / "ckpt"),
                      logs_dir=str(out / "logs"), verbose=False, accelerator="cpu", devices=2, strategy=strategy,
                      callbacks=[clock])
    trainer.train()
    if trainer.master_process:
        (out / "times.json").write_text(json.dumps(clock.times))


def measure(strategy: str, steps: int, mode: str) -> float:
    with tempfile.TemporaryDirectory() as d:
        out = Path(d)
        subprocess.run([sys.executable, __file__, "--child", str(out), strategy, str(steps), mode], check=True,
                       env={**os.environ, "PYTHONWARNINGS": "ignore"}, stdout=subprocess.DEVNULL)
        times = json.loads((out / "times.json").read_text())
    # times[s - 1] is step s's end; the interval from there to step s + 1's end holds step s's save, if any.
    intervals = {s: times[s] - times[s - 1] for s in range(3, len(times))}  # steps 1-2 warm up
    after_save = [dt for s, dt in intervals.items() if s % EVERY == 0]
    after_plain = [dt for s, dt in intervals.items() if s % EVERY]
    return statistics.median(after_save) / statistics.median(after_plain)


def main() -> None:
    if os.environ.get(CHILD):
        child(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strategies", nargs="+", default=["ddp", "fsdp2"])
    parser.add_argument("--steps", type=int, default=33)  # 8 saving steps measured: a steadier median
    parser.add_argument("--modes", nargs="+", default=["background", "synchronous"],
                        choices=["background", "synchronous"])
    args = parser.parse_args()
    os.environ[CHILD] = "1"
    print(f"load {os.getloadavg()[0]:.1f}")
    for strategy in args.strategies:
        for mode in args.modes:
            ratio = measure(strategy, args.steps, mode)
            print(f"{strategy}, {mode}: interval after a saving step / after a plain step = {ratio:.2f}")


if __name__ == "__main__":
    main()
