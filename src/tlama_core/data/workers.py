"""Loader workers that leave stopping to the training process.

SLURM's `scancel`, a preemption, `systemctl stop` and Ctrl-C signal every process of the job, loader workers
included. A worker killed by SIGTERM makes the training process fail (`DataLoader worker ... is killed by
signal`) before it can finish its step and save; so workers ignore SIGINT and SIGTERM, and the training
process, which handles them, shuts them down as it exits.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from torch.utils.data import DataLoader


class IgnoreStopSignals:
    """A DataLoader `worker_init_fn`: ignore SIGINT and SIGTERM, then run `inner` (the loader's own init), or
    Lightning's worker seeding when `seed_everything(workers=True)` asked for it (Lightning adds that only to
    loaders without a worker_init_fn). A class, not a closure, so spawned workers can unpickle it."""

    def __init__(self, inner: Callable[[int], Any] | None = None) -> None:
        self.inner = inner

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if self.inner is not None:
            self.inner(worker_id)
        elif int(os.environ.get("PL_SEED_WORKERS", 0)):
            from lightning.fabric.utilities.seed import pl_worker_init_function

            pl_worker_init_function(worker_id)


def shield_workers(*loaders: Any) -> None:
    """Make the workers of these torch DataLoaders ignore stop signals (wrapping their own worker_init_fn); other
    loaders and loaders without workers are left as they are. Call before a loader starts its workers."""
    for loader in loaders:
        if (isinstance(loader, DataLoader) and loader.num_workers > 0
                and not isinstance(loader.worker_init_fn, IgnoreStopSignals)):
            loader.worker_init_fn = IgnoreStopSignals(loader.worker_init_fn)
