"""TlamaConfig and the Transformer: validation, the shape of the network and what it computes."""

import math

import pytest
import torch
import torch.nn.functional as F

from tlama_core.models import TlamaConfig, Transformer, generate, transformer
from tlama_core.models.transformer import EXPLICIT_ATTENTION_MAX_LEN, apply_rope, causal_attention, rope_table


def tiny(**overrides) -> TlamaConfig:
    values = dict(vocab_size=100, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=64,
                  multiple_of=16, rope_theta=10000.0)
    return TlamaConfig(**{**values, **overrides})


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(tiny(**overrides))


# TlamaConfig


def test_config_defaults_are_a_llama3_8b_shape():
    c = TlamaConfig()
    assert (c.d_model, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size) == (4096, 32, 32, 32, 128000)
    assert (c.multiple_of, c.norm_eps, c.rope_theta) == (256, 1e-5, 500000.0)
    assert c.head_dim == 128


def test_documented_example_config_builds_a_model():
    config = TlamaConfig(vocab_size=32000, d_model=1024, n_layers=12, n_heads=16, n_kv_heads=4, max_seq_len=2048,
                         max_batch_size=32)
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = Transformer(config)
    assert model.layers[0].attention.wk.weight.shape == (4 * 64, 1024)
    assert model.output.weight.shape == (32000, 1024)  # 32000 is already a multiple of 64
    assert config.ffn_hidden_dim == 2816  # 2/3 * 4 * 1024 = 2730, rounded up to a multiple of 256


def test_config_rejects_d_model_not_divisible_by_n_heads():
    with pytest.raises(ValueError, match=r"d_model=100 is not divisible by n_heads=16"):
        TlamaConfig(d_model=100, n_heads=16)


def test_config_rejects_n_heads_not_divisible_by_n_kv_heads():
    with pytest.raises(ValueError, match=r"n_heads=16 is not divisible by n_kv_heads=3"):
        TlamaConfig(d_model=1024, n_heads=16, n_kv_heads=3)


@pytest.mark.parametrize("field", ["vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "max_seq_len",
                                   "max_batch_size", "multiple_of", "pad_vocab_multiple", "ffn_hidden_size"])
@pytest.mark.parametrize("value", [0, -4])
def test_config_rejects_sizes_that_are_not_positive(field, value):
    with pytest.raises(ValueError, match=rf"TlamaConfig\.{field}={value}\b"):
        tiny(**{field: value})


@pytest.mark.parametrize("field", ["dropout", "attention_dropout"])
@pytest.mark.parametrize("value", [-0.1, 1.0])
def test_config_rejects_dropout_outside_0_1(field, value):
    with pytest.raises(ValueError, match=rf"TlamaConfig\.{field}={value}: must be in \[0, 1\)"):
        tiny(**{field: value})


@pytest.mark.parametrize("field, value", [
    ("norm_eps", float("nan")), ("rope_theta", float("inf")), ("weight_init_std", "0.02"),
    ("ffn_dim_multiplier", float("nan")), ("weight_init_mean", float("nan")), ("tie_embeddings", "no"),
    ("zero_init_residual", 1), ("dropout", float("nan")),
])
def test_config_rejects_values_of_the_wrong_kind_naming_the_field(field, value):
    with pytest.raises(ValueError, match=rf"TlamaConfig\.{field}="):
        tiny(**{field: value})


def test_config_rejects_a_multiplier_that_leaves_no_feed_forward():
    with pytest.raises(ValueError, match="ffn_dim_multiplier=0.001 leaves the SwiGLU hidden size at 0"):
        tiny(ffn_dim_multiplier=0.001, multiple_of=1)


def test_config_round_trips_through_a_dict():
    config = tiny(ffn_dim_multiplier=1.3, tie_embeddings=True, dropout=0.1)
    assert TlamaConfig.from_dict(config.to_dict()) == config


def test_config_from_dict_names_unknown_keys():
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['hidden_size'\]"):
        TlamaConfig.from_dict({**tiny().to_dict(), "hidden_size": 64})


