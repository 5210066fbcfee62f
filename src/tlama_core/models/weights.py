"""Our safetensors directory (`model.safetensors` + `config.json`, the TlamaConfig): weights to share.

Training checkpoints are pickles (Lightning's format, with optimizer state): fine to resume from, unsafe to
load from strangers. Weights that travel should be safetensors: plain tensors, nothing executable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from tlama_core.atomic import atomic_write
from tlama_core.models.config import TlamaConfig
from tlama_core.models.transformer import Transformer, rope_table

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SHARD_INDEX = "model.safetensors.index.json"  # a sharded Hugging Face model


def model_from_state(config: TlamaConfig, state: dict[str, torch.Tensor], source: str = "weights",
                     config_name: str = "config") -> Transformer:
    """A model of `config` holding `state` (our parameter names, fp32 on the CPU), in eval mode.

    The keys and shapes are checked against the config before anything is allocated (`check_weights`), so a
    small file whose config declares a huge model is an error, not gigabytes of memory. A tied model's
    output layer is the embedding (a stored copy must equal it). Errors name `source` and `config_name`.
    """
    state = check_weights(config, state, source, config_name)
    with torch.device("meta"):  # the modules' shapes without their memory: the state supplies it
        model = Transformer(config)
    model.load_state_dict({k: v.float() for k, v in state.items()}, assign=True, strict=False)
    model.tie_weights()
    model.rope = rope_table(config)
    return model.eval()


def check_weights(config: TlamaConfig, state: dict[str, torch.Tensor], source: str,
                  config_name: str = "config") -> dict[str, torch.Tensor]:
    """`state` with every parameter of a `config` model, each of its shape; else a ValueError naming `source`.

    Compared with a model built on the meta device (shapes, no memory). A tied model needs no `output.weight`;
    a stored one must equal the embedding and is dropped. Returns the state to load.
    """
    with torch.device("meta"):
        expected = {k: v.shape for k, v in Transformer(config).state_dict().items()}
    state = dict(state)
    if config.tie_embeddings:
        del expected["output.weight"]
        head, embedding = state.pop("output.weight", None), state.get("tok_embeddings.weight")
        if head is not None and embedding is not None and not (head.shape == embedding.shape
                                                               and torch.equal(head, embedding)):
            raise ValueError(f"{source}: tie_embeddings is true but output.weight differs from tok_embeddings.")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k])})"
                 for k in expected if k in state and state[k].shape != expected[k]]
    if missing or unexpected or misshapen:
        problems = [f"{what} {names[:6]}" + (f" and {len(names) - 6} more" if len(names) > 6 else "")
                    for what, names in (("missing", missing), ("unexpected", unexpected), ("shapes", misshapen))
                    if names]
        raise ValueError(f"{source}: the weights do not fit its {config_name} ({'; '.join(problems)}).")
    return state


def read_json(path: Path) -> dict:
    """A JSON file's object; a malformed file, or JSON that is not an object, is a ValueError naming it."""
    try:
        values = json.loads(path.read_bytes())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e}).") from e
    if not isinstance(values, dict):
        raise ValueError(f"{path}: holds a JSON {type(values).__name__}, not the object of a model config.")
    return values


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
        raise ValueError(f"{directory} holds Hugging Face weights, not tlama-core ones: load it with from_hf.")
    try:
        config = TlamaConfig.from_dict(values)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{directory / CONFIG_FILE}: not a TlamaConfig ({e}).") from e
    return model_from_state(config, read_safetensors(directory / WEIGHTS_FILE), str(directory),
                                       CONFIG_FILE)
