"""TlamaConfig: presets equal to the published config.json files, explicit head_dim, Llama 3.1 rope scaling."""

from __future__ import annotations

import pytest
import torch
import yaml

from tlama_core.cli.fit import TlamaCLI
from tlama_core.models import RopeScaling, TlamaConfig, Transformer

# The published Hugging Face config.json of each model (the fields that describe its shape), copied from the
# files themselves, independently of tlama_core/models/presets.py.
LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192,
               "rope_type": "llama3"}
PUBLISHED = {
    "llama-2-7b": {  # meta-llama/Llama-2-7b-hf (no rope_theta key: transformers' 10000.0)
        "model_type": "llama", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-05, "initializer_range": 0.02,
        "tie_word_embeddings": False, "rope_scaling": None},
    "llama-3-8b": {  # meta-llama/Meta-Llama-3-8B
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 500000.0, "initializer_range": 0.02,
        "tie_word_embeddings": False, "rope_scaling": None},
    "llama-3.1-8b": {  # meta-llama/Llama-3.1-8B
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "initializer_range": 0.02, "tie_word_embeddings": False, "rope_scaling": LLAMA3_ROPE},
    "llama-3.2-1b": {  # meta-llama/Llama-3.2-1B
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 2048, "intermediate_size": 8192,
        "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "initializer_range": 0.02, "tie_word_embeddings": True, "rope_scaling": {**LLAMA3_ROPE, "factor": 32.0}},
    "llama-3.2-3b": {  # meta-llama/Llama-3.2-3B
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 3072, "intermediate_size": 8192,
        "num_hidden_layers": 28, "num_attention_heads": 24, "num_key_value_heads": 8, "head_dim": 128,
        "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
        "initializer_range": 0.02, "tie_word_embeddings": True, "rope_scaling": {**LLAMA3_ROPE, "factor": 32.0}},
    "tinyllama-1.1b": {  # TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T
        "model_type": "llama", "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632,
        "num_hidden_layers": 22, "num_attention_heads": 32, "num_key_value_heads": 4,
        "max_position_embeddings": 2048, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "initializer_range": 0.02,
        "tie_word_embeddings": False, "rope_scaling": None},
    "mistral-7b": {  # mistralai/Mistral-7B-v0.1 (its sliding_window of 4096 has no counterpart here)
        "model_type": "mistral", "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "max_position_embeddings": 32768, "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096,
        "initializer_range": 0.02, "tie_word_embeddings": False},
    "smollm2-135m": {  # HuggingFaceTB/SmolLM2-135M
        "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
        "max_position_embeddings": 8192, "rms_norm_eps": 1e-05, "rope_theta": 100000,
        "initializer_range": 0.041666666666666664, "tie_word_embeddings": True, "rope_scaling": None},
    "gpt2-124m": {  # openai-community/gpt2 (n_inner null: a GELU MLP of 4 * n_embd; GPT-2 ties its embeddings)
        "model_type": "gpt2", "vocab_size": 50257, "n_embd": 768, "n_layer": 12, "n_head": 12, "n_positions": 1024,
        "n_ctx": 1024, "n_inner": None, "layer_norm_epsilon": 1e-05, "initializer_range": 0.02},
}


def expected_fields(hf: dict) -> dict:
    """TlamaConfig's fields for a published config.json, read the way its architecture defines them."""
    if hf["model_type"] == "gpt2":
        return {"vocab_size": hf["vocab_size"], "d_model": hf["n_embd"], "n_layers": hf["n_layer"],
                "n_heads": hf["n_head"], "n_kv_heads": hf["n_head"], "head_dim": hf["n_embd"] // hf["n_head"],
                "max_seq_len": hf["n_positions"], "norm_eps": hf["layer_norm_epsilon"], "tie_embeddings": True,
                "weight_init_std": hf["initializer_range"], "rope_scaling": None}
    rope = hf.get("rope_scaling")
    return {
        "vocab_size": hf["vocab_size"], "d_model": hf["hidden_size"], "n_layers": hf["num_hidden_layers"],
        "n_heads": hf["num_attention_heads"], "n_kv_heads": hf["num_key_value_heads"],
        "head_dim": hf.get("head_dim", hf["hidden_size"] // hf["num_attention_heads"]),
        "ffn_hidden_size": hf["intermediate_size"], "max_seq_len": hf["max_position_embeddings"],
        "norm_eps": hf["rms_norm_eps"], "rope_theta": hf.get("rope_theta", 10000.0),
        "tie_embeddings": hf["tie_word_embeddings"], "weight_init_std": hf["initializer_range"],
        "rope_scaling": None if rope is None else {
            "factor": rope["factor"], "low_freq_factor": rope["low_freq_factor"],
            "high_freq_factor": rope["high_freq_factor"],
            "original_max_seq_len": rope["original_max_position_embeddings"]},
    }


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_each_preset_equals_its_published_config_json(name):
    config = TlamaConfig.from_name(name)
    expected = expected_fields(PUBLISHED[name])
    assert {k: config.to_dict()[k] for k in expected} == expected
    assert config.name == name


def test_gpt2_preset_keeps_gpt2s_parameter_count_with_a_swiglu():
    """GPT-2's MLP is two 768 x 3072 matrices; a SwiGLU of three matrices 768 x 2048 holds the same weights."""
    config = TlamaConfig.from_name("gpt2-124m")
    assert 3 * config.ffn_hidden_size == 2 * 4 * PUBLISHED["gpt2-124m"]["n_embd"]
    with torch.device("meta"):
        assert round(Transformer(config).num_params() / 1e6) == 124


def test_from_name_takes_overrides_and_unknown_names_list_the_known_ones():
    config = TlamaConfig.from_name("llama-3.2-1b", max_seq_len=2048)
    assert (config.max_seq_len, config.head_dim, config.rope_scaling.factor) == (2048, 64, 32.0)
    with pytest.raises(ValueError, match="unknown model name 'llama-4'; known names: gpt2-124m, llama-2-7b, .*"
                                         "smollm2-135m, tinyllama-1.1b"):
        TlamaConfig.from_name("llama-4")


def test_fit_takes_a_preset_by_name_under_the_yaml_and_flags(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run.yaml").write_text(yaml.safe_dump({"model": {"config": {"name": "smollm2-135m",
                                                                            "n_layers": 2}}}))
    cli = TlamaCLI(["--config", "run.yaml", "--model.config.vocab_size", "1024", "--trainer.verbose", "false"])
    config = cli.model.config
    assert config == TlamaConfig.from_name("smollm2-135m", n_layers=2, vocab_size=1024)
    with pytest.raises(SystemExit) as exit_:
        TlamaCLI(["--model.config.name", "gpt-5"])
    assert exit_.value.code == 2
    assert 'Parser key "model.config.name": TlamaConfig: unknown model name' in capsys.readouterr().err