def test_ffn_hidden_size_overrides_the_rounding_rule():
    assert tiny().ffn_hidden_dim == 176  # int(2/3 * 4 * 64) = 170, rounded up to a multiple of 16
    assert tiny(ffn_hidden_size=100).ffn_hidden_dim == 100
    assert Transformer(tiny(ffn_hidden_size=100)).layers[0].feed_forward.w1.weight.shape == (100, 64)


# The network


@pytest.mark.parametrize("form", ["complex", "real (inside torch.compile)"])
def test_rope_rotates_each_channel_pair_by_its_position_angle(form):
    x = torch.randn(1, 5, 2, 8)  # (B, T, heads, D)
    config = TlamaConfig(vocab_size=8, d_model=16, n_layers=1, n_heads=2, max_seq_len=5, rope_theta=10000.0)
    pairs = rope_table(config)[:, None]  # (T, 1, D/2, 2)
    out = apply_rope(x, torch.view_as_complex(pairs) if form == "complex" else pairs)
    pos = torch.arange(5.0)[:, None, None]  # (T, 1, 1)
    angle = pos * 10000.0 ** (-torch.arange(0, 8, 2) / 8)  # (T, 1, D/2)
    a, b = x[..., 0::2], x[..., 1::2]
    torch.testing.assert_close(out[..., 0::2], a * angle.cos() - b * angle.sin())
    torch.testing.assert_close(out[..., 1::2], a * angle.sin() + b * angle.cos())


@pytest.mark.slow
def test_compiled_model_has_no_complex_operators_and_gives_the_eager_logits():
    """Inductor generates no code for complex numbers (it warns and falls back to unfused eager kernels): the
    compiled graph must rotate in reals."""
    import warnings

    model = tiny_model().eval()
    tokens = torch.randint(0, 100, (2, 12))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(model)(tokens)[0]
    assert not [w for w in caught if "complex" in str(w.message)]
    torch.testing.assert_close(compiled, model(tokens)[0], rtol=1e-4, atol=1e-5)


def test_changing_a_future_token_leaves_earlier_logits_unchanged():
    model = tiny_model().eval()
    tokens = torch.randint(0, 100, (1, 12))
    changed = tokens.clone()
    changed[0, 8] = (tokens[0, 8] + 1) % 100
    a, b = model(tokens)[0], model(changed)[0]
    torch.testing.assert_close(a[:, :8], b[:, :8])
    assert not torch.allclose(a[:, 8:], b[:, 8:])


