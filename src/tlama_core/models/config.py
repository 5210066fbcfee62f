"""TlamaConfig: the shape of a Llama-style model as one plain dataclass.

The same typed fields are the Python API, the YAML keys of a LightningCLI run and the `config` dict stored in
every checkpoint, so a model can always be rebuilt from what a run wrote.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from tlama_core.models.presets import PRESETS


@dataclass
class RopeScaling:
    """Llama 3.1's rotary frequency scaling (Hugging Face `rope_type: llama3`), which stretches a model trained on
    `original_max_seq_len` positions to longer contexts.

    Frequencies whose wavelength exceeds original_max_seq_len / low_freq_factor are divided by `factor`, those
    shorter than original_max_seq_len / high_freq_factor are kept, and those between are blended smoothly.
    Llama 3.1 8B: factor 8; Llama 3.2 1B and 3B: factor 32; all with 1, 4 and 8192.
    """

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_seq_len: int = 8192

    def __post_init__(self) -> None:
        for name in ("factor", "low_freq_factor", "high_freq_factor"):
            if not _is_positive_number(getattr(self, name)):
                raise ValueError(f"RopeScaling.{name}={getattr(self, name)!r}: must be a finite number > 0.")
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError(f"RopeScaling: high_freq_factor={self.high_freq_factor} must exceed low_freq_factor="
                             f"{self.low_freq_factor} (they bound the blended band of frequencies).")
        if not _is_positive_int(self.original_max_seq_len):
            raise ValueError(f"RopeScaling.original_max_seq_len={self.original_max_seq_len!r}: must be a positive "
                             "integer.")


@dataclass
class TlamaConfig:
    """Hyper-parameters of a Llama decoder. Defaults are a Llama-3-8B shape, as in the original tlama-core.

    Args:
        vocab_size: Token ids the model knows; must cover the tokenizer.
        d_model: Width of the residual stream.
        n_layers: Transformer blocks.
        n_heads: Query heads.
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
        head_dim: Width of each attention head; None: d_model / n_heads. Stated outright by models whose heads
            do not divide d_model evenly (n_heads * head_dim may differ from d_model).
        rope_scaling: Llama 3.1's rotary frequency scaling (RopeScaling); None: plain rotary embeddings.
        name: The preset this shape was made from (`TlamaConfig.from_name`), a label only: the fields are the
            shape. In `tlama fit`, `--model.config.name NAME` takes every field the YAML and flags leave out
            from that preset.
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
    head_dim: int | None = None  # None: d_model / n_heads
    rope_scaling: RopeScaling | None = None
    name: str | None = None

    def __post_init__(self) -> None:
        if self.n_kv_heads is None:
            self.n_kv_heads = self.n_heads
        if isinstance(self.rope_scaling, dict):  # from a checkpoint's or a YAML's plain dict
            self.rope_scaling = RopeScaling(**self.rope_scaling)
        if self.rope_scaling is not None and not isinstance(self.rope_scaling, RopeScaling):
            raise ValueError(f"TlamaConfig.rope_scaling={self.rope_scaling!r}: must be a RopeScaling, its dict, "
                             "or None.")
        if self.name is not None:
            preset(self.name)  # an unknown name is an error listing the known ones
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
        if self.head_dim is not None and not _is_positive_int(self.head_dim):
            raise ValueError(f"TlamaConfig.head_dim={self.head_dim!r}: must be a positive integer or None.")
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"TlamaConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                f"choose d_model as a multiple of n_heads (e.g. {self.n_heads * max(1, self.d_model // self.n_heads)}) "
                "or set head_dim."
            )
        if self.head_dim is None:
            self.head_dim = self.d_model // self.n_heads
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
                f"TlamaConfig: head_dim={self.head_dim} is odd; rotary embeddings rotate pairs of channels, so it "
                "must be even."
            )

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
        """A plain dict of the fields (what checkpoints and YAML files carry); rope_scaling as a dict."""
        return dataclasses.asdict(self)

    def shape_dict(self) -> dict[str, Any]:
        """`to_dict()` without `name`, a label: what two configs must share to describe the same model."""
        return {k: v for k, v in self.to_dict().items() if k != "name"}

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> TlamaConfig:
        """The shape of a published model (`tlama_core.models.presets`: llama-3.2-1b, smollm2-135m, ...), its
        fields as in its Hugging Face config.json, with `overrides` on top (e.g. max_seq_len=2048)."""
        return cls(**{**preset(name), "name": name, **overrides})

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TlamaConfig:
        """Rebuild a config from `to_dict()` output; unknown keys are an error that names them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"TlamaConfig.from_dict: unknown field(s) {unknown}; known fields are {sorted(known)}.")
        return cls(**values)


def preset(name: str) -> dict[str, Any]:
    """The TlamaConfig fields of a named preset; an unknown name is a ValueError listing the known ones."""
    if name not in PRESETS:
        raise ValueError(f"TlamaConfig: unknown model name {name!r}; known names: {', '.join(sorted(PRESETS))}.")
    return PRESETS[name]


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _is_number(value: Any) -> bool:
    """A finite int or float (not a bool, not a string, not NaN or inf)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_positive_number(value: Any) -> bool:
    return _is_number(value) and value > 0
