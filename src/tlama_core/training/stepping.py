"""`Trainer.train_step()`: one optimizer step at a time, by re-entering Lightning's fit with a budget of one more
step (Lightning has no public single-step call) over one data stream kept across calls."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


class StepLoader:
    """`accum` micro-batches at a time from one iterator over the train loader, kept across `train_step()` calls."""

    @staticmethod
    def loop_counts(accum: int) -> dict[str, Any]:
        """The stepping lightning.Trainer's loop bounds: no epochs, no limits, no validation (the steps are counted
        by `lightning_internals.allow_one_more_step`)."""
        return {"max_epochs": -1, "max_steps": -1, "limit_train_batches": None, "accumulate_grad_batches": accum,
                "val_check_interval": None}

    def __init__(self, loader: Any, accum: int) -> None:
        self.loader, self.accum = loader, accum
        self._it: Iterator | None = None

    def __len__(self) -> int:
        return self.accum

    def __iter__(self) -> Iterator:
        for _ in range(self.accum):
            batch = next(self._it, None) if self._it is not None else None
            if batch is None:  # first call, or the loader's pass is over: start the next pass
                self._it = iter(self.loader)
                batch = next(self._it)
            yield batch
