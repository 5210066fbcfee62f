"""Loss, perplexity and bits per character of any weights on any data: `evaluate`, and `tlama evaluate`.

The data is read as training reads it (`create_dataloader`'s sources: text through the token cache, `.bin`/`.npy`
ids) and cut into non-overlapping windows of `seq_length`, the last, shorter one included, so every token but
the first is predicted exactly once. Windows are scored one batch at a time, with no gradients.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from tlama_core.data import create_dataloader
from tlama_core.data.loader import check_count
from tlama_core.data.sources import has_named_splits
from tlama_core.models import Transformer, load_model


def evaluate(model: Transformer | str | os.PathLike, data_path: str | os.PathLike,
             tokenizer_path: str | os.PathLike | None = None, seq_length: int | None = None, batch_size: int = 8,
             max_batches: int | None = None) -> dict[str, Any]:
    """Score `model` (a Transformer, or any weights PATH `load_model` reads) on `data_path`.

    Returns `loss` (mean nats per predicted token), `perplexity` (exp of it), `tokens` (predicted tokens),
    `seq_length`, and `bits_per_char` when the data is text: the figure that compares models with different
    tokenizers. `seq_length` defaults to the model's max_seq_len; `max_batches` stops early (a quick estimate).
    Data whose files carry split names is read as validation reads it: its `val` files.
    """
    if not isinstance(model, Transformer):
        model = load_model(model)
    seq_length = model.config.max_seq_len if seq_length is None else check_count("seq_length", seq_length, 1)
    if seq_length > model.config.max_seq_len:
        raise ValueError(f"seq_length={seq_length} exceeds the model's max_seq_len={model.config.max_seq_len}; "
                         "pass a smaller seq_length.")
    batch_size = check_count("batch_size", batch_size, 1)
    if max_batches is not None:
        max_batches = check_count("max_batches", max_batches, 1)
    # create_dataloader opens the data (tokenizing text into the cache once) and checks the tokenizer; the
    # windows are cut here, because its loader drops the last partial window and batch, as training must.
    split = "val" if has_named_splits(data_path) else None
    source = create_dataloader(data_path, tokenizer_path, batch_size=1, seq_length=1, shuffle=False, split=split,
                               pin_memory=False).dataset
    tokens, info = source.tokens, source.info
    if info.vocab_size is not None and info.vocab_size > model.config.vocab_size:
        raise ValueError(f"tokenizer {tokenizer_path} has {info.vocab_size} pieces but the model's vocab_size is "
                         f"{model.config.vocab_size}: pass the tokenizer the model was trained with.")
    starts = range(0, len(tokens) - 1, seq_length)  # window i predicts tokens[start + 1 : start + seq_length + 1]
    full = [s for s in starts if s + seq_length + 1 <= len(tokens)]
    batches = [full[i:i + batch_size] for i in range(0, len(full), batch_size)]
    if len(full) < len(starts):
        batches.append([starts[-1]])  # the last, partial window: a batch of its own
    batches = batches[:max_batches]

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0
    try:
        with torch.inference_mode():
            for batch in batches:
                windows = np.stack([tokens.read(s, min(s + seq_length + 1, len(tokens))) for s in batch])
                ids = torch.from_numpy(check_ids(windows, model.config.vocab_size, info.description)).to(device)
                logits, _ = model(ids[:, :-1])  # (B, T, V)
                total += F.cross_entropy(logits.flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="sum")
                count += ids[:, 1:].numel()
    finally:
        model.train(was_training)
    loss = float(total) / count
    result: dict[str, Any] = {"loss": loss, "perplexity": math.exp(loss), "tokens": count, "seq_length": seq_length}
    if info.text_chars:  # as validation computes val_bpc: nats per token, times tokens per character, in bits
        result["bits_per_char"] = loss * len(tokens) / info.text_chars / math.log(2)
    return result


def check_ids(windows: np.ndarray, vocab_size: int, description: str) -> np.ndarray:
    """Windows of ids as int64, every id in [0, vocab_size); else a ValueError naming the data."""
    low, high = int(windows.min()), int(windows.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{description}: token ids {low}..{high} do not fit the model's vocab_size={vocab_size}; "
                         "the data was tokenized with another tokenizer.")
    return windows.astype(np.int64)


def summary(result: dict[str, Any], model: str | os.PathLike, data: str | os.PathLike) -> str:
    """One human line for `tlama evaluate`'s stderr."""
    bpc = f", {result['bits_per_char']:.4f} bits/char" if "bits_per_char" in result else ""
    return (f"{Path(model)} on {Path(data)}: loss {result['loss']:.4f} nats/token, perplexity "
            f"{result['perplexity']:.2f}{bpc} over {result['tokens']:,} tokens (windows of {result['seq_length']})")
