"""A Llama decoder you can read in one sitting: RMSNorm, rotary embeddings, grouped-query attention, SwiGLU.

Shapes: B batch, T time (tokens), C d_model, H query heads, K key/value heads, D head_dim, V vocabulary.
Rotary embeddings use Meta's layout (channel pairs (0,1), (2,3), ... rotate together); Hugging Face checkpoints
use another one and are converted on the way in and out (`tlama_core.models.hf`), never by changing this model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from tlama_core.models.config import RopeScaling, TlamaConfig
from tlama_core.models.ops import cross_entropy, rms_norm, swiglu


class RMSNorm(nn.Module):
    """Root-mean-square norm (no mean subtraction, no bias), computed in fp32 for stability."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rope_table(config: TlamaConfig) -> torch.Tensor:
    """cos and sin of every (position, channel pair) angle: a (max_seq_len, head_dim/2, 2) fp32 table."""
    d = config.head_dim
    freqs = 1.0 / config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)  # (D/2,)
    if config.rope_scaling is not None:
        freqs = llama3_scaled(freqs, config.rope_scaling)
    angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float64), freqs)
    return torch.stack((angles.cos(), angles.sin()), dim=-1).float()


def llama3_scaled(freqs: torch.Tensor, scaling: RopeScaling) -> torch.Tensor:
    """Llama 3.1's frequencies: long wavelengths slowed by `factor`, short ones kept, the band between blended."""
    context = scaling.original_max_seq_len
    wavelen = 2 * math.pi / freqs
    smooth = ((context / wavelen - scaling.low_freq_factor)
              / (scaling.high_freq_factor - scaling.low_freq_factor)).clamp(0, 1)  # 0: long, 1: short wavelengths
    return (1 - smooth) * freqs / scaling.factor + smooth * freqs


def apply_rope(x: torch.Tensor, turns: torch.Tensor) -> torch.Tensor:
    """Rotate each channel pair of x (B, T, heads, D) by its position's angle; turns is (T, 1, D/2) complex, or
    the same (cos, sin) pairs as reals (T, 1, D/2, 2) inside torch.compile.

    A pair (a, b) read as the complex number a + ib rotates by multiplying with cos + i sin, as in Meta's code:
    one kernel instead of the half dozen a real-valued rotation takes. Inductor generates no code for complex
    numbers (it falls back to eager kernels, one read and write of q and k each), so a compiled graph rotates in
    reals, which it fuses with the projections around them.
    """
    if turns.is_complex():
        pairs = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))  # (B, T, heads, D/2) complex
        return torch.view_as_real(pairs * turns).flatten(-2).type_as(x)  # (B, T, heads, D)
    a, b = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # (B, T, heads, D/2) each
    cos, sin = turns.unbind(-1)
    return torch.stack((a * cos - b * sin, a * sin + b * cos), dim=-1).flatten(-2).type_as(x)


