"""The token cache: text and records are tokenized once per (contents, tokenizer) and kept on disk as raw ids.

An entry is `NAME-KEY.bin` (ids, uint16 when the vocabulary fits, else uint32) and its sidecar
`NAME-KEY.bin.json` (dtype, num_tokens, text_chars, special ids); the sidecar is written last, so an entry
without one is incomplete. KEY hashes the files' bytes (a dataset's texts), the `text_field` of records, the
tokenizer file's bytes and the split, so editing any makes a new entry. Both files are written atomically, and
builds hold a lock on the cache directory, so processes (e.g. DDP ranks) that start together tokenize once and
never see a partial file.

Large corpora are encoded by a pool of processes, unit by unit (pieces of text, see `text.py`; units of records,
see `documents.py`), streaming ids to disk in order: memory stays flat however large the corpus.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tlama_core.atomic import atomic_write, remove_stale_temporaries
from tlama_core.data import documents, text
from tlama_core.data.encoding import Chunking, Encoder, chunking_of
from tlama_core.data.hf_tokenizer import HFTokenizer
from tlama_core.data.sources import TRAIN_FRACTION, Source
from tlama_core.data.streaming import Totals, cpu_count, ids_dtype, plan, size_of, warn_about, write_ids
from tlama_core.data.tokenizer import Tokenizer, load_tokenizer

CACHE_FORMAT = 2  # 2: ids equal each whole document's encoding (1 encoded lines on their own)
PARALLEL_MIN_BYTES = 4 << 20  # below this, starting processes costs more than it saves


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


def cached_tokens(source: Source, tokenizer: Tokenizer | str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                  processes: int | None = None) -> CacheEntry:
    """Ids of the text or records `source` under the tokenizer (loaded, or its path): read from the cache, or built
    into it first."""
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer)
    model = tokenizer.path.read_bytes()
    key = cache_key(source, model)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    name = source.files[0].name.split(".")[0] if source.files else "dataset"
    stem = name[:40] + (f"-{source.fraction}" if source.fraction else "")
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
            meta = build(source, tokenizer, path, processes)
            meta.update(key=key, tokenizer=str(tokenizer.path), files=[str(f) for f in source.files])
            atomic_write(path.with_name(path.name + ".json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
            entry = CacheEntry(path, meta)
    return entry


def cache_key(source: Source, model: bytes) -> str:
    """Hash of everything the ids depend on: text or records, tokenizer bytes, the split and the piece rules."""
    h = hashlib.blake2b(digest_size=32)
    h.update(f"format={CACHE_FORMAT};fraction={source.fraction}@{TRAIN_FRACTION};kind={source.kind};"
             f"text_field={source.text_field if source.kind == 'records' else ''};piece={text.PIECE_BYTES};"
             f"scan={text.MAX_SCAN_BYTES};files={len(source.files)};".encode())
    h.update(hashlib.blake2b(model).digest())
    for f in source.files:
        h.update(f.name.encode() + _file_digest(f))  # the name too: it says how a file of records is read
    if source.dataset is not None:
        h.update(documents.dataset_digest(source.dataset, source.text_field))
    return h.hexdigest()


def build(source: Source, tokenizer: Tokenizer, path: Path, processes: int | None = None) -> dict[str, Any]:
    """Encode `source` into `path` (atomically) and return the sidecar's facts about it."""
    dtype = ids_dtype(tokenizer.vocab_size)
    separator = next((i for i in (tokenizer.eos_id, tokenizer.bos_id) if i is not None), None)
    chunking = chunking_of(tokenizer)
    work = plan(source, chunking)
    total = sum(map(size_of, work))
    processes = processes or max(2, min(cpu_count(), 16))
    # tokenizers' encode_batch runs a thread per core by itself; processes on top of it would only compete
    parallel = total >= PARALLEL_MIN_BYTES and not isinstance(tokenizer, HFTokenizer)
    encoder = Encoder(tokenizer, dtype, separator, source.text_field, source.dataset, chunking)
    name = source.files[0].name if source.files else "dataset"
    totals = write_ids(work, encoder, path, processes=processes, parallel=parallel, drop_first_separator=True,
                       desc=f"tokenizing {name}", progress=None if total >= PARALLEL_MIN_BYTES else False)
    warn_about(totals, source, chunking)
    return sidecar(tokenizer, dtype, totals, separator, chunking) | {"split": source.fraction}


def sidecar(tokenizer: Tokenizer, dtype: np.dtype, totals: Totals, separator: int | None,
            chunking: Chunking) -> dict[str, Any]:
    """Facts about a file of ids that its JSON sidecar holds (also `tlama prepare`'s shards), with the hash of
    its bytes (`content_hash`, checked by `verify_ids`)."""
    return {"format": CACHE_FORMAT, "dtype": dtype.name, "num_tokens": totals.num_tokens,
            "content_hash": totals.content_hash, "text_chars": totals.text_chars, "vocab_size": tokenizer.vocab_size,
            "eos_id": tokenizer.eos_id, "bos_id": tokenizer.bos_id, "separator_id": separator,
            "chunking": {"lines": chunking.lines, "spaces": chunking.spaces}}


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
