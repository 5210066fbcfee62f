"""Runs planned in wall time (`max_time`): one clock every process agrees on, a stop early enough that the final
validation and checkpoint fit in the budget, and a schedule whose decay follows the share of the budget used.

Lightning's own `max_time` only cuts a run: the rate is wherever the step schedule had it. Here the budget is
the plan. The cadence's one per-step reduction carries this process's clock and measurements; every process
then derives the same stop and the same position from the agreed (maximum) values.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections import deque
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from tlama_core.training.arguments import user_stacklevel
from tlama_core.training.plan import StepPlan
from tlama_core.training.scheduler import LRSchedule

_clock: Callable[[], float] = time.perf_counter  # read at each call: tests put a clock driven by steps here
CHECKPOINT_BYTES_PER_SECOND = 250e6  # a first save's estimated speed, until one is measured
STEP_HISTORY = 5  # recent step times kept: their median plans the position, their maximum the stop


def parse_max_time(value: Any) -> float | None:
    """Seconds from `max_time`: a number of seconds, Lightning's "DD:HH:MM:SS" string, or a timedelta."""
    if value is None:
        return None
    seconds: float | None = None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        parts = value.strip().split(":")
        try:
            numbers = [float(p) for p in parts]
        except ValueError:
            numbers = []
        if len(parts) == 4 and numbers:
            days, hours, minutes, secs = numbers
            seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
        elif len(parts) == 1 and numbers:
            seconds = numbers[0]
    if seconds is None or not seconds > 0 or seconds == float("inf"):
        raise ValueError(f"Trainer: max_time={value!r} must be a time budget > 0: seconds (e.g. 3600) or "
                         "\"DD:HH:MM:SS\" (e.g. \"00:08:00:00\" for 8 hours).")
    return seconds


class TimedSchedule:
    """An LRSchedule planned in time: the warmup counts steps, the decay follows `budget.position`."""

    def __init__(self, schedule: LRSchedule, budget: TimeBudget) -> None:
        self.schedule, self.budget = schedule, budget

    def __call__(self, step: int) -> float:
        return self.schedule.at_position(step, self.budget.position)

    def __repr__(self) -> str:
        return f"TimedSchedule({self.schedule!r}, max_time={self.budget.seconds:g} s)"


