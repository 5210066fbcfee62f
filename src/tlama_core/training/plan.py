"""The run counted in optimizer steps, and its one translation to Lightning's counters, which count micro-batches.

`StepPlan` is the facade's unit (optimizer steps, tokens per step); every conversion between a step and Lightning's
micro-batch counters (`limit_train_batches`, `accumulate_grad_batches`, `val_check_interval`, a batch index) is
one of its methods, so no other module multiplies or divides by the accumulation.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

from tlama_core.training.arguments import user_stacklevel


def grad_accum_steps(total_batch_size: int, micro_batch_tokens: int, world_size: int = 1,
                     enabled: bool = True) -> int:
    """Micro-batches per optimizer step so that one step sees about `total_batch_size` tokens on all devices.

    Floor division: a total that is not a multiple of one micro-batch on every device is rounded down, with a
    warning naming the batch actually used.
    """
    if not enabled:
        return 1
    per_round = micro_batch_tokens * world_size
    if total_batch_size < per_round:
        raise ValueError(
            f"total_batch_size={total_batch_size} tokens is smaller than one micro-batch on all devices "
            f"({micro_batch_tokens} tokens x {world_size} process(es) = {per_round}); raise total_batch_size, "
            "lower batch_size or seq_length, or set gradient_accumulation=False."
        )
    steps = total_batch_size // per_round
    if total_batch_size % per_round:
        warnings.warn(
            f"total_batch_size={total_batch_size} is not a multiple of {per_round} tokens per micro-batch round; "
            f"using {steps} accumulation steps, an effective batch of {steps * per_round} tokens.",
            stacklevel=user_stacklevel(),
        )
    return steps


class MicroBatches:
    """Conversions between optimizer steps and micro-batches (`grad_accum` of them make one step)."""

    grad_accum: int

    def starts_step(self, batch_idx: int) -> bool:
        """Whether micro-batch `batch_idx` (counted within the epoch) is the first of an optimizer step."""
        return batch_idx % self.grad_accum == 0

    def ends_step(self, batch_idx: int) -> bool:
        """Whether micro-batch `batch_idx` completes an optimizer step (epochs hold whole steps only)."""
        return (batch_idx + 1) % self.grad_accum == 0

    def steps_in(self, micro_batches: int) -> int:
        """Optimizer steps completed by `micro_batches` micro-batches."""
        return micro_batches // self.grad_accum

    def micro_batches(self, steps: int) -> int:
        """Micro-batches that make `steps` optimizer steps."""
        return steps * self.grad_accum


@dataclass(frozen=True)
class Accumulation(MicroBatches):
    """The step arithmetic of a run whose only plan is Lightning's `accumulate_grad_batches` (a
    TlamaLightningModule on a plain lightning.Trainer)."""

    grad_accum: int


@dataclass(frozen=True)
class StepPlan(MicroBatches):
    """How one run is counted: micro-batches per optimizer step, optimizer steps per epoch and in all.

    `world_size` counts every process (device); `data_parallel` those that read distinct batches (the processes
    of one tensor-parallel group read the same ones)."""

    batch_size: int
    seq_length: int
    grad_accum: int
    world_size: int
    steps_per_epoch: int
    epochs: int
    total_steps: int | None = None  # the run's optimizer steps when given (`max_steps`), else epochs x steps
    data_parallel: int | None = None  # None: world_size

    @property
    def micro_batch_tokens(self) -> int:
        return self.batch_size * self.seq_length

    @property
    def readers(self) -> int:
        """Processes that read distinct batches."""
        return self.data_parallel or self.world_size

    @property
    def process_tokens_per_step(self) -> int:
        """Tokens of one optimizer step on one process: its micro-batches of the step."""
        return self.micro_batch_tokens * self.grad_accum

    @property
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step on all devices: every micro-batch of every data-parallel process."""
        return step_tokens(self.batch_size, self.seq_length, self.grad_accum, self.readers)

    @property
    def max_steps(self) -> int:
        """The run's optimizer steps in all."""
        return self.total_steps or self.steps_per_epoch * self.epochs

    def lightning_counts(self, validation_steps: int) -> dict[str, Any]:
        """The fit loop's counters (micro-batches) for this plan, validating every `validation_steps` steps."""
        return {"max_epochs": self.epochs, "max_steps": self.max_steps,
                "limit_train_batches": self.micro_batches(self.steps_per_epoch),
                "accumulate_grad_batches": self.grad_accum, "val_check_interval": self.micro_batches(validation_steps)}

    def stepping_counts(self) -> dict[str, Any]:
        """The counters of `Trainer.train_step()`'s fit loop: no epochs, no limits, no validation (its steps are
        granted one at a time: `lightning_internals.allow_one_more_step`)."""
        return {"max_epochs": -1, "max_steps": -1, "limit_train_batches": None,
                "accumulate_grad_batches": self.grad_accum, "val_check_interval": None}


def step_tokens(batch_size: int, seq_length: int, grad_accum: int, readers: int) -> int:
    """Tokens of one optimizer step on all devices (a plan's, or the step shape a checkpoint records)."""
    return batch_size * seq_length * grad_accum * readers


def plan_steps(batch_size: int, seq_length: int, batches_per_epoch: int | None, total_batch_size: int,
               gradient_accumulation: bool, steps: int | None, epochs: int, world_size: int = 1,
               max_steps: int | None = None, data_parallel: int | None = None) -> StepPlan:
    """Count a run in optimizer steps. An epoch holds whole steps only: a short last window is dropped
    (its loss would be divided by the full accumulation count). `max_steps` is the whole run's length and
    overrides epochs x steps: the run takes as many epochs as it needs, the last one cut short.
    `batches_per_epoch` is one process's; `data_parallel` (None: world_size) processes read distinct batches."""
    readers = data_parallel or world_size
    accum = grad_accum_steps(total_batch_size, batch_size * seq_length, readers, gradient_accumulation)
    if steps is not None and batches_per_epoch is not None and steps * accum > batches_per_epoch:
        raise ValueError(
            f"steps={steps} optimizer steps per epoch need {steps * accum} micro-batches, but train_data_loader "
            f"gives {batches_per_epoch} per epoch ({batches_per_epoch // accum} steps); lower steps (or use "
            "epochs), lower total_batch_size, or add data."
        )
    if steps is None:
        if batches_per_epoch is None:
            raise ValueError("steps=None needs a train loader with a length; pass steps=N optimizer steps per epoch.")
        steps = batches_per_epoch // accum
        if steps < 1:
            raise ValueError(
                f"train_data_loader gives {batches_per_epoch} micro-batches per epoch, fewer than one optimizer step "
                f"({accum} micro-batches of {batch_size}x{seq_length} tokens); lower total_batch_size or add data."
            )
    if max_steps is not None:
        return StepPlan(batch_size, seq_length, accum, world_size, steps, -(-max_steps // steps), max_steps,
                        data_parallel)
    return StepPlan(batch_size, seq_length, accum, world_size, steps, epochs, None, data_parallel)
