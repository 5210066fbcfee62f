"""`tlama prepare`: tokenize a corpus ahead of training into `.bin` shards that `create_dataloader(DIR)` reads.

Shard I of N takes a contiguous, deterministic 1/N of the input: of its files when there are at least N (no
machine then reads another's files), else of its units of work (~1 MB pieces of text, Parquet row groups, JSONL
pieces, dataset rows). Shard files are named `[SPLIT_]NNNNN.bin` so that sorted by name they are in input
order: the N shards read as one stream are exactly what one machine writes with N=1, id for id. Each is written
atomically with its JSON sidecar (dtype, num_tokens, content_hash, text_chars, special ids), through temporaries
of the writer's own, while the writer holds `[SPLIT_]NNNNN.lock`: a second writer of the shard is refused, and a
shard killed half-way leaves only a temporary (and a lock) that its re-run removes (takes over).
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tlama_core.atomic import atomic_write, disk_full_error, remove_stale_temporaries
from tlama_core.data import text
from tlama_core.data.cache import sidecar
from tlama_core.data.encoding import Chunking, Encoder, chunking_of
from tlama_core.data.hf_tokenizer import HFTokenizer
from tlama_core.data.loader import check_count
from tlama_core.data.sources import Source, resolve_source
from tlama_core.data.streaming import Work, cpu_count, ids_dtype, plan, warn_about, write_ids
from tlama_core.data.tokenizer import load_tokenizer
from tlama_core.locks import LockError, OwnerLock


def prepare(data: Any, tokenizer: str | os.PathLike, out: str | os.PathLike, *, text_field: str = "text",
            split: str | None = None, shard: int = 0, num_shards: int = 1, workers: int | None = None,
            progress: bool | None = None) -> Path:
    """Tokenize shard `shard` of `num_shards` of `data` into `out`; return the `.bin` written.

    `workers`: encoding processes; None: one per core for sentencepiece, one for a tokenizer.json (the
    `tokenizers` library already encodes a batch on every core).
    """
    num_shards = check_count("num_shards", num_shards, 1)
    shard = check_count("shard", shard, 0)
    if shard >= num_shards:
        raise ValueError(f"shard={shard}: must be below num_shards={num_shards} (shards are 0 .. {num_shards - 1}).")
    if workers is not None:
        workers = check_count("workers", workers, 1)
    if Path(out).exists() and not Path(out).is_dir():
        raise ValueError(f"out={str(out)!r} is a file; the shards go into a directory: name a new or existing one.")
    source = resolve_source(data, split, text_field)
    if source.kind == "tokens":
        raise ValueError(f"data={str(data)!r} already holds token ids; pass text or records to prepare.")
    tok = load_tokenizer(tokenizer)
    chunking = chunking_of(tok)
    work, starts_stream, units = shard_work(source, chunking, shard, num_shards)
    dtype = ids_dtype(tok.vocab_size)
    separator = next((i for i in (tok.eos_id, tok.bos_id) if i is not None), None)
    processes = workers or (1 if isinstance(tok, HFTokenizer) else cpu_count())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{split + '_' if split else ''}{shard:05d}"
    name = stem + (".uint32" if dtype.itemsize == 4 else "")
    path = out / f"{name}.bin"
    if not work:
        warnings.warn(f"shard {shard} of {num_shards} gets no data: {source.describe()} makes {units} unit(s) of "
                      f"work (files, ~1 MB pieces of text or JSONL, Parquet row groups, 4,096 dataset rows), fewer "
                      f"than num_shards, so {path} is written empty (readers skip it). Use num_shards={units} or "
                      "fewer.", stacklevel=2)
    with ShardLock(out / f"{stem}.lock", path):
        remove_stale_temporaries(out, name + ".bin*")  # what a killed writer of this shard left
        sidecar_path = path.with_name(path.name + ".json")
        encoder = Encoder(tok, dtype, separator, source.text_field, source.dataset, chunking)
        with _disk_full_named(path, shard):  # a failed write leaves an earlier run's shard and sidecar as they were
            totals = write_ids(work, encoder, path, processes=processes, parallel=processes > 1, unique=True,
                               drop_first_separator=starts_stream, desc=f"shard {shard}/{num_shards}",
                               progress=progress, before_commit=lambda: sidecar_path.unlink(missing_ok=True))
        warn_about(totals, source, chunking)
        meta = sidecar(tok, dtype, totals, separator, chunking) | {
            "shard": shard, "num_shards": num_shards, "split": split, "text_field": source.text_field,
            "tokenizer": str(tok.path), "source": source.describe()}
        with _disk_full_named(sidecar_path, shard):
            atomic_write(sidecar_path, lambda f: f.write(json.dumps(meta, indent=1).encode()), unique=True)
    return path


def shard_work(source: Source, chunking: Chunking, shard: int, num_shards: int) -> tuple[list[Work], bool, int]:
    """The units of work of `shard`, whether the token stream starts in it (no separator before its first
    record), and how many units (files, or units of work) the shards share."""
    files = source.files
    if len(files) >= num_shards and source.fraction is None:
        lo, hi = shard * len(files) // num_shards, (shard + 1) * len(files) // num_shards
        work = plan(dataclasses.replace(source, files=files[lo:hi]), chunking)
        if lo > 0 and work and isinstance(work[0], text.Piece):  # a document after another: separated
            work[0] = dataclasses.replace(work[0], separator_before=True)
        return work, lo == 0, len(files)
    work = plan(source, chunking)
    lo, hi = shard * len(work) // num_shards, (shard + 1) * len(work) // num_shards
    return work[lo:hi], lo == 0, len(work)


class ShardLock(OwnerLock):
    """The lock a writer of one shard holds (`LOCK` beside the shard `path`)."""

    def __init__(self, lock: Path, path: Path) -> None:
        super().__init__(lock)
        self.shard = path

    def busy(self, path: Path, holder: dict[str, Any]) -> LockError:
        return LockError(f"{self.shard} is being written by another `tlama prepare` (pid {holder.get('pid')} on "
                         f"host {holder.get('host')}, lock file {path}). Wait for it to end, or write this shard "
                         "elsewhere; if that process is gone (its machine was lost), delete the lock file.")

    def taken_over(self, path: Path, holder: str) -> str:
        return (f"{path}: taking over the lock of a `tlama prepare` that is no longer running ({holder}); it was "
                "killed before it could remove the lock. Writing the shard again.")


@contextmanager
def _disk_full_named(path: Path, shard: int) -> Iterator[None]:
    """A full disk while writing `path` is one OSError naming the file, the space left and the fix."""
    try:
        yield
    except OSError as err:
        full = disk_full_error(err, path, then=f"free space there (or write to another directory) and run shard "
                                               f"{shard} again")
        if full is None:
            raise
        raise full from None
