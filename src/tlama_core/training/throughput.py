"""Tokens per second and MFU: the one place that turns tokens and seconds into the rates the logs show.

Not Lightning's ThroughputMonitor: it times each micro-batch from its start to its end (a step's data loading,
which a starved loader must show, falls outside) and logs on its own cadence rather than into the run's row.
"""

from __future__ import annotations

import torch

from tlama_core.models.config import TlamaConfig
from tlama_core.training.batching import flops_per_token, peak_flops


def tokens_per_sec(tokens: int, seconds: float) -> float | None:
    """`tokens / seconds`, None when no time was measured."""
    return tokens / seconds if seconds > 0 else None


class Throughput:
    """Sums the tokens and seconds of the optimizer steps since the last logged row; `take()` gives their rates.

    Tokens count every micro-batch of every process; seconds are the steps' own wall time (validation and
    checkpoint saving left out by the module's step clock).
    """

    def __init__(self, world_size: int) -> None:
        self.world_size = world_size
        self._tokens = 0
        self._seconds = 0.0
        self._mfu_per_token: float | None = None

    def start(self, device: torch.device, precision: str, config: TlamaConfig, seq_length: int) -> None:
        """MFU = per-device tokens/s x FLOPs per token / the device's peak (no known peak, e.g. a CPU: no MFU)."""
        peak = peak_flops(device, precision)
        self._mfu_per_token = flops_per_token(config, seq_length) / peak if peak else None

    def add(self, tokens: int, seconds: float) -> None:
        self._tokens += tokens
        self._seconds += seconds

    def take(self) -> dict[str, float | None]:
        """The window's tokens_per_sec, tokens_per_sec_per_device and mfu (None where unknown); starts a new window."""
        per_sec = tokens_per_sec(self._tokens, self._seconds)
        per_device = per_sec / self.world_size if per_sec else None
        mfu = per_device * self._mfu_per_token if (per_device and self._mfu_per_token) else None
        self._tokens, self._seconds = 0, 0.0
        return {"tokens_per_sec": per_sec, "tokens_per_sec_per_device": per_device, "mfu": mfu}
