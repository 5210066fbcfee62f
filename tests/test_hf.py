"""Hugging Face Llama in and out: logits, generation, config.json and the tokenizer agree with transformers."""

import copy
import dataclasses
import json

import pytest
import sentencepiece as spm
import torch

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM  # noqa: E402

from tlama_core.models import (  # noqa: E402
    TlamaConfig,
    Transformer,
    find_weights,
    from_hf,
    generate,
    load_model,
    save_safetensors,
    to_hf,
)
from tlama_core.models.hf import config_from_hf, to_hf_state_dict  # noqa: E402
from tlama_core.models.transformer import rope_table  # noqa: E402
from tlama_core.models.weights import load_safetensors  # noqa: E402

SHAPES = {"gqa": dict(n_heads=4, n_kv_heads=2), "mha": dict(n_heads=4, n_kv_heads=4)}


def tiny_model(tie: bool = False, shape: str = "gqa", seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    config = TlamaConfig(vocab_size=100, d_model=64, n_layers=2, max_seq_len=64, multiple_of=16,
                         rope_theta=10000.0, tie_embeddings=tie, **SHAPES[shape])
    return Transformer(config).eval()


def random_hf_model(tie: bool = False, **overrides) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=90, hidden_size=64, intermediate_size=120, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rms_norm_eps=1e-5, rope_theta=5000.0, tie_word_embeddings=tie,
                         attn_implementation="sdpa", **overrides)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # HF initialises norms to 1: perturb them so a misplaced norm weight shows
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits


@pytest.mark.parametrize("shape", ["gqa", "mha"])
@pytest.mark.parametrize("tie", [False, True])
def test_logits_match_hf_llama_with_the_same_weights(tie, shape):
    ours = tiny_model(tie, shape)
    c = ours.config
    hf = LlamaForCausalLM(LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.d_model, intermediate_size=c.ffn_hidden_dim,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
        max_position_embeddings=c.max_seq_len, rms_norm_eps=c.norm_eps, rope_theta=c.rope_theta,
        tie_word_embeddings=tie, attn_implementation="sdpa",
    )).eval()
    hf.load_state_dict(to_hf_state_dict(ours), strict=not tie)  # tied: lm_head comes with embed_tokens
    tokens = torch.randint(0, 100, (2, 24))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens)[0], hf_logits(hf, tokens), rtol=0, atol=1e-4)


@pytest.mark.parametrize("tie", [False, True])
def test_exported_directory_loads_as_llama_with_equal_logits(tmp_path, tie):
    ours = tiny_model(tie)
    to_hf(ours, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.intermediate_size == ours.config.ffn_hidden_dim
    assert hf.config.vocab_size == 100  # padded rows sliced off
    assert hf.config.tie_word_embeddings == tie
    tokens = torch.randint(0, 100, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens)[0], hf_logits(hf, tokens), rtol=0, atol=1e-4)
    assert not list(tmp_path.glob("*.tmp"))


@pytest.mark.parametrize("tie", [False, True])
def test_hf_model_loads_into_ours_with_equal_logits(tmp_path, tie):
    hf = random_hf_model(tie)
    hf.save_pretrained(tmp_path)
    ours = load_model(tmp_path)
    assert ours.config.ffn_hidden_dim == 120 and ours.config.rope_theta == 5000.0
    assert ours.config.tie_embeddings == tie and not ours.training
    tokens = torch.randint(0, 90, (2, 20))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens)[0], hf_logits(hf, tokens), rtol=0, atol=1e-4)


