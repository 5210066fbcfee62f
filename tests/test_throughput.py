"""FLOPs per token against Lightning's FLOP counter, and the dense peaks MFU divides by."""

import pytest
import torch
from lightning.fabric.utilities.throughput import measure_flops

from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training.records.throughput import flops_per_token, peak_flops


@pytest.mark.parametrize("config, seq", [
    (TlamaConfig(vocab_size=1000, d_model=128, n_layers=3, n_heads=4, n_kv_heads=2, max_seq_len=64), 64),  # GQA
    (TlamaConfig(vocab_size=500, d_model=96, n_layers=2, n_heads=6, max_seq_len=256, ffn_hidden_size=200), 256),
])
def test_flops_per_token_equals_lightnings_count_of_a_training_step(config, seq):
    with torch.device("meta"):
        model = Transformer(config)
        tokens = torch.randint(0, config.vocab_size, (2, seq))
    counted = measure_flops(model, lambda: model(tokens, targets=tokens)[1], lambda loss: loss)
    assert flops_per_token(config, seq) == counted / (2 * seq)


@pytest.mark.parametrize("name, precision, matmul_precision, expected", [
    ("NVIDIA H200", "bf16-mixed", "high", 989.5e12),  # dense; Lightning's table has no "NVIDIA H200"
    ("NVIDIA H200 NVL", "bf16-mixed", "high", 835.5e12),
    ("NVIDIA H200", "32-true", "high", 494.7e12),  # TF32 tensor cores
    ("NVIDIA H200", "32-true", "highest", 67e12),
    ("NVIDIA H100 80GB HBM3", "bf16-mixed", "high", 989.4e12),  # Lightning's table, dense
    ("NVIDIA A100-SXM4-80GB", "bf16-mixed", "high", 312e12),
])
def test_peak_flops_are_the_dense_datasheet_figures(monkeypatch, name, precision, matmul_precision, expected):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision(matmul_precision)
    try:
        assert peak_flops(torch.device("cuda", 0), precision) == pytest.approx(expected)
    finally:
        torch.set_float32_matmul_precision(previous)


def test_peak_flops_is_unknown_on_cpu():
    assert peak_flops(torch.device("cpu"), "bf16-mixed") is None
