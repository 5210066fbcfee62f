"""Ids of one unit of work (a piece of text or a unit of records) that equal the tokenizer's own encoding of each
whole document.

Documents (records, and text files, which may not fit in memory) are encoded in chunks of about CHUNK_CHARS
characters, each cut after a line end followed by a printable ASCII character (where the pre-tokenizers of common
tokenizers split anyway): sentencepiece encodes such chunks faster than whole documents. Chunked ids equal
whole-document ids only for some tokenizers, so `chunking_of` checks each tokenizer on probe text and picks the
cheapest exact way:

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

CHUNK_CHARS = 512
BOUNDARY = re.compile(r"\n[!-~]")  # a chunk ends after the line end
PROBE = ("First line.\nnever  mind\n  having two spaces\n\n\ttab\nx = 12345;\n(paren) ends \n"
         " caf\u00e9 \u4e2d\u6587\n\n\nlast line")


def chunking_of(tokenizer: Tokenizer) -> str:
    """How text can be cut into chunks whose ids join into the whole document's ids (see the module doc)."""
    if any(BOUNDARY.search(t) for t in _token_texts(tokenizer)):
        return "whole"
    whole = tokenizer.encode(PROBE)
    chunks = cut(PROBE, 1)
    if [i for c in chunks for i in tokenizer.encode(c)] == whole:
        return "plain"
    newline = tokenizer.encode("\n")
    after = [tokenizer.encode("\n" + c) for c in chunks[1:]]
    if all(a[:len(newline)] == newline for a in after) and \
            tokenizer.encode(chunks[0]) + [i for a in after for i in a[len(newline):]] == whole:
        return "after_newline"
    return "whole"


def cut(content: str, size: int = CHUNK_CHARS) -> list[str]:
    """`content` in chunks of at least `size` characters (the last may be shorter), each ending at a boundary."""
    chunks, start = [], 0
    while found := BOUNDARY.search(content, start + size - 1):
        chunks.append(content[start:found.start() + 1])
        start = found.start() + 1
    return chunks + [content[start:]] if start < len(content) else chunks


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

    def __init__(self, tokenizer: Tokenizer, dtype: np.dtype, separator: int | None, text_field: str, dataset: Any,
                 chunking: str) -> None:
        self.tokenizer, self.dtype, self.separator = tokenizer, dtype, separator
        self.text_field, self.dataset, self.chunking = text_field, dataset, chunking
        self.newline = tokenizer.encode("\n")

    def __call__(self, work: text.Piece | documents.Unit) -> Encoded:
        if isinstance(work, text.Piece):
            content, bad = text.read_piece(work)
            ids = self.encode_documents([content], separate=work.separator_before,
                                        continues=not work.starts_document)
            return Encoded(self._array(ids), len(content), bad)
        docs, empty = [], 0
        for doc in documents.read(work, self.text_field, self.dataset):
            if doc:
                docs.append(doc)
            else:
                empty += 1
        return Encoded(self._array(self.encode_documents(docs, separate=True)), sum(map(len, docs)), empty=empty)

    def encode_documents(self, docs: list[str], separate: bool, continues: bool = False) -> list[list[int]]:
        """Ids of `docs` in order, as lists to be joined: a separator before each document when `separate`, then
        its chunks' ids. `continues`: the first document goes on from text before it (a text file's later piece)."""
        if self.chunking == "whole":
            counts, encoded = [1] * len(docs), self.tokenizer.encode_batch(docs)
        else:
            per_doc = [cut(doc) for doc in docs]
            chunks = [c for doc_chunks in per_doc for c in doc_chunks]
            counts = [len(doc_chunks) for doc_chunks in per_doc]
            if self.chunking == "plain":
                encoded = self.tokenizer.encode_batch(chunks)
            else:
                after_newline = [j > 0 or (i == 0 and continues) for i, n in enumerate(counts) for j in range(n)]
                encoded = self._encode_after_newline(chunks, after_newline)
        if not separate or self.separator is None:
            return encoded
        joined, at = [], 0
        for n in counts:
            joined += [[self.separator], *encoded[at:at + n]]
            at += n
        return joined

    def _encode_after_newline(self, chunks: list[str], after_newline: list[bool]) -> list[list[int]]:
        """Chunks that follow a line end are encoded as `"\\n" + chunk` less the ids of "\\n"."""
        k = len(self.newline)
        encoded = self.tokenizer.encode_batch(["\n" + c if a else c for c, a in zip(chunks, after_newline,
                                                                                     strict=True)])
        if any(a and e[:k] != self.newline for e, a in zip(encoded, after_newline, strict=True)):
            raise ValueError(f"{self.tokenizer!r}: a line end merged with the text after it; this tokenizer cannot "
                             "be encoded in chunks (please report it).")
        return [e[k:] if a else e for e, a in zip(encoded, after_newline, strict=True)]

    def _array(self, encoded: list[list[int]]) -> np.ndarray:
        return np.fromiter(itertools.chain.from_iterable(encoded), dtype=self.dtype, count=sum(map(len, encoded)))
