"""Training checkpoint files: their names, the newest one in a directory, and reading one safely.

A checkpoint is Lightning's dict (weights under `model.` in `state_dict`, optimizer and loop state) plus our
`model_config`. This module knows that file and nothing of Lightning or of the model, so that everything that
reads checkpoints (resuming in `training/`, the weights loader in `models/`) shares one reader and one error.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

STEP_FILE = re.compile(r"^step=(\d+)\.ckpt$")
MODEL_PREFIX = "model."  # TlamaLightningModule keeps the Transformer as `self.model`


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, not ours, or made for another model."""


def step_checkpoint_name(step: int) -> str:
    return f"step={step:08d}.ckpt"


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


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", mmap: bool = False) -> dict[str, Any]:
    """A training checkpoint's dict, loaded with weights_only=True (nothing in it is executed); `mmap` maps the
    tensors instead of reading them (for a caller that wants the config alone).

    Every failure is a CheckpointError that names the file and what is wrong, never an unpickling trace.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    # Bytes that are not a checkpoint reach torch's unpickler, which fails with whatever its opcodes trip on
    # (IndexError, KeyError, UnicodeDecodeError, ...): any exception here means the file is unreadable.
    except Exception as e:
        first_line = str(e).splitlines()[0] if str(e) else ""  # weights_only refusals run to a page
        raise CheckpointError(f"{path}: not a readable training checkpoint, the file is truncated, corrupt or of "
                              f"another format ({type(e).__name__}: {first_line}).") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise CheckpointError(f"{path}: not a tlama-core training checkpoint (no 'state_dict' entry).")
    if "model_config" not in ckpt:
        raise CheckpointError(
            f"{path}: the checkpoint has no 'model_config' entry, so the model's shape is unknown.")
    if not isinstance(ckpt["model_config"], dict):
        raise CheckpointError(f"{path}: its 'model_config' is a {type(ckpt['model_config']).__name__}, not the "
                              "dict of TlamaConfig fields a tlama-core checkpoint holds.")
    return ckpt


def model_state(ckpt: dict[str, Any], path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The Transformer's tensors of a checkpoint dict, under the model's own names (a compiled model's
    `_orig_mod.` removed); none is a CheckpointError naming the file."""
    state = {name.removeprefix(MODEL_PREFIX).replace("_orig_mod.", ""): t
             for name, t in ckpt["state_dict"].items() if name.startswith(MODEL_PREFIX)}
    if not state:
        raise CheckpointError(f"{path}: the checkpoint's state_dict has no 'model.' entries.")
    bad = sorted(name for name, t in state.items() if not isinstance(t, torch.Tensor))
    if bad:
        raise CheckpointError(f"{path}: state_dict entries {bad[:5]} are not tensors.")
    return state
