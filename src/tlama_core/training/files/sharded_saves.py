"""Sharded checkpoints, staged and written in the background: each process writes its own shards (no gather), into
`NAME.tmp/`, renamed to `NAME/` once every process's shards and the metadata are durable.

Lightning's ModelParallelStrategy writes its distributed checkpoint synchronously, straight into the final
directory (a kill half-way leaves a directory that looks like a checkpoint). Here the checkpoint dict comes from
Lightning (every hook runs as for its own save) and is written in its layout (`meta.pt` beside the shards of
`state_dict` and `optimizer_0`), so Lightning resumes from it; torch.distributed.checkpoint's `async_save` copies
the shards to host memory in the caller and writes them on a thread, on a process group of its own (its
collectives must not interleave with training's).
"""

from __future__ import annotations

import os
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tlama_core.atomic import TMP_SUFFIX, disk_full_error, fsync_dir, fsync_file
from tlama_core.checkpoints import META_FILE
from tlama_core.training import lightning_internals
from tlama_core.training.files.checkpoint_io import resume_hint, tensor_bytes


class ShardedSaves:
    """Writes sharded checkpoints in the background, one at a time, and renames each into place once complete.

    `save` is called by every process at the same point; `committed(path)` is called on global rank 0 (on the
    caller's thread, from `poll` or `wait`) once `path` is complete and durable."""

    def __init__(self, committed: Callable[[Path], None]) -> None:
        self.committed = committed
        self._group: Any = None
        self._pending: deque[tuple[Future, Path, Path, int]] = deque()

    def save(self, trainer: Any, path: Path) -> None:
        self.wait()  # one save at a time: a second would interleave its collectives with the first's
        import torch.distributed.checkpoint as dcp

        if self._group is None:  # every process reaches the first save together
            self._group = dist.new_group(backend="gloo")
        tmp = path.with_name(path.name + TMP_SUFFIX)
        checkpoint = lightning_internals.dump_checkpoint(trainer)
        shards = {"state_dict": checkpoint.pop("state_dict")}
        shards.update({f"optimizer_{i}": state for i, state in enumerate(checkpoint.pop("optimizer_states", []))})
        size = tensor_bytes(shards)
        future = dcp.async_save(shards, storage_writer=dcp.FileSystemWriter(tmp, sync_files=True),
                                process_group=self._group)
        if trainer.is_global_zero:
            tmp.mkdir(parents=True, exist_ok=True)
            try:
                torch.save(checkpoint, tmp / META_FILE)
            except (OSError, RuntimeError) as err:
                self._pending.append((future, tmp, path, size))
                self.wait(raise_first=err)
        self._pending.append((future, tmp, path, size))

    def poll(self) -> None:
        """Rename every save whose writing has finished; raise a save's error."""
        while self._pending and self._pending[0][0].done():
            self._finish(*self._pending.popleft())

    def wait(self, raise_first: BaseException | None = None) -> None:
        """Block until every save is written and in place (or, with `raise_first`, a failure of this process's own
        while a save was under way: the others are joined, then it is raised as a save's failure is)."""
        while self._pending:
            self._finish(*self._pending.popleft(), failed=raise_first)

    def _finish(self, future: Future, tmp: Path, path: Path, size: int, failed: BaseException | None = None) -> None:
        try:
            future.result()
            if failed is not None:
                raise failed
        except BaseException as err:  # torch.distributed.checkpoint's CheckpointException is a BaseException
            shutil.rmtree(tmp, ignore_errors=True)  # every process's part of the staged save: its space back
            cause = next((e for e, _ in getattr(err, "failures", {}).values()), err)
            full = disk_full_error(cause if isinstance(cause, Exception) else err, path, size, resume_hint(path))
            if full is None:
                raise
            raise full from None
        # The coordinating process writes the metadata once every process has reported its shards written, so on
        # global rank 0 a finished save is complete: make it durable and move it into place.
        if dist.get_rank() != 0:
            return
        for file in tmp.iterdir():
            fsync_file(file)
        fsync_dir(tmp)
        old = path.with_name(path.name + ".old")
        if path.exists():  # the same step saved again: the new checkpoint replaces it
            os.rename(path, old)
        os.rename(tmp, path)
        fsync_dir(path.parent)
        if old.exists():
            shutil.rmtree(old) if old.is_dir() else old.unlink()
        self.committed(path)


def writes_shards(strategy: Any) -> bool:
    """Whether the strategy saves sharded checkpoints: ModelParallelStrategy, unless told to gather them."""
    from lightning.pytorch.strategies import ModelParallelStrategy

    return isinstance(strategy, ModelParallelStrategy) and lightning_internals.saves_distributed(strategy)
