"""The run's own checkpoints: one save per step, `best.ckpt` a link to the best step's checkpoint, the newest kept.

A step's checkpoint is a file (written in the background by the checkpoint IO) or, for a sharded run, a
directory (`sharded_saves.py`). `best.ckpt` is a symbolic link, replaced atomically, to the checkpoint of the step
with the lowest val_loss: `step=N.ckpt` when that step is saved anyway, else `step=N.best.ckpt`, saved for the
best alone and removed once another step is best. So "best" never costs a second save of a step, and a kill at
any instant leaves the previous best or the new one. With `keep`, only the newest `keep` step checkpoints stay
(besides best's), older ones removed once a newer one is complete.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tlama_core.atomic import fsync_dir
from tlama_core.checkpoints import step_checkpoint_name, step_of
from tlama_core.training.files.checkpoint_io import (
    BEST_NAME,
    MODEL_BEST_NAME,
    AtomicCheckpointIO,
    best_only_name,
    best_only_step,
    model_checkpoint_name,
)
from tlama_core.training.files.finite import check_model_finite
from tlama_core.training.files.sharded_saves import ShardedSaves, writes_shards


class RunCheckpoints:
    """Saves the run's checkpoints into `directory` and tells `listener` (on global rank 0) of each complete one,
    and of `best.ckpt` once it points at a new checkpoint. It owns the run's checkpoint IO (`io`, Lightning's
    plugin): `expected_config` and `writes` are the IO's (see AtomicCheckpointIO)."""

    def __init__(self, directory: str | Path, listener: Callable[[Path], None], *, keep: int | None = None,
                 expected_config: dict[str, Any] | None = None, writes: bool = True) -> None:
        self.directory, self.keep, self.listener = Path(directory), keep, listener
        self.io = AtomicCheckpointIO(expected_config, writes=writes, listener=self._committed)
        self.sharded = ShardedSaves(self._committed)
        self._best_target: Path | None = None  # the checkpoint best.ckpt points at once it is complete

    def save(self, trainer: Any, step: int, *, kept: bool, best: bool) -> None:
        """Every process, at the same step end: save this step's checkpoint, as `step=N.ckpt` when `kept` (periodic,
        final or asked for), else for the best alone; point best.ckpt at it when `best`."""
        path = self.directory / (step_checkpoint_name(step) if kept else best_only_name(step))
        if best:
            self._best_target = path
        if writes_shards(trainer.strategy):
            self.sharded.save(trainer, path)
        else:
            trainer.save_checkpoint(path, weights_only=False)

    def save_model(self, checkpoint: dict[str, Any], step: int, *, best: bool) -> Path:
        """`Trainer._save_checkpoint()` outside training (master process): `model-step=N.ckpt` (and `model-best.ckpt`
        when `best`), refused for non-finite weights; returns once its files are in place (and announced)."""
        path = self.directory / model_checkpoint_name(step)
        check_model_finite(checkpoint["state_dict"].values(), path)
        self.io.save_checkpoint(checkpoint, path)
        if best:
            self.io.save_checkpoint(checkpoint, self.directory / MODEL_BEST_NAME)
        self.io.wait()
        return path

    def poll(self) -> None:
        """Tell the listeners of every checkpoint completed since the last call, without blocking."""
        self.io.poll()
        self.sharded.poll()

    def wait(self) -> None:
        """Block until every checkpoint is complete and in place (every process calls it: sharded saves)."""
        self.io.wait()
        self.sharded.wait()

    def announce_to(self, listener: Callable[[Path], None]) -> None:
        """From now on tell `listener` of each complete checkpoint: `Trainer.train_step()`'s quiet hook bridge
        takes over from the run's, whose hooks it keeps."""
        self.listener = listener

    def _committed(self, path: Path) -> None:
        self.listener(path)
        if path == self._best_target:
            self._best_target = None
            link_best(path)
            self.listener(path.parent / BEST_NAME)
        if self.keep is not None and step_of(path) is not None:
            prune(path.parent, self.keep)


def link_best(target: Path) -> None:
    """Point `best.ckpt` beside `target` at it (a relative symbolic link, replaced atomically); remove the
    checkpoints saved for an earlier best alone."""
    directory = target.parent
    link = directory / f".{BEST_NAME}.link"
    link.unlink(missing_ok=True)
    os.symlink(target.name, link)
    os.replace(link, directory / BEST_NAME)
    fsync_dir(directory)
    for old in directory.iterdir():
        if best_only_step(old) is not None and old != target:
            remove(old)


def best_target(directory: Path) -> Path | None:
    """The checkpoint `best.ckpt` points at (None when it is no link)."""
    best = directory / BEST_NAME
    return directory / os.readlink(best) if best.is_symlink() else None


def prune(directory: Path, keep: int) -> list[Path]:
    """Remove all but the newest `keep` step checkpoints (never the one best.ckpt points at); return them."""
    steps = sorted((step, p) for p in directory.iterdir() if (step := step_of(p)) is not None)
    best = best_target(directory)
    old = [p for _, p in steps[:-keep] if p != best] if keep > 0 else []
    for path in old:
        remove(path)
    return old


def remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
