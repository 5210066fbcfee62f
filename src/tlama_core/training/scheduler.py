"""Learning-rate schedules as plain functions of the optimizer step, and the torch scheduler that applies them."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

from lightning.pytorch.utilities import rank_zero_warn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler

from tlama_core.training.arguments import user_stacklevel

DECAY_TYPES = ("cosine", "linear", "exponential", "constant", "wsd")
WSD_DECAY_FRACTION = 0.2  # the decay's share of the run when a wsd schedule gives none


@dataclass(frozen=True)
class LRSchedule:
    """Linear warmup to max_lr, then a decay to min_lr at max_steps, then min_lr. Call it with a step.

    A dataclass rather than a closure so that a YAML run can spell it out key by key and a checkpoint can
    name it; `get_lr_scheduler` is the documented way to build one. A run with `max_time` calls `at_position`
    instead: the decay then follows the share of the time budget used.

    Args:
        max_lr: Peak learning rate, reached at the end of the warmup.
        min_lr: Learning rate at max_steps and after.
        warmup_steps: Optimizer steps of linear warmup.
        max_steps: Optimizer step at which the decay reaches min_lr; null: the run's length (its last step).
        decay_type: cosine, linear, exponential, constant, or wsd (warmup-stable-decay: max_lr until the last
            decay_fraction of the run, then a linear decay to min_lr).
        decay_fraction: wsd only: the decay's share of the run (0 < f <= 1); null: 0.2.
    """

    max_lr: float
    min_lr: float
    warmup_steps: int
    max_steps: int | None = None
    decay_type: str = "cosine"
    decay_fraction: float | None = None

    def __post_init__(self) -> None:
        if self.max_lr < 0 or (self.max_lr == 0 and self.decay_type != "constant"):  # a constant 0: a frozen run
            raise ValueError(f"get_lr_scheduler: max_lr={self.max_lr} must be > 0.")
        if not 0 <= self.min_lr <= self.max_lr:
            raise ValueError(f"get_lr_scheduler: min_lr={self.min_lr} must be in [0, max_lr={self.max_lr}].")
        if self.max_steps is not None and self.max_steps <= 0:
            raise ValueError(f"get_lr_scheduler: max_steps={self.max_steps} must be > 0 (or None: the run's length).")
        if not 0 <= self.warmup_steps < (self.max_steps or math.inf):
            raise ValueError(
                f"get_lr_scheduler: warmup_steps={self.warmup_steps} must be >= 0 and < max_steps={self.max_steps}."
            )
        if self.decay_type not in DECAY_TYPES:
            raise ValueError(
                f"get_lr_scheduler: unknown decay_type={self.decay_type!r}; known types are {list(DECAY_TYPES)}."
            )
        if self.decay_fraction is not None:
            if self.decay_type != "wsd":
                raise ValueError(f"get_lr_scheduler: decay_fraction={self.decay_fraction} is the decay's share of a "
                                 f"decay_type='wsd' schedule; this one is {self.decay_type!r}: leave it None.")
            if not 0 < self.decay_fraction <= 1:
                raise ValueError(f"get_lr_scheduler: decay_fraction={self.decay_fraction} must be in (0, 1], the "
                                 "decay's share of the run (e.g. 0.2).")

    def __call__(self, step: int) -> float:
        if self.max_steps is None:
            raise ValueError("LRSchedule: max_steps=None means the run's length, which only a run knows; train with "
                             "it (Trainer or lightning.Trainer) or give max_steps.")
        if step < self.warmup_steps:
            return self.max_lr * (step + 1) / self.warmup_steps
        if step >= self.max_steps:
            return self.min_lr
        if self.decay_type == "wsd":  # its decay's share counts the whole run, warmup included
            return self._decayed(step / self.max_steps)
        return self._decayed((step - self.warmup_steps) / (self.max_steps - self.warmup_steps))

    def at_position(self, step: int, position: float) -> float:
        """The rate of optimizer step `step` in a run planned in time: the warmup counts steps, the decay follows
        `position`, the share of the time budget used (0 at the start, 1 at its end)."""
        if step < self.warmup_steps:
            return self.max_lr * (step + 1) / self.warmup_steps
        return self._decayed(min(max(position, 0.0), 1.0))

    def _decayed(self, r: float) -> float:
        """The rate at `r` in [0, 1] of the decay's span (for wsd: of the whole run)."""
        if self.decay_type == "wsd":
            factor = min(1.0, (1.0 - r) / (self.decay_fraction or WSD_DECAY_FRACTION))
        else:
            factor = {
                "cosine": lambda: 0.5 * (1.0 + math.cos(math.pi * r)),
                "linear": lambda: 1.0 - r,
                "exponential": lambda: math.exp(-3.0 * r),
                "constant": lambda: 1.0,
            }[self.decay_type]()
        if factor == 1.0:  # exactly max_lr (a wsd schedule's stable phase), not min_lr + (max_lr - min_lr)
            return self.max_lr
        return self.min_lr + (self.max_lr - self.min_lr) * factor


