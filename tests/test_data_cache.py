"""The token cache: contents equal a reference encoding, built once, rebuilt when text or tokenizer change."""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from tlama_core.data import builtin_tokenizer_path, load_tokenizer, train_tokenizer
from tlama_core.data import cache as cache_module
from tlama_core.data import text as text_module
from tlama_core.data.cache import cached_tokens
from tlama_core.data.encoding import Chunking, chunking_of, cut
from tlama_core.data.sources import resolve_source


def ids_of(entry) -> np.ndarray:
    return np.fromfile(entry.path, dtype=entry.dtype)


def test_cache_holds_the_tokenizer_encoding_of_the_whole_document(data_text, data_sp, reference_ids, tmp_path):
    entry = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), tmp_path / "cache")
    text = data_text.read_text(encoding="utf-8")
    assert ids_of(entry).tolist() == reference_ids([text])
    assert data_sp.decode(ids_of(entry).tolist()) == text
    assert entry.meta["text_chars"] == len(text)
    assert entry.meta["num_tokens"] == len(ids_of(entry))
    assert entry.dtype == np.uint16


def test_cache_files_are_complete_and_no_temporary_is_left(data_text, tmp_path):
    cache = tmp_path / "cache"
    entry = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.path.name, entry.path.name + ".json"])
    sidecar = json.loads((cache / (entry.path.name + ".json")).read_text())
    assert sidecar["num_tokens"] * 2 == entry.path.stat().st_size


def test_a_temporary_left_by_a_killed_build_is_removed(data_text, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "old-corpus-0123.bin.tmp").write_bytes(b"half written")
    (cache / "notes.tmp").write_text("the user's, not the cache's")
    entry = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), cache)
    assert sorted(p.name for p in cache.iterdir()) == sorted([entry.path.name, entry.path.name + ".json",
                                                              "notes.tmp"])


def test_parallel_build_equals_serial_build(data_text, tmp_path, monkeypatch, reference_ids):
    serial = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), tmp_path / "serial")
    monkeypatch.setattr(text_module, "PIECE_BYTES", 512)  # ~40 pieces, cut anywhere
    monkeypatch.setattr(cache_module, "PARALLEL_MIN_BYTES", 0)
    parallel = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), tmp_path / "parallel", processes=2)
    assert np.array_equal(ids_of(parallel), ids_of(serial))
    assert parallel.meta["text_chars"] == serial.meta["text_chars"]


FOREIGN_TOKENIZERS = {  # options a tokenizer made elsewhere may have, and how the cache must then cut text
    "sentencepiece-defaults": ({"normalization_rule_name": "nmt_nfkc", "remove_extra_whitespaces": True,
                                "add_dummy_prefix": True, "user_defined_symbols": []}, Chunking("plain", "plain")),
    "piece-across-lines": ({"user_defined_symbols": ["\n", "\nThe"]}, Chunking(None, "plain")),
    "llama-like": ({"add_dummy_prefix": True, "user_defined_symbols": [], "byte_fallback": True},
                   Chunking("after_newline", "after_newline")),
    "piece-across-spaces": ({"split_by_whitespace": False}, Chunking("plain", None)),
}


@pytest.mark.parametrize(("options", "chunking"), FOREIGN_TOKENIZERS.values(), ids=FOREIGN_TOKENIZERS.keys())
def test_foreign_sentencepiece_ids_equal_the_whole_document_encoding(data_text, tmp_path, reference_ids, options,
                                                                     chunking, monkeypatch):
    tok = train_tokenizer(data_text, tmp_path / "other.model", vocab_size=400, **options)
    sp = load_tokenizer(tok).processor
    assert chunking_of(load_tokenizer(tok)) == chunking
    assert chunking_of(load_tokenizer(builtin_tokenizer_path())) == Chunking("plain", "plain")
    monkeypatch.setattr(text_module, "PIECE_BYTES", 512)  # many pieces: every cut must keep the ids
    entry = cached_tokens(resolve_source(data_text), tok, tmp_path / "cache")
    assert ids_of(entry).tolist() == reference_ids([data_text.read_text(encoding="utf-8")], sp)


