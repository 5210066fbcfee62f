"""Token arithmetic in one place: micro-batch shape, gradient accumulation, tokens per step, FLOPs per token.

Every number that users compare across runs (accumulation, tokens/s, MFU) is derived here, so the facade, the
CLI and the benchmarks cannot disagree about them.
"""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tlama_core.models.config import TlamaConfig


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


def user_stacklevel() -> int:
    """The `warnings.warn` stacklevel, for the function calling this, of the first frame outside tlama_core:
    the warning then points at the user's line (a Trainer(...) call, or a direct call) rather than ours."""
    package = str(Path(__file__).resolve().parents[1])
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def starts_step(batch_idx: int, accum: int) -> bool:
    """Whether micro-batch `batch_idx` (counted within the epoch) is the first of an optimizer step."""
    return batch_idx % accum == 0


def ends_step(batch_idx: int, accum: int) -> bool:
    """Whether micro-batch `batch_idx` completes an optimizer step (epochs hold whole steps only)."""
    return (batch_idx + 1) % accum == 0


@dataclass(frozen=True)
class StepPlan:
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
    def tokens_per_step(self) -> int:
        """Tokens of one optimizer step on all devices: every micro-batch of every data-parallel process."""
        return self.micro_batch_tokens * self.grad_accum * self.readers

    @property
    def max_steps(self) -> int:
        """The run's optimizer steps in all."""
        return self.total_steps or self.steps_per_epoch * self.epochs


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


def flops_per_token(config: TlamaConfig, seq_length: int) -> int:
    """Training FLOPs per token (forward + backward): 6N + 12*L*d*T (PaLM, appendix B), N without embeddings."""
    d, n_layers = config.d_model, config.n_layers
    kv = config.n_kv_heads * config.head_dim
    per_layer = d * d * 2 + 2 * d * kv + 3 * d * config.ffn_hidden_dim  # wq, wo, wk, wv, SwiGLU
    n = n_layers * per_layer + d * config.padded_vocab_size  # the output layer is a matmul too
    return 6 * n + 12 * n_layers * d * seq_length


# NVIDIA's H200 datasheet, dense (its table gives twice these, "with sparsity"). Lightning's table cannot be
# used for the H200: it keys it "h200 sxm1" / "h200 nvl1", which no device reports ("NVIDIA H200"), and holds
# the with-sparsity figures, which would halve the MFU.
H200_DENSE_PEAKS = {
    "h200 nvl": {torch.bfloat16: 835.5e12, "tfloat32": 417.5e12, torch.float32: 60e12},
    "h200": {torch.bfloat16: 989.5e12, "tfloat32": 494.7e12, torch.float32: 67e12},  # SXM
}


def peak_flops(device: torch.device, precision: str) -> float | None:
    """The device's dense peak FLOP/s for the training precision (Lightning's table), None where unknown (CPU).

    fp32 counts TF32 tensor cores where matmuls may use them (float32_matmul_precision not "highest")."""
    if device.type != "cuda":
        return None
    from lightning.fabric.utilities.throughput import get_available_flops

    dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float32
    name = torch.cuda.get_device_name(device).lower()
    if "h200" in name:
        peaks = H200_DENSE_PEAKS["h200 nvl" if "nvl" in name else "h200"]
        tf32 = dtype is torch.float32 and torch.get_float32_matmul_precision() != "highest"
        return peaks["tfloat32" if tf32 else dtype]
    return get_available_flops(device, dtype)
