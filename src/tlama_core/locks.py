"""Lock files that say who holds them: a writer that owns some files (a run's directories, a shard `tlama prepare`
writes) holds a lock file naming its pid, host and the process's start time for as long as it writes.

A lock is created with O_EXCL (atomic on local filesystems and NFSv3+) and removed when its holder is done. A
lock left by a holder that died (SIGKILL, a lost node) cannot be told from a live one on another host, so only a
lock of this host whose process is gone (or whose pid now belongs to a younger process) is taken over, with a
warning; any other is an error naming its holder. Subclasses word the error and the warning for what they guard:
`RunLock`, a run's checkpoints and logs directories.
"""

from __future__ import annotations

import json
import os
import socket
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from tlama_core.atomic import disk_full_error, fsync_dir

Lock = TypeVar("Lock", bound="OwnerLock")
_HELD: set[Path] = set()  # lock files this process holds: its own pid in a lock is not always a live holder


class LockError(RuntimeError):
    """Another process holds the lock."""


class OwnerLock:
    """The lock files `paths` (each taken once); `acquire()` all of them or none."""

    def __init__(self, *paths: str | Path) -> None:
        self.paths = list(dict.fromkeys(Path(os.path.abspath(p)) for p in paths))
        self._owner = {"pid": os.getpid(), "host": socket.gethostname(), "start": _start_time(os.getpid())}
        self._taken: list[Path] = []

    def busy(self, path: Path, holder: dict[str, Any]) -> LockError:
        """The error raised when a live holder has `path` (override to say what it guards and what to do)."""
        return LockError(f"{path} is held by another process (pid {holder.get('pid')} on host {holder.get('host')}); "
                         "wait for it to end, or delete the lock file if that process is gone.")

    def taken_over(self, path: Path, holder: str) -> str:
        """The warning given when the lock of a dead holder (`holder` describes it) is taken over."""
        return f"{path}: taking over the lock of a process that is no longer running ({holder})."

    def acquire(self: Lock) -> Lock:
        """Take every lock or raise `busy(...)` naming the holder of one (then none is kept)."""
        try:
            for path in self.paths:
                self._take(path)
                self._taken.append(path)
                _HELD.add(path)
        except BaseException:
            self.release()
            raise
        return self

    def __enter__(self: Lock) -> Lock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def release(self) -> None:
        """Remove the lock files this holder still owns (one that another process took over stays)."""
        for path in self._taken:
            _HELD.discard(path)
            if _read(path) == self._owner:
                path.unlink(missing_ok=True)
        self._taken = []

    def _take(self, path: Path) -> None:
        with _disk_full_named(path):
            path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            try:
                with _disk_full_named(path):
                    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = _read_settled(path)
                if holder is None and not path.exists():  # released meanwhile
                    continue
                if holder is not None and not _is_stale(path, holder):
                    raise self.busy(path, holder) from None
                warnings.warn(self.taken_over(path, _describe(holder)), stacklevel=4)
                path.unlink(missing_ok=True)
                continue
            try:
                with _disk_full_named(path):
                    with os.fdopen(fd, "w") as f:
                        json.dump(self._owner, f)
                        f.flush()
                        os.fsync(f.fileno())
                    fsync_dir(path.parent)
            except OSError:  # an empty lock left here would read as a holder that never wrote its name
                path.unlink(missing_ok=True)
                raise
            return


@contextmanager
def _disk_full_named(path: Path) -> Iterator[None]:
    """A full disk (or quota) while creating the lock file `path` is a DiskFullError naming it."""
    try:
        yield
    except OSError as err:
        full = disk_full_error(err, path)
        if full is None:
            raise
        raise full from None


# A running run owns its checkpoints and logs directories: a lock file there holds its pid and host. Without it a
# second run started in the same directory moves the first run's checkpoints aside, writes its step
# files over the names the first keeps writing and renames the first run's log while it is appended. The lock is
# taken before `train()` touches any file and removed when it ends; a lock of a dead run of this host is taken
# over with a warning, any other is an error naming its owner (see OwnerLock).
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


def _is_stale(path: Path, holder: dict[str, Any]) -> bool:
    """Whether the lock's holder is certainly gone: this host, and its pid is dead or a younger process's."""
    if holder.get("host") != socket.gethostname():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int):
        return True
    if pid == os.getpid():  # this very process: held by one of its lockers, or left by an earlier life of the pid
        return path not in _HELD
    start = _start_time(pid)
    if start is None:  # /proc unavailable (not Linux): ask the kernel whether the pid exists
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    return start == "gone" or (holder.get("start") is not None and start != holder["start"])


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot ('gone' when it is dead or a zombie; None without
    /proc): a pid reused by a later process has another."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return "gone" if Path("/proc/self/stat").exists() else None
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state is field 3, starttime field 22
    return "gone" if fields[0] in ("Z", "X") else fields[19]


def _read(path: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _read_settled(path: Path) -> dict[str, Any] | None:
    """The holder in the lock file; None when it is gone or stays unreadable (a lock written half, long ago).
    A lock just created by another process may be empty for an instant: read again before judging it."""
    for _ in range(20):
        holder = _read(path)
        if holder is not None or not path.exists():
            return holder
        time.sleep(0.05)
    return None


def _describe(holder: dict[str, Any] | None) -> str:
    if holder is None:
        return "an unreadable lock file"
    return f"pid {holder.get('pid')} on host {holder.get('host')}"
