"""The facade's arguments that depend on each other, checked at construction: the model and its optimisation,
the loaders against the model, trainer_kwargs against the keywords the facade owns, and the callbacks. Each bad
argument is an error naming the parameter, its value and the fix."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training.batching import micro_batch_shape, user_stacklevel
from tlama_core.training.checks import check_weight_averaging
from tlama_core.training.module import TlamaLightningModule

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


def check_model_and_optimisation(model: Any, optimizer: Any, scheduler: Any, learning_rate: float,
                                 weight_decay: float, defaults: dict[str, Any]) -> None:
    """The model is ours; the optimisation arguments fit it and each other (else they would be dropped).
    `defaults`: the facade's defaults of optimizer, scheduler, learning_rate and weight_decay."""
    if not isinstance(model, (Transformer, TlamaLightningModule)):
        raise TypeError(f"Trainer: model must be a tlama_core Transformer (or a TlamaLightningModule wrapping one), "
                        f"got {type(model).__name__}; build it with Transformer(TlamaConfig(...)).")
    if isinstance(model, TlamaLightningModule):
        given = [name for name, value in (("optimizer", optimizer), ("scheduler", scheduler),
                                          ("learning_rate", learning_rate), ("weight_decay", weight_decay))
                 if value != defaults[name]]
        if given:
            raise ValueError(f"Trainer: model is a TlamaLightningModule, which holds its own optimisation settings, "
                             f"so {', '.join(given)} would be ignored; give them to TlamaLightningModule(...).")
    transformer = model.model if isinstance(model, TlamaLightningModule) else model
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