@pytest.mark.parametrize(("options", "chunking"), FOREIGN_TOKENIZERS.values(), ids=FOREIGN_TOKENIZERS.keys())
def test_foreign_sentencepiece_record_ids_equal_each_whole_record_encoding(data_text, tmp_path, reference_ids,
                                                                           options, chunking):
    """Records are encoded in chunks too (see encoding.py): the ids must still be each whole record's."""
    tok = train_tokenizer(data_text, tmp_path / "other.model", vocab_size=400, **options)
    text = data_text.read_text(encoding="utf-8")
    docs = [text[i:i + 3000] for i in range(0, len(text), 3000)]  # cut anywhere: records start mid-line
    with open(tmp_path / "records.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": doc}) + "\n" for doc in docs)
    entry = cached_tokens(resolve_source(tmp_path / "records.jsonl"), tok, tmp_path / "cache")
    assert ids_of(entry).tolist() == reference_ids(docs, load_tokenizer(tok).processor)


@pytest.mark.parametrize("size", [1, 7, 512])
def test_cut_makes_chunks_of_at_least_size_that_end_at_line_boundaries(data_text, size):
    text = data_text.read_text(encoding="utf-8")[:20_000] + "\n  indented\n\tlast"
    chunks = cut(text, size)
    assert "".join(chunks) == text
    assert all(len(c) >= size for c in chunks[:-1])
    ends = np.cumsum([len(c) for c in chunks[:-1]])
    assert all(text[e - 1] == "\n" and "!" <= text[e] <= "~" for e in ends)
    if size == 1:  # every boundary is a cut
        assert len(chunks) == sum(1 for i in range(1, len(text)) if text[i - 1] == "\n" and "!" <= text[i] <= "~") + 1


_MISTRAL_SPEC = importlib.util.find_spec("mistral_common")  # in the test extra; None where it is not installed
MISTRAL = Path(_MISTRAL_SPEC.origin if _MISTRAL_SPEC else ".").parent / "data" / "tokenizer.model.v1"


@pytest.mark.skipif(not MISTRAL.is_file(), reason="mistral_common's Mistral 7B tokenizer is not installed")
def test_mistral_7b_tokenizer_ids_equal_sentencepiece_on_each_whole_document(tmp_path, monkeypatch):
    """A real Llama-2-format model (dummy prefix, byte fallback): no line after the first gains a space."""
    sp = spm.SentencePieceProcessor(model_file=str(MISTRAL))
    docs = ["How long ago\nnever mind\n  having two spaces\n\n\tand a tab\n" * 40,
            "caf\u00e9 \u4e2d\u6587\nx = 12345;\n" * 30, "ago\nnever"]
    (tmp_path / "docs").mkdir()
    for i, doc in enumerate(docs):
        (tmp_path / "docs" / f"{i}.txt").write_text(doc, encoding="utf-8")
    monkeypatch.setattr(text_module, "PIECE_BYTES", 256)
    entry = cached_tokens(resolve_source(tmp_path / "docs"), MISTRAL, tmp_path / "cache", processes=1)
    expected = sp.encode(docs[0]) + [2] + sp.encode(docs[1]) + [2] + sp.encode(docs[2])
    assert ids_of(entry).tolist() == expected
    assert 8174 in expected[-3:]  # "never" after a line end, not "\u2581never" (1484)
    with open(tmp_path / "records.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": doc}) + "\n" for doc in docs)
    records = cached_tokens(resolve_source(tmp_path / "records.jsonl"), MISTRAL, tmp_path / "cache", processes=1)
    assert ids_of(records).tolist() == expected  # records of more than one chunk, the same ids


def test_second_load_reuses_the_cache_without_tokenizing(data_text, tmp_path, monkeypatch):
    first = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), tmp_path)
    mtime = first.path.stat().st_mtime_ns

    def no_encoding(*args, **kwargs):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(cache_module, "build", no_encoding)
    second = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), tmp_path)
    assert second.path == first.path and second.path.stat().st_mtime_ns == mtime


def test_changed_text_makes_a_new_entry(data_text, tmp_path, data_sp):
    first = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), tmp_path)
    data_text.write_text("Now is the winter of our discontent\n", encoding="utf-8")
    second = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), tmp_path)
    assert second.path != first.path
    assert data_sp.decode(ids_of(second).tolist()) == "Now is the winter of our discontent\n"


