"""Checks of what a run is given and of what it is about to save: errors name the parameter, the value and the fix.

The settings are checked when the run is built (a NaN weight decay would otherwise write NaN weights hours
later); the weights are checked before every checkpoint, so no checkpoint ever holds non-finite weights.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from tlama_core.training.checkpointing import find_last_checkpoint

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


def weights_finite(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor: True when every floating-point value is finite.

    One fused norm over all tensors (the kernel gradient clipping uses; NaN and inf propagate into it), a small
    fraction of what writing the checkpoint costs. A norm can also overflow from huge finite values; only then
    (never on the usual path) each tensor is checked element by element, so such weights still count as finite.
    """
    tensors = [p.detach() for p in parameters if p.is_floating_point()]
    if not tensors:
        return torch.tensor(True)
    finite = torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all()
    if bool(finite):
        return finite
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def check_weights_finite(trainer: Any, pl_module: Any, step: int, checkpoints_dir: Path) -> None:
    """Raise before a checkpoint of non-finite weights is written; every process calls it at the same step and
    they agree (with FSDP each holds a shard), so all stop together."""
    finite = weights_finite(pl_module.parameters())
    if trainer.world_size > 1:
        finite = trainer.strategy.reduce((~finite).float(), reduce_op="max") == 0
    if not bool(finite):
        last = find_last_checkpoint(checkpoints_dir)
        keep = f"ckpt_path='last' stays {last}" if last is not None else "no checkpoint was written yet"
        raise FloatingPointError(
            f"the weights hold non-finite values (nan/inf) at step {step}; stopped without writing its checkpoint "
            f"({keep}). Resume from the last checkpoint with a lower learning_rate or gradient_clip_val."
        )


def check_model_finite(model: torch.nn.Module, path: Path) -> None:
    """`Trainer._save_checkpoint` outside training: refuse to write `path` from non-finite weights."""
    if not bool(weights_finite(model.parameters())):
        raise FloatingPointError(f"the model's weights hold non-finite values (nan/inf); {path} was not written.")
