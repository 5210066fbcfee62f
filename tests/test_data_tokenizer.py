"""Tokenizer training and loading, and the built-in corpus it ships with."""

from __future__ import annotations

from pathlib import Path

import pytest
import sentencepiece as spm

from tlama_core.data import builtin_corpus_path, builtin_tokenizer_path, load_tokenizer, train_tokenizer
from tlama_core.data.corpus import BUILTIN_VOCAB_SIZE, build_builtin_tokenizer
from tlama_core.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, Tokenizer, shipped_tokenizers


def test_train_tokenizer_writes_a_model_with_the_documented_special_ids(data_text, tmp_path):
    out = train_tokenizer(data_text, tmp_path / "tok", vocab_size=300)
    assert out == tmp_path / "tok.model" and out.is_file()
    assert not list(tmp_path.glob("*.tmp"))
    sp = load_tokenizer(out).processor
    assert sp.get_piece_size() == 300
    assert (sp.unk_id(), sp.bos_id(), sp.eos_id(), sp.pad_id()) == (UNK_ID, BOS_ID, EOS_ID, PAD_ID) == (0, 1, 2, -1)


def test_trained_tokenizer_is_lossless_on_its_text(data_text, tmp_path):
    sp = load_tokenizer(train_tokenizer([data_text], tmp_path / "tok.model", vocab_size=400)).processor
    text = data_text.read_text(encoding="utf-8")
    ids = [i for line in text.splitlines(keepends=True) for i in sp.encode(line)]
    assert sp.decode(ids) == text  # newlines, indentation and line-initial words survive
    assert sp.unk_id() not in ids


def test_train_tokenizer_is_deterministic(data_text, tmp_path):
    a = train_tokenizer(data_text, tmp_path / "a.model", vocab_size=300).read_bytes()
    b = train_tokenizer(data_text, tmp_path / "b.model", vocab_size=300).read_bytes()
    assert a == b


def test_train_tokenizer_names_a_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        train_tokenizer(tmp_path / "nope.txt", tmp_path / "tok", vocab_size=300)


def test_train_tokenizer_rejects_a_vocab_too_large_for_the_text(data_text, tmp_path):
    with pytest.raises(ValueError, match="vocab_size=100000"):
        train_tokenizer(data_text, tmp_path / "tok", vocab_size=100_000)
    assert not (tmp_path / "tok.model").exists()


def test_load_tokenizer_names_the_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.model"):
        load_tokenizer(tmp_path / "missing.model")


def test_builtin_tokenizer_is_the_one_trained_on_the_train_split(tmp_path):
    shipped = builtin_tokenizer_path()
    assert shipped.name == f"shakespeare-bpe-{BUILTIN_VOCAB_SIZE}.model"
    rebuilt = build_builtin_tokenizer(BUILTIN_VOCAB_SIZE, tmp_path / "rebuilt.model")
    assert rebuilt.read_bytes() == shipped.read_bytes()
    assert load_tokenizer(shipped).vocab_size == 1024


def test_the_2048_piece_tokenizer_is_rebuilt_from_the_train_split(tmp_path):
    shipped = builtin_tokenizer_path(2048)
    assert build_builtin_tokenizer(2048, tmp_path / "rebuilt.model").read_bytes() == shipped.read_bytes()


@pytest.mark.parametrize("vocab_size", [1024, 2048])
def test_each_shipped_tokenizer_opens_by_its_name(vocab_size):
    name = f"shakespeare-bpe-{vocab_size}"
    by_name = load_tokenizer(name)
    assert by_name.path == builtin_tokenizer_path(vocab_size) and by_name.vocab_size == vocab_size
    assert name in shipped_tokenizers()


def test_a_file_named_like_a_shipped_tokenizer_is_taken_first(data_text, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    train_tokenizer(data_text, tmp_path / "shakespeare-bpe-2048", vocab_size=300)  # .model added
    Path("shakespeare-bpe-2048.model").rename("shakespeare-bpe-2048")
    assert load_tokenizer("shakespeare-bpe-2048").vocab_size == 300


def test_an_unknown_name_is_an_error_listing_the_shipped_tokenizers():
    with pytest.raises(FileNotFoundError, match="'shakespeare-bpe-4096': no such file.*ships: shakespeare-bpe-1024, "
                                                "shakespeare-bpe-2048"):
        load_tokenizer("shakespeare-bpe-4096")


def test_builtin_corpus_is_tiny_shakespeare():
    text = builtin_corpus_path().read_text(encoding="utf-8")
    assert len(text) == 1_115_394 and text.startswith("First Citizen:\n")


def test_load_tokenizer_gives_the_protocol_with_sentencepiece_ids(tmp_path):
    sp = spm.SentencePieceProcessor(model_file=str(builtin_tokenizer_path()))
    tok = load_tokenizer(builtin_tokenizer_path())
    assert isinstance(tok, Tokenizer)
    text = "ROMEO:\nBut soft, what light\n"
    assert tok.encode(text) == sp.encode(text) and tok.decode(tok.encode(text)) == text
    assert (tok.vocab_size, tok.bos_id, tok.eos_id) == (sp.get_piece_size(), sp.bos_id(), sp.eos_id())
    (tmp_path / "tokenizer.model").write_bytes(builtin_tokenizer_path().read_bytes())
    assert load_tokenizer(tmp_path).encode(text) == sp.encode(text)  # a directory holding tokenizer.model


@pytest.mark.parametrize("content", [b"", b"\x00\x93garbage\xff" * 50, b"just some text\n"],
                         ids=["empty", "random", "text"])
def test_a_file_that_is_not_a_tokenizer_is_a_value_error_naming_it(tmp_path, content):
    bad = tmp_path / "bad.model"
    bad.write_bytes(content)
    with pytest.raises(ValueError, match="bad.model"):
        load_tokenizer(bad)
