"""`tlama convert`: any weights to a Hugging Face Llama directory, and Hugging Face weights to ours."""

from __future__ import annotations

import os
from pathlib import Path

from tlama_core.cli.generate import check_tokenizer_fits, known_tokenizer


def convert_to_hf(checkpoint: str | os.PathLike, out: str | os.PathLike,
                  tokenizer: str | os.PathLike | None = None) -> tuple[Path, Path | None]:
    """Write the model at `checkpoint` (any weights PATH `load_model` reads) as a Hugging Face Llama directory.

    The tokenizer written with it is the one given, else the one known for the weights (`known_tokenizer`: a
    checkpoint's run's, a weights directory's own). With neither the weights go alone: a guessed tokenizer would
    encode text into ids the model never saw. Returns the directory and the tokenizer written (None: none).
    """
    from tlama_core.data import load_tokenizer
    from tlama_core.models import find_weights, to_hf

    weights = find_weights(checkpoint)
    model, tokenizer_path = weights.load(), known_tokenizer(weights, tokenizer)
    if tokenizer_path is not None:
        check_tokenizer_fits(load_tokenizer(tokenizer_path), model.config.vocab_size)
    return to_hf(model, out, tokenizer_path=tokenizer_path), tokenizer_path


def convert_from_hf(model: str | os.PathLike, out: str | os.PathLike) -> tuple[Path, Path | None]:
    """Read a Hugging Face Llama directory (safetensors) and write our safetensors directory
    (`model.safetensors` + `config.json`, loaded by `load_model`) with the directory's tokenizer, so that
    `tlama generate` and `evaluate` find it there. Returns the directory and its tokenizer (None: the Hugging Face
    directory held none)."""
    from tlama_core.data.hf_export import carry_tokenizer
    from tlama_core.models import from_hf, save_safetensors

    directory = save_safetensors(from_hf(model), out)
    return directory, carry_tokenizer(model, directory)
