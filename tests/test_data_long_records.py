"""Records of any length, lines of any length: ids equal each whole record's encoding for every tokenizer kind,
and no tokenizer call (nor the memory of `tlama prepare`) grows with the record where an exact cut exists."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import sentencepiece as spm
from test_data_cache import FOREIGN_TOKENIZERS, MISTRAL
from test_data_hf_tokenizer import BUILDERS, EOS_TOKENS

from tlama_core.data import builtin_corpus_path, builtin_tokenizer_path, load_tokenizer, train_tokenizer
from tlama_core.data import streaming as streaming_module
from tlama_core.data.cache import cached_tokens
from tlama_core.data.encoding import CHUNK_CHARS, LINE_REACH, Chunking, Encoder, chunking_of
from tlama_core.data.sources import resolve_source

tokenizers = pytest.importorskip("tokenizers")

CORPUS = builtin_corpus_path().read_text(encoding="utf-8")[:80_000]
FLAT = CORPUS.replace("\n", " ")  # Shakespeare without line ends: one line
DOCS = [FLAT[:30_000],
        "  two  spaces\tand tabs, x = 12345; caf\u00e9 \u4e2d\u6587 (paren) \"quoted\" it's " * 300,
        CORPUS[30_000:32_000] + FLAT[40_000:60_000] + "\n" + CORPUS[60_000:61_000],  # lines, one of them long
        "no-space-at-all-" * 700]
KINDS = ["builtin", *FOREIGN_TOKENIZERS, "mistral", *(f"json-{k}" for k in BUILDERS)]


def tokenizer_of(kind, tmp_path):
    """The tokenizer file of `kind` and the reference: its library's own encode of one whole document, and EOS."""
    if kind.startswith("json-"):
        path = BUILDERS[kind[5:]](tmp_path / "tokenizer.json")
        tok = tokenizers.Tokenizer.from_file(str(path))
        return path, lambda doc: tok.encode(doc, add_special_tokens=False).ids, tok.token_to_id(EOS_TOKENS[kind[5:]])
    if kind == "mistral":
        if not MISTRAL.is_file():
            pytest.skip("mistral_common's Mistral 7B tokenizer is not installed")
        path = MISTRAL
    elif kind == "builtin":
        path = builtin_tokenizer_path()
    else:
        (tmp_path / "corpus.txt").write_text(CORPUS[:20_000], encoding="utf-8")
        path = train_tokenizer(tmp_path / "corpus.txt", tmp_path / "other.model", vocab_size=400,
                               **FOREIGN_TOKENIZERS[kind][0])
    sp = spm.SentencePieceProcessor(model_file=str(path))
    return path, sp.encode, sp.eos_id()


@pytest.mark.parametrize("kind", KINDS)
def test_long_records_give_each_whole_records_ids_and_no_call_grows_with_them(tmp_path, kind, monkeypatch):
    """Every text the tokenizer sees is short but one without a space or line end (warned about), unless the
    tokenizer cannot be cut at spaces (its long lines are then encoded whole, warned about)."""
    path, encode, eos = tokenizer_of(kind, tmp_path)
    chunking = chunking_of(load_tokenizer(path))
    lengths = []  # of every text the tokenizer is called on
    encode_batch = Encoder._encode_batch

    def spy(self, batch):
        lengths.extend(len(item[0]) for item in batch if item)
        return encode_batch(self, batch)

    monkeypatch.setattr(Encoder, "_encode_batch", spy)
    monkeypatch.setattr(streaming_module, "LONG_CHARS", 10_000)
    with open(tmp_path / "records.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps({"text": doc}, ensure_ascii=False) + "\n" for doc in DOCS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        entry = cached_tokens(resolve_source(tmp_path / "records.jsonl"), path, tmp_path / "cache", processes=1)
    expected = [i for k, doc in enumerate(DOCS) for i in ([eos] if k else []) + encode(doc)]
    assert np.fromfile(entry.path, dtype=entry.dtype).tolist() == expected
    one_call = [str(w.message) for w in caught if "encoded in one call" in str(w.message)]
    assert len(one_call) == 1  # the record without a space or line end is encoded whole, said once
    if chunking.spaces:
        assert f"{len(DOCS[3]):,} characters were encoded in one call" in one_call[0]
        assert max(lengths) == len(DOCS[3]) and sorted(lengths)[-2] <= LINE_REACH + 2 * CHUNK_CHARS
    else:
        assert kind == "piece-across-spaces" and max(lengths) == len(DOCS[0])
        assert f"{len(DOCS[0]):,} characters were encoded in one call" in one_call[0]


def test_a_tokenizer_whose_pieces_span_spaces_is_never_cut_at_a_space():
    assert chunking_of(load_tokenizer(builtin_tokenizer_path())) == Chunking("plain", "plain")
    chunks = list(Chunking("plain", None).chunks(FLAT[:20_000]))
    assert len(chunks) == 1
    cut = list(Chunking("plain", "plain").chunks(FLAT[:20_000]))
    assert "".join(c for c, _ in cut) == FLAT[:20_000] and len(cut) > 3
    assert all(c[-1] != " " and n[0] == " " and k == "space" for (c, _), (n, k) in itertools.pairwise(cut))


@pytest.mark.slow
def test_prepare_of_a_20_mb_record_without_line_ends_holds_it_a_few_times_not_forty(tmp_path):
    """Peak RSS of a fresh process (VmHWM) after its imports and after `prepare`: 3x the record here; before
    records were cut at spaces it was 46x (and 8.9 GB for 200 MB)."""
    text = (FLAT * (20_000_000 // len(FLAT) + 1))[:20_000_000]
    (tmp_path / "long.jsonl").write_text(json.dumps({"text": text}) + "\n", encoding="utf-8")
    code = ("import json, sys; from pathlib import Path\n"
            "from tlama_core.data.prepare import prepare\n"
            "def hwm(): return next(int(l.split()[1]) for l in Path('/proc/self/status').read_text().splitlines() "
            "if l.startswith('VmHWM')) * 1024\n"
            "before = hwm(); prepare(sys.argv[1], sys.argv[2], sys.argv[3], workers=1, progress=False)\n"
            "print(json.dumps([before, hwm()]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "long.jsonl"), str(builtin_tokenizer_path()),
                          str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    before, peak = json.loads(out.stdout.strip().splitlines()[-1])
    assert peak - before < 6 * len(text), f"the record cost {(peak - before) / len(text):.1f}x its size"
    ids = np.fromfile(tmp_path / "out" / "00000.bin", dtype=np.uint16)
    assert spm.SentencePieceProcessor(model_file=str(builtin_tokenizer_path())).decode(ids.tolist()) == text
