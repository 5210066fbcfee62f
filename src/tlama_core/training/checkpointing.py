"""Checkpoint files: written atomically and durably (committed in the background), found by step, loaded safely
with errors that name the file.

Lightning's TorchCheckpointIO stages its temp file in the system temp directory (not atomic across
filesystems), never fsyncs and leaves temp files after a crash; `AtomicCheckpointIO` replaces only that part.
"""

from __future__ import annotations

import dataclasses
import re
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tlama_core.atomic import commit, fsync_dir, staged
from tlama_core.models import TlamaConfig
from tlama_core.models.weights import CheckpointError, read_checkpoint
from tlama_core.models.weights import read_checkpoint as load_checkpoint_file

__all__ = ["AtomicCheckpointIO", "CheckpointError", "find_last_checkpoint", "load_checkpoint_file"]

STEP_FILE = re.compile(r"^step=(\d+)\.ckpt$")
BEST_NAME = "best.ckpt"
MODEL_BEST_NAME = "model-best.ckpt"  # `Trainer._save_checkpoint(is_best=True)` outside training


def step_checkpoint_name(step: int) -> str:
    return f"step={step:08d}.ckpt"


def model_checkpoint_name(step: int) -> str:
    """`Trainer._save_checkpoint()` outside training: a model and its optimizer, no run state to resume."""
    return f"model-step={step:08d}.ckpt"


def model_checkpoint(module: Any, optimizer: Any, epoch: int, step: int, val_loss: float | None) -> dict[str, Any]:
    """The contents SPEC.md documents, for a save outside a fit (Lightning's own saving needs a running fit):
    the model, its config and the optimizer; no loop state, so it cannot resume a run."""
    import lightning as L

    return {"state_dict": module.state_dict(), "model_config": module.config.to_dict(),
            "optimizer_states": [optimizer.state_dict()] if optimizer else [], "epoch": epoch,
            "global_step": step, "step": step, "val_loss": val_loss, "pytorch-lightning_version": L.__version__}


def step_of(path: Path) -> int | None:
    """The step in a step checkpoint's name (None for other files)."""
    m = STEP_FILE.match(path.name)
    return int(m.group(1)) if m else None


def find_last_checkpoint(directory: str | Path) -> Path | None:
    """The step checkpoint with the highest step in `directory` (all are complete: writes are atomic)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [(step, p) for p in directory.iterdir() if (step := step_of(p)) is not None]
    return max(steps)[1] if steps else None


def resolve_ckpt_path(ckpt_path: str | None, directory: str | Path) -> str | None:
    """`ckpt_path` as given, or for "last" the newest step checkpoint in `directory` (None, with a warning, when
    there is none yet: the run starts fresh)."""
    if ckpt_path != "last":
        return ckpt_path
    last = find_last_checkpoint(directory)
    if last is None:
        warnings.warn(f"ckpt_path='last': no checkpoint in {directory} yet; starting fresh.", stacklevel=3)
        return None
    return str(last)


def set_aside_later_checkpoints(directory: str | Path, resume_step: int | None) -> Path | None:
    """Move the step checkpoints past `resume_step` (all of them, and best.ckpt, for a fresh start) into
    a new `directory/superseded-<unix time>-<random>/`; return that folder, or None when nothing had to move.

    They belong to a run this one does not continue (started over, or resumed from an earlier step): left in
    place, "last" would later resume the abandoned run instead of this one. Moved, not deleted: nothing is lost.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    later = [p for p in directory.iterdir()
             if (step := step_of(p)) is not None and (resume_step is None or step > resume_step)]
    if resume_step is None and (directory / BEST_NAME).exists():
        later.append(directory / BEST_NAME)
    if not later:
        return None
    aside = Path(tempfile.mkdtemp(prefix=f"superseded-{int(time.time())}-", dir=directory))  # a new folder
    for path in later:
        path.rename(aside / path.name)
    fsync_dir(directory)
    return aside


def config_mismatch(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Fields whose values differ between two TlamaConfig dicts, as 'field: saved X, model Y'.

    A field the checkpoint lacks (saved before the field existed) counts as its default.
    """
    saved = {**{f.name: f.default for f in dataclasses.fields(TlamaConfig)}, **saved}
    return [f"{k}: checkpoint {saved.get(k)!r}, model {expected.get(k)!r}"
            for k in sorted(set(saved) | set(expected)) if saved.get(k) != expected.get(k)]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to `NAME.tmp` beside the target, then fsyncs and renames it in a background thread; loads safely and
    checks the model config.

    Serialising must happen before training changes the weights, so `torch.save` runs in the caller; only the
    fsync (most of an atomic save's extra cost over a plain `torch.save`) and the rename overlap the following
    steps. Until the rename, "last" is the previous complete file, so a kill at any instant still leaves only
    complete checkpoints. Commits run in order on one thread; `wait()` (also Lightning's `teardown`) joins them.

    `listeners` are called with the final path once a file is complete and durable (the `on_checkpoint_end`
    hook), always on the caller's thread: from `poll()` (non-blocking, at step ends) or `wait()`.
    `expected_config` (a TlamaConfig dict) makes loading a checkpoint of another model shape an error.
    `writes` False (a process that is not the master) makes saving a no-op.
    """

    def __init__(self) -> None:
        self.writes = True
        self.listeners: list[Callable[[Path], None]] = []
        self.expected_config: dict[str, Any] | None = None
        self._committer: ThreadPoolExecutor | None = None  # created at the first save: the IO stays picklable
        self._pending: deque[tuple[Path, Future]] = deque()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if not self.writes:
            return
        path = Path(path)
        if any(pending == path for pending, _ in self._pending):
            self.wait()  # the same file is still being committed: its temporary is about to be rewritten
        with staged(path) as tmp:
            torch.save(checkpoint, tmp)
        if self._committer is None:
            self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlama-checkpoint-commit")
        self._pending.append((path, self._committer.submit(commit, tmp, path)))

    def poll(self) -> None:
        """Tell the listeners about every checkpoint committed since the last call, without blocking."""
        while self._pending and self._pending[0][1].done():
            self._finish(*self._pending.popleft())

    def wait(self) -> None:
        """Block until every saved checkpoint is durable and in place; tell the listeners; raise a commit's error."""
        while self._pending:
            self._finish(*self._pending.popleft())

    def _finish(self, path: Path, commit_done: Future) -> None:
        commit_done.result()
        for listener in self.listeners:
            listener(path)

    def teardown(self) -> None:
        """End of a fit: join the commits and let the idle thread go (the next save starts another)."""
        self.wait()
        if self._committer is not None:
            self._committer.shutdown()
            self._committer = None

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        checkpoint = read_checkpoint(path, map_location or "cpu")
        if "loops" not in checkpoint:
            raise CheckpointError(
                f"checkpoint {path} holds a model but no training state (Trainer._save_checkpoint() outside "
                "training writes such files); it cannot resume a run. Resume from a step=N.ckpt file, or load the "
                "model with Transformer.from_checkpoint and start a new run."
            )
        if self.expected_config is not None:
            diff = config_mismatch(checkpoint["model_config"], self.expected_config)
            if diff:
                raise CheckpointError(f"checkpoint {path} was made for another model shape: {'; '.join(diff)}.")
        return checkpoint
