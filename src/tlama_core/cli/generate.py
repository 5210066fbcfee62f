"""`tlama generate`: continue a prompt with a model: any weights `load_model` reads."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tlama_core.cli.fit import CONFIG_NAME
from tlama_core.data import builtin_tokenizer_path, load_tokenizer
from tlama_core.data.sources import list_files
from tlama_core.data.tokenizer import Tokenizer, tokenizer_file
from tlama_core.models import generation
from tlama_core.models.loading import CHECKPOINT, Weights
from tlama_core.training.files.tokenizer import run_tokenizer


def configured_tokenizer(checkpoint: Path) -> Path | None:
    """The tokenizer of the `tlama fit` run whose config.yaml lies beside `checkpoint`: its `data.tokenizer_path`,
    or the built-in one where that is null and the run read text (the DataModule's default); None for a run on
    token ids, one whose data is gone, or without a config.yaml."""
    config = checkpoint.parent / CONFIG_NAME
    if not config.is_file():
        return None
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    data = data.get("init_args") or data  # `data: {class_path, init_args}` too
    if data.get("tokenizer_path"):
        return tokenizer_file(data["tokenizer_path"])
    if data.get("train_path") is None:
        return builtin_tokenizer_path()  # the built-in corpus
    try:
        return builtin_tokenizer_path() if list_files(data["train_path"])[0] == "text" else None
    except (FileNotFoundError, ValueError):
        return None


def known_tokenizer(weights: Weights, tokenizer: str | os.PathLike | None = None) -> Path | None:
    """The tokenizer given; else, for a checkpoint, the copy its run recorded or the one its run's config.yaml
    names; else the tokenizer a weights directory holds (a Hugging Face model's tokenizer.model or tokenizer.json);
    else None: nothing says which tokenizer the weights were trained with."""
    if tokenizer is not None:
        return tokenizer_file(tokenizer)
    if weights.kind == CHECKPOINT:
        return run_tokenizer(weights.path) or configured_tokenizer(weights.path)
    return next((weights.path / n for n in ("tokenizer.model", "tokenizer.json") if (weights.path / n).is_file()),
                None)


def resolve_tokenizer(weights: Weights, tokenizer: str | os.PathLike | None = None) -> Path:
    """The tokenizer `tlama generate` samples with: `known_tokenizer`'s; else, for a checkpoint, the built-in one
    (a checkpoint of an early run); for other weights none is guessed."""
    known = known_tokenizer(weights, tokenizer)
    if known is None and weights.kind != CHECKPOINT:
        raise ValueError(f"{weights.path}: these weights hold no tokenizer and none is known for them; pass the one "
                         "the model was trained with (--tokenizer).")
    return known or builtin_tokenizer_path()


def check_tokenizer_fits(tokenizer: Tokenizer, vocab_size: int) -> None:
    """A tokenizer with more pieces than the model's vocab_size is not the one it was trained with."""
    if tokenizer.vocab_size > vocab_size:
        raise ValueError(f"tokenizer has {tokenizer.vocab_size} pieces but the model's vocab_size is {vocab_size}: "
                         "pass the tokenizer the model was trained with (--tokenizer).")


def generate(checkpoint: str | os.PathLike, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
             top_k: int | None = 50, tokenizer: str | os.PathLike | None = None, seed: int | None = None,
             device: str = "auto", crop_context: bool = True) -> str:
    """The prompt followed by `max_new_tokens` sampled tokens, as text.

    `checkpoint` is any weights PATH (`tlama_core.models.find_weights`): a .ckpt file, a checkpoints directory (its
    newest checkpoint), our safetensors directory or a Hugging Face Llama directory. temperature=0 decodes
    greedily; `seed` makes sampling repeatable. With `crop_context` (the default here, unlike
    `Transformer.generate`) text may run past the model's max_seq_len, each token conditioned on the last
    max_seq_len: a model trained on 64-token windows still writes a page.
    """
    import torch

    from tlama_core.models import find_weights

    weights = find_weights(checkpoint)
    sp = load_tokenizer(resolve_tokenizer(weights, tokenizer))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = weights.load().to(device)
    check_tokenizer_fits(sp, model.config.vocab_size)
    ids = sp.encode(prompt)
    if not ids:
        raise ValueError("prompt is empty: give some text to continue (--prompt).")
    if seed is not None:
        torch.manual_seed(seed)
    out = generation.generate(model, torch.tensor([ids], device=device), max_new_tokens, temperature=temperature,
                              top_k=top_k, crop_context=crop_context,
                              vocab_limit=sp.vocab_size)  # ids the tokenizer can decode
    return sp.decode(out[0].tolist())