def test_rows_of_a_batch_are_computed_independently():
    model = tiny_model().eval()
    tokens = torch.randint(0, 100, (3, 10))
    batched = model(tokens)[0]
    for i in range(3):
        torch.testing.assert_close(batched[i], model(tokens[i:i + 1])[0][0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tie", [False, True])
def test_parameter_count_matches_the_closed_form(tie):
    c = tiny(tie_embeddings=tie)
    d, kv, f, v = c.d_model, c.n_kv_heads * c.head_dim, c.ffn_hidden_dim, c.padded_vocab_size
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f + 2 * d  # wq, wo; wk, wv; w1, w2, w3; two norms
    expected = c.n_layers * per_layer + d + v * d * (1 if tie else 2)  # final norm; embeddings (and output)
    assert Transformer(c).num_params() == expected
    assert kv == d // 2  # grouped-query: 2 of 4 heads' worth of keys and values


def test_fresh_model_loss_is_about_ln_vocab_size():
    model = tiny_model(vocab_size=1000, multiple_of=16)
    tokens = torch.randint(0, 1000, (4, 33))
    _, loss = model(tokens[:, :-1], targets=tokens[:, 1:])
    assert abs(loss.item() - math.log(1000)) < 0.1


def test_loss_falls_when_overfitting_one_batch():
    model = tiny_model()
    tokens = torch.randint(0, 100, (4, 17))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        _, loss = model(tokens[:, :-1], targets=tokens[:, 1:])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_cached_greedy_generation_equals_recomputing_without_cache():
    model = tiny_model().eval()
    prompt = torch.randint(0, 100, (2, 5))
    generated = generate(model, prompt, max_new_tokens=20, temperature=0)
    expected = prompt
    with torch.no_grad():
        for _ in range(20):
            next_id = model(expected)[0][:, -1].argmax(-1)  # (B,): the full sequence, no cache
            expected = torch.cat((expected, next_id[:, None]), dim=1)
    assert torch.equal(generated, expected)


def test_cached_forward_in_chunks_equals_one_full_pass():
    model = tiny_model().eval()
    tokens = torch.randint(0, 100, (2, 12))
    with torch.no_grad(), model.kv_cache(2):
        first, second = model(tokens[:, :5])[0], model(tokens[:, 5:], start_pos=5)[0]  # second chunk needs a mask
        full = model(tokens)[0]
    torch.testing.assert_close(torch.cat((first, second), dim=1), full, rtol=1e-5, atol=1e-5)


def test_padded_vocabulary_rows_are_never_sampled():
    model = tiny_model()  # vocab 100 padded to 128 rows
    assert model.output.weight.shape[0] == 128
    with torch.no_grad():
        model.output.weight[100:] = 100.0  # padding rows would win every draw if they were logits
    prompt = torch.zeros(4, 1, dtype=torch.long)
    assert model(prompt)[0].shape[-1] == 100
    for temperature in (0, 1.0):
        assert generate(model, prompt, max_new_tokens=30, temperature=temperature).max() < 100


def test_generation_past_max_seq_len_raises_unless_asked_to_crop():
    model = tiny_model(max_seq_len=16)
    with pytest.raises(ValueError, match="= 17 exceeds max_seq_len=16.*crop_context=True"):
        generate(model, torch.zeros(1, 10, dtype=torch.long), max_new_tokens=7)
    assert generate(model, torch.zeros(1, 10, dtype=torch.long), max_new_tokens=6).shape == (1, 16)


@pytest.mark.parametrize("prompt_len", [5, 20])  # a prompt shorter and one longer than the window
def test_generation_with_crop_context_reads_the_latest_window_as_nanogpt_does(prompt_len):
    model = tiny_model(max_seq_len=16).eval()
    prompt = torch.randint(0, 100, (2, prompt_len))
    generated = generate(model, prompt, max_new_tokens=30, temperature=0, crop_context=True)
    expected = prompt
    with torch.no_grad():
        for _ in range(30):
            next_id = model(expected[:, -16:])[0][:, -1].argmax(-1)  # no cache: the last 16 ids from position 0
            expected = torch.cat((expected, next_id[:, None]), dim=1)
    assert generated.shape == (2, prompt_len + 30)
    assert torch.equal(generated, expected)


def test_forward_past_max_seq_len_raises():
    with pytest.raises(ValueError, match="exceed max_seq_len=16"):
        tiny_model(max_seq_len=16)(torch.zeros(1, 17, dtype=torch.long))


def test_generation_stops_once_every_row_has_produced_eos():
    model = tiny_model().eval()
    prompt = torch.randint(0, 100, (1, 4))
    first = generate(model, prompt, max_new_tokens=1, temperature=0)[0, -1].item()
    out = generate(model, prompt, max_new_tokens=10, temperature=0, eos_id=first)
    assert out.shape == (1, 5) and out[0, -1] == first


def test_activation_checkpointing_gives_the_same_gradients():
    model = tiny_model()
    tokens = torch.randint(0, 100, (2, 17))

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        model.zero_grad()
        model.activation_checkpointing = checkpointing
        model(tokens[:, :-1], targets=tokens[:, 1:])[1].backward()
        return {name: p.grad.clone() for name, p in model.named_parameters()}

    plain, checkpointed = grads(False), grads(True)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], msg=name)