def get_lr_scheduler(max_lr: float, min_lr: float, warmup_steps: int, max_steps: int | None,
                     decay_type: str = "cosine", final_div_factor: float | None = None,
                     decay_fraction: float | None = None) -> LRSchedule:
    """A function step -> lr (step = optimizer step, from 0). final_div_factor, if given, sets min_lr = max_lr / it.
    max_steps=None: the decay ends at the last step of the run that trains with it (or, with `max_time`, at the
    end of its time budget). decay_fraction: the decay's share of the run for decay_type="wsd" (None: 0.2)."""
    if final_div_factor is not None:
        if final_div_factor <= 1:
            raise ValueError(f"get_lr_scheduler: final_div_factor={final_div_factor} must be > 1.")
        min_lr = max_lr / final_div_factor
    return LRSchedule(max_lr, min_lr, warmup_steps, max_steps, decay_type, decay_fraction)


def fit_schedule_to_run(schedule: Callable[[int], float], run_steps: int) -> Callable[[int], float]:
    """The schedule a run of `run_steps` optimizer steps uses: an `LRSchedule` without max_steps ends at the run's
    last step; one that ends before or after it warns, naming both numbers (its lr would sit at min_lr for the
    rest of the run, or never finish decaying)."""
    if not isinstance(schedule, LRSchedule):
        return schedule
    if schedule.max_steps is None:
        if schedule.warmup_steps >= run_steps:  # a short trial run: keep it running, say what it misses
            warnings.warn(f"the learning-rate schedule's warmup_steps={schedule.warmup_steps} is not shorter than the "
                          f"run's {run_steps} steps: the run ends during the warmup.", stacklevel=user_stacklevel())
            return replace(schedule, max_steps=schedule.warmup_steps + 1)
        return replace(schedule, max_steps=run_steps)
    if schedule.max_steps != run_steps and schedule.min_lr != schedule.max_lr:  # a flat rate has no end to miss
        how = "before" if schedule.max_steps < run_steps else "after"
        warnings.warn(f"the learning-rate schedule ends at step {schedule.max_steps} (max_steps), {how} the run's "
                      f"last step {run_steps}; set the schedule's max_steps to {run_steps}, or leave it None (YAML: "
                      "null) to follow the run.", stacklevel=user_stacklevel())
    return schedule


def constant_schedule(lr: float) -> Callable[[int], float]:
    """The schedule used when none is given: `learning_rate` at every step."""
    return LRSchedule(max_lr=lr, min_lr=lr, warmup_steps=0, max_steps=1, decay_type="constant")


def follow_rate(schedule: Callable[[int], float], old: float, new: float) -> Callable[[int], float]:
    """The schedule after a module's `learning_rate` changed from `old` to `new` (as Lightning's `Tuner.lr_find`
    sets its suggestion): the flat schedule at `old` (the default) becomes flat at `new`; any other stays as it is,
    with a warning that `new` is not used."""
    if schedule == constant_schedule(old):
        return constant_schedule(new)
    rank_zero_warn(f"learning_rate set to {new} (as Tuner.lr_find sets its suggestion) is not used: the rate comes "
                   f"from the module's scheduler, {schedule}; to train at it, give a scheduler whose max_lr is {new}.")
    return schedule


class StepFunctionLR(LRScheduler):
    """Sets every parameter group's lr to `fn(step)` before each optimizer step.

    torch's LambdaLR multiplies each group's initial lr by a factor; the documented schedule returns the lr
    itself, so this subclass applies it as is. Lightning steps it once per optimizer step and saves its
    position (`last_epoch`) in checkpoints, which makes the schedule resume exactly.
    """

    def __init__(self, optimizer: Optimizer, fn: Callable[[int], float], last_epoch: int = -1) -> None:
        self.fn = fn
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> list[float]:
        return [float(self.fn(self.last_epoch))] * len(self.optimizer.param_groups)

    def state_dict(self) -> dict:
        # Only numbers: the default would pickle `fn` (a lambda or custom class), which checkpoints loaded
        # with weights_only=True cannot hold.
        return {"last_epoch": self.last_epoch, "_step_count": self._step_count,
                "_last_lr": getattr(self, "_last_lr", None)}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore the position and apply this run's schedule at it: the rate in the restored optimizer state is
        the old run's, which a resume with a changed schedule would otherwise train its first step with. A rate
        that differs from the old run's at that step warns, naming both (e.g. a cosine that had finished,
        stretched by a raised max_steps, jumps back up)."""
        saved = state_dict.get("_last_lr")
        self.__dict__.update(state_dict)
        self.refresh()
        before, after = (saved or [None])[0], self._last_lr[0]
        if before is not None and not math.isclose(before, after, rel_tol=1e-6, abs_tol=1e-12):
            warnings.warn(
                f"resuming at step {self.last_epoch}: the learning rate jumps from {before:.3g} (the checkpoint's "
                f"run) to {after:.3g} (this run's schedule at that step). To train longer without a jump, use "
                "decay_type='wsd' and resume from a checkpoint of its stable phase (before its decay).",
                stacklevel=user_stacklevel())

    def refresh(self) -> None:
        """Set every group's lr to the schedule's at the current step (whatever was written there before): a resume,
        a run planned in time moving its position between steps, a module whose optimizer was just rebuilt."""
        self._last_lr = self.get_lr()
        for group, lr in zip(self.optimizer.param_groups, self._last_lr, strict=True):
            group["lr"] = lr


def plot_lr_schedule(schedule: Callable[[int], float], steps: int, ax=None):
    """Draw lr against step for the first `steps` steps (matplotlib, the `plot` extra); returns the axes."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3))
    xs = list(range(steps))
    ax.plot(xs, [schedule(s) for s in xs])
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("learning rate")
    return ax
