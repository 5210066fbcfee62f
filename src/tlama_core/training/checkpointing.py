"""Checkpoint files: written atomically and durably, found by step, loaded safely with errors that name the file.

Lightning's TorchCheckpointIO stages its temp file in the system temp directory (not atomic across
filesystems), never fsyncs and leaves temp files after a crash; `AtomicCheckpointIO` replaces only that part.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from tlama_core.atomic import atomic_path
from tlama_core.models.weights import CheckpointError, read_checkpoint
from tlama_core.models.weights import read_checkpoint as load_checkpoint_file

__all__ = ["AtomicCheckpointIO", "CheckpointError", "find_last_checkpoint", "load_checkpoint_file"]

STEP_FILE = re.compile(r"^step=(\d+)\.ckpt$")
BEST_NAME = "best.ckpt"


def step_checkpoint_name(step: int) -> str:
    return f"step={step:08d}.ckpt"


def find_last_checkpoint(directory: str | Path) -> Path | None:
    """The step checkpoint with the highest step in `directory` (all are complete: writes are atomic)."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = [(int(m.group(1)), p) for p in directory.iterdir() if (m := STEP_FILE.match(p.name))]
    return max(steps)[1] if steps else None


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
        checkpoint = read_checkpoint(path, map_location or "cpu")
        if self.expected_config is not None:
            diff = config_mismatch(checkpoint["model_config"], self.expected_config)
            if diff:
                raise CheckpointError(f"checkpoint {path} was made for another model shape: {'; '.join(diff)}.")
        return checkpoint
