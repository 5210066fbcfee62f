"""The step cadence: what happens after an optimizer step (log row, checkpoint, best model, end of run).

Lightning's ModelCheckpoint saves its periodic file at the end of the train batch, before that step's
validation runs, so a resume from it would skip that validation (and its effect on the best loss); it also
forgets its last saved step on resume (a second save mid-accumulation). This callback finishes a step only once
its validation, if any, is done: the CSV row first, then the checkpoints, so a file never holds a step whose
row or validation is missing.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from tlama_core.training import lightning_internals
from tlama_core.training.files.checkpoint_io import set_aside_later_checkpoints
from tlama_core.training.files.finite import check_weights_finite
from tlama_core.training.files.run_checkpoints import RunCheckpoints
from tlama_core.training.files.tokenizer import RunTokenizer
from tlama_core.training.plan import StepPlan
from tlama_core.training.records.metrics import MetricSinks, metrics_row
from tlama_core.training.records.throughput import Throughput
from tlama_core.training.scheduler import StepFunctionLR
from tlama_core.training.time_budget import TimeBudget

STOP_CODES = (None, "request", "signal", "preempt")  # agreed across processes as their maximum: a signal wins


@dataclass
class SaveRequest:
    """A checkpoint asked for by `Trainer._save_checkpoint` from a hook, written when its step is finished."""

    val_loss: float | None
    is_best: bool


class StepCadence(Callback):
    """Every `log_steps` a metrics row (to `sinks`: the CSV log and the loggers), every `checkpoint_steps` a
    checkpoint, a `best.ckpt` when val_loss improves, and at the last step of the run: validation, a row and a
    checkpoint. Rows and files are written on global rank 0 only, and not at all when `sinks` is None (a
    process the user said is not the master). The run's step plan is the module's (`pl_module.plan`). With a
    `budget` (max_time) the run also ends at the step its time budget allows, agreed with the other stops."""

    def __init__(self, log_steps: int, validation_steps: int, checkpoint_steps: int, checkpoints: RunCheckpoints,
                 sinks: MetricSinks | None, has_validation: bool, tokenizer: RunTokenizer | None = None,
                 inputs: dict[str, Any] | None = None, budget: TimeBudget | None = None, enabled: bool = True) -> None:
        self.plan: StepPlan | None = None  # the module's, from setup on
        self.checkpoints = checkpoints
        self.tokenizer = tokenizer  # copied beside the checkpoints once the run is accepted (master process)
        self.inputs = inputs or {}  # what the run reads (tokenizer, data fingerprints): recorded in every checkpoint
        self.log_steps, self.validation_steps, self.checkpoint_steps = log_steps, validation_steps, checkpoint_steps
        self.sinks = sinks
        self.has_validation = has_validation
        self.best_val_loss = math.inf
        # Set: finish this step, checkpoint it, stop. "request" (Trainer.request_stop), "signal" (SIGINT/SIGTERM) or
        # "preempt" (SIGUSR1: SLURM's warning; the job is requeued after)
        self.stop_reason: str | None = None
        # Set by `Trainer._save_checkpoint` from a hook: save this step's checkpoint when the step is finished.
        self.save_request: SaveRequest | None = None
        self.finished = False  # the run's final step is done: nothing is saved on request any more
        self.enabled = enabled  # off while `Trainer.train_step()` drives single steps
        self.progress: dict[str, float] = {}
        self._pending_step: int | None = None  # a step whose row and checkpoint wait for its validation
        self.throughput: Throughput | None = None
        self._validation_started = 0.0
        self.start_step: int | None = None  # the step this fit's training started from (None: it never started)
        self.budget = budget

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint.update(self.inputs)  # every save (a ModelCheckpoint's too) names what the run read

    # Lightning saves and restores this with every checkpoint (callback state).
    def state_dict(self) -> dict[str, Any]:
        state = {"best_val_loss": self.best_val_loss}
        if self.budget is not None:
            state["time_budget"] = self.budget.state_dict()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_val_loss = float(state_dict.get("best_val_loss", math.inf))
        if self.budget is not None and "time_budget" in state_dict:
            self.budget.load_state_dict(state_dict["time_budget"])
        elif self.budget is not None:
            warnings.warn("the checkpoint records no time spent (its run was planned in steps): max_time counts "
                          "from this run's start, and its schedule starts its decay over.", stacklevel=2)

    def stepping_copy(self) -> StepCadence:
        """A disabled cadence for `Trainer.train_step()` (no rows, no periodic checkpoints) keeping this one's
        best val loss; it still measures throughput and saves on request."""
        cadence = StepCadence(1, 1, 1, self.checkpoints, None, has_validation=False, enabled=False)
        cadence.load_state_dict(self.state_dict())
        return cadence

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.plan = pl_module.plan
        self.throughput = Throughput(self.plan)

    def on_train_start(self, trainer, pl_module) -> None:
        self.start_step = trainer.global_step  # after a resume: the checkpoint's step
        if self.budget is not None and self.budget.reached:  # resumed at the end of its time budget: train nothing
            trainer.should_stop = True
        lightning_internals.mark_resume_step_saved(trainer)
        self.throughput.start(pl_module.device, str(trainer.precision), pl_module.config)
        # Lightning has restored the checkpoint by now: a resumed run keeps the log's rows up to its step, and
        # step files past it (all of them, starting fresh) belong to a run this one does not continue.
        if self.enabled and self.sinks is not None and trainer.is_global_zero:
            if self.tokenizer is not None:
                self.tokenizer.keep(self.checkpoints.directory)
            resume_step = trainer.global_step if trainer.ckpt_path else None
            self.sinks.open(trainer.loggers, resume_step, pl_module, self.plan)
            aside = set_aside_later_checkpoints(self.checkpoints.directory, resume_step)
            if aside is not None:
                warnings.warn(f"checkpoints of a run this one does not continue were moved to {aside}/ so that "
                              "ckpt_path='last' finds this run's.", stacklevel=2)

    def request_stop(self, reason: str) -> None:
        self.stop_reason = max(self.stop_reason, reason, key=STOP_CODES.index)

    def record_val_loss(self, val_loss: float) -> None:
        """A validation loss measured outside the run's own validations (`Trainer.validate()`, an explicit save)."""
        self.best_val_loss = min(self.best_val_loss, val_loss)

    def request_save(self, val_loss: float | None, is_best: bool) -> None:
        self.save_request = SaveRequest(val_loss, is_best)

    def _is_final(self, trainer, step: int) -> bool:
        """The run ends with this step: its last one, or a stop was asked for on any process (or by a Lightning
        callback, e.g. EarlyStopping, through `trainer.should_stop`)."""
        self._agree(trainer, step)
        out_of_time = self.budget is not None and self.budget.reached
        if trainer.should_stop and not (self.is_last_step(step) or out_of_time):
            self.stop_reason = self.stop_reason or "request"
        return self.is_last_step(step) or out_of_time or self.stop_reason is not None

    def _agree(self, trainer, step: int) -> None:
        """Make a stop (and its reason) or a save asked for on any process known to every process.

        A signal reaches each process on its own (srun signals every task), possibly a step apart, and a hook
        may run on the master alone; processes that stopped or saved at different steps would make mismatched
        collectives (a crash on gloo, a hang on NCCL, a save waiting at its barrier). So every process calls
        this at the same points. Lightning already syncs its own stop flag every batch in multi-process runs;
        one more tiny collective per step adds nothing noticeable. The time budget's clock rides along.
        """
        clock = self.budget.local_values() if self.budget is not None else []
        if trainer.world_size == 1:
            if self.budget is not None:
                self._agree_on_time(trainer, clock, step)
            return
        request = self.save_request
        val_loss = request.val_loss if request is not None and request.val_loss is not None else math.inf
        # One max-reduction; the val_loss goes negated, so that its max is the lowest given on any process (each
        # process then updates its best_val_loss alike, and later "improved" decisions, which save, agree).
        flags = torch.tensor([STOP_CODES.index(self.stop_reason), request is not None,
                              request is not None and request.is_best, -val_loss, *clock], dtype=torch.float64,
                             device=trainer.strategy.root_device)
        code, save, best, negated, *clock = trainer.strategy.reduce(flags, reduce_op="max").tolist()
        self.stop_reason = STOP_CODES[int(code)]
        if save:
            self.save_request = SaveRequest(None if negated == -math.inf else -negated, bool(best))
        if self.budget is not None:
            self._agree_on_time(trainer, clock, step)

    def _agree_on_time(self, trainer, clock: list[float], step: int) -> None:
        """Every process takes the agreed clock; the rate of the next step follows the position it gives."""
        self.budget.agree(clock, step)
        for config in trainer.lr_scheduler_configs:
            if isinstance(config.scheduler, StepFunctionLR):
                config.scheduler.refresh()

    @property
    def pending_step(self) -> int | None:
        """The step whose row and checkpoint wait for its validation's end (None: none)."""
        return self._pending_step

    def is_last_step(self, step: int) -> bool:
        return step >= self.plan.max_steps

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if not self.plan.ends_step(batch_idx):
            return
        rec = pl_module.last_step
        self.throughput.add(rec.tokens, rec.seconds)
        if not self.enabled:
            return
        step = trainer.global_step
        final = self._is_final(trainer, step)
        if final:
            trainer.should_stop = True  # Lightning then runs the validation check of this very batch
        # Lightning validates at every validation step and when the run stops (should_stop): then finish later.
        validates = self.has_validation and (step % self.validation_steps == 0 or final)
        if validates:
            self._pending_step = step  # finished in on_validation_end
        else:
            self._finish_step(trainer, pl_module, val=None, final=final)

    def on_validation_start(self, trainer, pl_module) -> None:
        self._validation_started = time.perf_counter()
        if self.budget is not None:
            self.budget.mark("validation")

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        pl_module.exclude_time(time.perf_counter() - self._validation_started)  # throughput is training's
        if self.budget is not None:
            self.budget.measured("validation")
        if self._pending_step != trainer.global_step:
            return
        self._pending_step = None
        # A stop may have been asked for during this step's validation (early stopping in on_validate_end).
        final = self._is_final(trainer, trainer.global_step)
        if final:
            trainer.should_stop = True
        self._finish_step(trainer, pl_module, val=pl_module.last_val, final=final)

    def _finish_step(self, trainer, pl_module, val: dict[str, float] | None, final: bool) -> None:
        step = trainer.global_step
        request, self.save_request = self.save_request, None
        self.finished = final
        rec = pl_module.last_step
        logs = step % self.log_steps == 0 or val is not None or final
        if logs or step % self.checkpoint_steps == 0:
            # The mean over processes (every rank reaches this point at the same step): the one sync of a step.
            pl_module.reduce_step_loss()
            first_bad = pl_module.first_bad_step.float()
            if trainer.world_size > 1:  # a rank alone raising would leave the others waiting in a collective
                first_bad = trainer.strategy.reduce(first_bad, reduce_op="max")
            loss, first_bad = torch.stack([rec.loss.float(), first_bad]).tolist()
            first_bad = int(first_bad)
            if not math.isfinite(loss) or first_bad:
                bad = first_bad or step
                raise FloatingPointError(
                    f"training loss became non-finite at step {bad}; stopped without saving a checkpoint. Resume "
                    "from the last checkpoint with a lower learning_rate or gradient_clip_val."
                )
        if logs:
            self._write_row(trainer, pl_module, val)
        improved = val is not None and val["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss = val["val_loss"]
        if request is not None and request.is_best and request.val_loss is not None:
            self.best_val_loss = min(self.best_val_loss, request.val_loss)
        saving = time.perf_counter()
        kept = step % self.checkpoint_steps == 0 or final or request is not None
        best = improved or (request is not None and request.is_best)
        if kept or best:  # one save of the step: best.ckpt links to it
            if self.budget is not None:
                self.budget.mark("checkpoint")
            check_weights_finite(trainer, pl_module, step, self.checkpoints.directory)
            with pl_module.saving(step, request.val_loss if request is not None else None):
                self.checkpoints.save(trainer, step, kept=kept, best=best)
            if self.budget is not None:
                self.budget.measured("checkpoint")
        pl_module.exclude_time(time.perf_counter() - saving)

    def _write_row(self, trainer, pl_module, val: dict[str, float] | None) -> None:
        row = metrics_row(trainer.current_epoch, trainer.global_step, pl_module.last_step, self.throughput.take(), val)
        self.progress = {"loss": row["train_loss"], "lr": row["learning_rate"], "tok/s": row["tokens_per_sec"] or 0.0}
        if self.sinks is not None and trainer.is_global_zero:
            self.sinks.write(row, trainer.loggers)


class StepLoader:
    """`Trainer.train_step()`'s loader: `accum` micro-batches at a time from one iterator over the train loader, kept
    across calls (each call re-enters Lightning's fit for one more step: Lightning has no public single-step call)."""

    def __init__(self, loader: Any, accum: int) -> None:
        self.loader, self.accum = loader, accum
        self._it: Iterator | None = None

    def __len__(self) -> int:
        return self.accum

    def __iter__(self) -> Iterator:
        for _ in range(self.accum):
            batch = next(self._it, None) if self._it is not None else None
            if batch is None:  # first call, or the loader's pass is over: start the next pass
                self._it = iter(self.loader)
                batch = next(self._it)
            yield batch
