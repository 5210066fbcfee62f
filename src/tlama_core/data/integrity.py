"""Whether ids on disk are the ids that were written, and a cheap fingerprint of what a loader reads.

The token cache and `tlama prepare` write each `.bin` with a sidecar holding its `num_tokens` and the blake2b
hash of its bytes (`content_hash`), hashed while the ids are written. Every load checks the length (free: a
`stat`); hashing reads the whole file (~0.6 GB/s on one core, several times a read from the page cache, see
`bench/shard_integrity.py`), so it is done on request: `verify` (`tlama prepare --verify DIR`).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from tlama_core.data.dataset import TokenFile
from tlama_core.data.sources import bin_sidecar, check_shard_set, list_files

HASH = "blake2b-256"
SAMPLE_BYTES = 1 << 16  # of a file without a content hash, its first and last bytes join the fingerprint
_BLOCK = 1 << 22


def content_hash(path: str | os.PathLike) -> str:
    """`blake2b-256:HEX` of the file's bytes, as the sidecars hold it (read in 4 MB blocks)."""
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while block := f.read(_BLOCK):
            h.update(block)
    return f"{HASH}:{h.hexdigest()}"


def verify(data_path: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """Check every `.bin` of `data_path` (a file, directory or glob) against its sidecar: the length, then the
    content hash. Returns the files whose hash matched and those with no hash to check (no sidecar, or one
    written before hashes were); raises ValueError naming the first file that differs."""
    kind, files = list_files(data_path)
    bins = [f for f in files if f.suffix == ".bin"]
    if kind != "tokens" or not bins:
        raise ValueError(f"verify: {str(data_path)!r} holds no .bin shards to check.")
    check_shard_set(files)
    matched, unhashed = [], []
    for path in bins:
        TokenFile.open(path)  # the length first: cheap, and its message says more
        expected = bin_sidecar(path).get("content_hash")
        if not isinstance(expected, str):
            unhashed.append(path)
            continue
        actual = content_hash(path)
        if actual != expected:
            raise ValueError(f"{path}: its content hash is {actual}, its sidecar {path.name}.json says {expected}: "
                             "the ids changed after they were written (a bad copy or disk?); copy the file again, "
                             "or run `tlama prepare` for it again.")
        matched.append(path)
    return matched, unhashed


def fingerprint(files: list[TokenFile]) -> str:
    """A hash of the ids that `files` (in order, each a range of ids) hold, computed without reading them: a
    file's sidecar content hash (the cache's and `tlama prepare`'s), else its sidecar cache key, else its size and
    its first and last SAMPLE_BYTES."""
    h = hashlib.blake2b(digest_size=16)
    for f in files:
        h.update(json.dumps([_identity(f.path), f.dtype, f.start, f.stop]).encode())
    return h.hexdigest()


def _identity(path: Path) -> str:
    facts: dict[str, Any] = bin_sidecar(path)
    for key in ("content_hash", "key"):
        if isinstance(facts.get(key), str):
            return f"{key}:{facts[key]}"
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(SAMPLE_BYTES)
        f.seek(max(0, size - SAMPLE_BYTES))
        tail = f.read(SAMPLE_BYTES)
    return f"size:{size}:{hashlib.blake2b(head + tail, digest_size=16).hexdigest()}"
