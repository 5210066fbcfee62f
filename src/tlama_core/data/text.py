"""Reading text corpora by byte range, so that no step ever holds a whole corpus in memory.

A text source is cut into pieces of about PIECE_BYTES that end after a "\n" followed by a printable ASCII
character (where tokenizers split anyway, see `encoding.py`); each piece is decoded and encoded on its own, so the
token stream does not depend on where pieces are cut or on how many processes encode them. Without such a line
end within MAX_SCAN_BYTES, a piece is cut at a character boundary.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tlama_core.data.sources import TRAIN_FRACTION

PIECE_BYTES = 1 << 20
MAX_SCAN_BYTES = 1 << 20
_BLOCK = 1 << 20


@dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of one file, encoded as a unit; `separator_before` marks a new document after another,
    `starts_document` a piece nothing of its document comes before."""

    path: str
    start: int
    end: int
    separator_before: bool
    starts_document: bool = False


@dataclass(frozen=True)
class Segment:
    """Bytes [start, end) of one file that belong to the selected text."""

    path: Path
    start: int
    end: int
    separator_before: bool


def read_piece(piece: Piece) -> tuple[str, bool]:
    """The piece's text and whether it held bytes that are not UTF-8 (replaced by U+FFFD)."""
    with open(piece.path, "rb") as f:
        f.seek(piece.start)
        data = f.read(piece.end - piece.start)
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def segments(files: tuple[Path, ...], fraction: str | None) -> list[Segment]:
    """The byte ranges of `files` that make up the text, whole or its first TRAIN_FRACTION / the rest.

    Documents (files) after the first get a separator before them; the part a split cuts off keeps none.
    """
    whole = [Segment(f, 0, f.stat().st_size, i > 0) for i, f in enumerate(files)]
    if fraction is None:
        return whole
    counts = [count_chars(s.path) for s in whole]
    boundary = int(sum(counts) * TRAIN_FRACTION)  # nanoGPT: data[:int(n * 0.9)] is train
    train, val, seen = [], [], 0
    for seg, n in zip(whole, counts, strict=True):
        if seen + n <= boundary:
            train.append(seg)
        elif seen >= boundary:
            val.append(seg)
        else:
            cut = byte_of_char(seg.path, boundary - seen)
            train.append(Segment(seg.path, 0, cut, seg.separator_before))
            val.append(Segment(seg.path, cut, seg.end, False))
        seen += n
    chosen = train if fraction == "train" else val
    return [s for s in chosen if s.end > s.start]


def pieces(segs: list[Segment], piece_bytes: int | None = None) -> list[Piece]:
    """Cut segments into pieces of about `piece_bytes` (default PIECE_BYTES) that end after a newline followed by a
    printable ASCII character; `piece_bytes=0` keeps each segment whole."""
    piece_bytes = PIECE_BYTES if piece_bytes is None else piece_bytes
    out = []
    for seg in segs:
        pos = seg.start
        with open(seg.path, "rb") as f:
            while pos < seg.end:
                cut = _cut_after(f, pos + piece_bytes, seg.end) if piece_bytes else seg.end
                out.append(Piece(str(seg.path), pos, cut, seg.separator_before and pos == seg.start, pos == seg.start))
                pos = cut
    return out


def count_chars(path: str | os.PathLike) -> int:
    """Characters in a UTF-8 file: bytes that are not continuation bytes (streamed, flat memory)."""
    total = 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            total += int(_char_starts(block).sum())
    return total


def byte_of_char(path: str | os.PathLike, index: int) -> int:
    """Byte offset at which character `index` of a UTF-8 file starts (file size when index = its length)."""
    seen, offset = 0, 0
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            starts = np.flatnonzero(_char_starts(block))
            if seen + len(starts) > index:
                return offset + int(starts[index - seen])
            seen += len(starts)
            offset += len(block)
    return offset


def _char_starts(block: bytes) -> np.ndarray:
    return (np.frombuffer(block, dtype=np.uint8) & 0xC0) != 0x80


_BOUNDARY = re.compile(rb"\n(?=[!-~])")


def _cut_after(f, target: int, end: int) -> int:
    """Just after the first newline at or after `target` that a printable ASCII character follows; without one
    within MAX_SCAN_BYTES, the first character start at or after `target`; never beyond `end`."""
    if target >= end:
        return end
    f.seek(target)
    window = b""
    while len(window) < min(MAX_SCAN_BYTES, end - target):  # lines are short: read a little at a time
        block = f.read(min(1 << 14, MAX_SCAN_BYTES - len(window), end - target - len(window)))
        if not block:  # the file shrank since it was measured
            break
        scanned = len(window)
        window += block
        found = _BOUNDARY.search(window, max(0, scanned - 1))
        if found:
            return target + found.start() + 1
        if target + len(window) == end and window.endswith(b"\n"):
            return end
    starts = np.flatnonzero(_char_starts(window))
    return target + int(starts[0]) if len(starts) else min(end, target + len(window))
