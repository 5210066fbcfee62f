"""Every private Lightning name the facade relies on, in one place (tested by tests/test_lightning_internals.py
against the Lightning version installed; pyproject bounds `lightning` to the minor versions tested).

Each is here because Lightning offers no public way to do the job; the line above each says which job.
"""

from __future__ import annotations

from typing import Any, get_args

import lightning as L
from lightning.fabric.plugins.precision.precision import _PRECISION_INPUT_STR, _PRECISION_INPUT_STR_ALIAS_CONVERSION
from lightning.pytorch.callbacks import ModelCheckpoint


# Lightning validates a precision only while it builds a Trainer, and on a CPU swaps "16-mixed" for "bf16-mixed"
# with a warning; the facade checks the value (and the device) first, so an error names both.
def precision_names() -> tuple[str, ...]:
    """Every precision string Lightning accepts, its aliases ("bf16", "16", ...) included."""
    return (*get_args(_PRECISION_INPUT_STR), *_PRECISION_INPUT_STR_ALIAS_CONVERSION)


def canonical_precision(precision: str) -> str:
    """"bf16" -> "bf16-mixed", as Lightning reads its aliases."""
    return _PRECISION_INPUT_STR_ALIAS_CONVERSION.get(precision, precision)


# ModelCheckpoint does not restore the step it last saved: a resumed run would save its resume step again after the
# first micro-batch, in the middle of an accumulation window (a file that resumes a micro-batch short).
def mark_resume_step_saved(trainer: L.Trainer) -> None:
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint):
            callback._last_global_step_saved = trainer.global_step


# Lightning chains its own SIGTERM handler while fit sets up; its flag makes the loops raise SIGTERMException (a
# silent exit 0 mid-step, no checkpoint). The facade's cadence owns the stop, so the flag is cleared.
def clear_sigterm_flag(trainer: L.Trainer) -> None:
    trainer._signal_connector.received_sigterm = False


# The facade counts in optimizer steps; Lightning's counters are micro-batches, and the accumulation depends on the
# world size, which only the built lightning.Trainer knows. The facade builds that one Trainer, then sets these from
# its step plan before anything runs (each is what the same keyword of lightning.Trainer(...) would have set).
def set_loop_counts(trainer: L.Trainer, *, max_epochs: int, max_steps: int, limit_train_batches: int | None,
                    accumulate_grad_batches: int, val_check_interval: int | None) -> None:
    trainer.fit_loop.max_epochs = max_epochs
    trainer.fit_loop.epoch_loop.max_steps = max_steps
    trainer.limit_train_batches = 1.0 if limit_train_batches is None else limit_train_batches
    trainer.accumulate_grad_batches = accumulate_grad_batches
    trainer.val_check_interval = 1.0 if val_check_interval is None else val_check_interval


# `Trainer.train_step()` re-enters fit for exactly one more optimizer step: the epoch loop's step budget.
def allow_one_more_step(trainer: L.Trainer) -> None:
    trainer.fit_loop.epoch_loop.max_steps = trainer.global_step + 1


# A run resumed on another number of processes keeps its steps' tokens with another accumulation: the fit loop's
# micro-batch counters (its layout is Lightning's) are rescaled to it; optimizer-step counters stay.
def rescale_batch_progress(checkpoint: dict[str, Any], saved_accum: int, accum: int) -> None:
    progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress")
    if progress:
        for counts in (progress["total"], progress["current"]):
            for key, value in counts.items():
                counts[key] = value * accum // saved_accum


# The fit loop's saved progress (its layout is Lightning's own) does not know that this run may give an epoch
# another length than the run that saved it, nor where a run that ended on an epoch's last batch stands.
def restore_epoch_position(checkpoint: dict[str, Any], epoch_batches: int) -> None:
    """Adjust a checkpoint's loop state before Lightning restores it: `epoch_batches` is this run's micro-batches
    per epoch."""
    fit_loop = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = fit_loop.get("epoch_loop.batch_progress")
    # A checkpoint from an epoch's last batch says so (is_last_batch); when this run gives the epoch more steps
    # (a raised `steps`), Lightning would otherwise end the resumed epoch at once.
    if progress and progress["current"]["processed"] < epoch_batches:
        progress["is_last_batch"] = False
    elif progress:
        # The epoch is over for this run's plan while the loader stopped inside its pass (`steps` below the
        # loader's length): the next epoch starts a new pass, as it does in an uninterrupted run, where
        # Lightning sets the new epoch before iterating; on resume it iterates first.
        for state in fit_loop.get("state_dict", {}).get("combined_loader", []):
            if isinstance(state, dict) and {"epoch", "batch"} <= set(state) and state["batch"] > 0:
                state["epoch"], state["batch"] = state["epoch"] + 1, 0
        # Saved in on_validation_end of the epoch's last batch (the batch completed, the epoch not yet
        # processed), Lightning restarts "on last" (RESTARTED_ON_LAST in training_epoch_loop.py): it ends the
        # epoch only if its val_check_interval falls on that batch; a validation that the run's end forced
        # (should_stop, not saved) makes it train one more batch as part of the old epoch. Record the epoch
        # as finished, as it is between two epochs of an uninterrupted run; the next one then starts at its
        # batch 0, with its on_train_epoch_start.
        epochs = fit_loop.get("epoch_progress")
        total = progress["total"]
        if (epochs and total["completed"] == total["processed"]
                and epochs["total"]["ready"] == epochs["total"]["started"] == epochs["total"]["processed"] + 1):
            for counts in (epochs["total"], epochs["current"]):
                counts["processed"] = counts["completed"] = counts["started"]
            progress["current"] = dict.fromkeys(progress["current"], 0)
            progress["is_last_batch"] = False


# ModelParallelStrategy keeps its mesh sizes private until its processes start; the step arithmetic needs them when
# the run is built (processes that share a tensor-parallel group read the same batches), and "fsdp2" sets them.
def model_parallel_sizes(strategy: Any, world_size: int) -> tuple[int, int]:
    """(data_parallel_size, tensor_parallel_size) a ModelParallelStrategy will build its mesh with."""
    dp, tp = strategy._data_parallel_size, strategy._tensor_parallel_size
    if dp == "auto":
        dp = strategy.num_nodes
    if tp == "auto":
        tp = world_size // dp
    return int(dp), int(tp)


def set_model_parallel_sizes(strategy: Any, data_parallel_size: int, tensor_parallel_size: int) -> None:
    strategy._data_parallel_size, strategy._tensor_parallel_size = data_parallel_size, tensor_parallel_size


# A sharded save of the run's own checkpoints is staged and written in the background by the facade
# (sharded_saves.py), in the layout Lightning's ModelParallelStrategy reads: the checkpoint dict comes from
# Lightning's own dump (every on_save_checkpoint hook runs, as for trainer.save_checkpoint).
def dump_checkpoint(trainer: L.Trainer) -> dict[str, Any]:
    return trainer._checkpoint_connector.dump_checkpoint(weights_only=False)


def saves_distributed(strategy: Any) -> bool:
    """Whether a ModelParallelStrategy writes sharded checkpoints (its default) rather than one gathered file."""
    return bool(strategy._save_distributed_checkpoint)


# A single-device run has no cluster environment on its strategy; Lightning keeps the detected one (SLURM's, whose
# auto-requeue the facade takes over) on its accelerator connector.
def cluster_environment(trainer: L.Trainer) -> Any:
    return trainer._accelerator_connector.cluster_environment
