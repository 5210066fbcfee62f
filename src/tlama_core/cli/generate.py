"""`tlama generate`: continue a prompt with the model of a training checkpoint."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tlama_core.cli.fit import CONFIG_NAME
from tlama_core.data import builtin_tokenizer_path, load_tokenizer
from tlama_core.training.checkpointing import find_last_checkpoint


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint file as given, or a checkpoints directory's newest step checkpoint."""
    path = Path(path)
    if path.is_dir():
        last = find_last_checkpoint(path)
        if last is None:
            raise FileNotFoundError(f"checkpoint directory {str(path)!r} holds no step=*.ckpt file; "
                                    "train first (tlama fit) or pass a .ckpt file.")
        return last
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r}: no such file or directory.")
    return path


def resolve_tokenizer(checkpoint: Path, tokenizer: str | os.PathLike | None = None) -> Path:
    """The tokenizer given; else the one the run used (`data.tokenizer_path` in its config.yaml next to the
    checkpoint); else the built-in one (also what a run with `tokenizer_path: null` used)."""
    if tokenizer is not None:
        return Path(tokenizer)
    config = checkpoint.parent / CONFIG_NAME
    if config.is_file():
        data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
        run_tokenizer = (data.get("init_args") or data).get("tokenizer_path")  # `data: {class_path, init_args}`
        if run_tokenizer:
            return Path(run_tokenizer)
    return builtin_tokenizer_path()


def check_tokenizer_fits(sp, vocab_size: int) -> None:
    """A tokenizer with more pieces than the model's vocab_size is not the one it was trained with."""
    if sp.get_piece_size() > vocab_size:
        raise ValueError(f"tokenizer has {sp.get_piece_size()} pieces but the model's vocab_size is {vocab_size}: "
                         "pass the tokenizer the model was trained with (--tokenizer).")


def generate(checkpoint: str | os.PathLike, prompt: str, max_new_tokens: int = 200, temperature: float = 0.8,
             top_k: int | None = 50, tokenizer: str | os.PathLike | None = None, seed: int | None = None,
             device: str = "auto", crop_context: bool = True) -> str:
    """The prompt followed by `max_new_tokens` sampled tokens, as text.

    `checkpoint` is a .ckpt file or a checkpoints directory (its newest checkpoint). temperature=0 decodes
    greedily; `seed` makes sampling repeatable. With `crop_context` (the default here, unlike
    `Transformer.generate`) text may run past the model's max_seq_len, each token conditioned on the last
    max_seq_len: a model trained on 64-token windows still writes a page.
    """
    import torch

    from tlama_core.models import Transformer

    path = resolve_checkpoint(checkpoint)
    sp = load_tokenizer(resolve_tokenizer(path, tokenizer))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = Transformer.from_checkpoint(path).to(device)
    check_tokenizer_fits(sp, model.config.vocab_size)
    ids = sp.encode(prompt)
    if not ids:
        raise ValueError("prompt is empty: give some text to continue (--prompt).")
    if seed is not None:
        torch.manual_seed(seed)
    out = model.generate(torch.tensor([ids], device=device), max_new_tokens, temperature=temperature, top_k=top_k,
                         crop_context=crop_context, vocab_limit=sp.get_piece_size())  # ids the tokenizer can decode
    return sp.decode(out[0].tolist())
