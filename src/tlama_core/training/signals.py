"""SIGINT/SIGTERM during `train()`: finish the current optimizer step, checkpoint it, stop, return normally.

Lightning has its own SIGTERM handler, but it broadcasts from inside the signal handler: a collective on the
signalled process alone, which misaligns every later collective when processes are signalled a step apart (srun
signals each task). The facade's handler only asks the step cadence to stop; the cadence agrees on the stop step
across processes.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from lightning.pytorch.callbacks import Callback

Handler = Callable[[int, Any], None]


class TakeBackSigterm(Callback):
    """Gives SIGTERM back to `handler` once training starts (Lightning registers its own inside fit; its teardown
    restores what preceded fit)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.handler)


@contextmanager
def stop_on_signals(handler: Handler) -> Iterator[None]:
    """Route SIGINT and SIGTERM to `handler` for the block (main thread only: elsewhere signals cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
