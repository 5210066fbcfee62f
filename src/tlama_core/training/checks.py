"""Checks of what a run is given, before anything is built: each error names the parameter, the value and the fix.

A NaN weight decay, a seed numpy rejects or a checkpoints_dir that is a file would otherwise fail hours later, at
the first step or the first save.
"""

from __future__ import annotations

import math
import numbers
import os
from pathlib import Path
from typing import Any

MAX_SEED = 2**32 - 1  # numpy's and Lightning's seed range


def check_run_settings(rates: dict[str, Any], seed: Any, devices: Any, directories: dict[str, str | Path]) -> None:
    """The `Trainer`'s numbers and places, before anything is built: each error names its parameter."""
    for name, value in rates.items():
        check_rate("Trainer", name, value)
    check_seed("Trainer", seed)
    check_devices("Trainer", devices)
    for name, directory in directories.items():
        check_writable_dir("Trainer", name, directory)


def check_rate(owner: str, name: str, value: Any) -> float:
    """`value` when it is a finite number >= 0 (NaN and inf are not), else a ValueError naming `owner` and `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{owner}: {name}={value!r} must be a finite number >= 0.")
    return value


def check_seed(owner: str, seed: Any) -> int:
    """A seed numpy and Lightning accept: an integer in [0, 2**32 - 1]."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{owner}: seed={seed!r} must be an integer in [0, {MAX_SEED}].")
    return seed


def check_devices(owner: str, devices: Any) -> None:
    """Lightning's `devices`: "auto", a count >= 1, -1 (all), a non-empty list of indices, or a string of them."""
    if isinstance(devices, bool):
        bad = True
    elif isinstance(devices, int):
        bad = devices == 0 or devices < -1
    elif isinstance(devices, (list, tuple)):
        bad = not devices or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in devices)
    else:
        bad = not isinstance(devices, str) or devices.strip() in ("", "0")
    if bad:
        raise ValueError(f"{owner}: devices={devices!r} must be 'auto', a device count >= 1, -1 (all devices) or a "
                         "non-empty list of device indices, e.g. devices=1.")


def check_writable_dir(owner: str, name: str, path: str | Path) -> None:
    """`path` is a writable directory, or can be created as one; nothing is created (a Trainer that is built
    and never trained leaves no directory behind)."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        where = "is a file" if existing == path else f"is under {str(existing)!r}, which is a file"
        raise ValueError(f"{owner}: {name}={str(path)!r} {where}; give a directory.")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {str(existing)!r} is not writable"
        raise ValueError(f"{owner}: {name}={str(path)!r} {what}; give a directory you can write to.")


def check_counts(**counts: int | None) -> None:
    """The Trainer's counts: integers >= 1 (steps, validation_batches and max_steps may also be None)."""
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"Trainer: {name}={value!r} must be an integer >= 1" + (
                " (or None)." if name in ("steps", "validation_batches", "max_steps", "keep_checkpoints") else "."))


def check_weight_averaging(owner: str, callbacks: list[Any]) -> None:
    """Refuse Lightning's StochasticWeightAveraging, naming the per-step averaging callbacks that replace it."""
    from lightning.pytorch.callbacks import StochasticWeightAveraging

    if any(isinstance(c, StochasticWeightAveraging) for c in callbacks):
        raise ValueError(
            f"{owner}: StochasticWeightAveraging averages the weights as they stand at the start of each epoch and "
            "swaps the module's per-step learning-rate schedule for SWALR: a run within one epoch (counted in steps) "
            "would end holding the initial weights. Use lightning.pytorch.callbacks.WeightAveraging (SWA's equal "
            "average, updated every optimizer step; override should_update to start later) or "
            "EMAWeightAveraging(decay=...): both keep the module's schedule.")
