"""Encoding a source's units of work into one file of ids, in order, by a pool of processes: the part the token
cache and `tlama prepare` share. Memory stays flat: each unit's ids go to disk as soon as they come back, and at
most two units per process are in flight."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import multiprocessing
import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tlama_core.atomic import atomic_open
from tlama_core.data import documents, text
from tlama_core.data.encoding import LONG_CHARS, Chunking, Encoded, Encoder
from tlama_core.data.sources import TRAIN_FRACTION, Source

# Lightning's rule: tqdm.auto's notebook bar needs ipywidgets, and without it warns ("IProgress not found") at import
# in every notebook that imports the data package.
if importlib.util.find_spec("ipywidgets") is not None:
    from tqdm.auto import tqdm
else:
    from tqdm import tqdm

Work = text.Piece | documents.Unit


def plan(source: Source, chunking: Chunking) -> list[Work]:
    """The units of work that make up `source`, in order (pieces of text, units of records)."""
    if source.kind == "records":
        return documents.plan(source.files, source.dataset, source.fraction, text.PIECE_BYTES, TRAIN_FRACTION)
    return text.pieces(text.segments(source.files, source.fraction), None if chunking.lines else 0)


def ids_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in it (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


@dataclass
class Totals:
    """What was written: ids, characters of text behind them, empty records skipped, files with bad UTF-8, the
    longest chunk encoded in one call, and the hash of the bytes written (`content_hash`)."""

    num_tokens: int = 0
    text_chars: int = 0
    empty: int = 0
    replaced: set[str] = field(default_factory=set)
    longest: int = 0
    content_hash: str = ""


def write_ids(work: list[Work], encoder: Encoder, path: Path, *, processes: int, parallel: bool,
              drop_first_separator: bool, desc: str, progress: bool | None = None, unique: bool = False,
              before_commit: Callable[[], object] | None = None) -> Totals:
    """Encode `work` in order into `path` (atomically; `unique`: through a temporary of this writer's own;
    `before_commit` is called once every id is written, before the file replaces `path`).
    `drop_first_separator`: the stream starts here, so the separator before its first record is left out.
    `progress` None shows a bar on a terminal only."""
    sizes = [size_of(w) for w in work]
    totals = Totals()
    digest = hashlib.blake2b(digest_size=32)
    bar = tqdm(total=sum(sizes), unit="B", unit_scale=True, desc=desc, disable=None if progress is None else
               not progress)
    start = time.perf_counter()
    with atomic_open(path, unique) as out, bar:
        for unit, size, result in zip(work, sizes, encode_all(work, encoder, processes, parallel), strict=True):
            for ids in result.ids:
                if drop_first_separator and totals.num_tokens == 0 and isinstance(unit, documents.Unit) \
                        and encoder.separator is not None and len(ids):
                    ids = ids[1:]
                out.write(ids)
                digest.update(ids)
                totals.num_tokens += len(ids)
            totals.text_chars += result.chars
            totals.longest = max(totals.longest, result.longest)
            totals.empty += result.empty
            if result.replaced:
                totals.replaced.add(unit.path)
            bar.update(size)
            bar.set_postfix(tokens_per_s=f"{totals.num_tokens / max(time.perf_counter() - start, 1e-9):,.0f}",
                            refresh=False)
        if before_commit is not None:
            before_commit()
    totals.content_hash = f"blake2b-256:{digest.hexdigest()}"
    return totals


def warn_about(totals: Totals, source: Source, chunking: Chunking) -> None:
    """One warning per file with bytes that are not UTF-8, one for all the empty records, one when a stretch of
    text too long for flat memory had to be encoded in one call (no exact cut in it for this tokenizer)."""
    for file in sorted(totals.replaced):
        warnings.warn(f"{file}: bytes that are not UTF-8 were replaced by U+FFFD while tokenizing.", stacklevel=3)
    if totals.empty:
        warnings.warn(f"{source.describe()}: skipped {totals.empty} empty record(s) (no text in "
                      f"{source.text_field!r}).", stacklevel=3)
    if totals.longest >= LONG_CHARS:
        why = {(True, True): "no line end or single space between printable characters to cut at",
               (True, False): "no line end to cut at; this tokenizer may merge text across a space, so it is not cut "
                              "there",
               (False, True): "no single space between printable characters to cut at; this tokenizer may merge "
                              "text across a line end, so it is not cut there",
               (False, False): "this tokenizer's documents are encoded whole: no cut was found exact for it",
               }[bool(chunking.lines), bool(chunking.spaces)]
        warnings.warn(f"{source.describe()}: {totals.longest:,} characters were encoded in one call ({why}); the "
                      "tokenizer's memory grows with that length (tens of bytes a character).", stacklevel=3)


def size_of(work: Work) -> int:
    """Bytes of a unit of work, for the progress bar (a row group or dataset rows count as one byte a row)."""
    if isinstance(work, text.Piece) or work.kind == "jsonl":
        return work.end - work.start
    if work.kind == "jsonl.gz":
        return os.path.getsize(work.path)
    return work.count or 0


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


_worker_encoder: Encoder | None = None


def _init_worker(encoder: Encoder) -> None:
    global _worker_encoder
    _worker_encoder = encoder


def _encode_in_worker(work: Work) -> Encoded:
    assert _worker_encoder is not None
    return _worker_encoder(work)


def encode_all(work: list[Work], encoder: Encoder, processes: int, parallel: bool) -> Iterator[Encoded]:
    """Encoded units in order: in this process, or from a pool of `processes` (results stream in order, at most
    two units per process in flight: a slow unit never lets the others' ids pile up in memory)."""
    if not parallel or processes < 2 or len(work) < 2:
        yield from map(encoder, work)
        return
    # fork where it exists: workers start at once without re-importing torch (as DataLoader workers do), and
    # inherit the encoder (and a datasets.Dataset) without pickling it
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    processes = min(processes, len(work))
    with context.Pool(processes, initializer=_init_worker, initargs=(encoder,)) as pool:
        units = iter(work)
        flight = deque(pool.apply_async(_encode_in_worker, (w,)) for w in itertools.islice(units, 2 * processes))
        while flight:
            result = flight.popleft().get()
            for w in itertools.islice(units, 1):
                flight.append(pool.apply_async(_encode_in_worker, (w,)))
            yield result
