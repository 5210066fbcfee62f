"""A running run owns its checkpoints and logs directories: a lock file there holds its pid and host.

Without it a second run started in the same directory moves the first run's checkpoints aside, writes its step
files over the names the first keeps writing and renames the first run's log while it is appended. The lock is
taken before `train()` touches any file and removed when it ends; a lock of a dead run of this host is taken
over with a warning, any other is an error naming its owner (see `tlama_core.locks`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tlama_core.locks import LockError, OwnerLock

LOCK_NAME = "run.lock"


class RunLockError(LockError):
    """Another run is using the directory."""


class RunLock(OwnerLock):
    """The lock files of `directories` (one per distinct directory); `acquire()` all of them or none."""

    def __init__(self, *directories: str | Path) -> None:
        super().__init__(*(Path(d) / LOCK_NAME for d in directories))

    def busy(self, path: Path, holder: dict[str, Any]) -> RunLockError:
        return RunLockError(
            f"{path.parent} is in use by another run (pid {holder.get('pid')} on host {holder.get('host')}, lock "
            f"file {path}). Wait for it to end or give this run other checkpoints_dir/logs_dir; if that run is "
            "gone (its machine was lost), delete the lock file.")

    def taken_over(self, path: Path, holder: str) -> str:
        return (f"{path}: taking over the lock of a run that is no longer running ({holder}); it was killed before "
                "it could remove the lock.")