def test_sharded_hf_checkpoint_loads(tmp_path):
    hf = random_hf_model()
    hf.save_pretrained(tmp_path, max_shard_size="100KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    tokens = torch.randint(0, 90, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(from_hf(tmp_path)(tokens)[0], hf_logits(hf, tokens), rtol=0, atol=1e-4)


def test_hf_greedy_generate_from_exported_weights_equals_ours(tmp_path):
    ours = tiny_model()
    to_hf(ours, tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation="sdpa").eval()
    prompt = torch.randint(0, 100, (2, 6))
    theirs = hf.generate(prompt, attention_mask=torch.ones_like(prompt), do_sample=False, max_new_tokens=24,
                         min_new_tokens=24, eos_token_id=None, pad_token_id=0)
    assert torch.equal(generate(ours, prompt, max_new_tokens=24, temperature=0), theirs)


@pytest.mark.parametrize(("field", "value"), [
    ("rope_scaling", {"rope_type": "llama3", "factor": 8.0}),  # llama3 without its frequency factors
    ("rope_scaling", {"type": "yarn", "factor": 4.0}),
    ("rope_parameters", {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    ("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5}),
    ("attention_bias", True),
    ("mlp_bias", True),
    ("hidden_act", "gelu"),
    ("model_type", "mistral"),
])
def test_unsupported_hf_variants_are_errors_naming_the_field(tmp_path, field, value):
    random_hf_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(ValueError, match=rf"config\.json: {field}="):
        from_hf(tmp_path)


# Llama 3.1/3.2 rope scaling, small enough to matter at 40 positions: with head_dim 16 and theta 10000 the
# wavelengths are 6.3 (between the 16/4 and 16/1 bounds: blended), 20, 63, ... (past 16: divided by the factor).
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16}
VARIANTS = {
    "llama-3.1": dict(rope_scaling=LLAMA3_ROPE, rope_theta=10000.0, hidden_size=64, num_attention_heads=4),
    "head_dim": dict(head_dim=32, hidden_size=64, num_attention_heads=4),  # 4 x 32 != 64
    "llama-3.2": dict(rope_scaling=LLAMA3_ROPE, rope_theta=10000.0, head_dim=16, hidden_size=48,
                      num_attention_heads=4, tie_word_embeddings=True),
}


def variant_hf_model(variant: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=90, intermediate_size=96, num_hidden_layers=2, num_key_value_heads=2,
                         max_position_embeddings=64, rms_norm_eps=1e-5, attn_implementation="sdpa",
                         **{"rope_theta": 5000.0, **copy.deepcopy(VARIANTS[variant])})  # transformers edits dicts
    return LlamaForCausalLM(config).eval()


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("written_as", ["transformers 5", "published config.json"])
def test_llama_3_variants_load_with_equal_logits(tmp_path, variant, written_as):
    hf = variant_hf_model(variant)
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    if written_as == "published config.json":  # Meta's files: rope_scaling, and rope_theta at the top level
        rope = config.pop("rope_parameters")
        config["rope_theta"] = rope.pop("rope_theta")
        config["rope_scaling"] = rope if rope["rope_type"] != "default" else None
        (tmp_path / "config.json").write_text(json.dumps(config))
    ours = load_model(tmp_path)
    scaling = VARIANTS[variant].get("rope_scaling")
    assert ours.config.head_dim == VARIANTS[variant].get("head_dim", 16)
    assert (ours.config.rope_scaling is not None) == (scaling is not None)
    tokens = torch.randint(0, 90, (2, 40))
    with torch.no_grad():
        logits = ours(tokens)[0]
        torch.testing.assert_close(logits, hf_logits(hf, tokens), rtol=0, atol=1e-4)
        if scaling is not None:  # the scaling changes the logits: the comparison above could fail without it
            ours.rope = rope_table(dataclasses.replace(ours.config, rope_scaling=None))
            assert (ours(tokens)[0] - logits).abs().max() > 1e-3


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_llama_3_variants_export_to_transformers_with_equal_logits(tmp_path, variant):
    ours = from_hf(save_variant(tmp_path / "src", variant))
    to_hf(ours, tmp_path / "out")
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="sdpa").eval()
    assert hf.config.head_dim == ours.config.head_dim
    if ours.config.rope_scaling is not None:
        assert exported["rope_scaling"] == LLAMA3_ROPE  # what transformers 4.x reads
        assert hf.config.rope_parameters == {**LLAMA3_ROPE, "rope_theta": 10000.0}
    tokens = torch.randint(0, 90, (2, 40))
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens)[0], hf_logits(hf, tokens), rtol=0, atol=1e-4)


def save_variant(directory, variant: str):
    variant_hf_model(variant).save_pretrained(directory)
    return directory


def test_legacy_config_keys_are_read():
    legacy = {"model_type": "llama", "vocab_size": 50, "hidden_size": 32, "intermediate_size": 80,
              "num_hidden_layers": 1, "num_attention_heads": 4, "max_position_embeddings": 32,
              "rope_theta": 1234.0, "rope_scaling": None}
    config = config_from_hf(legacy)
    assert (config.rope_theta, config.n_kv_heads, config.ffn_hidden_dim) == (1234.0, 4, 80)


def test_hf_directory_without_safetensors_is_an_error_naming_it(tmp_path):
    random_hf_model().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        from_hf(tmp_path)


def test_truncated_hf_weights_are_an_error_naming_the_file(tmp_path):
    random_hf_model().save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:2000])
    with pytest.raises(ValueError, match=r"model\.safetensors: not a readable safetensors file"):
        from_hf(tmp_path)


def test_hf_weights_that_miss_tensors_are_an_error_naming_the_directory(tmp_path):
    random_hf_model().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 3}))
    with pytest.raises(ValueError, match=rf"{tmp_path}: .*missing \['model\.layers\.2\."):
        from_hf(tmp_path)