def record_attention(monkeypatch) -> list[tuple[str, float]]:
    """Which attention ran (SDPA or the explicit one) and with what dropout, call by call."""
    seen = []
    sdpa, explicit = F.scaled_dot_product_attention, transformer.causal_attention

    def recording_sdpa(*args, **kwargs):
        seen.append(("sdpa", kwargs["dropout_p"]))
        return sdpa(*args, **kwargs)

    def recording_explicit(*args, **kwargs):
        seen.append(("explicit", kwargs["dropout_p"]))
        return explicit(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording_sdpa)
    monkeypatch.setattr(transformer, "causal_attention", recording_explicit)
    return seen


@pytest.mark.parametrize("dropout, attention_dropout, expected", [(0.3, None, 0.3), (0.3, 0.0, 0.0), (0.0, 0.2, 0.2)])
@pytest.mark.parametrize("bf16", [True, False])  # the explicit attention and SDPA
def test_attention_dropout_defaults_to_dropout_and_can_be_set_apart(monkeypatch, dropout, attention_dropout, expected,
                                                                    bf16):
    seen = record_attention(monkeypatch)
    model = tiny_model(dropout=dropout, attention_dropout=attention_dropout)
    with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
        model(torch.randint(0, 100, (2, 8)))
        assert seen and set(seen) == {("explicit" if bf16 else "sdpa", expected)}
        model.eval()
        model(torch.randint(0, 100, (2, 8)))
    assert seen[-1][1] == 0.0  # no dropout at evaluation


@pytest.mark.parametrize("n_heads, n_kv_heads", [(4, 2), (4, 4), (6, 1)])
def test_explicit_attention_matches_sdpa_values_and_gradients(n_heads, n_kv_heads):
    torch.manual_seed(0)
    q = torch.randn(3, n_heads, 20, 16, dtype=torch.float64, requires_grad=True)
    k = torch.randn(3, n_kv_heads, 20, 16, dtype=torch.float64, requires_grad=True)
    v = torch.randn(3, n_kv_heads, 20, 16, dtype=torch.float64, requires_grad=True)
    out = causal_attention(q, k, v)
    grads = torch.autograd.grad(out.pow(2).sum(), (q, k, v))
    ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    ref_grads = torch.autograd.grad(ref.pow(2).sum(), (q, k, v))
    torch.testing.assert_close(out, ref)
    for g, r in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, r)


def test_explicit_attention_is_causal():
    q, k, v = torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    changed_future = v.clone()
    changed_future[:, :, 4:] += 1.0
    a, b = causal_attention(q, k, v), causal_attention(q, k, changed_future)
    torch.testing.assert_close(a[:, :, :4], b[:, :, :4])
    assert not torch.allclose(a[:, :, 4:], b[:, :, 4:])


def test_short_bf16_cpu_windows_take_the_explicit_attention_and_the_rest_sdpa(monkeypatch):
    seen = record_attention(monkeypatch)
    model = tiny_model(max_seq_len=2 * EXPLICIT_ATTENTION_MAX_LEN)

    def kinds(length: int, bf16: bool = True) -> set[str]:
        seen.clear()
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            model(torch.randint(0, 100, (1, length)))
        return {kind for kind, _ in seen}

    assert kinds(EXPLICIT_ATTENTION_MAX_LEN) == {"explicit"}
    assert kinds(EXPLICIT_ATTENTION_MAX_LEN + 1) == {"sdpa"}
    assert kinds(16, bf16=False) == {"sdpa"}  # fp32: SDPA's CPU kernel is the faster one
    seen.clear()
    with torch.autocast("cpu", torch.bfloat16):
        generate(model, torch.randint(0, 100, (1, 4)), max_new_tokens=3, temperature=0)
    assert [kind for kind, _ in seen] == ["explicit"] * 2 + ["sdpa"] * 4  # prefill (2 layers), then 2 steps


def test_dropout_acts_only_in_training():
    model = tiny_model(dropout=0.5)
    tokens = torch.randint(0, 100, (2, 8))
    assert not torch.equal(model(tokens)[0], model(tokens)[0])  # training: a new mask each call
    model.eval()
    assert torch.equal(model(tokens)[0], model(tokens)[0])


