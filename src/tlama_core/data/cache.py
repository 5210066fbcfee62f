"""The token cache: text is tokenized once per (text contents, tokenizer) and kept on disk as raw ids.

An entry is `NAME-KEY.bin` (ids, uint16 when the vocabulary fits, else uint32) and its sidecar
`NAME-KEY.bin.json` (dtype, num_tokens, text_chars, special ids); the sidecar is written last, so an entry
without one is incomplete. KEY hashes the text files' bytes, the tokenizer model's bytes and the split, so
editing either makes a new entry. Both files are written atomically, and builds hold a lock on the cache
directory, so processes (e.g. DDP ranks) that start together tokenize once and never see a partial file.

Large corpora are encoded by a pool of processes, piece by piece (see `text.py`), streaming ids to disk in
order: memory stays flat however large the corpus.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import multiprocessing
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import sentencepiece as spm
from tqdm.auto import tqdm

from tlama_core.atomic import atomic_open, atomic_write, remove_stale_temporaries
from tlama_core.data import text
from tlama_core.data.sources import TRAIN_FRACTION, Source
from tlama_core.data.tokenizer import newline_is_a_boundary, optional_id

CACHE_FORMAT = 1
PARALLEL_MIN_BYTES = 4 << 20  # below this, starting processes costs more than it saves
GROUP_LINES = 4


def default_cache_dir() -> Path:
    """`$TLAMA_CACHE_DIR`, else `~/.cache/tlama_core/tokens`."""
    env = os.environ.get("TLAMA_CACHE_DIR")
    return Path(env) if env else Path.home() / ".cache" / "tlama_core" / "tokens"


@dataclass(frozen=True)
class CacheEntry:
    """A built cache entry: where its ids are and what its sidecar says."""

    path: Path
    meta: dict[str, Any]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"])


def cached_tokens(source: Source, tokenizer_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  processes: int | None = None) -> CacheEntry:
    """Ids of the text `source` under the tokenizer: read from the cache, or built into it first."""
    model = Path(tokenizer_path).read_bytes()
    key = cache_key(source, model)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    stem = source.files[0].stem[:40] + (f"-{source.fraction}" if source.fraction else "")
    path = directory / f"{stem}-{key[:20]}.bin"
    entry = _read_entry(path)
    if entry is not None:
        return entry
    directory.mkdir(parents=True, exist_ok=True)
    with _locked(directory) as exclusive:
        entry = _read_entry(path)  # another process may have built it while we waited
        if entry is None:
            if exclusive:  # no other builder is running: any temporary here is left from a killed one
                for pattern in ("*.bin", "*.bin.json"):  # the cache's own files
                    remove_stale_temporaries(directory, pattern)
            meta = build(source, model, path, processes)
            meta.update(key=key, tokenizer=str(tokenizer_path), files=[str(f) for f in source.files])
            atomic_write(path.with_name(path.name + ".json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
            entry = CacheEntry(path, meta)
    return entry


def cache_key(source: Source, model: bytes) -> str:
    """Hash of everything the ids depend on: text bytes, tokenizer bytes, the split and the piece rules."""
    h = hashlib.blake2b(digest_size=32)
    h.update(f"format={CACHE_FORMAT};fraction={source.fraction}@{TRAIN_FRACTION};"
             f"piece={text.PIECE_BYTES};scan={text.MAX_SCAN_BYTES};files={len(source.files)};".encode())
    h.update(hashlib.blake2b(model).digest())
    for f in source.files:
        h.update(_file_digest(f))
    return h.hexdigest()


def build(source: Source, model: bytes, path: Path, processes: int | None = None) -> dict[str, Any]:
    """Encode `source` into `path` (atomically) and return the sidecar's facts about it."""
    sp = spm.SentencePieceProcessor(model_proto=model)
    vocab = sp.get_piece_size()
    dtype = ids_dtype(vocab)
    separator = next((i for i in (sp.eos_id(), sp.bos_id()) if i >= 0), None)
    work = text.pieces(text.segments(source.files, source.fraction))
    total = sum(p.end - p.start for p in work)
    processes = processes or max(2, min(_cpu_count(), 16))
    parallel = processes > 1 and total >= PARALLEL_MIN_BYTES and len(work) > 1
    num_tokens = text_chars = 0
    replaced: set[str] = set()
    bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"tokenizing {source.files[0].name}",
               disable=True if total < PARALLEL_MIN_BYTES else None)
    with atomic_open(path) as out, bar:
        for piece, (ids, chars, bad) in zip(work, _encode_all(work, model, dtype, separator, processes, parallel),
                                        strict=True):
            out.write(ids.tobytes())
            num_tokens += len(ids)
            text_chars += chars
            if bad:
                replaced.add(piece.path)
            bar.update(piece.end - piece.start)
    for name in sorted(replaced):
        warnings.warn(f"{name}: bytes that are not UTF-8 were replaced by U+FFFD while tokenizing.", stacklevel=3)
    return {"format": CACHE_FORMAT, "dtype": dtype.name, "num_tokens": num_tokens, "text_chars": text_chars,
            "vocab_size": vocab, "eos_id": optional_id(sp.eos_id()), "bos_id": optional_id(sp.bos_id()),
            "separator_id": separator, "split": source.fraction}


