"""Checkpoint files: written atomically and durably (committed in the background), found by step, loaded safely
with errors that name the file.

Lightning's TorchCheckpointIO stages its temp file in the system temp directory (not atomic across
filesystems), never fsyncs and leaves temp files after a crash; `AtomicCheckpointIO` replaces only that part.
"""

from __future__ import annotations

import os
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

from tlama_core.atomic import commit, disk_full_error, fsync_dir, temporary_path
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
    the model, its config and the optimizer; no loop state, so it cannot resume a run. A sharded model's full
    weights and optimizer state are gathered onto global rank 0 (a collective: every process calls this)."""
    import lightning as L
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for p in module.parameters()):
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
            get_optimizer_state_dict,
        )

        full = StateDictOptions(full_state_dict=True, cpu_offload=True)
        state = get_model_state_dict(module, options=full)
        optimizers = [get_optimizer_state_dict(module, optimizer, options=full)] if optimizer else []
    else:
        state, optimizers = module.state_dict(), [optimizer.state_dict()] if optimizer else []
    return {"state_dict": state, "model_config": module.config.to_dict(), "optimizer_states": optimizers,
            "epoch": epoch, "global_step": step, "step": step, "val_loss": val_loss,
            "pytorch-lightning_version": L.__version__}


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


BEST_ONLY = re.compile(r"^step=(\d{8})\.best\.ckpt$")


def best_only_name(step: int) -> str:
    """A step's checkpoint saved for the best alone (best.ckpt points at it)."""
    return f"step={step:08d}.best.ckpt"


def set_aside_later_checkpoints(directory: str | Path, resume_step: int | None) -> Path | None:
    """Move the checkpoints of steps past `resume_step` (all of them, with best.ckpt, for a fresh start) into a new
    `directory/superseded-<unix time>-<random>/`; return that folder, or None when nothing had to move.

    They belong to a run this one does not continue (started over, or resumed from an earlier step): left in
    place, "last" would later resume the abandoned run instead of this one. best.ckpt moves with the checkpoint it
    points at (a link). Moved, not deleted: nothing is lost.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return None
    later = [p for p in directory.iterdir()
             if (step := step_of(p) or best_only_step(p)) is not None and (resume_step is None or step > resume_step)]
    best = directory / BEST_NAME
    if best.is_symlink() or best.exists():
        target = directory / os.readlink(best) if best.is_symlink() else None
        if resume_step is None or (target is not None and target in later):
            later.append(best)
    if not later:
        return None
    aside = Path(tempfile.mkdtemp(prefix=f"superseded-{int(time.time())}-", dir=directory))  # a new folder
    for path in later:
        path.rename(aside / path.name)
    fsync_dir(directory)
    return aside


def set_aside_hpc_checkpoints(directory: str | Path) -> Path | None:
    """Move Lightning's SLURM checkpoints (`hpc_ckpt_N.ckpt`, saved mid-step by its own preemption handler) into a
    new `superseded-*/` folder, with a warning: a run started without ckpt_path would otherwise resume from them
    unasked (Lightning does under SLURM). Resume with ckpt_path="last", or name such a file to use it."""
    directory = Path(directory)
    stale = sorted(directory.glob("hpc_ckpt_*.ckpt")) if directory.is_dir() else []
    if not stale:
        return None
    aside = Path(tempfile.mkdtemp(prefix=f"superseded-{int(time.time())}-", dir=directory))
    for path in stale:
        path.rename(aside / path.name)
    fsync_dir(directory)
    warnings.warn(f"{', '.join(p.name for p in stale)} (Lightning's SLURM checkpoints) moved to {aside}/: a run "
                  "started without ckpt_path starts fresh; resume with ckpt_path='last' (or name a file).",
                  stacklevel=3)
    return aside


def best_only_step(path: Path) -> int | None:
    """The step of a `step=NNNNNNNN.best.ckpt` checkpoint (None for other files; a name Lightning's ModelCheckpoint
    does not make)."""
    m = BEST_ONLY.match(path.name)
    return int(m.group(1)) if m else None


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in a checkpoint dict: about the size of its file."""
    if isinstance(obj, torch.Tensor):  # a DTensor: this process's shard
        local = obj.to_local() if hasattr(obj, "to_local") else obj
        return local.numel() * local.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def resume_hint(path: Path) -> str:
    last = find_last_checkpoint(path.parent)
    return (f"free space there and resume with ckpt_path='last' ({last.name}, complete)" if last is not None
            else "free space there (or choose another checkpoints_dir) and run again")


