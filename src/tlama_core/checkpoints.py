"""Training checkpoints: their names, the newest one in a directory, and reading one safely.

A checkpoint is Lightning's dict (weights under `model.` in `state_dict`, optimizer and loop state) plus our
`model_config`: one file, or for a sharded run a directory of torch.distributed.checkpoint shards (one `.distcp`
file per process, its `.metadata`) with the rest of the dict in `meta.pt` (Lightning's layout). This module knows
those and nothing of Lightning or of the model, so that everything that reads checkpoints (resuming in
`training/`, the weights loader in `models/`) shares one reader and one error.
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

STEP_FILE = re.compile(r"^step=(\d+)\.ckpt$")
MODEL_PREFIX = "model."  # TlamaLightningModule keeps the Transformer as `self.model`
SHARDS_METADATA = ".metadata"  # torch.distributed.checkpoint writes it last, once every process's shards are in
META_FILE = "meta.pt"  # Lightning's name for the rest of a sharded checkpoint's dict


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, not ours, or made for another model."""


def step_checkpoint_name(step: int) -> str:
    return f"step={step:08d}.ckpt"


def step_of(path: Path) -> int | None:
    """The step in a step checkpoint's name (None for other files)."""
    m = STEP_FILE.match(path.name)
    return int(m.group(1)) if m else None


def is_sharded_checkpoint(path: str | os.PathLike) -> bool:
    """Whether `path` is a complete sharded checkpoint directory (its shards' metadata and `meta.pt` present)."""
    path = Path(path)
    return path.is_dir() and (path / SHARDS_METADATA).is_file() and (path / META_FILE).is_file()


