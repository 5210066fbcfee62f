"""Shapes of published models, by name: `TlamaConfig.from_name(name)` and `tlama fit --model.config.name NAME`.

Each entry is the model's Hugging Face config.json in TlamaConfig's terms (hidden_size -> d_model,
intermediate_size -> ffn_hidden_size, initializer_range -> weight_init_std, ...). Two are shapes only: Mistral 7B
attends within a 4,096-token sliding window, which this model does not implement (identical up to 4,096
positions); GPT-2 has learned positions, LayerNorm and a GELU MLP of 3,072, here rotary embeddings, RMSNorm and
a SwiGLU of 2,048, the width that keeps its 124M parameters.
"""

from __future__ import annotations

from typing import Any

_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_seq_len": 8192}

PRESETS: dict[str, dict[str, Any]] = {
    "llama-2-7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=32,
                       ffn_hidden_size=11008, max_seq_len=4096, norm_eps=1e-5, rope_theta=10000.0),
    "llama-3-8b": dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                       ffn_hidden_size=14336, max_seq_len=8192, norm_eps=1e-5, rope_theta=500000.0),
    "llama-3.1-8b": dict(vocab_size=128256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                         ffn_hidden_size=14336, max_seq_len=131072, norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling={"factor": 8.0, **_LLAMA3_ROPE}),
    "llama-3.2-1b": dict(vocab_size=128256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
                         ffn_hidden_size=8192, max_seq_len=131072, norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling={"factor": 32.0, **_LLAMA3_ROPE}, tie_embeddings=True),
    "llama-3.2-3b": dict(vocab_size=128256, d_model=3072, n_layers=28, n_heads=24, n_kv_heads=8, head_dim=128,
                         ffn_hidden_size=8192, max_seq_len=131072, norm_eps=1e-5, rope_theta=500000.0,
                         rope_scaling={"factor": 32.0, **_LLAMA3_ROPE}, tie_embeddings=True),
    "tinyllama-1.1b": dict(vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4,
                           ffn_hidden_size=5632, max_seq_len=2048, norm_eps=1e-5, rope_theta=10000.0),
    "mistral-7b": dict(vocab_size=32000, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                       ffn_hidden_size=14336, max_seq_len=32768, norm_eps=1e-5, rope_theta=10000.0),
    "smollm2-135m": dict(vocab_size=49152, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3,
                         ffn_hidden_size=1536, max_seq_len=8192, norm_eps=1e-5, rope_theta=100000.0,
                         weight_init_std=0.041666666666666664, tie_embeddings=True),
    "gpt2-124m": dict(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, n_kv_heads=12,
                      ffn_hidden_size=2048, max_seq_len=1024, norm_eps=1e-5, rope_theta=10000.0,
                      tie_embeddings=True),
}
