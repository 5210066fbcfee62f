"""`tlama convert`: any weights to a Hugging Face Llama directory, and Hugging Face weights to ours."""

from __future__ import annotations

import os
from pathlib import Path

from tlama_core.cli.fit import CONFIG_NAME
from tlama_core.cli.generate import check_tokenizer_fits, resolve_tokenizer
from tlama_core.models.loading import CHECKPOINT, Weights


def known_tokenizer(weights: Weights, tokenizer: str | os.PathLike | None) -> Path | None:
    """The tokenizer given, else the one of the run that wrote a checkpoint (its config.yaml beside it, read as
    `tlama generate` reads it), else None: nothing says which tokenizer other weights were trained with."""
    if tokenizer is None and not (weights.kind == CHECKPOINT and (weights.path.parent / CONFIG_NAME).is_file()):
        return None
    return resolve_tokenizer(weights.path, tokenizer)


def convert_to_hf(checkpoint: str | os.PathLike, out: str | os.PathLike,
                  tokenizer: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """Write the model at `checkpoint` (any weights PATH `load_model` reads) as a Hugging Face Llama directory.

    The tokenizer written with it is the one given, else the run's (a checkpoint with its run's config.yaml
    beside it, found as `tlama generate` finds it). With neither the weights go alone: a guessed tokenizer would
    encode text into ids the model never saw. Returns the directory and the tokenizer written (None: none).
    """
    from tlama_core.data import load_tokenizer
    from tlama_core.models import find_weights, to_hf

    weights = find_weights(checkpoint)
    model, tokenizer_path = weights.load(), known_tokenizer(weights, tokenizer)
    if tokenizer_path is not None:
        check_tokenizer_fits(load_tokenizer(tokenizer_path), model.config.vocab_size)
    return to_hf(model, out, tokenizer_path=tokenizer_path), tokenizer_path


def convert_from_hf(model: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Read a Hugging Face Llama directory (safetensors) and write our safetensors directory
    (`model.safetensors` + `config.json`, loaded by `load_model`)."""
    from tlama_core.models import from_hf, save_safetensors

    return save_safetensors(from_hf(model), out)