def find_last_checkpoint(directory: str | Path) -> Path | None:
    """The complete step checkpoint with the highest step in `directory`: a file (written atomically), or a sharded
    directory holding its metadata. A directory without it (a save killed half-way by a writer that does not stage
    its files) is skipped, with a warning naming it."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    steps = []
    for p in directory.iterdir():
        if (step := step_of(p)) is None:
            continue
        if p.is_dir() and not is_sharded_checkpoint(p):
            warnings.warn(f"{p} is an incomplete sharded checkpoint (no {SHARDS_METADATA} or {META_FILE}); "
                          "skipped: 'last' is the newest complete one.", stacklevel=2)
            continue
        steps.append((step, p))
    return max(steps)[1] if steps else None


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu", tensors: bool = True) -> dict[str, Any]:
    """A training checkpoint's dict (a file, or a sharded directory gathered into full tensors on this process),
    loaded with weights_only=True (nothing in it is executed). `tensors=False` is for a caller that wants the
    config and the run's records alone: a file's tensors are mapped, not read, and a directory's shards not read.

    Every failure is a CheckpointError that names the checkpoint and what is wrong, never an unpickling trace.
    """
    path = Path(path)
    if path.is_dir():
        ckpt = _read_sharded(path, tensors)
    elif path.is_file():
        ckpt = _load(path, map_location, mmap=not tensors)
    else:
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    if not isinstance(ckpt, dict) or ((tensors or path.is_file()) and not isinstance(ckpt.get("state_dict"), dict)):
        raise CheckpointError(f"{path}: not a tlama-core training checkpoint (no 'state_dict' entry).")
    if "model_config" not in ckpt:
        raise CheckpointError(
            f"{path}: the checkpoint has no 'model_config' entry, so the model's shape is unknown.")
    if not isinstance(ckpt["model_config"], dict):
        raise CheckpointError(f"{path}: its 'model_config' is a {type(ckpt['model_config']).__name__}, not the "
                              "dict of TlamaConfig fields a tlama-core checkpoint holds.")
    return ckpt


def _load(path: Path, map_location: Any, mmap: bool = False) -> Any:
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    # Bytes that are not a checkpoint reach torch's unpickler, which fails with whatever its opcodes trip on
    # (IndexError, KeyError, UnicodeDecodeError, ...): any exception here means the file is unreadable.
    except Exception as e:
        first_line = str(e).splitlines()[0] if str(e) else ""  # weights_only refusals run to a page
        raise CheckpointError(f"{path}: not a readable training checkpoint, the file is truncated, corrupt or of "
                              f"another format ({type(e).__name__}: {first_line}).") from e


def _read_sharded(path: Path, tensors: bool) -> dict[str, Any]:
    """A sharded checkpoint as the dict a file holds: `meta.pt`, then (with `tensors`) the shards of every
    process read whole into `state_dict` and `optimizer_states` (torch's state-dict format, keyed by parameter
    names), on this process alone, whatever number of processes wrote them."""
    if not is_sharded_checkpoint(path):
        raise CheckpointError(f"{path}: a directory, but not a complete sharded checkpoint (no {SHARDS_METADATA} "
                              f"or {META_FILE}: a save killed half-way?).")
    ckpt = _load(path / META_FILE, "cpu")
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    try:
        metadata = dcp.FileSystemReader(path).read_metadata()
    except Exception as e:
        raise CheckpointError(f"{path}: its {SHARDS_METADATA} cannot be read ({type(e).__name__}: {e}).") from e
    _check_shard_files(path, metadata)
    if not tensors or not isinstance(ckpt, dict):
        return ckpt
    try:
        entries = metadata.state_dict_metadata
        flat = {key: torch.empty(m.size, dtype=m.properties.dtype) if isinstance(m, TensorStorageMetadata) else None
                for key, m in entries.items()}
        with warnings.catch_warnings():  # "no process group: loading on this process alone", which is the intent
            warnings.simplefilter("ignore")
            dcp.load(flat, checkpoint_id=path, no_dist=True)
    except Exception as e:
        raise CheckpointError(f"{path}: its shards cannot be read ({type(e).__name__}: {e}).") from e
    return {**ckpt, **_nest(flat)}


def _check_shard_files(path: Path, metadata: Any) -> None:
    """Every shard file the metadata names is there and long enough (a stat each: nothing is read); else a
    CheckpointError naming the file, before a reader fails deep inside with a bare EOFError."""
    needed: dict[str, int] = {}
    for info in metadata.storage_data.values():
        needed[info.relative_path] = max(needed.get(info.relative_path, 0), info.offset + info.length)
    for name, size in sorted(needed.items()):
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"{path}: its shard file {name} is missing (the checkpoint was damaged or copied "
                                  "in part); use an earlier checkpoint, or copy the whole directory again.")
        if file.stat().st_size < size:
            raise CheckpointError(f"{path}: its shard file {name} holds {file.stat().st_size:,} bytes of the "
                                  f"{size:,} its metadata names (truncated); use an earlier checkpoint, or copy the "
                                  "whole directory again.")


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    """Lightning's sharded layout, flattened by torch.distributed.checkpoint ("state_dict.<param>",
    "optimizer_<i>.state.<param>.<field>", "optimizer_<i>.param_groups.<j>.<field>"), as a checkpoint file's dict."""
    state: dict[str, Any] = {}
    optimizers: dict[int, dict[str, Any]] = {}
    for key, value in flat.items():
        top, _, rest = key.partition(".")
        if top == "state_dict":
            state[rest] = value
        elif top.startswith("optimizer_"):
            osd = optimizers.setdefault(int(top.removeprefix("optimizer_")), {"state": {}, "param_groups": {}})
            kind, _, rest = rest.partition(".")
            if kind == "state":
                name, _, field = rest.rpartition(".")
                osd["state"].setdefault(name, {})[field] = value
            elif kind == "param_groups":
                index, _, field = rest.partition(".")
                osd["param_groups"].setdefault(int(index), {})[field] = value
    return {"state_dict": state, "optimizer_states": [
        {"state": osd["state"], "param_groups": [osd["param_groups"][j] for j in sorted(osd["param_groups"])]}
        for _, osd in sorted(optimizers.items())]}


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
