"""Checkpoint files: written atomically and durably (committed in the background), found by step, loaded safely
with errors that name the file.

Lightning's TorchCheckpointIO stages its temp file in the system temp directory (not atomic across
filesystems), never fsyncs and leaves temp files after a crash; `AtomicCheckpointIO` replaces only that part.
"""

from __future__ import annotations

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

from tlama_core.atomic import commit, disk_full_error, fsync_dir, staged
from tlama_core.checkpoints import (
    CheckpointError,
    find_last_checkpoint,
    model_state,
    read_checkpoint,
    step_checkpoint_name,
    step_of,
)
from tlama_core.models import TlamaConfig, check_weights
from tlama_core.models.loading import checkpoint_config

__all__ = ["AtomicCheckpointIO", "CheckpointError", "find_last_checkpoint", "step_checkpoint_name"]

BEST_NAME = "best.ckpt"
MODEL_BEST_NAME = "model-best.ckpt"  # `Trainer._save_checkpoint(is_best=True)` outside training


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


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a checkpoint dict: about the size of its file."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _resume_hint(path: Path) -> str:
    last = find_last_checkpoint(path.parent)
    return (f"free space there and resume with ckpt_path='last' ({last.name}, complete)" if last is not None
            else "free space there (or choose another checkpoints_dir) and run again")


def config_mismatch(saved: TlamaConfig, expected: dict[str, Any]) -> list[str]:
    """Shape fields whose values differ between a checkpoint's config and a TlamaConfig dict, as 'field:
    checkpoint X, model Y'. `name` is a label, not a shape, and is not compared."""
    expected = TlamaConfig.from_dict(expected).shape_dict()
    return [f"{k}: checkpoint {v!r}, model {expected[k]!r}" for k, v in saved.shape_dict().items() if v != expected[k]]


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
    `writes` False (a process that is not the master) makes saving a no-op. `annotations` go into every
    checkpoint saved (the run's tokenizer record, see `run_files.py`).
    """

    def __init__(self) -> None:
        self.writes = True
        self.listeners: list[Callable[[Path], None]] = []
        self.expected_config: dict[str, Any] | None = None
        self.annotations: dict[str, Any] = {}
        self._committer: ThreadPoolExecutor | None = None  # created at the first save: the IO stays picklable
        self._pending: deque[tuple[Path, Future]] = deque()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if not self.writes:
            return
        path = Path(path)
        if any(pending == path for pending, _ in self._pending):
            self.wait()  # the same file is still being committed: its temporary is about to be rewritten
        with staged(path) as tmp:
            try:
                torch.save({**checkpoint, **self.annotations}, tmp)
            except (OSError, RuntimeError) as err:
                full = disk_full_error(err, path, tensor_bytes(checkpoint), _resume_hint(path))
                if full is None:
                    raise
                raise full from err
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
        try:
            commit_done.result()
        except OSError as err:  # the fsync of a file system that allocates late (NFS, XFS) can find the disk full
            full = disk_full_error(err, path, then=_resume_hint(path))
            if full is None:
                raise
            raise full from err
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
                "model with tlama_core.models.load_model, or start a run from it with init_from."
            )
        config = checkpoint_config(checkpoint, path)
        if self.expected_config is not None:
            diff = config_mismatch(config, self.expected_config)
            if diff:
                raise CheckpointError(f"checkpoint {path} was made for another model shape: {'; '.join(diff)}.")
        try:  # here, not in Lightning's load_state_dict, whose error names no file
            check_weights(config, model_state(checkpoint, path), str(path), "model_config")
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        return checkpoint
