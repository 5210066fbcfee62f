"""Ids of one unit of work (a piece of text or a unit of records) that equal the tokenizer's own encoding of each
whole document.

Documents (records, and text files, which may not fit in memory) are encoded in chunks of about CHUNK_CHARS
characters, BATCH_CHARS of them per call: sentencepiece encodes such chunks faster than whole documents, and no
call's memory grows with the document (a tokenizer holds tens of bytes per character of a call). A chunk is cut
after a line end followed by a printable ASCII character (where the pre-tokenizers of common tokenizers split
anyway), or, where no such line end comes within LINE_REACH characters, before a space between two printable ASCII
characters (GPT-2's, Llama 3's and sentencepiece's pre-tokenizers start a word with the space before it). Chunked
ids equal whole-document ids only for some tokenizers, so `chunking_of` checks, for each kind of cut, that no token
of the vocabulary spans it and which way of encoding the chunk after it gives a probe text's own ids:

- "plain": chunks encode on their own (the tokenizers trained here, byte-level BPE);
- "after_newline": a chunk encodes as it does after a line end, i.e. `encode("\\n" + chunk)` without the ids of
  "\\n" (sentencepiece's dummy prefix, as in Llama 2 and Mistral, adds a space to every chunk encoded alone);
- None: never cut there (a token spans a line end; a normalizer or prefix that differs at a call's start).

A stretch with no exact cut is encoded in one call, whatever its length: `Encoded.longest` reports it, for one
warning.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from tlama_core.data import documents, text
from tlama_core.data.tokenizer import SentencePieceTokenizer, Tokenizer

CHUNK_CHARS = 512
LINE_REACH = 8 * CHUNK_CHARS  # how far past a chunk's size a line end is looked for before a space is taken
BATCH_CHARS = 1 << 20  # characters of chunks encoded in one call
LONG_CHARS = 1 << 20  # a chunk this long (no exact cut in it) is warned about
BOUNDARY = re.compile(r"\n(?=[!-~])")  # a chunk ends after the line end
SPACE = re.compile(r"[!-~](?= [!-~])")  # ... or, in a long line, before a space between printable characters
EITHER = re.compile(f"{BOUNDARY.pattern}|{SPACE.pattern}")
SPANS_SPACE = re.compile(r"[!-~] ")  # a token holding this could span a cut at a space
PROBE = ("First line.\nnever  mind\n  having two spaces\n\n\ttab\nx = 12345;\n(paren) ends \n"
         " caf\u00e9 \u4e2d\u6587\n\n\nlast line")
PROBE_LINE = ("One line: never  mind, x = 12345; (paren) \"quoted\" it's a-b c.d e/f g_h 1 2 3 $5 #6 @a ~b "
              "caf\u00e9 \u4e2d\u6587 \tTab end. The the THE 1000 2024-01-01 x+y=z [a] {b} <c> well...")


@dataclass(frozen=True)
class Chunking:
    """Where a tokenizer's documents may be cut into chunks whose ids join into the whole document's, and how a
    chunk after each kind of cut is encoded: "plain" or "after_newline" (module doc); None: never cut there."""

    lines: str | None = None  # after a line end followed by a printable ASCII character
    spaces: str | None = None  # in a long line, before a space between printable ASCII characters

    def chunks(self, content: str, size: int = CHUNK_CHARS) -> Iterator[tuple[str, str | None]]:
        """`content` in chunks of at least `size` characters (the last may be shorter), each with the kind of cut
        before it ("line", "space"; None for the first). A line end within LINE_REACH is taken before a space."""
        start, n, kind = 0, len(content), None
        while start + size < n:
            found = self._next_cut(content, start + size - 1)
            if found is None:
                break
            yield content[start:found.end()], kind
            start, kind = found.end(), "line" if found.group() == "\n" else "space"
        if start < n:
            yield content[start:], kind

    def encoding_after(self, kind: str | None) -> str:
        """How a chunk after a cut of `kind` is encoded ("plain" for a document's first)."""
        return {"line": self.lines, "space": self.spaces}.get(kind or "") or "plain"

    def _next_cut(self, content: str, at: int) -> re.Match[str] | None:
        if self.lines and (found := BOUNDARY.search(content, at, at + LINE_REACH + 1)):
            return found
        if self.spaces and (found := SPACE.search(content, at, at + LINE_REACH + 1)):
            return found
        pattern = EITHER if self.lines and self.spaces else BOUNDARY if self.lines else SPACE if self.spaces else None
        return pattern.search(content, at) if pattern else None


def chunking_of(tokenizer: Tokenizer) -> Chunking:
    """Where text can be cut into chunks whose ids join into the whole document's ids, and how each chunk is
    encoded (see the module doc): each kind of cut is checked on the vocabulary and a probe, then both together."""
    texts = _token_texts(tokenizer)
    newline = tokenizer.encode("\n")
    lines = None if any(BOUNDARY.search(t) for t in texts) else _exact_mode(tokenizer, "lines", PROBE, newline)
    spaces = None if any(SPANS_SPACE.search(t) for t in texts) else \
        _exact_mode(tokenizer, "spaces", PROBE_LINE, newline)
    if lines and spaces and not _exact(tokenizer, Chunking(lines, spaces), PROBE_LINE + "\n" + PROBE + " " +
                                       PROBE_LINE, newline):
        spaces = None
    return Chunking(lines, spaces)


def cut(content: str, size: int = CHUNK_CHARS) -> list[str]:
    """`content` in chunks of at least `size` characters (the last may be shorter), each ending at a line
    boundary."""
    return [chunk for chunk, _ in Chunking("plain").chunks(content, size)]


def _exact_mode(tokenizer: Tokenizer, where: str, probe: str, newline: list[int]) -> str | None:
    """The first way ("plain", "after_newline") to encode chunks cut at every boundary of `where` ("lines",
    "spaces") of `probe` that gives the probe's own ids; None if neither does."""
    return next((mode for mode in ("plain", "after_newline")
                 if _exact(tokenizer, Chunking(**{where: mode}), probe, newline)), None)


def _exact(tokenizer: Tokenizer, chunking: Chunking, probe: str, newline: list[int]) -> bool:
    """Whether `probe`, cut at every boundary `chunking` allows, encodes chunk by chunk to its whole ids."""
    pattern = EITHER if chunking.lines and chunking.spaces else BOUNDARY if chunking.lines else SPACE
    ends = [0, *(m.end() for m in pattern.finditer(probe)), len(probe)]
    ids = []
    for a, b in itertools.pairwise(ends):
        kind = None if a == 0 else "line" if probe[a - 1] == "\n" else "space"
        if chunking.encoding_after(kind) == "plain":
            ids += tokenizer.encode(probe[a:b])
            continue
        encoded = tokenizer.encode("\n" + probe[a:b])
        if encoded[:len(newline)] != newline:
            return False
        ids += encoded[len(newline):]
    return ids == tokenizer.encode(probe)


def _token_texts(tokenizer: Tokenizer) -> list[str]:
    """The text of every token: a token holding a chunk boundary could merge across it."""
    if isinstance(tokenizer, SentencePieceTokenizer):
        return [tokenizer.processor.id_to_piece(i).replace("\u2581", " ") for i in range(tokenizer.vocab_size)]
    return [tokenizer.decode([i]) for i in range(tokenizer.vocab_size)]


@dataclass
class Encoded:
    """A unit's ids (in parts, written one after the other), the characters of text behind them, whether bytes
    were not UTF-8, empty records skipped, and the longest chunk encoded in one call."""

    ids: list[np.ndarray] = field(default_factory=list)
    chars: int = 0
    replaced: bool = False
    empty: int = 0
    longest: int = 0


class Encoder:
    """Turns a `text.Piece` or a `documents.Unit` into ids; a separator id goes before every document but the
    first of a text source (records: before every one; the stream's first is dropped by the caller)."""

    def __init__(self, tokenizer: Tokenizer, dtype: np.dtype, separator: int | None, text_field: str,
                 dataset: object, chunking: Chunking) -> None:
        self.tokenizer, self.dtype, self.separator = tokenizer, dtype, separator
        self.text_field, self.dataset, self.chunking = text_field, dataset, chunking
        self.newline = tokenizer.encode("\n")

    def __call__(self, work: text.Piece | documents.Unit) -> Encoded:
        if isinstance(work, text.Piece):
            content, bad = text.read_piece(work)
            result = self.encode_documents([content], separate=work.separator_before,
                                           continues=not work.starts_document)
            result.chars, result.replaced = len(content), bad
            return result
        docs, empty = [], 0
        for doc in documents.read(work, self.text_field, self.dataset):
            if doc:
                docs.append(doc)
            else:
                empty += 1
        result = self.encode_documents(docs, separate=True)
        result.chars, result.empty = sum(map(len, docs)), empty
        return result

    def encode_documents(self, docs: list[str], separate: bool, continues: bool = False) -> Encoded:
        """Ids of `docs` in order, in parts of about BATCH_CHARS characters' worth: a separator before each
        document when `separate`, then its chunks' ids. `continues`: the first document goes on from text before
        it (a text file's later piece)."""
        result, batch, size = Encoded(), [], 0
        for d, doc in enumerate(docs):
            if separate and self.separator is not None:
                batch.append(None)
            for chunk, kind in self.chunking.chunks(doc):
                kind = "line" if kind is None and d == 0 and continues else kind
                batch.append((chunk, self.chunking.encoding_after(kind) == "after_newline"))
                size += len(chunk)
                result.longest = max(result.longest, len(chunk))
                if size >= BATCH_CHARS:
                    result.ids.append(self._encode_batch(batch))
                    batch, size = [], 0
        if batch or not result.ids:
            result.ids.append(self._encode_batch(batch))
        return result

    def _encode_batch(self, batch: list[tuple[str, bool] | None]) -> np.ndarray:
        """Ids of a batch of chunks (with whether each follows a line end) and separators (None), in order."""
        chunks = [item for item in batch if item is not None]
        if any(after for _, after in chunks):
            encoded = iter(self._encode_after_newline(chunks))
        else:
            encoded = iter(self.tokenizer.encode_batch([c for c, _ in chunks]))
        lists = [[self.separator] if item is None else next(encoded) for item in batch]
        return np.fromiter(itertools.chain.from_iterable(lists), dtype=self.dtype, count=sum(map(len, lists)))

    def _encode_after_newline(self, chunks: list[tuple[str, bool]]) -> list[list[int]]:
        """Chunks that follow a line end (or a cut) are encoded as `"\\n" + chunk` less the ids of "\\n"."""
        k = len(self.newline)
        encoded = self.tokenizer.encode_batch(["\n" + c if a else c for c, a in chunks])
        if any(a and e[:k] != self.newline for e, (_, a) in zip(encoded, chunks, strict=True)):
            raise ValueError(f"{self.tokenizer!r}: a line end merged with the text after it; this tokenizer cannot "
                             "be encoded in chunks (please report it).")
        return [e[k:] if a else e for e, (_, a) in zip(encoded, chunks, strict=True)]
