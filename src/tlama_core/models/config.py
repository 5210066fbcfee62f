"""TlamaConfig: the shape of a Llama-style model as one plain dataclass.

The same typed fields are the Python API, the YAML keys of a LightningCLI run and the `config` dict stored in
every checkpoint, so a model can always be rebuilt from what a run wrote.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any


@dataclass
class TlamaConfig:
    """Hyper-parameters of a Llama decoder. Defaults are a Llama-3-8B shape, as in the original tlama-core.

    Args:
        vocab_size: Token ids the model knows; must cover the tokenizer.
        d_model: Width of the residual stream.
        n_layers: Transformer blocks.
        n_heads: Query heads (head_dim = d_model / n_heads).
        n_kv_heads: Key/value heads shared by groups of query heads (grouped-query attention); None: n_heads.
        max_seq_len: Longest sequence: training windows, and prompt + generated tokens.
        max_batch_size: Most prompts `generate` takes at once (its KV cache is sized to the actual batch).
        multiple_of: The SwiGLU hidden size is rounded up to a multiple of this.
        ffn_dim_multiplier: Scales the SwiGLU hidden size (Llama's rule); None: 1.
        ffn_hidden_size: An explicit SwiGLU hidden size, overriding the two fields above.
        norm_eps: RMSNorm epsilon.
        rope_theta: Base of the rotary embedding frequencies.
        weight_init_std: Std of the normal initialisation (residual projections are scaled by depth).
        weight_init_mean: Mean of the normal initialisation.
        zero_init_residual: Start each block's output projections (attention wo, feed-forward w2) at zero, so
            every block begins as the identity (torchvision's option of that name; modded-nanogpt's init).
        dropout: Dropout probability on attention, residual branches and embeddings.
        attention_dropout: Dropout on the attention probabilities alone; None: `dropout`. On a CPU, SDPA with
            attention dropout leaves its fused kernel (about twice as slow); bf16 windows of up to 128 tokens use
            the written-out attention, where it costs little.
        tie_embeddings: Share the input embedding with the output layer.
        pad_vocab_multiple: Output rows are padded to a multiple of this (faster matmuls; padded logits unused).
    """

    vocab_size: int = 128000
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: as many key/value heads as query heads (no grouping)
    max_seq_len: int = 2048
    max_batch_size: int = 32  # most prompts `generate` takes at once
    multiple_of: int = 256  # SwiGLU hidden size is rounded up to a multiple of this
    ffn_dim_multiplier: float | None = None
    # An explicit SwiGLU hidden size, overriding the two fields above: imported checkpoints (Hugging Face
    # `intermediate_size`) state theirs outright rather than as a rounding rule.
    ffn_hidden_size: int | None = None
    norm_eps: float = 1e-5
    rope_theta: float = 500000.0
    weight_init_std: float = 0.02
    weight_init_mean: float = 0.0
    zero_init_residual: bool = False
    dropout: float = 0.0
    attention_dropout: float | None = None
    # Llama ties nothing: untied input and output embeddings are what Meta and Hugging Face checkpoints
    # carry. Small models gain from tying (fewer parameters spent on the vocabulary), so it is a switch.
    tie_embeddings: bool = False
    # The output layer is padded to a multiple of this many rows (faster matmuls on GPUs); the padded logits
    # are cut off before the loss and before sampling, so they change nothing.
    pad_vocab_multiple: int = 64

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        positive = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len",
                    "max_batch_size", "multiple_of", "pad_vocab_multiple")
        for name in positive:
            if not _is_positive_int(getattr(self, name)):
                raise ValueError(f"TlamaConfig.{name}={getattr(self, name)!r}: must be a positive integer.")
        if self.ffn_hidden_size is not None and not _is_positive_int(self.ffn_hidden_size):
            raise ValueError(
                f"TlamaConfig.ffn_hidden_size={self.ffn_hidden_size!r}: must be a positive integer or None."
            )
        for name in ("norm_eps", "rope_theta", "weight_init_std"):
            if not _is_positive_number(getattr(self, name)):
                raise ValueError(f"TlamaConfig.{name}={getattr(self, name)!r}: must be a finite number > 0.")
        if self.ffn_dim_multiplier is not None and not _is_positive_number(self.ffn_dim_multiplier):
            raise ValueError(f"TlamaConfig.ffn_dim_multiplier={self.ffn_dim_multiplier!r}: must be a finite number "
                             "> 0 or None.")
        if not _is_number(self.weight_init_mean):
            raise ValueError(f"TlamaConfig.weight_init_mean={self.weight_init_mean!r}: must be a finite number.")
        for name in ("dropout", "attention_dropout"):
            value = getattr(self, name)
            if value is not None and not (_is_number(value) and 0.0 <= value < 1.0):
                raise ValueError(f"TlamaConfig.{name}={value!r}: must be in [0, 1).")
        for name in ("zero_init_residual", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"TlamaConfig.{name}={getattr(self, name)!r}: must be True or False.")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"TlamaConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                f"choose d_model as a multiple of n_heads (e.g. {self.n_heads * max(1, self.d_model // self.n_heads)})."
            )
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"TlamaConfig.n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}: "
                "each key/value head must serve a whole group of query heads; pick n_kv_heads among the "
                f"divisors of n_heads ({[d for d in range(1, self.n_heads + 1) if self.n_heads % d == 0]})."
            )
        if self.ffn_hidden_dim < 1:
            raise ValueError(f"TlamaConfig: ffn_dim_multiplier={self.ffn_dim_multiplier!r} leaves the SwiGLU hidden "
                             "size at 0; raise it, or set ffn_hidden_size.")
        if self.head_dim % 2:
            raise ValueError(
                f"TlamaConfig: head_dim = d_model / n_heads = {self.head_dim} is odd; rotary embeddings rotate "
                "pairs of channels, so it must be even."
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ffn_hidden_dim(self) -> int:
        """Llama's SwiGLU width: 2/3 of 4*d_model, scaled by ffn_dim_multiplier, rounded up to multiple_of.

        `ffn_hidden_size`, when set, is the width as it stands.
        """
        if self.ffn_hidden_size is not None:
            return self.ffn_hidden_size
        hidden = int(2 * 4 * self.d_model / 3)
        if self.ffn_dim_multiplier is not None:
            hidden = int(self.ffn_dim_multiplier * hidden)
        return self.multiple_of * ((hidden + self.multiple_of - 1) // self.multiple_of)

    @property
    def padded_vocab_size(self) -> int:
        m = self.pad_vocab_multiple
        return m * ((self.vocab_size + m - 1) // m)

    def to_dict(self) -> dict[str, Any]:
        """A plain dict of the fields (what checkpoints and YAML files carry)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TlamaConfig:
        """Rebuild a config from `to_dict()` output; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"TlamaConfig.from_dict: unknown field(s) {unknown}; known fields are {sorted(known)}.")
        return cls(**values)


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not a string, not NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive_number(value: Any) -> bool:
    return _is_number(value) and value > 0
