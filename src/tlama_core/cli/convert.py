"""`tlama convert`: a training checkpoint to a Hugging Face Llama directory, and Hugging Face weights back."""

from __future__ import annotations

import os
from pathlib import Path

from tlama_core.cli.generate import check_tokenizer_fits, resolve_checkpoint, resolve_tokenizer


def convert_to_hf(checkpoint: str | os.PathLike, out: str | os.PathLike,
                  tokenizer: str | os.PathLike | None = None) -> Path:
    """Write the model of `checkpoint` (a .ckpt or a checkpoints directory) as a Hugging Face Llama directory,
    with its tokenizer (the one given, else the run's, as `tlama generate` picks it)."""
    from tlama_core.data import load_tokenizer
    from tlama_core.models import Transformer, to_hf

    path = resolve_checkpoint(checkpoint)
    model, tokenizer_path = Transformer.from_checkpoint(path), resolve_tokenizer(path, tokenizer)
    check_tokenizer_fits(load_tokenizer(tokenizer_path), model.config.vocab_size)
    return to_hf(model, out, tokenizer_path=tokenizer_path)


def convert_from_hf(model: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Read a Hugging Face Llama directory (safetensors) and write our safetensors directory
    (`model.safetensors` + `config.json`, loaded by `Transformer.from_safetensors`)."""
    from tlama_core.models import from_hf, save_safetensors

    return save_safetensors(from_hf(model), out)
