"""The loss on held-out data (validation, test): token-weighted, reduced over processes once, logged to Lightning."""

from __future__ import annotations

import math
import warnings
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric


class HeldOutLoss(torch.nn.Module):
    """`{prefix}_loss` (mean loss per predicted token over every process's batches) and `{prefix}_bpc` (bits per
    character, when the loader knows its text length), accumulated as torchmetrics MeanMetrics.

    They are logged as the metric objects, not as floats: Lightning then leaves the reduction over processes to
    torchmetrics (one, at `compute`) instead of warning that a float logged per epoch should be `sync_dist`-reduced
    or, with `sync_dist=True`, all-reducing the already reduced value again."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix
        self.loss, self.bpc = MeanMetric(), MeanMetric()
        self._bits_per_nat: float | None = None  # tokens per character / ln 2: nats per token -> bits per char

    def start(self, loaders: Any) -> None:
        """Begin a pass over `loaders` (the trainer's val or test loaders: bits per character need one loader
        that knows its text length and token count)."""
        self.loss.reset()
        self.bpc.reset()
        chars, tokens = getattr(loaders, "text_chars", None), getattr(loaders, "num_tokens", None)
        self._bits_per_nat = tokens / chars / math.log(2) if chars and tokens else None

    def update(self, loss: torch.Tensor, tokens: int) -> None:
        """Add one batch's mean loss over its `tokens` predicted tokens."""
        self.loss.update(loss, weight=tokens)
        if self._bits_per_nat is not None:
            self.bpc.update(loss * self._bits_per_nat, weight=tokens)

    def log(self, module: L.LightningModule, *, logger: bool) -> dict[str, float]:
        """Log the pass's metrics through `module.log` (callbacks, the values `validate()`/`test()` return and,
        when `logger`, the loggers) and return them as floats (every process calls this: the reduction is a
        collective)."""
        metrics = {f"{self.prefix}_loss": self.loss}
        if self._bits_per_nat is not None:
            metrics[f"{self.prefix}_bpc"] = self.bpc
        with warnings.catch_warnings():  # logged for `validate()`'s return even with no logger to write them to
            warnings.filterwarnings("ignore", message=r"You called `self\.log\(.*logger=True\)` but have no logger")
            for name, metric in metrics.items():
                module.log(name, metric, prog_bar=metric is self.loss, logger=logger)
        return {name: float(metric.compute()) for name, metric in metrics.items()}
