"""Sampling text from a Transformer: `generate` (prompt in, ids out, with a KV cache) and `sample` (one id per row).

Outside the model, as in gpt-fast: the network only computes hidden states and keeps per-layer caches while
`Transformer.kv_cache` runs; the decoding loop, its checks and the sampling rule are here.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tlama_core.models.transformer import Transformer


@torch.inference_mode()
def generate(model: Transformer, prompt: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, eos_id: int | None = None, crop_context: bool = False,
             vocab_limit: int | None = None) -> torch.Tensor:
    """Continue prompt (B, T) by max_new_tokens sampled tokens, returning (B, T + new) ids.

    temperature=0 is greedy decoding; top_k keeps only the k likeliest tokens. With eos_id, generation
    stops early once every row has produced it (rows that finished first are filled with eos_id).
    Prompt + new tokens past max_seq_len is an error, unless crop_context: then the model reads at most
    the last max_seq_len tokens, as nanoGPT's generate does, and once the cache is full each new token
    re-reads the latest max_seq_len from position 0. `vocab_limit` samples only ids below it (a tokenizer
    with fewer pieces than vocab_size). The KV cache (B x min(T + max_new_tokens, max_seq_len) positions per
    layer) exists only while this runs.
    """
    if prompt.dim() != 2 or prompt.size(1) == 0:
        raise ValueError(
            f"generate: prompt must be a (batch, time) tensor of ids, got shape {tuple(prompt.shape)}."
        )
    if (not isinstance(max_new_tokens, int) or max_new_tokens < 0 or not math.isfinite(temperature)
            or temperature < 0 or (top_k is not None and top_k < 1)):
        raise ValueError(
            f"generate: max_new_tokens={max_new_tokens!r} must be an integer >= 0, temperature={temperature} a "
            f"finite number >= 0, top_k={top_k} an integer >= 1 or None."
        )
    if vocab_limit is not None and not (isinstance(vocab_limit, int) and vocab_limit >= 1):
        raise ValueError(f"generate: vocab_limit={vocab_limit!r} must be an integer >= 1 or None.")
    vocab = model.config.vocab_size if vocab_limit is None else min(model.config.vocab_size, vocab_limit)
    low, high = (int(v) for v in torch.aminmax(prompt))
    if low < 0 or high >= model.config.vocab_size:
        raise ValueError(f"generate: prompt ids must lie in [0, vocab_size={model.config.vocab_size}), got "
                         f"{low}..{high}; encode the prompt with the tokenizer the model was trained with.")
    if eos_id is not None and not 0 <= eos_id < vocab:
        raise ValueError(f"generate: eos_id={eos_id} must lie in [0, {vocab}) (vocab_size, or vocab_limit).")
    b, t = prompt.shape
    end, window = t + max_new_tokens, model.config.max_seq_len
    if end > window and not crop_context:
        raise ValueError(
            f"generate: prompt of {t} tokens + max_new_tokens={max_new_tokens} = {end} exceeds "
            f"max_seq_len={window}; shorten the prompt, ask for fewer tokens, or pass crop_context=True "
            "to condition each new token on the last max_seq_len tokens only."
        )
    was_training = model.training
    model.eval()
    out = torch.cat((prompt, prompt.new_empty(b, max_new_tokens)), dim=1)  # (B, T + new), filled below
    done = torch.zeros(b, dtype=torch.bool, device=prompt.device)
    try:
        with model.kv_cache(b, min(end, window)):
            first = max(0, t - window)  # the id in `out` at cache position 0
            tokens = out[:, first:t]  # what the next forward reads
            for pos in range(t, end):
                if pos - first > window:  # the cache is full: re-read the latest `window` ids from position 0
                    first = pos - window
                    tokens = out[:, first:pos]
                h = model.hidden_states(tokens, start_pos=pos - first - tokens.size(1))[:, -1]  # (B, C)
                next_id = sample(model.output(h)[:, :vocab], temperature, top_k)  # (B,)
                if eos_id is not None:
                    next_id = next_id.masked_fill(done, eos_id)
                    done |= next_id == eos_id
                out[:, pos] = next_id
                if eos_id is not None and bool(done.all()):
                    return out[:, :pos + 1]
                tokens = next_id[:, None]  # (B, 1)
    finally:
        model.train(was_training)
    return out


def sample(logits: torch.Tensor, temperature: float, top_k: int | None) -> torch.Tensor:
    """Draw one id per row from logits (B, V); temperature 0 takes the argmax."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float()
    logits = (logits - logits.amax(dim=-1, keepdim=True)) / temperature  # max first: a tiny temperature cannot overflow
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, dim=-1), num_samples=1).squeeze(-1)