def config_mismatch(saved: TlamaConfig, expected: dict[str, Any]) -> list[str]:
    """Shape fields whose values differ between a checkpoint's config and a TlamaConfig dict, as 'field:
    checkpoint X, model Y'. `name` is a label, not a shape, and is not compared."""
    expected = TlamaConfig.from_dict(expected).shape_dict()
    return [f"{k}: checkpoint {v!r}, model {expected[k]!r}" for k, v in saved.shape_dict().items() if v != expected[k]]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves a checkpoint file in the background: the caller copies its tensors to host memory (training goes on
    changing the originals), a thread writes `NAME.tmp` beside the target, fsyncs it and renames it; loads safely
    and checks the model's weights.

    Until the rename, "last" is the previous complete file, so a kill at any instant still leaves only complete
    checkpoints. Writes run in order on one thread; `wait()` (also Lightning's `teardown`) joins them. The copy
    holds the checkpoint's tensors until it is written: host memory for one more checkpoint while a save runs.

    `listener` (and any added to `listeners`) is called with the final path once a file is complete and durable,
    always on the caller's thread: from `poll()` (non-blocking, at step ends) or `wait()`. `writes` False (a
    process that is not the master) makes saving a no-op. `expected_config` (a TlamaConfig dict): loading another
    model shape is an error.
    """

    def __init__(self, expected_config: dict[str, Any] | None = None, *, writes: bool = True,
                 listener: Callable[[Path], None] | None = None) -> None:
        self.writes = writes
        self.listeners: list[Callable[[Path], None]] = [listener] if listener is not None else []
        self.expected_config = expected_config
        self._committer: ThreadPoolExecutor | None = None  # created at the first save: the IO stays picklable
        self._pending: deque[tuple[Path, int, Future]] = deque()

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        if not self.writes:
            return
        path = Path(path)
        if any(pending == path for pending, _, _ in self._pending):
            self.wait()  # the same file is still being written: its temporary is about to be rewritten
        snapshot = host_copy(checkpoint)
        if self._committer is None:
            self._committer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tlama-checkpoint-writer")
        tmp = temporary_path(path)
        self._pending.append((path, tensor_bytes(snapshot), self._committer.submit(_write, snapshot, tmp, path)))

    def poll(self) -> None:
        """Tell the listeners about every checkpoint written since the last call, without blocking."""
        while self._pending and self._pending[0][2].done():
            self._finish(*self._pending.popleft())

    def wait(self) -> None:
        """Block until every saved checkpoint is durable and in place; tell the listeners; raise a write's error."""
        while self._pending:
            self._finish(*self._pending.popleft())

    def _finish(self, path: Path, size: int, written: Future) -> None:
        try:
            written.result()
        except (OSError, RuntimeError) as err:
            full = disk_full_error(err, path, size, resume_hint(path))
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
        check_resumable(checkpoint, path, self.expected_config)
        try:  # here, not in Lightning's load_state_dict, whose error names no file
            check_weights(checkpoint_config(checkpoint, path), model_state(checkpoint, path), str(path),
                          "model_config")
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        return checkpoint


