"""Ids of one unit of work (a piece of text or a unit of records) that equal the tokenizer's own encoding of each
whole document.

A record is encoded whole. A text file is one document that may not fit in memory, so it is encoded in chunks
cut after a line end followed by a printable ASCII character (where the pre-tokenizers of common tokenizers split
anyway), a few lines per chunk. Chunked ids equal whole-document ids only for some tokenizers, so `chunking_of`
checks each tokenizer on probe text and picks the cheapest exact way:

- "plain": chunks encode on their own (the tokenizers trained here, byte-level BPE);
- "after_newline": a chunk encodes as it does after a line end, i.e. `encode("\\n" + chunk)` without the ids of
  "\\n" (sentencepiece's dummy prefix, as in Llama 2 and Mistral, adds a space to every chunk encoded alone);
- "whole": documents are encoded whole (a normalizer that cleans up whitespace across lines).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from tlama_core.data import documents, text
from tlama_core.data.tokenizer import SentencePieceTokenizer, Tokenizer

GROUP_LINES = 4
BOUNDARY = re.compile(r"(?<=\n)(?=[!-~])")
BOUNDARY_IN_TOKEN = re.compile(r"\n[!-~]")
PROBE = ("First line.\nnever  mind\n  having two spaces\n\n\ttab\nx = 12345;\n(paren) ends \n"
         " caf\u00e9 \u4e2d\u6587\n\n\nlast line")


def chunking_of(tokenizer: Tokenizer) -> str:
    """How text can be cut into chunks whose ids join into the whole document's ids (see the module doc)."""
    if any(BOUNDARY_IN_TOKEN.search(t) for t in _token_texts(tokenizer)):
        return "whole"
    whole = tokenizer.encode(PROBE)
    chunks = BOUNDARY.split(PROBE)
    if [i for c in chunks for i in tokenizer.encode(c)] == whole:
        return "plain"
    newline = tokenizer.encode("\n")
    after = [tokenizer.encode("\n" + c) for c in chunks[1:]]
    if all(a[:len(newline)] == newline for a in after) and \
            tokenizer.encode(chunks[0]) + [i for a in after for i in a[len(newline):]] == whole:
        return "after_newline"
    return "whole"


def _token_texts(tokenizer: Tokenizer) -> list[str]:
    """The text of every token: a token holding a chunk boundary could merge across it."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        return [tokenizer.processor.id_to_piece(i) for i in range(tokenizer.vocab_size)]
    return [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]


@dataclass
class Encoded:
    """A unit's ids, the characters of text behind them, whether bytes were not UTF-8, and empty records skipped."""

    ids: np.ndarray
    chars: int
    replaced: bool = False
    empty: int = 0


class Encoder:
    """Turns a `text.Piece` or a `documents.Unit` into ids; a separator id goes before every document but the
    first of a text source (records: before every one; the stream's first is dropped by the caller)."""

    def __init__(self, tokenizer: Tokenizer, dtype: np.dtype, separator: int | None, text_field: str = "text",
                 dataset: Any = None, chunking: str | None = None) -> None:
        self.tokenizer, self.dtype, self.separator = tokenizer, dtype, separator
        self.text_field, self.dataset = text_field, dataset
        self.chunking = chunking or chunking_of(tokenizer)
        self.newline = tokenizer.encode("\n")

    def __call__(self, work: text.Piece | documents.Unit) -> Encoded:
        if isinstance(work, text.Piece):
            content, bad = text.read_piece(work)
            encoded = self.encode_chunks(content, starts_document=work.starts_document)
            if work.separator_before and self.separator is not None:
                encoded.insert(0, [self.separator])
            return Encoded(self._array(encoded), len(content), bad)
        docs, empty = [], 0
        for doc in documents.read(work, self.text_field, self.dataset):
            if doc:
                docs.append(doc)
            else:
                empty += 1
        encoded = self.tokenizer.encode_batch(docs)
        if self.separator is not None:
            encoded = [ids for e in encoded for ids in ([self.separator], e)]
        return Encoded(self._array(encoded), sum(map(len, docs)), empty=empty)

    def encode_chunks(self, content: str, starts_document: bool) -> list[list[int]]:
        """Ids of `content` (whole lines of one document) in chunks; `starts_document`: nothing comes before it."""
        if self.chunking == "whole" or not content:
            return [self.tokenizer.encode(content)] if content else []
        lines = BOUNDARY.split(content)
        chunks = ["".join(lines[i:i + GROUP_LINES]) for i in range(0, len(lines), GROUP_LINES)]
        if self.chunking == "plain":
            return self.tokenizer.encode_batch(chunks)
        head = [self.tokenizer.encode(chunks.pop(0))] if starts_document else []
        k = len(self.newline)
        rest = self.tokenizer.encode_batch(["\n" + c for c in chunks])
        if any(r[:k] != self.newline for r in rest):
            raise ValueError(f"{self.tokenizer!r}: a line end merged with the text after it; this tokenizer cannot "
                             "be encoded in chunks (please report it).")
        return head + [r[k:] for r in rest]

    def _array(self, encoded: list[list[int]]) -> np.ndarray:
        return np.fromiter(itertools.chain.from_iterable(encoded), dtype=self.dtype, count=sum(map(len, encoded)))
