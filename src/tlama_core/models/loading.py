"""One way in for weights of every kind: `load_model(PATH)`.

PATH may be a training checkpoint (`.ckpt`: a file, or a sharded run's directory), a checkpoints directory (its
newest `step=N.ckpt`), our safetensors
directory (`save_safetensors`, `tlama convert from-hf`) or a Hugging Face Llama directory. `find_weights` says
which, from what is on disk, and lists what it found when it is none of them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tlama_core.checkpoints import (
    CheckpointError,
    find_last_checkpoint,
    is_sharded_checkpoint,
    model_state,
    read_checkpoint,
)
from tlama_core.models.config import TlamaConfig
from tlama_core.models.hf import config_from_hf, from_hf
from tlama_core.models.transformer import Transformer
from tlama_core.models.weights import CONFIG_FILE, load_safetensors, model_from_state, read_json

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

    def config(self) -> TlamaConfig:
        """The model's config alone, read from the config file (a checkpoint: its `model_config`)."""
        if self.kind == CHECKPOINT:
            return checkpoint_config(read_checkpoint(self.path, tensors=False), self.path)  # tensors left on disk
        values = read_json(self.path / CONFIG_FILE)
        if self.kind == HUGGING_FACE:
            return config_from_hf(values, str(self.path / CONFIG_FILE))
        try:
            return TlamaConfig.from_dict(values)
        except (TypeError, ValueError) as e:
            raise ValueError(f"{self.path / CONFIG_FILE}: not a TlamaConfig ({e}).") from e


def find_weights(path: str | os.PathLike) -> Weights:
    """The weights at `path`; a path that holds none is a FileNotFoundError saying what it does hold."""
    path = Path(path)
    if path.is_file() and (path.suffix == ".safetensors" or path.name == CONFIG_FILE):
        path = path.parent  # a file of a weights directory: the directory
    elif path.is_file() or is_sharded_checkpoint(path):
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


def checkpoint_config(ckpt: dict, path: str | os.PathLike) -> TlamaConfig:
    """A checkpoint's `model_config` as a TlamaConfig; one that is not is a CheckpointError naming the file."""
    try:
        return TlamaConfig.from_dict(ckpt["model_config"])
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: its model_config is not a TlamaConfig ({e}).") from e


def load_checkpoint(path: str | os.PathLike) -> Transformer:
    """The model of a training checkpoint, for inference (eval mode, CPU); any problem names the file."""
    path = Path(path)
    ckpt = read_checkpoint(path)
    return model_from_state(checkpoint_config(ckpt, path), model_state(ckpt, path), str(path),
                                       "model_config")


def load_model(path: str | os.PathLike, expect: TlamaConfig | None = None) -> Transformer:
    """The model at `path`, whatever kind of weights it holds (see `find_weights`), in eval mode on the CPU.

    With `expect`, the model is built with that config: its fields that give the weights their meaning
    (`weight_fields`) must equal the weights' own, or a ValueError names them before the weights are read; the
    others (dropout, max_seq_len, initialisation, ...) are the caller's to set.
    """
    weights = find_weights(path)
    if expect is None:
        return weights.load()
    found, given = weight_fields(weights.config()), weight_fields(expect)
    diff = [f"{k}: weights {v!r}, given {given[k]!r}" for k, v in found.items() if v != given[k]]
    if diff:
        raise ValueError(f"{weights.path}: the weights' config differs from the one given ({'; '.join(diff)}); "
                         "leave the config out to take the weights' own, or set those fields to match.")
    return model_from_state(expect, weights.load().state_dict(), str(weights.path))


def weight_fields(config: TlamaConfig) -> dict[str, Any]:
    """What trained weights compute with: their shapes, norms, rotary embeddings and tying. The SwiGLU width
    counts as the number it comes to, however it is stated (multiple_of, ffn_dim_multiplier, ffn_hidden_size)."""
    return {"vocab_size": config.vocab_size, "d_model": config.d_model, "n_layers": config.n_layers,
            "n_heads": config.n_heads, "n_kv_heads": config.n_kv_heads, "head_dim": config.head_dim,
            "ffn_hidden_dim": config.ffn_hidden_dim, "norm_eps": config.norm_eps, "rope_theta": config.rope_theta,
            "rope_scaling": config.rope_scaling, "tie_embeddings": config.tie_embeddings,
            "pad_vocab_multiple": config.pad_vocab_multiple}