class TimeBudget:
    """The run's time budget: `seconds` from the start of `train()`, a resumed run's earlier time included.

    The owner (the step cadence) calls `agree` at every step end with the maximum over processes of
    `local_values()`; `position` and `reached` are then the same on every process. Validation and checkpoint
    costs are measured as the run goes (their maximum); before the first, a validation is estimated from the
    step time (a forward pass over its tokens, a third of a training step's work per token) and a checkpoint
    from its bytes.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.position = 0.0  # agreed share of the planned training time used, in [0, 1]
        # The run ends with the step just agreed on: one more step, its validation and its checkpoint would pass
        # the budget. Sticky, so the check after that step's validation agrees.
        self.reached = False
        self.earlier = 0.0  # seconds a resumed run spent before its checkpoint
        self._start: float | None = None
        self._agreed = 0.0  # agreed elapsed seconds at the latest step end
        self._measured = {"validation": 0.0, "checkpoint": 0.0}
        self._marks: dict[str, float] = {}
        self._steps: deque[float] = deque(maxlen=STEP_HISTORY)
        self._last_step: int | None = None
        self._validation_in_steps = 0.0
        self._checkpoint_bytes = 0

    # ---- the plan ---------------------------------------------------------------------------------------
    def plan(self, schedule: Callable[[int], float]) -> Callable[[int], float]:
        """The schedule this run applies: an LRSchedule with max_steps=None decays over the budget; a flat rate
        stays as it is; a plain function of the step cannot follow time (warned)."""
        if isinstance(schedule, LRSchedule):
            if schedule.min_lr == schedule.max_lr:
                return schedule
            if schedule.max_steps is not None:
                raise ValueError(f"Trainer: max_time={self.seconds:g} s plans the schedule's decay in time, and the "
                                 f"scheduler's max_steps={schedule.max_steps} plans it in steps; leave the "
                                 "scheduler's max_steps None (YAML: null) to decay over the time budget.")
            return TimedSchedule(schedule, self)
        warnings.warn("Trainer: max_time stops the run, but the scheduler is a plain function of the step, which "
                      "cannot follow the time budget; use get_lr_scheduler(..., max_steps=None) for a schedule "
                      "planned in time.", stacklevel=user_stacklevel())
        return schedule

    def start(self, plan: StepPlan, parameters: int, validation_tokens: int | None) -> None:
        """Start the clock (the start of `train()`). `parameters`: the model's count (a checkpoint holds them
        and two optimizer moments); `validation_tokens`: one process's tokens per validation (None: none)."""
        self._start = _clock()
        self._checkpoint_bytes = parameters * 4 * 3
        self._validation_in_steps = (validation_tokens or 0) / plan.process_tokens_per_step / 3

    def elapsed(self) -> float:
        """This process's seconds of the run so far (an earlier run's, for a resumed one, included)."""
        return self.earlier + (_clock() - self._start if self._start is not None else 0.0)

    # ---- measurements and agreement -------------------------------------------------------------------
    def mark(self, what: str) -> None:
        """A validation or a checkpoint save starts on this process."""
        self._marks[what] = _clock()

    def measured(self, what: str) -> None:
        """The validation or checkpoint save marked last has ended: keep the longest one's seconds."""
        self._measured[what] = max(self._measured[what], _clock() - self._marks.pop(what))

    def local_values(self) -> list[float]:
        """What this process contributes to the step's agreement (maximum over processes)."""
        return [self.elapsed(), self._measured["validation"], self._measured["checkpoint"]]

    def agree(self, values: list[float], step: int) -> None:
        """Take the agreed values at the end of optimizer step `step` (called once or twice per step: again after
        the step's validation, which then counts as measured, not as step time)."""
        elapsed, self._measured["validation"], self._measured["checkpoint"] = values
        if step != self._last_step:
            if self._last_step is not None:
                self._steps.append(max(elapsed - self._agreed, 0.0))
            self._last_step = step
        self._agreed = elapsed
        self.position = self._position()
        if self._agreed + max(self._steps, default=0.0) + self.reserve() > self.seconds:  # the slowest recent step
            self.reached = True

    def step_seconds(self) -> float:
        """A typical step's seconds: the median of the recent ones."""
        return statistics.median(self._steps) if self._steps else 0.0

    def reserve(self) -> float:
        """Seconds kept for the final validation and checkpoint."""
        validation = self._measured["validation"] or self.step_seconds() * self._validation_in_steps
        checkpoint = self._measured["checkpoint"] or self._checkpoint_bytes / CHECKPOINT_BYTES_PER_SECOND
        return validation + checkpoint

    def _position(self) -> float:
        """The share used of the time planned for training steps: the budget less the final validation and
        checkpoint and one step: the last step's rate is taken within a step of position 1 (min_lr)."""
        planned = self.seconds - self.reserve() - self.step_seconds()
        return min(1.0, self._agreed / planned) if planned > 0 else 1.0

    # ---- checkpoints ------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"elapsed": self.elapsed(), "agreed": self._agreed, "step": self._last_step,
                "step_seconds": list(self._steps),
                "validation_seconds": self._measured["validation"],
                "checkpoint_seconds": self._measured["checkpoint"]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the run's clock and the same schedule: the position is recomputed from the saved values, so
        the same budget resumes at the same rate; a new budget replans the time left (the rate may jump, which the
        learning-rate scheduler warns about)."""
        self.earlier = float(state["elapsed"])
        self._agreed, self._last_step = float(state["agreed"]), state["step"]
        self._steps = deque(state["step_seconds"], maxlen=STEP_HISTORY)
        self._measured = {"validation": float(state["validation_seconds"]),
                          "checkpoint": float(state["checkpoint_seconds"])}
        self.position = self._position()
        # The final checkpoint of a run its budget ended: nothing is left to train (a larger budget continues).
        self.reached = self.earlier + max(self._steps, default=0.0) + self.reserve() > self.seconds

    def step_limit_warning(self, step: int, lr: float, schedule: Callable[[int], float]) -> str:
        """The warning of a run that reached its step limit before its time budget ended."""
        landed = ""
        if isinstance(schedule, TimedSchedule):
            landed = (f", so its learning-rate schedule did not land: the last rate was {lr:.3g}, not "
                      f"min_lr={schedule.schedule.min_lr:.3g}")
        return (f"max_time={self.seconds:g} s: the run reached its last step {step} (epochs x steps, or max_steps) "
                f"after {self.elapsed():.1f} s, before its time budget ended{landed}. Raise epochs or max_steps so "
                "that the time budget ends the run, or leave max_time out to plan the run in steps.")