def test_explicit_head_dim_need_not_divide_d_model():
    config = TlamaConfig(vocab_size=64, d_model=48, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=16, max_seq_len=8)
    model = Transformer(config)
    assert model.layers[0].attention.wq.weight.shape == (64, 48)  # 4 heads x 16, from 48 channels
    assert model(torch.zeros(1, 8, dtype=torch.long))[0].shape == (1, 8, 64)
    assert TlamaConfig(vocab_size=64, d_model=48, n_layers=1, n_heads=4).head_dim == 12  # None: d_model / n_heads
    with pytest.raises(ValueError, match="head_dim=7 is odd"):
        TlamaConfig(vocab_size=64, d_model=48, n_layers=1, n_heads=4, head_dim=7)


def test_rope_scaling_round_trips_through_the_checkpoint_dict_and_checks_its_values():
    config = TlamaConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=2, rope_scaling=RopeScaling(factor=32.0))
    assert config.to_dict()["rope_scaling"] == {"factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                "original_max_seq_len": 8192}
    assert TlamaConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="high_freq_factor=1.0 must exceed low_freq_factor=2.0"):
        RopeScaling(low_freq_factor=2.0, high_freq_factor=1.0)
    with pytest.raises(ValueError, match=r"RopeScaling.factor=nan"):
        RopeScaling(factor=float("nan"))
