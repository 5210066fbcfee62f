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


# `Trainer.train_step()` re-enters fit for exactly one more optimizer step: the epoch loop's step budget.
def allow_one_more_step(trainer: L.Trainer) -> None:
    trainer.fit_loop.epoch_loop.max_steps = trainer.global_step + 1


def loop_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The fit loop's saved state in a Lightning checkpoint (its layout is Lightning's own)."""
    return checkpoint.get("loops", {}).get("fit_loop", {})
