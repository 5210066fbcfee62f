"""The callback bridge: the 14 documented Trainer hooks, called from Lightning's own callback hooks.

User callbacks are plain objects defining any subset of the hooks; each hook gets the facade `Trainer` first.
They run on the master process only (the facade's `master_process`: global rank 0, unless the user said it is
not the master), unless a callback sets `all_ranks = True`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from tlama_core.training.records.metrics import hook_metrics

HOOKS = ("on_init_end", "on_train_start", "on_train_end", "on_epoch_start", "on_epoch_end", "on_step_start",
         "on_step_end", "on_backward_start", "on_backward_end", "on_optimizer_step_start", "on_optimizer_step_end",
         "on_validate_start", "on_validate_end", "on_checkpoint_end")


class HookBridge(Callback):
    """Translates Lightning's hooks into the documented ones, counting steps in optimizer steps."""

    def __init__(self, owner: Any, callbacks: list[Any], *, run_hooks: bool = True) -> None:
        self.owner = owner
        self.callbacks = list(callbacks)
        self.run_hooks = run_hooks  # False while `Trainer.train_step()` drives single steps: run-level hooks stay quiet

    def fire(self, name: str, *args: Any) -> None:
        for hook in self._receivers(name):
            hook(self.owner, *args)

    def _receivers(self, name: str) -> list[Callable[..., Any]]:
        """The callbacks' `name` hooks that run on this process: all on the master, `all_ranks` ones elsewhere."""
        master = self.owner.master_process
        return [getattr(cb, name) for cb in self.callbacks
                if hasattr(cb, name) and (master or getattr(cb, "all_ranks", False))]

    def on_train_start(self, trainer, pl_module) -> None:
        if self.run_hooks:
            self.fire("on_train_start")

    def on_train_end(self, trainer, pl_module) -> None:
        self.owner._checkpoints.wait()  # every checkpoint of the run is on disk (and announced) before it ends
        if self.run_hooks:
            self.fire("on_train_end")

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self.run_hooks:
            self.fire("on_epoch_start")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self.run_hooks:
            self.fire("on_epoch_end")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if pl_module.accumulation.starts_step(batch_idx):
            self.fire("on_step_start")

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        # Lightning's loss here is already divided by the accumulation; the hook documents the micro-batch's own.
        self.fire("on_backward_start", pl_module.micro_loss)

    def on_after_backward(self, trainer, pl_module) -> None:
        self.fire("on_backward_end")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.fire("on_optimizer_step_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if pl_module.accumulation.ends_step(batch_idx):
            # No Lightning hook follows the optimizer step itself; nothing user-visible happens between it and here.
            self.fire("on_optimizer_step_end")
            # Its metrics read device values and average the loss over processes (a collective, which every process
            # joins whichever of them runs the hook): only when some callback listens.
            if any(hasattr(cb, "on_step_end") for cb in self.callbacks):
                rec = pl_module.reduce_step_loss()
                self.fire("on_step_end", hook_metrics(rec))
            self.owner._checkpoints.poll()  # on_checkpoint_end for checkpoints whose background write has finished

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self.fire("on_validate_start")

    def on_validation_end(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking and pl_module.last_val is not None:
            self.fire("on_validate_end", dict(pl_module.last_val))

    def checkpoint_written(self, path: Path) -> None:
        """Listener of the checkpoint IO: the file is complete on disk (only the master process writes files).

        Commits finish in the background, so this runs at a later step end (or the end of the run) than the
        save: `trainer.current_step` may be past the checkpoint's own step, which its file name carries."""
        self.fire("on_checkpoint_end", str(path))