def test_bfloat16_hf_weights_load_into_an_fp32_model(tmp_path):
    hf = random_hf_model()
    hf.to(torch.bfloat16).save_pretrained(tmp_path)
    ours = from_hf(tmp_path)
    assert ours.tok_embeddings.weight.dtype == torch.float32
    assert torch.equal(ours.norm.weight, hf.model.norm.weight.float())


def test_tlama_and_hf_directories_are_not_confused(tmp_path):
    to_hf(tiny_model(), tmp_path / "hf")
    save_safetensors(tiny_model(), tmp_path / "ours")
    assert find_weights(tmp_path / "hf").kind == "hugging face"
    assert find_weights(tmp_path / "ours").kind == "safetensors"
    with pytest.raises(ValueError, match="Hugging Face weights, not tlama-core ones"):
        load_safetensors(tmp_path / "hf")
    with pytest.raises(ValueError, match="tlama-core weights, not Hugging Face ones"):
        from_hf(tmp_path / "ours")


TEXTS = ["First Citizen:\nBefore we proceed any further, hear me speak.", "the quick  brown fox\n\njumps",
         "Ünïcödé, digits 12345 and an emoji 🙂", "trailing spaces   ", "  leading spaces", "x <s> y </s> z"]


def train_sentencepiece(tmp_path, **options) -> str:
    corpus = tmp_path / "corpus.txt"
    words = " ".join(TEXTS).split()
    lines = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(9)) for i in range(400)]
    corpus.write_text("\n".join(lines + TEXTS))
    prefix = tmp_path / "sp"
    options = {"vocab_size": 200, "model_type": "bpe", "character_coverage": 1.0, "minloglevel": 2, **options}
    spm.SentencePieceTrainer.train(input=str(corpus), model_prefix=str(prefix), **options)
    return str(prefix) + ".model"


@pytest.mark.parametrize("options", [
    {},  # sentencepiece's defaults: NFKC normalization, whitespace runs collapsed, a dummy prefix
    {"normalization_rule_name": "identity", "remove_extra_whitespaces": False, "add_dummy_prefix": False,
     "user_defined_symbols": ["\n"], "split_digits": True},  # tlama_core.data's lossless settings
    {"normalization_rule_name": "identity", "remove_extra_whitespaces": False, "byte_fallback": True,
     "vocab_size": 400},  # Llama's (256 byte pieces)
], ids=["spm-defaults", "tlama-data", "llama-style"])
def test_exported_tokenizer_encodes_like_sentencepiece(tmp_path, options):
    model_file = train_sentencepiece(tmp_path, **options)
    sp = spm.SentencePieceProcessor(model_file=model_file)
    out = to_hf(tiny_model(), tmp_path / "hf", tokenizer_path=model_file)
    tokenizer = AutoTokenizer.from_pretrained(out)
    for text in TEXTS:
        assert tokenizer(text).input_ids == sp.encode(text), text
    config = json.loads((out / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"]) == (sp.bos_id(), sp.eos_id())
    assert tokenizer.eos_token_id == sp.eos_id()


def test_export_without_tokenizer_leaves_special_ids_unset(tmp_path):
    config = json.loads((to_hf(tiny_model(), tmp_path) / "config.json").read_text())
    assert config["bos_token_id"] is None and config["eos_token_id"] is None


def test_a_tied_export_that_also_stores_lm_head_loads(tmp_path):
    from safetensors.torch import load_file, save_file

    hf = random_hf_model(tie=True)
    hf.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()  # the shared matrix stored twice
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    tokens = torch.randint(0, 90, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(from_hf(tmp_path)(tokens)[0], hf_logits(hf, tokens), rtol=0, atol=1e-4)
    tensors["lm_head.weight"] += 1.0
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="lm_head.weight differs from embed_tokens"):
        from_hf(tmp_path)


def test_weights_that_do_not_fit_config_json_are_errors_naming_the_directory(tmp_path):
    hf = random_hf_model()
    hf.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "intermediate_size": 128}))
    with pytest.raises(ValueError, match=rf"{tmp_path}: the weights do not fit its config.json"):
        from_hf(tmp_path)
    for vocab in (50, 80):  # fewer rows than the weights hold, also within the padding
        (tmp_path / "config.json").write_text(json.dumps({**config, "vocab_size": vocab}))
        with pytest.raises(ValueError, match=f"embed_tokens.weight has 90 rows, config.json's vocab_size is {vocab}"):
            from_hf(tmp_path)


def test_export_into_a_sharded_models_directory_is_refused(tmp_path):
    random_hf_model().save_pretrained(tmp_path, max_shard_size="100KB")
    with pytest.raises(ValueError, match="holds a sharded model"):
        to_hf(tiny_model(), tmp_path)