def test_a_copy_that_keeps_the_old_mtime_and_size_still_makes_a_new_entry(data_text, tmp_path, data_sp):
    """`cp -p` / `rsync -t` over the corpus in the same process: size and mtime as before, content not."""
    old = data_text.read_text(encoding="utf-8")
    stat = data_text.stat()
    first = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), tmp_path)
    new = old.replace("the", "THE", 1)
    assert len(new.encode()) == len(old.encode()) and new != old
    replacement = data_text.with_name("replacement.txt")
    replacement.write_text(new, encoding="utf-8")
    replacement.replace(data_text)
    os.utime(data_text, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), tmp_path)
    assert second.path != first.path and data_sp.decode(ids_of(second).tolist()) == new


def test_changed_tokenizer_makes_a_new_entry(data_text, tmp_path):
    tok = train_tokenizer(data_text, tmp_path / "tok.model", vocab_size=300)
    first = cached_tokens(resolve_source(data_text), tok, tmp_path / "cache")
    train_tokenizer(data_text, tok, vocab_size=400)  # same path, new model
    second = cached_tokens(resolve_source(data_text), tok, tmp_path / "cache")
    assert second.path != first.path
    assert second.meta["vocab_size"] == 400
    assert ids_of(second).tolist() == load_tokenizer(tok).encode(data_text.read_text())


def test_incomplete_entry_is_rebuilt(data_text, tmp_path):
    entry = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), tmp_path)
    good = ids_of(entry)
    entry.path.write_bytes(entry.path.read_bytes()[:100])  # e.g. a copy cut short
    rebuilt = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), tmp_path)
    assert np.array_equal(ids_of(rebuilt), good)


def test_ids_are_uint16_up_to_65536_pieces_and_uint32_beyond():
    assert cache_module.ids_dtype(1024) == cache_module.ids_dtype(65536) == np.uint16
    assert cache_module.ids_dtype(65537) == cache_module.ids_dtype(128_256) == np.uint32


def test_uint32_cache_reads_back_the_same_ids(data_text, tmp_path, monkeypatch, reference_ids):
    monkeypatch.setattr(cache_module, "ids_dtype", lambda vocab_size: np.dtype(np.uint32))  # as for a 128k vocab
    entry = cached_tokens(resolve_source(data_text), builtin_tokenizer_path(), tmp_path)
    assert entry.dtype == np.uint32 and entry.path.stat().st_size == 4 * entry.meta["num_tokens"]
    assert ids_of(entry).tolist() == reference_ids([data_text.read_text(encoding="utf-8")])


def test_non_utf8_bytes_are_replaced_with_a_warning_naming_the_file(tmp_path, reference_ids):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("Caf\u00e9 au lait\n".encode("latin-1") * 3)
    with pytest.warns(UserWarning, match="latin1.txt"):
        entry = cached_tokens(resolve_source(bad), builtin_tokenizer_path(), tmp_path / "cache")
    assert ids_of(entry).tolist() == reference_ids(["Caf\ufffd au lait\n" * 3])
    assert entry.meta["text_chars"] == len("Caf\ufffd au lait\n" * 3)


def test_line_longer_than_the_scan_limit_is_cut_between_characters(tmp_path, monkeypatch):
    monkeypatch.setattr(text_module, "PIECE_BYTES", 100)
    monkeypatch.setattr(text_module, "MAX_SCAN_BYTES", 7)  # no newline within reach: cut at a character start
    long_line = "d\u00e9j\u00e0 vu, \u00e9t\u00e9 " * 40 + "\n"  # 2-byte characters everywhere
    path = tmp_path / "long.txt"
    path.write_text(long_line * 3, encoding="utf-8")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a piece cut inside a character would decode to U+FFFD with a warning
        entry = cached_tokens(resolve_source(path), builtin_tokenizer_path(), tmp_path / "cache")
    assert entry.meta["text_chars"] == 3 * len(long_line)
    assert len(text_module.pieces(text_module.segments((path,), None))) > 3


def _build_in_child(args) -> str:
    path, cache_dir = args
    return str(cached_tokens(resolve_source(path), builtin_tokenizer_path(), cache_dir).path)


def test_processes_building_the_same_entry_together_agree(data_text, tmp_path):
    # e.g. DDP ranks that all create their loader at once: the lock makes one build, the others read it
    with multiprocessing.get_context("fork").Pool(3) as pool:
        paths = pool.map(_build_in_child, [(data_text, tmp_path / "cache")] * 3)
    assert len(set(paths)) == 1
    assert sorted(p.suffix for p in (tmp_path / "cache").iterdir()) == [".bin", ".json"]
