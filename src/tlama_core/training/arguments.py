"""The `Trainer`'s arguments, checked before anything is built: each bad argument is an error naming the parameter,
its value and the fix. A NaN weight decay, a seed numpy rejects or a checkpoints_dir that is a file would otherwise
fail hours later, at the first step or the first save; a val loader's sequences too long for the model at the first
validation. Also: the loaders' micro-batch shape and where a warning about an argument points (the user's line)."""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.data import sized_len

from tlama_core.models import TlamaConfig, Transformer

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


def user_stacklevel() -> int:
    """The `warnings.warn` stacklevel, for the function calling this, of the first frame outside tlama_core:
    the warning then points at the user's line (a Trainer(...) call, or a direct call) rather than ours."""
    package = str(Path(__file__).resolve().parents[1])
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def micro_batch_shape(loader: Any, name: str = "train_data_loader") -> tuple[int, int]:
    """(batch_size, seq_length) of one micro-batch: the loader's attributes, else its first batch's shape."""
    batch_size, seq_length = getattr(loader, "batch_size", None), getattr(loader, "seq_length", None)
    if isinstance(batch_size, int) and isinstance(seq_length, int):
        return batch_size, seq_length
    try:
        first = next(iter(loader))
        x = first[0] if isinstance(first, (tuple, list)) else first
        b, t = x.shape
    except Exception as err:
        raise ValueError(
            f"{name}: cannot tell its batch size and sequence length ({err}); give it `batch_size` "
            "and `seq_length` attributes (create_dataloader does) or make it yield (x, y) tensors of shape "
            "(batch, seq_length)."
        ) from err
    return int(b), int(t)


# lightning.Trainer keywords the facade computes from its own parameters: giving them in trainer_kwargs would
# silently split the step arithmetic (or the run's files) from what the facade reports.
OWNED_KEYWORDS = {
    "accumulate_grad_batches": "total_batch_size (and gradient_accumulation)", "max_steps": "max_steps",
    "max_time": "max_time",
    "min_steps": "max_steps", "max_epochs": "epochs (or max_steps)", "min_epochs": "epochs",
    "val_check_interval": "validation_steps", "check_val_every_n_epoch": "validation_steps",
    "limit_train_batches": "steps", "limit_val_batches": "validation_batches", "log_every_n_steps": "log_steps",
    "gradient_clip_val": "gradient_clip_val", "gradient_clip_algorithm": "gradient_clip_val",
    "precision": "precision", "logger": "logger", "accelerator": "accelerator",
    "devices": "devices", "num_nodes": "num_nodes", "strategy": "strategy", "enable_progress_bar": "verbose",
    "use_distributed_sampler": "train_data_loader (the facade keeps your sampler)",
}


def validation_tokens(val_loader: Any, validation_batches: int | None) -> int | None:
    """One process's tokens per validation (the time budget's first estimate of its cost)."""
    if val_loader is None:
        return None
    batches = sized_len(val_loader) or validation_batches or 0
    if validation_batches:
        batches = min(batches, validation_batches)
    batch_size, seq_length = micro_batch_shape(val_loader, "val_data_loader")
    return batches * batch_size * seq_length


def check_trainer_kwargs(trainer_kwargs: dict[str, Any] | None) -> dict[str, Any]:
    """`trainer_kwargs` overrides the facade's other lightning.Trainer defaults; an owned keyword is an error."""
    if trainer_kwargs is None:
        return {}
    if not isinstance(trainer_kwargs, dict):
        raise TypeError(f"Trainer: trainer_kwargs must be a dict of lightning.Trainer keywords, got "
                        f"{trainer_kwargs!r}.")
    for key in trainer_kwargs:
        if key in OWNED_KEYWORDS:
            raise ValueError(f"Trainer: trainer_kwargs[{key!r}] is set by the facade; use the Trainer parameter "
                             f"{OWNED_KEYWORDS[key]} instead.")
    return dict(trainer_kwargs)


