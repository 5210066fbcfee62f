"""Checkpoint files: written atomically and durably, found by step, loaded safely with errors that name the file.

Lightning's TorchCheckpointIO stages its temp file in the system temp directory (not atomic across
filesystems), never fsyncs and leaves temp files after a crash; `AtomicCheckpointIO` replaces only that part.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tlama_core.atomic import atomic_path

STEP_FILE = re.compile(r"^step=(\d+)\.ckpt$")
BEST_NAME = "best.ckpt"


class CheckpointError(RuntimeError):
    """A checkpoint file that cannot be used: unreadable, not ours, or made for another model."""


def step_checkpoint_name(step: int) -> str:
    return f"step={step:08d}.ckpt"


def find_last_checkpoint(directory: str | Path) -> Path | None:
    """The step checkpoint with the highest step in `directory` (all are complete: writes are atomic)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_FILE.match(p.name))]
    return max(steps)[1] if steps else None


def load_checkpoint_file(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """torch.load with weights_only=True, turning every failure into a CheckpointError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist.")
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path} cannot be read: the file is truncated, corrupt or not a torch checkpoint "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})."
        ) from err
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint or "model_config" not in checkpoint:
        keys = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointError(
            f"checkpoint {path} is not a tlama-core training checkpoint (expected 'state_dict' and 'model_config', "
            f"found {keys})."
        )
    return checkpoint


def config_mismatch(saved: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """Fields whose values differ between two TlamaConfig dicts, as 'field: saved X, model Y'."""
    return [f"{k}: checkpoint {saved.get(k)!r}, model {expected.get(k)!r}"
            for k in sorted(set(saved) | set(expected)) if saved.get(k) != expected.get(k)]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves to `NAME.tmp` beside the target, fsyncs and renames; loads safely and checks the model config.

    `listeners` are called with the final path once a file is complete (the `on_checkpoint_end` hook).
    `expected_config` (a TlamaConfig dict) makes loading a checkpoint of another model shape an error.
    """

    def __init__(self) -> None:
        self.listeners: list[Callable[[Path], None]] = []
        self.expected_config: dict[str, Any] | None = None

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)
        for listener in self.listeners:
            listener(path)

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        checkpoint = load_checkpoint_file(path, map_location or "cpu")
        if self.expected_config is not None:
            diff = config_mismatch(checkpoint["model_config"], self.expected_config)
            if diff:
                raise CheckpointError(f"checkpoint {path} was made for another model shape: {'; '.join(diff)}.")
        return checkpoint
