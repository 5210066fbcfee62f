"""`evaluate` and `tlama evaluate`: cross-entropy over every window of the data, equal to a hand-written loop."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trainer_utils import tiny_model

from tlama_core.cli import main
from tlama_core.data import builtin_corpus_path, builtin_tokenizer_path, load_tokenizer
from tlama_core.evaluation import evaluate
from tlama_core.models import save_safetensors


def hand_loss(model, ids: list[int], seq_length: int) -> tuple[float, int]:
    """Mean cross-entropy of every token but the first, one window at a time (the last may be short)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, seq_length):
            window = torch.tensor(ids[start:start + seq_length + 1])
            logits, _ = model(window[None, :-1])
            total += F.cross_entropy(logits[0].double(), window[1:], reduction="sum").item()
            count += len(window) - 1
    return total / count, count


@pytest.fixture
def ids_file(tmp_path):
    ids = np.random.default_rng(0).integers(0, 64, 1000).astype(np.uint16)
    np.save(tmp_path / "held_out.npy", ids)
    return tmp_path / "held_out.npy", ids.tolist()


def test_loss_is_the_cross_entropy_of_every_window_the_last_partial_one_included(ids_file):
    path, ids = ids_file
    model = tiny_model().eval()
    result = evaluate(model, path, seq_length=32, batch_size=4)
    loss, count = hand_loss(model, ids, 32)
    assert result["tokens"] == count == 999  # 31 full windows of 32 and one of 7
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)
    assert "bits_per_char" not in result  # ids: no characters behind them
    assert evaluate(model, path, seq_length=32, batch_size=4, max_batches=2)["tokens"] == 2 * 4 * 32


def test_text_is_tokenized_and_scored_in_bits_per_character(tmp_path):
    text = builtin_corpus_path().read_text(encoding="utf-8")[:3000]
    (tmp_path / "held_out.txt").write_text(text, encoding="utf-8")
    ids = load_tokenizer(builtin_tokenizer_path()).encode(text)
    model = tiny_model(vocab_size=1024, max_seq_len=64).eval()
    result = evaluate(model, tmp_path / "held_out.txt", builtin_tokenizer_path(), batch_size=3)
    loss, count = hand_loss(model, ids, 64)
    assert (result["tokens"], result["seq_length"]) == (count, 64)  # seq_length defaults to max_seq_len
    assert result["loss"] == pytest.approx(loss, rel=1e-5)
    assert result["bits_per_char"] == pytest.approx(loss * len(ids) / len(text) / math.log(2), rel=1e-5)


def test_bad_arguments_are_errors_naming_them(ids_file, tmp_path):
    path, _ = ids_file
    model = tiny_model()
    with pytest.raises(ValueError, match="seq_length=64 exceeds the model's max_seq_len=32"):
        evaluate(model, path, seq_length=64)
    with pytest.raises(ValueError, match="batch_size=0"):
        evaluate(model, path, batch_size=0)
    np.save(tmp_path / "wide.npy", np.arange(100, dtype=np.uint16))
    with pytest.raises(ValueError, match=r"wide\.npy.*token ids 0\.\.\d+ do not fit the model's vocab_size=64"):
        evaluate(model, tmp_path / "wide.npy", seq_length=16)
    (tmp_path / "t.txt").write_text("some text " * 50)
    with pytest.raises(ValueError, match="pass tokenizer_path"):
        evaluate(model, tmp_path / "t.txt")


def test_cli_prints_a_summary_on_stderr_and_json_on_stdout(ids_file, tmp_path, capsys):
    path, _ = ids_file
    model = tiny_model().eval()
    save_safetensors(model, tmp_path / "weights")
    main(["evaluate", "--model", str(tmp_path / "weights"), "--data", str(path), "--seq_length", "16",
          "--batch_size", "5", "--device", "cpu"])
    out, err = capsys.readouterr()
    result = json.loads(out)
    assert result == pytest.approx(evaluate(model, path, seq_length=16, batch_size=5))
    assert "perplexity" in err and str(path) in err
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", "--model", str(tmp_path / "weights"), "--data", str(tmp_path / "missing.npy")])
    assert exit_.value.code == 2
    assert "missing.npy" in capsys.readouterr().err