def check_model_and_optimisation(model: Any, wrapped: bool, optimizer: Any, scheduler: Any, learning_rate: float,
                                 weight_decay: float, defaults: dict[str, Any]) -> None:
    """The model is ours; the optimisation arguments fit it and each other (else they would be dropped).
    `wrapped`: the model is a TlamaLightningModule (the caller asks: this file sits below the module);
    `defaults`: the facade's defaults of optimizer, scheduler, learning_rate and weight_decay."""
    if not (wrapped or isinstance(model, Transformer)):
        raise TypeError(f"Trainer: model must be a tlama_core Transformer (or a TlamaLightningModule wrapping one), "
                        f"got {type(model).__name__}; build it with Transformer(TlamaConfig(...)).")
    if wrapped:
        given = [name for name, value in (("optimizer", optimizer), ("scheduler", scheduler),
                                          ("learning_rate", learning_rate), ("weight_decay", weight_decay))
                 if value != defaults[name]]
        if given:
            raise ValueError(f"Trainer: model is a TlamaLightningModule, which holds its own optimisation settings, "
                             f"so {', '.join(given)} would be ignored; give them to TlamaLightningModule(...).")
    transformer = model.model if wrapped else model
    if optimizer is not None and any(p.is_meta for p in transformer.parameters()):
        raise ValueError("Trainer: the model is on the meta device (its weights are drawn when the run starts) and "
                         "an optimizer was given over those placeholders; leave optimizer=None (the default AdamW is "
                         "built on the real parameters), or build the model on the CPU first.")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"Trainer: optimizer must be a torch.optim.Optimizer over the model's parameters, got "
                        f"{optimizer!r}.")
    if scheduler is not None and not callable(scheduler):
        raise TypeError(f"Trainer: scheduler must map an optimizer step to a learning rate (e.g. get_lr_scheduler"
                        f"(...)), got {scheduler!r}.")
    if optimizer is not None and scheduler is None and optimizer.param_groups[0]["lr"] != learning_rate:
        warnings.warn(f"Trainer: the optimizer's lr={optimizer.param_groups[0]['lr']} is replaced by "
                      f"learning_rate={learning_rate} (without a scheduler the run trains at learning_rate); pass "
                      f"learning_rate={optimizer.param_groups[0]['lr']} to keep it.", stacklevel=user_stacklevel())


def check_loaders_fit_model(train: Any, val: Any | None, config: TlamaConfig) -> tuple[int, int]:
    """Both loaders' sequences and ids fit the model (the val loader's now, not at the first validation hours
    into the run); returns the train micro-batch's (batch_size, seq_length)."""
    batch_size, seq_length = micro_batch_shape(train)
    check_data_fits_model(train, seq_length, config, "train_data_loader")
    if val is not None:
        check_data_fits_model(val, micro_batch_shape(val, "val_data_loader")[1], config, "val_data_loader")
    return batch_size, seq_length


def check_data_fits_model(loader: Any, seq_length: int, config: TlamaConfig, name: str) -> None:
    if seq_length > config.max_seq_len:
        raise ValueError(
            f"Trainer: {name}'s seq_length={seq_length} exceeds the model's max_seq_len={config.max_seq_len}; "
            "use shorter sequences or a model with a larger max_seq_len."
        )
    vocab = getattr(loader, "vocab_size", None)
    if vocab is None:
        first = next(iter(loader))
        vocab = int(max(t.max() for t in first[:2])) + 1
    if vocab > config.vocab_size:
        raise ValueError(
            f"Trainer: {name}'s tokenizer vocab ({vocab} ids) is larger than the model's vocab_size="
            f"{config.vocab_size}; build the model with vocab_size >= {vocab}."
        )


def split_callbacks(callbacks: Any, extra: list[Any] | None, loggers: list[Any],
                    checkpoints_dir: str) -> tuple[list[Any], list[Any]]:
    """`callbacks` and `extra` (trainer_kwargs' callbacks) as (hook objects, Lightning callbacks).

    A ModelCheckpoint without a dirpath saves beside the run's own files (its names never look like
    `step=NNNNNNNN.ckpt`, so "last" still finds the run's); LearningRateMonitor needs a logger to write to, which
    is better said now than when the run starts."""
    from lightning.pytorch.callbacks import Callback, LearningRateMonitor, ModelCheckpoint

    if not isinstance(callbacks, (list, tuple, type(None))):
        raise TypeError(f"Trainer: callbacks must be a list of hook objects, got {type(callbacks).__name__}; "
                        f"pass callbacks=[{type(callbacks).__name__}(...)].")
    callbacks = [*(callbacks or []), *(extra or [])]
    hooks = [cb for cb in callbacks if not isinstance(cb, Callback)]
    lightning_callbacks = [cb for cb in callbacks if isinstance(cb, Callback)]
    check_weight_averaging("Trainer", lightning_callbacks)
    for callback in lightning_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = str(checkpoints_dir)
        if isinstance(callback, LearningRateMonitor) and not loggers:
            raise ValueError("Trainer: callbacks holds a LearningRateMonitor, which writes to a logger, and logger is "
                             "None; pass logger='tensorboard' (or 'csv', 'mlflow', a Lightning Logger).")
    return hooks, lightning_callbacks
