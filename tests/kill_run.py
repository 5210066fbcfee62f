"""A tiny training run that resumes from its newest checkpoint: the subject of tests/test_interruption.py.

    python tests/kill_run.py ROOT [--steps 40] [--d_model 32] [--step_sleep 0.0] [--save_sleep 0.0] [--strategy auto]

Started again after a kill, it continues with `train(ckpt_path="last")`; it prints the result as one JSON line.
`--step_sleep` slows each optimizer step down (without changing any number) so a signal can land mid-run;
`--save_sleep` holds every checkpoint file half-written (as `NAME.ckpt.tmp`) for that long, so a kill can land
inside a save however fast the disk is (a sharded save, `--strategy fsdp2`: its staged `NAME.ckpt.tmp/` directory, held
while its `meta.pt` is written).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # trainer_utils, when run as a script

from trainer_utils import ResumableLoader, tiny_model  # noqa: E402

from tlama_core.training import Trainer, get_lr_scheduler  # noqa: E402


class _SlowSteps:
    """A spec callback that sleeps at the start of every optimizer step."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_step_start(self, trainer) -> None:
        time.sleep(self.seconds)


def _slow_saves(seconds: float) -> None:
    """Pause after torch.save has written a file (the checkpoint's temporary), before it is fsynced and renamed."""
    import torch

    save = torch.save

    def slow_save(*args, **kwargs):
        save(*args, **kwargs)
        time.sleep(seconds)

    torch.save = slow_save  # this process only: the run under test


def build_trainer(root: str | Path, steps: int = 40, d_model: int = 32, step_sleep: float = 0.0,
                  strategy: str = "auto") -> Trainer:
    """The run under test: dropout, 2 micro-batches per step, validation every 5 steps, a row every step."""
    root = Path(root)
    callbacks = [_SlowSteps(step_sleep)] if step_sleep else []
    return Trainer(tiny_model(dropout=0.1, d_model=d_model), ResumableLoader(400, 4, 16),
                   val_data_loader=ResumableLoader(8, 4, 16, seed=1), total_batch_size=128, steps=steps,
                   scheduler=get_lr_scheduler(3e-3, 3e-4, 4, steps), log_steps=1, validation_steps=5,
                   checkpoint_steps=2, verbose=False, seed=7, callbacks=callbacks,
                   checkpoints_dir=str(root / "ckpt"), logs_dir=str(root / "logs"), strategy=strategy)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("root")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--d_model", type=int, default=32)
    parser.add_argument("--step_sleep", type=float, default=0.0)
    parser.add_argument("--save_sleep", type=float, default=0.0)
    parser.add_argument("--strategy", default="auto")
    args = parser.parse_args()
    if args.save_sleep:
        _slow_saves(args.save_sleep)
    trainer = build_trainer(args.root, args.steps, args.d_model, args.step_sleep, args.strategy)
    print("training", flush=True)
    result = trainer.train(ckpt_path="last")
    print(json.dumps({k: result[k] for k in ("steps_completed", "interrupted", "train_loss")}), flush=True)


if __name__ == "__main__":
    main()