def ids_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits in it (vocab_size <= 65536), else uint32."""
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


class Encoder:
    """Turns one piece of text into ids: its lines encoded one by one, a separator first if it starts a document.

    When the tokenizer cannot merge across a line end (`newline_is_a_boundary`), GROUP_LINES lines go into
    each encode call instead: the same ids, ~20% faster (fewer, longer strings cross into sentencepiece).
    """

    def __init__(self, model: bytes, dtype: np.dtype, separator: int | None) -> None:
        self.sp = spm.SentencePieceProcessor(model_proto=model)
        self.dtype, self.separator = dtype, separator
        self.group = GROUP_LINES if newline_is_a_boundary(self.sp) else 1

    def __call__(self, piece: text.Piece) -> tuple[np.ndarray, int, bool]:
        content, bad = text.read_piece(piece)
        lines = text.split_lines(content)
        if self.group > 1:
            lines = ["".join(lines[i:i + self.group]) for i in range(0, len(lines), self.group)]
        encoded = self.sp.encode(lines, num_threads=1)
        if piece.separator_before and self.separator is not None:
            encoded.insert(0, [self.separator])
        ids = np.fromiter(itertools.chain.from_iterable(encoded), dtype=self.dtype, count=sum(map(len, encoded)))
        return ids, len(content), bad


_worker_encoder: Encoder | None = None


def _init_worker(model: bytes, dtype: np.dtype, separator: int | None) -> None:
    global _worker_encoder
    _worker_encoder = Encoder(model, dtype, separator)


def _encode_in_worker(piece: text.Piece) -> tuple[np.ndarray, int, bool]:
    assert _worker_encoder is not None
    return _worker_encoder(piece)


def _encode_all(work: list[text.Piece], model: bytes, dtype: np.dtype, separator: int | None, processes: int,
                parallel: bool) -> Iterator[tuple[np.ndarray, int, bool]]:
    """Encoded pieces in order: in this process for small inputs, else from a pool (results stream in order)."""
    if not parallel:
        encoder = Encoder(model, dtype, separator)
        yield from map(encoder, work)
        return
    # fork where it exists: workers start at once without re-importing torch (as DataLoader workers do)
    methods = multiprocessing.get_all_start_methods()
    context = multiprocessing.get_context("fork" if "fork" in methods else None)
    with context.Pool(min(processes, len(work)), initializer=_init_worker, initargs=(model, dtype, separator)) as pool:
        yield from pool.imap(_encode_in_worker, work, chunksize=1)


def _read_entry(path: Path) -> CacheEntry | None:
    sidecar = path.with_name(path.name + ".json")
    if not (sidecar.is_file() and path.is_file()):
        return None
    try:
        meta = json.loads(sidecar.read_text())
        complete = path.stat().st_size == meta["num_tokens"] * np.dtype(meta["dtype"]).itemsize
    except (ValueError, KeyError, TypeError):
        return None  # a sidecar from another format version: rebuild
    return CacheEntry(path, meta) if complete else None


@contextmanager
def _locked(directory: Path) -> Iterator[bool]:
    """Hold an exclusive lock on `directory` (POSIX flock); yields False where there is no such lock."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builders rely on the atomic renames alone
        yield False
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield True
    finally:
        os.close(fd)  # closing releases the lock


def _file_digest(path: Path) -> bytes:
    stat = path.stat()
    return _digest_of_version(path.resolve(), (stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino))


@functools.lru_cache(maxsize=256)
def _digest_of_version(path: Path, version: tuple[int, ...]) -> bytes:
    """Content hash of one version of a file, remembered per (path, size, mtime, ctime, inode): the train and val
    loaders of one run read the same corpus, which is then hashed once, not once per loader (a large corpus costs
    seconds). ctime and inode change even when a copy keeps the old mtime (`cp -p`, `rsync -t`)."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.digest()


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1
