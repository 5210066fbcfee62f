"""One way in for weights of every kind: `load_model(PATH)`.

PATH may be a training checkpoint (`.ckpt`), a checkpoints directory (its newest `step=N.ckpt`), our safetensors
directory (`save_safetensors`, `tlama convert from-hf`) or a Hugging Face Llama directory. `find_weights` says
which, from what is on disk, and lists what it found when it is none of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from tlama_core.checkpoints import CheckpointError, find_last_checkpoint, model_state, read_checkpoint
from tlama_core.models.config import TlamaConfig
from tlama_core.models.hf import from_hf
from tlama_core.models.transformer import Transformer
from tlama_core.models.weights import CONFIG_FILE, load_safetensors, read_json

CHECKPOINT, SAFETENSORS, HUGGING_FACE = "checkpoint", "safetensors", "hugging face"


@dataclass(frozen=True)
class Weights:
    """What a PATH holds: `kind` (CHECKPOINT, SAFETENSORS or HUGGING_FACE) and the file or directory to read."""

    kind: str
    path: Path

    def load(self) -> Transformer:
        """The model these weights hold, in eval mode on the CPU."""
        read = {CHECKPOINT: load_checkpoint, SAFETENSORS: load_safetensors, HUGGING_FACE: from_hf}[self.kind]
        return read(self.path)


def find_weights(path: str | os.PathLike) -> Weights:
    """The weights at `path`; a path that holds none is a FileNotFoundError saying what it does hold."""
    path = Path(path)
    if path.is_file():
        return Weights(CHECKPOINT, path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory (expected weights: a .ckpt file, a checkpoints "
                                "directory, a safetensors directory or a Hugging Face Llama directory).")
    if (path / CONFIG_FILE).is_file():
        return Weights(HUGGING_FACE if "model_type" in read_json(path / CONFIG_FILE) else SAFETENSORS, path)
    last = find_last_checkpoint(path)
    if last is not None:
        return Weights(CHECKPOINT, last)
    names = sorted(p.name for p in path.iterdir())
    listing = f"it holds {names[:8]}" + (f" and {len(names) - 8} more" if len(names) > 8 else "") if names else (
        "it is empty")
    raise FileNotFoundError(f"{path}: no weights found: no step=*.ckpt file (a checkpoints directory) and no "
                            f"{CONFIG_FILE} (a safetensors or Hugging Face directory); {listing}.")


def load_checkpoint(path: str | os.PathLike) -> Transformer:
    """The model of a training checkpoint, for inference (eval mode, CPU); any problem names the file."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    try:
        config = TlamaConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model_config is not a TlamaConfig ({e}).") from e
    return Transformer.from_state_dict(config, model_state(ckpt, path), str(path), "model_config")


def load_model(path: str | os.PathLike) -> Transformer:
    """The model at `path`, whatever kind of weights it holds (see `find_weights`), in eval mode on the CPU."""
    return find_weights(path).load()