def _write(checkpoint: dict[str, Any], tmp: Path, path: Path) -> None:
    """torch.save to `tmp`, then fsync and rename it onto `path` (removed if anything fails)."""
    try:
        torch.save(checkpoint, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit(tmp, path)


def host_copy(obj: Any, copies: dict[tuple, torch.Tensor] | None = None) -> Any:
    """The checkpoint dict with every tensor copied to host memory, so that it can be written while training
    changes the originals. Tensors that are the same memory (tied embeddings: two state-dict entries) are copied
    once, so that the file still stores them once and they load tied."""
    copies = {} if copies is None else copies
    if isinstance(obj, torch.Tensor):
        key = (obj.device, obj.untyped_storage().data_ptr(), obj.storage_offset(), obj.shape, obj.stride(), obj.dtype)
        if key not in copies:
            copies[key] = obj.detach().to("cpu", copy=True)
        return copies[key]
    if isinstance(obj, dict):
        return {k: host_copy(v, copies) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(host_copy(v, copies) for v in obj)
    return obj


DATA_KEY = "data"  # what a checkpoint records of the run's data: {"train": fingerprint, "val": fingerprint}


def data_record(train_loader: Any, val_loader: Any = None) -> dict[str, Any]:
    """What every checkpoint records of the run's data: each loader's fingerprint (`TokenDataLoader`'s, read from
    its sidecars' content hashes, never by reading the data); nothing for a loader that has none."""
    found = {split: getattr(loader, "data_fingerprint", None) for split, loader in (("train", train_loader),
                                                                                     ("val", val_loader))}
    found = {split: fingerprint for split, fingerprint in found.items() if isinstance(fingerprint, str)}
    return {DATA_KEY: found} if found else {}


def check_same_data(checkpoint: dict[str, Any], path: str | Path, inputs: dict[str, Any], *,
                    allow_data_change: bool = False) -> None:
    """A resumed run reads the training data the checkpoint's run read (else the position it resumes at indexes
    other text) and validates on its validation data (else its val_loss and best.ckpt measure other text), unless
    `allow_data_change`. A split that either side records none of (older checkpoints, runs on a loader without a
    fingerprint, a run without validation) passes. The tokenizer is the run's tokenizer's to check
    (`RunTokenizer.check_resume`)."""
    saved, now = checkpoint.get(DATA_KEY) or {}, inputs.get(DATA_KEY) or {}
    changed = [split for split in ("train", "val") if saved.get(split) and now.get(split)
               and saved[split] != now[split]]
    if not changed or allow_data_change:
        return
    split = changed[0]
    old, new = saved[split][:12], now[split][:12]
    switch = "or pass allow_data_change=True (--trainer.allow_data_change true) to go on with this data"
    if split == "train":
        raise CheckpointError(
            f"checkpoint {path} was trained on other data than this run reads (the training data's fingerprint was "
            f"{old}, it is {new}): its data position would index other text. Resume with the same data, {switch} "
            "from the same position, counted in windows of the new data's order.")
    raise CheckpointError(
        f"checkpoint {path} was validated on other data than this run validates on (the validation data's "
        f"fingerprint was {old}, it is {new}): its val_loss, and the best.ckpt chosen by it, measure other text. "
        f"Resume with the same validation data, {switch} (best.ckpt then compares losses on both).")


def check_resumable(checkpoint: dict[str, Any], path: str | Path, expected_config: dict[str, Any] | None) -> None:
    """A checkpoint a run can resume from: it holds a run's loop state, and a model of `expected_config`'s shape."""
    if "loops" not in checkpoint:
        raise CheckpointError(
            f"checkpoint {path} holds a model but no training state (Trainer._save_checkpoint() outside "
            "training writes such files); it cannot resume a run. Resume from a step=N.ckpt checkpoint, or load "
            "the model with tlama_core.models.load_model, or start a run from it with init_from."
        )
    if expected_config is not None:
        diff = config_mismatch(checkpoint_config(checkpoint, path), expected_config)
        if diff:
            raise CheckpointError(f"checkpoint {path} was made for another model shape: {'; '.join(diff)}.")
