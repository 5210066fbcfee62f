"""Atomic, durable file writes: a run killed at any instant never leaves a half-written file behind.

Written by hand because neither torch nor Lightning does all of it: Lightning's `_atomic_save` stages its temp
file in the system temp directory (not atomic across filesystems), never fsyncs and leaves temp files behind.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

TMP_SUFFIX = ".tmp"


def fsync_file(path: str | os.PathLike) -> None:
    """Make a file's contents durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename inside `directory` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fsync_file(directory)
    except OSError:
        return


@contextmanager
def atomic_path(path: str | os.PathLike, unique: bool = False) -> Iterator[Path]:
    """Yield `PATH.tmp` in the same directory for a writer that wants a path (torch.save's own writer is faster
    than a file object); once it is written, fsync it and rename it onto `path`. `unique`: a temporary of this
    writer's own (see `temporary_path`).

    On any exception the temporary file is removed and `path` keeps its previous contents.
    """
    with staged(path, unique) as tmp:
        yield tmp
    commit(tmp, path)


@contextmanager
def staged(path: str | os.PathLike, unique: bool = False) -> Iterator[Path]:
    """Yield `PATH.tmp` to write `path`'s new contents into, removed if the writing fails; the caller commits it
    (`commit`), now or later (a checkpoint's commit runs in the background)."""
    tmp = temporary_path(path, unique)
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temporary_path(path: str | os.PathLike, unique: bool = False) -> Path:
    """Where a writer of `path` writes first: `PATH.tmp` in the same directory (created if missing), a name no
    reader takes for a finished file and that `remove_stale_temporaries` cleans up. `unique`: `PATH.PID-RANDOM.tmp`,
    which no other writer of `path` uses (found by `remove_stale_temporaries(dir, "PATH*")`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    own = f".{os.getpid()}-{secrets.token_hex(4)}" if unique else ""
    return path.with_name(path.name + own + TMP_SUFFIX)


def commit(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Make the fully written `tmp` durable and rename it onto `path` (then durable too); on failure remove it."""
    try:
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(Path(path).parent)


@contextmanager
def atomic_open(path: str | os.PathLike, unique: bool = False) -> Iterator[BinaryIO]:
    """`atomic_path` for a writer that wants an open binary file."""
    with atomic_path(path, unique) as tmp, open(tmp, "wb") as f:
        yield f


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], object], unique: bool = False) -> None:
    """Call `write(f)` on a temporary file and move it onto `path` atomically."""
    with atomic_open(path, unique) as f:
        write(f)


def remove_stale_temporaries(directory: str | os.PathLike, pattern: str) -> list[Path]:
    """Delete the temporaries `pattern + .tmp` (e.g. "*.ckpt": files, or a sharded checkpoint's directories) that
    an interrupted writer left in `directory`; return what was removed. Other `.tmp` files there are the user's."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted(directory.glob(pattern + TMP_SUFFIX))
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


class DiskFullError(OSError):
    """The disk (or quota) filled up while writing a file; the message names it, the space left and the fix."""


def disk_full_error(err: BaseException, path: str | os.PathLike, needed: int | None = None,
                    then: str = "free space there (or choose another directory) and run again") -> DiskFullError | None:
    """A DiskFullError saying the disk is full, naming the file and its directory, when `err` (raised writing
    `path`, with `PATH.tmp` not yet removed) came of a full disk or quota; else None.

    Python's writes raise ENOSPC/EDQUOT; torch.save's C++ writer raises a bare RuntimeError ('basic_ios::clear:
    iostream error', 'unexpected pos'), judged here by the space left: less than the `needed` bytes still to go.
    """
    path = Path(path)
    if isinstance(err, OSError):
        full = err.errno in (errno.ENOSPC, errno.EDQUOT)
    elif isinstance(err, RuntimeError):
        tmp = path.with_name(path.name + TMP_SUFFIX)
        written = tmp.stat().st_size if tmp.exists() else 0
        full = needed is not None and _free_bytes(path.parent) + written < needed
    else:
        full = False
    if not full:
        return None
    size = f"{needed / 2**20:.1f} MiB needed, " if needed else ""
    free = _free_bytes(path.parent) / 2**20
    return DiskFullError(errno.ENOSPC, f"disk full (No space left on device) writing {path.name} in {path.parent}/ "
                                        f"({size}{free:.1f} MiB free); nothing was replaced: {then}", str(path))


def _free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0
