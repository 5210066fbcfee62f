"""What a run prints: Lightning's progress bar counting optimizer steps, the start and end summaries, and
quieting Lightning's own info lines in a quiet run."""

from __future__ import annotations

import logging
import math
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.callbacks import ProgressBar, TQDMProgressBar


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
        return step_metrics(self.cadence, pl_module)


def step_metrics(cadence: Any, pl_module: Any) -> dict[str, Any]:
    """The latest logged step's loss, lr and tokens/s, and the latest validation loss, formatted for display."""
    metrics = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in cadence.progress.items()}
    if pl_module.last_val:
        metrics["val_loss"] = f"{pl_module.last_val['val_loss']:.4f}"
    return metrics


def in_notebook() -> bool:
    """Whether this process is a Jupyter kernel (IPython's shell there has a `kernel`; a terminal's has none)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None and hasattr(ipython, "get_ipython") else None
    return getattr(shell, "kernel", None) is not None


class NotebookProgress(ProgressBar):
    """The progress of a run in a notebook: one line at each tenth of the run's steps (and at its last step).

    A notebook stores every redraw of a text bar as one more output of the cell (hundreds over a run), and
    tqdm's widget bar needs ipywidgets; ten lines stay readable, in the notebook and in the saved file."""

    def __init__(self, cadence: Any, lines: int = 10) -> None:
        super().__init__()
        self.cadence, self.lines, self._enabled = cadence, lines, True
        self._due: int | None = None  # a line step whose line waits for its validation
        self._shown: int | None = None  # the step of the latest line

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        return self._enabled

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not (self._enabled and pl_module.accumulation.ends_step(batch_idx)):
            return
        step, total = trainer.global_step, self._total(trainer, pl_module)
        if step % math.ceil(total / self.lines) == 0 or step == total:
            if self.cadence.pending_step == step:  # its row is written after its validation
                self._due = step
            else:
                self._print(step, total, pl_module)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self._enabled and self._due == trainer.global_step and not trainer.sanity_checking:
            self._due = None
            self._print(trainer.global_step, self._total(trainer, pl_module), pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        # A run that stops before its planned last step (max_time, a signal, EarlyStopping) still ends on a line.
        if self._enabled and self._shown != trainer.global_step and trainer.global_step > 0:
            self._print(trainer.global_step, self._total(trainer, pl_module), pl_module)

    @staticmethod
    def _total(trainer, pl_module) -> int:
        total = pl_module.plan.max_steps if pl_module.plan is not None else trainer.max_steps
        return max(1, total)

    def _print(self, step: int, total: int, pl_module) -> None:
        self._shown = step
        shown = "  ".join(f"{k}={v}" for k, v in step_metrics(self.cadence, pl_module).items())
        print(f"step {step}/{total}  {shown}", flush=True)


def progress_display(cadence: Any) -> ProgressBar:
    """Lightning's bar counting optimizer steps in a terminal; in a notebook, a line at each tenth of the run."""
    return NotebookProgress(cadence) if in_notebook() else StepProgressBar(cadence)


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
