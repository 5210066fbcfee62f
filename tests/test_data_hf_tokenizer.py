"""Hugging Face tokenizer.json files: cached ids equal `tokenizers`' own encoding of each whole document."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tlama_core.data import builtin_corpus_path, create_dataloader, load_tokenizer
from tlama_core.data import text as text_module
from tlama_core.data.hf_tokenizer import HFTokenizer

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers  # noqa: E402

CORPUS = builtin_corpus_path().read_text(encoding="utf-8")[:40_000]
DOCS = [CORPUS[:15_000], "  leading spaces\n\n\tand tabs \n  having\nnever\n" * 50, CORPUS[15_000:] + "\n\n  x"]


def byte_level_bpe(path):
    """GPT-2 style: byte-level pre-tokenizer, BPE, <|endoftext|>."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([CORPUS], trainer)
    tok.save(str(path))
    return path


def metaspace_bpe(path):
    """Llama-style: "▁" for spaces, prefixed to the first word only, <s> and </s>."""
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"])
    tok.train_from_iterator([CORPUS], trainer)
    tok.save(str(path))
    return path


def word_level_70k(path):
    """A vocabulary over 65,536: ids need uint32."""
    words = sorted(set(CORPUS.split()))
    vocab = {f"filler{i}": i for i in range(70_000)} | {w: 70_000 + i for i, w in enumerate(words)}
    vocab["[UNK]"] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.add_special_tokens(["</s>"])
    tok.save(str(path))
    return path


BUILDERS = {"byte-level": byte_level_bpe, "metaspace": metaspace_bpe, "70k-words": word_level_70k}
EOS_TOKENS = {"byte-level": "<|endoftext|>", "metaspace": "</s>", "70k-words": "</s>"}


def reference(path, docs, eos):
    tok = Tokenizer.from_file(str(path))
    out = []
    for i, doc in enumerate(docs):
        out += ([eos] if i else []) + tok.encode(doc, add_special_tokens=False).ids
    return out


@pytest.mark.parametrize("kind", BUILDERS)
def test_text_ids_equal_tokenizers_encoding_of_each_whole_document(tmp_path, kind, monkeypatch):
    path = BUILDERS[kind](tmp_path / "tokenizer.json")
    (tmp_path / "docs").mkdir()
    for i, doc in enumerate(DOCS):
        (tmp_path / "docs" / f"{i}.txt").write_text(doc, encoding="utf-8")
    monkeypatch.setattr(text_module, "PIECE_BYTES", 600)  # many pieces: every cut must keep the ids
    loader = create_dataloader(tmp_path / "docs", tmp_path, 2, 8, shuffle=False, cache_dir=tmp_path / "c")
    tok = load_tokenizer(tmp_path)  # the directory holding tokenizer.json
    assert isinstance(tok, HFTokenizer) and loader.vocab_size == tok.vocab_size
    ids = loader.dataset.tokens.read(0, loader.num_tokens)
    assert tok.eos_id is not None
    assert ids.tolist() == reference(path, DOCS, tok.eos_id)
    assert ids.dtype == (np.uint32 if kind == "70k-words" else np.uint16)


@pytest.mark.parametrize("kind", BUILDERS)
def test_record_ids_equal_tokenizers_encoding_of_each_whole_record(tmp_path, kind):
    path = BUILDERS[kind](tmp_path / "tokenizer.json")
    with open(tmp_path / "c.jsonl", "w") as f:
        for doc in DOCS:
            f.write(json.dumps({"text": doc}) + "\n")
    loader = create_dataloader(tmp_path / "c.jsonl", path, 2, 8, shuffle=False, cache_dir=tmp_path / "c")
    eos = Tokenizer.from_file(str(path)).token_to_id(EOS_TOKENS[kind])
    assert loader.eos_id == eos
    assert loader.dataset.tokens.read(0, loader.num_tokens).tolist() == reference(path, DOCS, eos)


def test_special_ids_come_from_tokenizer_config_beside_it(tmp_path):
    path = metaspace_bpe(tmp_path / "tokenizer.json")
    tok = load_tokenizer(path)
    assert (tok.bos_id, tok.eos_id) == (1, 2)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<unk>"}}))
    assert load_tokenizer(path).eos_id == 0


def test_decode_inverts_encode(tmp_path):
    tok = load_tokenizer(byte_level_bpe(tmp_path / "tokenizer.json"))
    assert tok.decode(tok.encode(DOCS[1])) == DOCS[1]
    assert tok.encode_batch(DOCS[:2]) == [tok.encode(DOCS[0]), tok.encode(DOCS[1])]


def test_json_that_is_not_a_tokenizer_is_named(tmp_path):
    bad = tmp_path / "tokenizer.json"
    bad.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match=r"tokenizer\.json.*not a readable Hugging Face tokenizer\.json"):
        load_tokenizer(bad)


def test_cli_trains_a_byte_level_bpe_tokenizer_json(data_text, tmp_path, capsys):
    from tlama_core.cli import main

    main(["tokenizer", "train", "--kind", "hf-bpe", "--input", str(data_text), "--vocab_size", "400",
          "--output", str(tmp_path / "tok")])
    path = tmp_path / "tok" / "tokenizer.json"
    assert str(path) in capsys.readouterr().out
    tok = load_tokenizer(tmp_path / "tok")
    assert isinstance(tok, HFTokenizer) and tok.vocab_size == 400 and tok.eos_id == 0
    text = data_text.read_text(encoding="utf-8")
    assert tok.decode(tok.encode(text)) == text  # byte-level: lossless
    assert tok.encode(text) == Tokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids
    assert len(tok.encode(text)) < len(text.encode()) / 1.5  # 143 merges were learned


def test_hf_bpe_vocab_too_small_is_named(data_text, tmp_path):
    from tlama_core.data.hf_tokenizer import train_hf_bpe

    with pytest.raises(ValueError, match="vocab_size=100"):
        train_hf_bpe(data_text, tmp_path / "t.json", 100)