def test_zero_init_residual_starts_every_block_as_the_identity():
    model = tiny_model(zero_init_residual=True)
    for name, p in model.named_parameters():
        if name.endswith(("wo.weight", "w2.weight")):
            assert not p.any(), name
        elif p.dim() == 2:
            assert p.std() > 0.01, name
    tokens = torch.randint(0, 100, (2, 8))
    with torch.no_grad():
        expected = model.output(model.norm(model.tok_embeddings(tokens)))[..., :100]
        torch.testing.assert_close(model(tokens)[0], expected)
    model(tokens[:, :-1], targets=tokens[:, 1:])[1].backward()
    assert model.layers[0].feed_forward.w2.weight.grad.abs().sum() > 0  # the blocks still learn


def test_explicit_attention_in_bf16_stays_close_to_sdpa(monkeypatch):
    model = tiny_model()
    tokens = torch.randint(0, 100, (2, 32))

    def loss_and_grads():
        model.zero_grad()
        with torch.autocast("cpu", torch.bfloat16):
            loss = model(tokens[:, :-1], targets=tokens[:, 1:])[1]
        loss.backward()
        return loss.item(), model.layers[0].attention.wq.weight.grad.clone()

    explicit_loss, explicit_grad = loss_and_grads()
    monkeypatch.setattr(transformer, "EXPLICIT_ATTENTION_MAX_LEN", 0)  # SDPA for every length
    sdpa_loss, sdpa_grad = loss_and_grads()
    assert explicit_loss == pytest.approx(sdpa_loss, rel=1e-3)
    torch.testing.assert_close(explicit_grad, sdpa_grad, rtol=0.05, atol=0.05 * sdpa_grad.abs().max().item())


def test_generate_rejects_ids_and_arguments_it_cannot_honour():
    torch.manual_seed(0)
    model = Transformer(TlamaConfig(vocab_size=100, d_model=32, n_layers=1, n_heads=2, max_seq_len=16))
    prompt = torch.tensor([[1, 2, 3]])
    for kwargs in (dict(temperature=float("nan")), dict(max_new_tokens=2.0), dict(eos_id=150)):
        with pytest.raises(ValueError, match="generate:"):
            generate(model, prompt, **{"max_new_tokens": 2, **kwargs})
    with pytest.raises(ValueError, match=r"prompt ids must lie in \[0, vocab_size=100\), got 1..110"):  # padded row
        generate(model, torch.tensor([[1, 110]]), 2)
    tiny = generate(model, prompt, 4, temperature=1e-45)  # argmax-like, not NaN probabilities
    assert torch.equal(tiny, generate(model, prompt, 4, temperature=0))


def test_vocab_limit_samples_only_ids_the_tokenizer_has():
    torch.manual_seed(0)
    model = Transformer(TlamaConfig(vocab_size=100, d_model=32, n_layers=1, n_heads=2, max_seq_len=64))
    with torch.no_grad():
        model.output.weight[90:100] += 5.0  # make the ids the tokenizer lacks the likeliest
    out = generate(model, torch.tensor([[1, 2]]), 40, temperature=1.0, vocab_limit=90)
    assert int(out.max()) < 90
    assert int(generate(model, torch.tensor([[1, 2]]), 40, temperature=1.0).max()) >= 90


@pytest.mark.parametrize("limit", [0, -5, 2.0])
def test_vocab_limit_must_be_a_positive_integer(limit):
    model = Transformer(TlamaConfig(vocab_size=100, d_model=32, n_layers=1, n_heads=2, max_seq_len=16))
    with pytest.raises(ValueError, match=f"vocab_limit={limit!r}"):
        generate(model, torch.tensor([[1, 2]]), 2, vocab_limit=limit)


def test_the_deprecated_generate_method_warns_and_samples_as_generate_does():
    model = tiny_model()
    prompt = torch.randint(0, 100, (1, 4))
    with pytest.warns(DeprecationWarning, match="tlama_core.models.generate"):
        old = model.generate(prompt, max_new_tokens=5, temperature=0)
    assert torch.equal(old, generate(model, prompt, max_new_tokens=5, temperature=0))
