"""The run's Lightning precision: chosen from `use_mixed_precision` and the device, or given, and checked against
what the device can run before Lightning sees it."""

from __future__ import annotations

import torch

from tlama_core.training.lightning_internals import canonical_precision, precision_names


def device_type(accelerator: str) -> str:
    """The device kind an accelerator setting trains on: cuda, mps or cpu."""
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "cuda"
    if accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def allow_tf32(device_type: str) -> None:
    """TF32 matmuls on CUDA: nearly free speed for fp32 work; bf16 autocast covers the rest."""
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def has_fast_bf16(device_type: str) -> bool:
    """Whether bf16 autocast speeds training up on this device: CUDA, and CPUs with bf16 matrix units (AMX or
    AVX512-BF16, where oneDNN's bf16 matmuls run about twice as fast as fp32). Elsewhere bf16 is emulated, slower."""
    if device_type == "cuda":
        return True
    if device_type != "cpu" or not hasattr(torch.cpu, "get_capabilities"):  # older torch: no way to ask
        return False
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def resolve_precision(precision: str | None, use_mixed_precision: bool, device_type: str) -> str:
    """`precision` when given (any Lightning precision string), else bf16-mixed where it is fast, else 32-true.

    A value the device cannot run is a ValueError naming both; Lightning would swap fp16 autocast on a CPU for
    bf16 with only a warning."""
    if precision is None:
        return "bf16-mixed" if use_mixed_precision and has_fast_bf16(device_type) else "32-true"
    if str(precision) not in precision_names():
        raise ValueError(f"Trainer: precision={precision!r} is not a Lightning precision; use one of "
                         f"{', '.join(repr(p) for p in precision_names())}.")
    name = canonical_precision(str(precision))
    problem = None
    if name == "16-mixed" and device_type != "cuda":
        problem = "fp16 autocast runs on CUDA only; use 'bf16-mixed' or '32-true'"
    elif name.startswith("transformer-engine") and device_type != "cuda":
        problem = "Transformer Engine runs on NVIDIA GPUs only"
    elif name.startswith("bf16") and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        problem = "this GPU has no bf16 support; use '16-mixed' or '32-true'"
    if problem:
        raise ValueError(f"Trainer: precision={precision!r} cannot run on the {device_type} device: {problem}.")
    return name
