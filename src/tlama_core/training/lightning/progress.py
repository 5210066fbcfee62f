"""What a run prints: Lightning's progress bar counting optimizer steps, the start and end summaries, and
quieting Lightning's own info lines in a quiet run."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.callbacks import TQDMProgressBar


class StepProgressBar(TQDMProgressBar):
    """Lightning's bar, counting optimizer steps (Lightning's counts micro-batches) and showing the metrics of the
    latest logged step (loss, lr, tokens/s); subclassed because Lightning's bar has no notion of accumulation."""

    def __init__(self, cadence: Any) -> None:
        super().__init__()
        self.cadence = cadence

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches
        return total if math.isinf(total) else self.trainer.lightning_module.accumulation.steps_in(total)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        steps = pl_module.accumulation
        if steps.ends_step(batch_idx):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, steps.steps_in(batch_idx))

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        metrics = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in self.cadence.progress.items()}
        if pl_module.last_val:
            metrics["val_loss"] = f"{pl_module.last_val['val_loss']:.4f}"
        return metrics


def print_start(trainer: Any, ckpt: str | None, max_time: float | None = None) -> None:
    """The run's shape: parameters, device, precision, tokens per step, steps (or its time budget); where its
    files go."""
    p = trainer.plan
    print(f"tlama-core: {trainer.model.num_params() / 1e6:.2f}M parameters on {trainer.device} "
          f"({trainer.precision}), {p.world_size} process(es)")
    length = f"{p.max_steps} steps" if max_time is None else f"max_time {max_time:g} s, at most {p.max_steps} steps"
    print(f"  {p.batch_size} x {p.seq_length} tokens per micro-batch, {p.grad_accum} accumulation step(s): "
          f"{p.tokens_per_step:,} tokens per optimizer step; {length} ({p.steps_per_epoch} per epoch)")
    resuming = f"  resuming {ckpt}" if ckpt else ""
    print(f"  log: {trainer.log_file}  checkpoints: {trainer.checkpoints_dir}/{resuming}")


def print_end(result: dict[str, Any], start_step: int | None, checkpoints_dir: Any, verbose: bool) -> None:
    """Where an interrupted run's checkpoint is (always said); steps, tokens and time of this run (a resume times
    only its own steps; `start_step` None: nothing was left to train)."""
    if result["interrupted"]:
        print(f"tlama-core: interrupted; checkpoint of step {result['steps_completed']} saved in "
              f"{checkpoints_dir}/. Resume with train(ckpt_path='last') (CLI: --ckpt_path last).")
    if result.get("requeued"):
        print(f"tlama-core: SLURM job {result['requeued']} requeued; it resumes with --ckpt_path last.")
    if not verbose:
        return
    run_steps = result["steps_completed"] - start_step if start_step is not None else 0
    print(f"tlama-core: {result['steps_completed']} steps, {result['tokens']:,} tokens; {run_steps} steps in "
          f"{result['total_training_time']:.1f} s this run; last train loss {result['train_loss']:.4f}, "
          f"best val loss {result['best_val_loss']:.4f}")


@contextmanager
def quiet_lightning(verbose: bool) -> Iterator[None]:
    """Keep Lightning's info lines (device summary) and loader-worker hints out of a quiet run's output."""
    lightning_logger = logging.getLogger("lightning.pytorch")
    level = lightning_logger.level
    if not verbose:
        lightning_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*The number of training batches.*")
            # A user's ModelCheckpoint saves beside the run's own files by design.
            warnings.filterwarnings("ignore", message="Checkpoint directory .* exists and is not empty")
            # The module always defines validation_step; a run without a val loader is the facade's normal case.
            warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")
            # Lightning 2.6 wraps every loader in a CombinedLoader that builds a torch LeafSpec, deprecated in torch
            # 2.13: printed at every fit, whatever the loader, and nothing a user can change.
            warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
            yield
    finally:
        lightning_logger.setLevel(level)
