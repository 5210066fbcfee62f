"""SIGINT/SIGTERM/SIGUSR1 during `train()`: finish the current optimizer step, checkpoint it, stop, return normally;
after SIGUSR1 under SLURM (its warning before a preemption or the time limit), requeue the job.

Lightning has its own SIGTERM handler, but it broadcasts from inside the signal handler: a collective on the
signalled process alone, which misaligns every later collective when processes are signalled a step apart (srun
signals each task). Under SLURM its SIGUSR1 handler saves `hpc_ckpt_N.ckpt` from inside the handler, mid-step
(a resume from it is not exact), then requeues. The facade's handler only asks the step cadence to stop; the
cadence agrees on the stop step across processes and writes that step's checkpoint; the job is requeued after.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback

from tlama_core.training import lightning_internals

Handler = Callable[[int, Any], None]
PREEMPTION = signal.SIGUSR1  # `#SBATCH --signal=USR1@120`: SLURM's warning, 120 s before it stops the job
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, PREEMPTION)


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
    """Route SIGINT, SIGTERM and SIGUSR1 to `handler` for the block (main thread only: elsewhere signals cannot be
    set). Lightning then leaves SIGUSR1 alone (it sets its own only where none is set)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def take_over_requeue(trainer: Any) -> bool:
    """Turn Lightning's SLURM auto-requeue off (its handler saves mid-step) and return whether the job is to be
    requeued after a preemption signal: SLURMEnvironment's `auto_requeue`, True unless the user set it False."""
    environment = lightning_internals.cluster_environment(trainer)
    if not isinstance(environment, SLURMEnvironment):
        return False
    requeue, environment.auto_requeue = environment.auto_requeue, False
    return requeue


def requeue_slurm_job() -> str | None:
    """`scontrol requeue` this SLURM job (an array task by its own id), as Lightning's auto-requeue does: the job
    goes back to the queue and its script runs again. Returns the job id, or None (with a warning) if it failed."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array else os.environ.get("SLURM_JOB_ID", "")
    try:
        subprocess.run(["scontrol", "requeue", job], check=True, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", None) or err
        warnings.warn(f"could not requeue SLURM job {job!r} ({detail}); its checkpoint is saved: requeue or resubmit "
                      "it yourself, with --ckpt_path last.", stacklevel=2)
        return None
    return job


class PeerLostError(RuntimeError):
    """Another process of a multi-process run died (killed, crashed, its node lost): this one cannot go on."""


# What gloo and NCCL say, in a collective, when a peer process is gone.
_PEER_GONE = re.compile(r"Connection (reset|closed) by peer|Broken pipe|remote process exited|NCCL communicator was "
                        r"aborted|Connection refused|Socket Timeout", re.IGNORECASE)


def peer_lost(err: BaseException, world_size: int, log: Path, last_checkpoint: Path | None) -> PeerLostError | None:
    """A one-line PeerLostError for a collective that failed because a peer died (None for any other error),
    naming the peer where the backend says it and the checkpoint to resume from; the backend's traceback is
    written to `log` instead of the screen."""
    if world_size < 2 or not isinstance(err, RuntimeError) or not _PEER_GONE.search(str(err)):
        return None
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("".join(traceback.format_exception(err)))
    peer = re.search(r"\[([0-9a-fA-F.:]+)\]:(\d+)", str(err))
    who = f"the process at {peer.group(1)}:{peer.group(2)}" if peer else "another process"
    resume = (f"resume from {last_checkpoint} with ckpt_path='last' once every process can run" if last_checkpoint
              else "no checkpoint was written yet")
    return PeerLostError(f"{who} of this {world_size}-process run died (killed, crashed or its machine lost), so this "
                         f"process stopped too; {resume}. The backend's traceback: {log}")
