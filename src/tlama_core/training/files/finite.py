"""No checkpoint holds non-finite weights: the weights are checked, cheaply, before every save.

A NaN learning rate or an overflow would otherwise write NaN weights and tell the user to resume from them.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from tlama_core.training.files.checkpoint_io import find_last_checkpoint


def weights_finite(parameters: Iterable[torch.Tensor]) -> torch.Tensor:
    """A 0-d bool tensor: True when every floating-point value is finite.

    One fused norm over all tensors (the kernel gradient clipping uses; NaN and inf propagate into it), a small
    fraction of what writing the checkpoint costs. A norm can also overflow from huge finite values; only then
    (never on the usual path) each tensor is checked element by element, so such weights still count as finite.
    """
    tensors = [local(p.detach()) for p in parameters if p.is_floating_point()]
    if not tensors:
        return torch.tensor(True)
    finite = torch.isfinite(torch.stack(torch._foreach_norm(tensors))).all()
    if bool(finite):
        return finite
    return torch.stack([torch.isfinite(t).all() for t in tensors]).all()


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This process's shard of a DTensor (FSDP2, tensor parallel), the tensor itself otherwise: the check reduces
    plain flags across processes (a DTensor norm has no all-reduce of its own for gloo/NCCL to run)."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def check_weights_finite(trainer: Any, pl_module: Any, step: int, checkpoints_dir: Path | None = None) -> None:
    """Raise before a checkpoint of non-finite weights is written; every process calls it at the same step and
    they agree (sharded, each checks its own shard), so all stop together. `checkpoints_dir`: the run's own, whose
    "last" the error names."""
    finite = weights_finite(pl_module.parameters())
    if trainer.world_size > 1:  # on the strategy's device: after fit Lightning has moved the module to the CPU
        flag = (~finite).float().to(trainer.strategy.root_device)
        finite = trainer.strategy.reduce(flag, reduce_op="max") == 0
    if not bool(finite):
        if checkpoints_dir is None:
            keep = "the checkpoints written before are untouched"
        elif (last := find_last_checkpoint(checkpoints_dir)) is not None:
            keep = f"ckpt_path='last' stays {last}"
        else:
            keep = "no checkpoint was written yet"
        raise FloatingPointError(
            f"the weights hold non-finite values (nan/inf) at step {step}; stopped without writing its checkpoint "
            f"({keep}). Resume from the last checkpoint with a lower learning_rate or gradient_clip_val."
        )


def check_model_finite(weights: Iterable[torch.Tensor], path: Path) -> None:
    """`Trainer._save_checkpoint` outside training: refuse to write `path` from non-finite `weights`."""
    if not bool(weights_finite(weights)):
        raise FloatingPointError(f"the model's weights hold non-finite values (nan/inf); {path} was not written.")