# Up to this many positions, bf16 causal attention on CPU runs faster written out (two matmuls and a softmax)
# than through SDPA's CPU flash kernel, whose bf16 backward pass dominated short-window training steps; past it,
# and in fp32, that kernel is the faster one, so fp32 keeps SDPA, as do GPUs (README: Speed on one machine).
EXPLICIT_ATTENTION_MAX_LEN = 128


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0) -> torch.Tensor:
    """Causal grouped-query attention written out: q (B, H, T, D), k and v (B, K, T, D) -> (B, H, T, D).

    The same result as SDPA with is_causal=True and enable_gqa=True: query head h reads key/value head
    h // (H/K), by viewing the H query heads as (K, H/K) rather than by copying keys and values.
    """
    h, t, d = q.shape[1:]
    q = q.unflatten(1, (k.size(1), h // k.size(1)))  # (B, K, G, T, D)
    scores = q @ k.unsqueeze(2).transpose(-1, -2)  # (B, K, G, T, T), in q's dtype (bf16 scores under autocast)
    scores = scores.to(torch.promote_types(scores.dtype, torch.float32)) * d**-0.5  # scaled, masked, softmaxed in fp32
    future = torch.ones(t, t, dtype=torch.bool, device=q.device).triu(1)
    probs = F.dropout(scores.masked_fill(future, float("-inf")).softmax(-1), dropout_p).to(v.dtype)
    return (probs @ v.unsqueeze(2)).flatten(1, 2)  # (B, H, T, D)


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """F.dropout, skipped outright where it would return x: decoding calls it twice per block per token, and
    even a no-op F.dropout costs a dispatch, which shows in decoding's many small calls."""
    return F.dropout(x, p) if training and p > 0 else x


class KVCache:
    """Keys and values of every position generated so far, for one layer: (B, K, seq_len, D) each, preallocated."""

    def __init__(self, batch: int, n_kv_heads: int, seq_len: int, head_dim: int, dtype: torch.dtype,
                 device: torch.device) -> None:
        self.k = torch.zeros(batch, n_kv_heads, seq_len, head_dim, dtype=dtype, device=device)
        self.v = torch.zeros_like(self.k)

    def update(self, start_pos: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store k, v (B, K, T, D) at start_pos and return every key and value up to their end."""
        t, end = k.size(2), start_pos + k.size(2)
        self.k.narrow(2, start_pos, t).copy_(k)  # in place: no torch.cat, no copy of the past per step
        self.v.narrow(2, start_pos, t).copy_(v)
        return self.k.narrow(2, 0, end), self.v.narrow(2, 0, end)


class Attention(nn.Module):
    """Causal grouped-query self-attention: H query heads share K key/value heads (H % K == 0)."""

    def __init__(self, config: TlamaConfig) -> None:
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = config.n_heads, config.n_kv_heads, config.head_dim
        self.wq = nn.Linear(config.d_model, self.n_heads * self.head_dim, bias=False)
        self.wk = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.wv = nn.Linear(config.d_model, self.n_kv_heads * self.head_dim, bias=False)
        self.wo = nn.Linear(self.n_heads * self.head_dim, config.d_model, bias=False)
        self.dropout = config.dropout if config.attention_dropout is None else config.attention_dropout
        self.cache: KVCache | None = None

    def forward(self, x: torch.Tensor, turns: torch.Tensor, start_pos: int) -> torch.Tensor:
        b, t, _ = x.shape  # (B, T, C)
        q = self.wq(x).view(b, t, -1, self.head_dim)  # (B, T, H, D)
        k = self.wk(x).view(b, t, -1, self.head_dim)  # (B, T, K, D)
        v = self.wv(x).view(b, t, -1, self.head_dim)
        q, k = apply_rope(q, turns), apply_rope(k, turns)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H|K, T, D)
        mask, causal = None, True
        if self.cache is not None:
            k, v = self.cache.update(start_pos, k, v)  # (B, K, start_pos+T, D)
            if start_pos > 0:
                causal = False
                if t > 1:  # new queries see every cached position and the causal part of their own block
                    mask = torch.ones(t, start_pos + t, dtype=torch.bool, device=x.device).tril(start_pos)
        dropout_p = self.dropout if self.training else 0.0
        if (causal and mask is None and q.device.type == "cpu" and q.dtype == torch.bfloat16
                and t <= EXPLICIT_ATTENTION_MAX_LEN):
            y = causal_attention(q, k, v, dropout_p=dropout_p)  # (B, H, T, D)
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, dropout_p=dropout_p,
                                               enable_gqa=self.n_kv_heads != self.n_heads)  # (B, H, T, D)
        return self.wo(y.transpose(1, 2).reshape(b, t, -1))  # (B, T, C)


class FeedForward(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x)."""

    def __init__(self, config: TlamaConfig) -> None:
        super().__init__()
        hidden = config.ffn_hidden_dim
        self.w1 = nn.Linear(config.d_model, hidden, bias=False)
        self.w2 = nn.Linear(hidden, config.d_model, bias=False)
        self.w3 = nn.Linear(config.d_model, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(swiglu(self.w1(x), self.w3(x)))


class Block(nn.Module):
    """Pre-norm residual block: x + attention(norm(x)), then + feed_forward(norm(x))."""

    def __init__(self, config: TlamaConfig) -> None:
        super().__init__()
        self.attention_norm = RMSNorm(config.d_model, config.norm_eps)
        self.attention = Attention(config)
        self.ffn_norm = RMSNorm(config.d_model, config.norm_eps)
        self.feed_forward = FeedForward(config)
        self.dropout = config.dropout

    def forward(self, x: torch.Tensor, turns: torch.Tensor, start_pos: int) -> torch.Tensor:
        x = x + dropout(self.attention(self.attention_norm(x), turns, start_pos), self.dropout, self.training)
        return x + dropout(self.feed_forward(self.ffn_norm(x)), self.dropout, self.training)


def init_parameter(config: TlamaConfig, name: str, p: torch.Tensor) -> None:
    """Draw parameter `name` of a `config` model in place: GPT-2's N(mean, std), residual projections (`wo`, `w2`)
    scaled by 1/sqrt(2*n_layers) (or zero, with `zero_init_residual`), norm weights 1. Draws from torch's global
    CPU generator (for a CUDA tensor, CUDA's)."""
    std, mean = config.weight_init_std, config.weight_init_mean
    if p.dim() < 2:
        p.fill_(1.0)
    elif name.endswith(("wo.weight", "w2.weight")) and config.zero_init_residual:
        p.zero_()
    elif name.endswith(("wo.weight", "w2.weight")):
        p.normal_(mean=mean, std=std / math.sqrt(2 * config.n_layers))
    else:
        p.normal_(mean=mean, std=std)


class Transformer(nn.Module):
    """A Llama decoder. `logits, loss = model(tokens, start_pos=0, targets=None)`.

    Built under `torch.device("meta")` (or a sharding strategy's empty init) it holds shapes only; its weights are
    drawn later by whoever places them (`init_weights` here, or shard by shard, `training/sharding.py`), from the
    random state recorded at construction, so they equal those of a model built on the CPU at that moment.
    """

    def __init__(self, config: TlamaConfig) -> None:
        super().__init__()
        self.config = config
        device = torch.get_default_device()
        with torch.device("meta"):  # shapes first: every weight is drawn once, by init_weights
            self.tok_embeddings = nn.Embedding(config.padded_vocab_size, config.d_model)
            self.layers = nn.ModuleList(Block(config) for _ in range(config.n_layers))
            self.norm = RMSNorm(config.d_model, config.norm_eps)
            self.output = nn.Linear(config.d_model, config.padded_vocab_size, bias=False)
            self.register_buffer("rope", rope_table(config), persistent=False)  # (max_seq_len, D/2, 2)
        self.tie_weights()
        # Recompute each block in the backward pass instead of storing its activations (long sequences).
        self.activation_checkpointing = False
        # The random state the weights are drawn from (torch's global CPU generator at construction).
        self.init_rng_state: torch.Tensor = torch.get_rng_state()
        if device.type != "meta":
            try:
                self.to_empty(device=device)
                self.init_weights()
            except RuntimeError as err:  # torch's allocators: "can't allocate memory" (CPU), OutOfMemoryError (CUDA)
                if "allocate" not in str(err) and not isinstance(err, torch.OutOfMemoryError):
                    raise
                raise too_large(self, device) from None

    def tie_weights(self) -> None:
        """With `tie_embeddings`, make the output layer the embedding matrix (again: moving a model may part them)."""
        if self.config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight

    def init_weights(self) -> None:
        """Draw every weight (`init_parameter`, in `named_parameters` order) from the random state recorded at
        construction, and build the rotary table, on the device the model is on. torch's global generator then
        continues from where the draws leave it, as after building a model on the CPU."""
        self.tie_weights()  # moving a model (to_empty) may have parted the tied weights
        torch.set_rng_state(self.init_rng_state)
        with torch.no_grad():
            for name, p in self.named_parameters():
                init_parameter(self.config, name, p)
        self.rope = rope_table(self.config).to(self.output.weight.device)

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Parameter count (each tied tensor once); optionally without the input embedding."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_embeddings.weight.numel() if exclude_embeddings else n

    def forward(self, tokens: torch.Tensor, start_pos: int = 0,
                targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, vocab_size) for tokens (B, T); with targets (B, T) also the mean cross-entropy."""
        logits = self.output(self.hidden_states(tokens, start_pos))  # (B, T, padded V)
        if logits.size(-1) != self.config.vocab_size:
            logits = logits[..., :self.config.vocab_size]  # (B, T, V)
        loss = None
        if targets is not None:
            loss = cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss

    def hidden_states(self, tokens: torch.Tensor, start_pos: int = 0) -> torch.Tensor:
        """The normalised last-layer features (B, T, C) of tokens (B, T) at positions start_pos, start_pos+1..."""
        b, t = tokens.shape
        if start_pos + t > self.config.max_seq_len:
            raise ValueError(
                f"Transformer: positions {start_pos}..{start_pos + t - 1} exceed max_seq_len="
                f"{self.config.max_seq_len}; shorten the input or build the model with a larger max_seq_len."
            )
        pairs = self.rope[start_pos:start_pos + t].float()[:, None]  # (T, 1, D/2, 2): cos, sin
        turns = pairs if torch.compiler.is_compiling() else torch.view_as_complex(pairs)  # see apply_rope
        x = dropout(self.tok_embeddings(tokens), self.config.dropout, self.training)  # (B, T, C)
        for layer in self.layers:
            if self.activation_checkpointing and self.training:
                x = checkpoint(layer, x, turns, start_pos, use_reentrant=False)
            else:
                x = layer(x, turns, start_pos)
        return self.norm(x)

    def generate(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Deprecated since 0.2: `tlama_core.models.generate(model, prompt, ...)`; decoding lives beside the network,
        which only computes hidden states and holds per-layer caches. Removed in 0.3."""
        warnings.warn("Transformer.generate(prompt, ...) is deprecated: call tlama_core.models.generate(model, prompt, "
                      "...); it will be removed in 0.3.", DeprecationWarning, stacklevel=2)
        from tlama_core.models.generation import generate

        return generate(self, *args, **kwargs)

    @contextmanager
    def kv_cache(self, batch_size: int, seq_len: int | None = None) -> Iterator[None]:
        """Give every attention layer a KV cache of seq_len (default max_seq_len) positions while the block runs."""
        if batch_size > self.config.max_batch_size:
            raise ValueError(
                f"generate: batch of {batch_size} prompts exceeds max_batch_size={self.config.max_batch_size}; "
                "generate in smaller batches or raise TlamaConfig.max_batch_size."
            )
        c, p = self.config, self.output.weight
        for layer in self.layers:
            layer.attention.cache = KVCache(batch_size, c.n_kv_heads, seq_len or c.max_seq_len, c.head_dim,
                                            p.dtype, p.device)
        try:
            yield
        finally:
            for layer in self.layers:
                layer.attention.cache = None



def too_large(model: Transformer, device: torch.device) -> MemoryError:
    """The error for a model whose weights the device cannot hold: its size and the ways round it."""
    n = model.num_params()
    return MemoryError(
        f"Transformer: the {device} cannot hold this model: {n / 1e9:.2f}B parameters are {n * 4 / 2**30:.1f} GiB in "
        f"fp32 (training with AdamW needs about 4x that). Use a smaller model, build it in bf16 (half the bytes: "
        "torch.set_default_dtype(torch.bfloat16) first), or shard it across N processes: strategy='fsdp2' "
        "(tlama fit --trainer.strategy fsdp2) builds it on the meta device and each process holds 1/N.")
