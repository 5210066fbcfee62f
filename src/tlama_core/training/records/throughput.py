"""Tokens per second and MFU: the one place that turns tokens and seconds into the rates the logs show, with the
FLOPs per token and the devices' peak FLOP/s they are measured against.

Not Lightning's ThroughputMonitor: it synchronises the CUDA device at every micro-batch to read its clock (a
stall per micro-batch), and logs on its own cadence rather than into the run's row. Here the module's step
clock is read once per optimizer step, with no device sync.
"""

from __future__ import annotations

import torch

from tlama_core.models.config import TlamaConfig
from tlama_core.training.plan import StepPlan


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


def tokens_per_sec(tokens: int, seconds: float) -> float | None:
    """`tokens / seconds`, None when no time was measured."""
    return tokens / seconds if seconds > 0 else None


class Throughput:
    """Sums the tokens and seconds of the optimizer steps since the last logged row; `take()` gives their rates.

    Tokens count every micro-batch of every process; seconds are the steps' own wall time (validation and
    checkpoint saving left out by the module's step clock).
    """

    def __init__(self, plan: StepPlan) -> None:
        self.plan = plan
        self._tokens = 0
        self._seconds = 0.0
        self._mfu_per_token: float | None = None

    def start(self, device: torch.device, precision: str, config: TlamaConfig) -> None:
        """MFU = per-device tokens/s x FLOPs per token / the device's peak (no known peak, e.g. a CPU: no MFU)."""
        peak = peak_flops(device, precision)
        self._mfu_per_token = flops_per_token(config, self.plan.seq_length) / peak if peak else None

    def add(self, tokens: int, seconds: float) -> None:
        self._tokens += tokens
        self._seconds += seconds

    def take(self) -> dict[str, float | None]:
        """The window's tokens_per_sec, tokens_per_sec_per_device and mfu (None where unknown); starts a new window."""
        per_sec = tokens_per_sec(self._tokens, self._seconds)
        per_device = per_sec / self.plan.world_size if per_sec else None
        mfu = per_device * self._mfu_per_token if (per_device and self._mfu_per_token) else None
        self._tokens, self._seconds = 0, 0.0
        return {"tokens_per_sec": per_sec, "tokens_per_sec_per_device": per_device, "mfu": mfu}
