"""Model weights on disk: safetensors to share them, and a model rebuilt from a training checkpoint.

Training checkpoints are pickles (Lightning's format, with optimizer state): fine to resume from, unsafe to
load from strangers. Weights that travel should be safetensors: plain tensors, nothing executable.
"""

from __future__ import annotations

import json
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from tlama_core.atomic import atomic_write
from tlama_core.models.config import TlamaConfig
from tlama_core.models.transformer import Transformer

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SHARD_INDEX = "model.safetensors.index.json"  # a sharded Hugging Face model


def read_json(path: Path) -> dict:
    """A JSON file's object; a malformed file is a ValueError naming it."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from e


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file; a truncated or corrupt file is a ValueError naming it."""
    try:
        return load_file(path)
    except SafetensorError as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e}).") from e


def save_safetensors(model: Transformer, directory: str | os.PathLike) -> Path:
    """Write `model.safetensors` and `config.json` (the TlamaConfig) into `directory`; return it.

    Tied embeddings are stored once, under `tok_embeddings.weight`.
    """
    directory = Path(directory)
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()
               if not (name == "output.weight" and model.config.tie_embeddings)}
    return write_weights_dir(directory, tensors, model.config.to_dict())


def write_weights_dir(directory: str | os.PathLike, tensors: dict[str, torch.Tensor], config: dict) -> Path:
    """Write `model.safetensors` and `config.json` into `directory`, each atomically; return the directory.
    Ours and the Hugging Face export share this layout (with their own tensor names and config)."""
    directory = Path(directory)
    if (directory / SHARD_INDEX).exists():  # loaders would read the old shards it lists, not the new file
        raise ValueError(f"{directory} holds a sharded model ({SHARD_INDEX}); write into an empty directory.")
    atomic_write(directory / WEIGHTS_FILE, lambda f: f.write(save(tensors, metadata={"format": "pt"})))
    atomic_write(directory / CONFIG_FILE, lambda f: f.write(json.dumps(config, indent=2).encode()))
    return directory


def load_safetensors(directory: str | os.PathLike) -> Transformer:
    """Rebuild the model `save_safetensors` wrote into `directory`, in eval mode."""
    directory = Path(directory)
    values = read_json(directory / CONFIG_FILE)
    if "model_type" in values:
        raise ValueError(
            f"{directory} holds Hugging Face weights, not tlama-core ones: use Transformer.from_pretrained."
        )
    model = Transformer(TlamaConfig.from_dict(values))
    state = read_safetensors(directory / WEIGHTS_FILE)
    if model.config.tie_embeddings:
        state["output.weight"] = state["tok_embeddings.weight"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:  # missing, unexpected or misshapen tensors
        raise ValueError(f"{directory}: the weights do not fit its config.json ({e}).") from e
    return model.eval()


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: unreadable, not ours, or made for another model."""


def read_checkpoint(path: str | os.PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """A training checkpoint's dict, loaded with weights_only=True (nothing in it is executed).

    Every failure is a CheckpointError that names the file and what is wrong, never an unpickling trace.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file.")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError, OSError) as e:
        first_line = str(e).splitlines()[0] if str(e) else ""  # weights_only refusals run to a page
        raise CheckpointError(f"{path}: not a readable training checkpoint, the file is truncated, corrupt or of "
                              f"another format ({type(e).__name__}: {first_line}).") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a tlama-core training checkpoint (no 'state_dict' entry).")
    if "model_config" not in ckpt:
        raise CheckpointError(
            f"{path}: the checkpoint has no 'model_config' entry, so the model's shape is unknown.")
    return ckpt


def load_checkpoint(path: str | os.PathLike) -> Transformer:
    """Rebuild the model of a training checkpoint for inference (eval mode, on the CPU).

    The checkpoint is a Lightning dict: `state_dict` with the model's keys under `model.` (and `_orig_mod.`
    when it was compiled) and `model_config`, the TlamaConfig as a dict.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    state = {name.removeprefix("model.").replace("_orig_mod.", ""): t
             for name, t in ckpt["state_dict"].items() if name.startswith("model.")}
    if not state:
        raise ValueError(f"{path}: the checkpoint's state_dict has no 'model.' entries.")
    model = Transformer(TlamaConfig.from_dict(ckpt["model_config"]))
    if model.config.tie_embeddings and "output.weight" not in state:
        state["output.weight"] = state["tok_embeddings.weight"]
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise ValueError(f"{path}: the weights do not fit its model_config ({e}).") from e
    return model.eval()
