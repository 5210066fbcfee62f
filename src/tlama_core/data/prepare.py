"""`tlama prepare`: tokenize a corpus ahead of training into `.bin` shards that `create_dataloader(DIR)` reads.

Shard I of N takes a contiguous, deterministic 1/N of the input: of its files when there are at least N (no
machine then reads another's files), else of its units of work (~1 MB pieces of text, Parquet row groups, JSONL
pieces, dataset rows). Shard files are named `[SPLIT_]NNNNN.bin` so that sorted by name they are in input
order: the N shards read as one stream are exactly what one machine writes with N=1, id for id. Each is written
atomically with its JSON sidecar (dtype, num_tokens, text_chars, special ids); a shard killed half-way leaves
only a temporary that its re-run removes.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from tlama_core.atomic import atomic_write, remove_stale_temporaries
from tlama_core.data import text
from tlama_core.data.cache import sidecar
from tlama_core.data.encoding import Encoder, chunking_of
from tlama_core.data.hf_tokenizer import HFTokenizer
from tlama_core.data.loader import check_count
from tlama_core.data.sources import Source, resolve_source
from tlama_core.data.streaming import Work, cpu_count, ids_dtype, plan, warn_about, write_ids
from tlama_core.data.tokenizer import load_tokenizer


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
    source = resolve_source(data, split, text_field)
    if source.kind == "tokens":
        raise ValueError(f"data={str(data)!r} already holds token ids; pass text or records to prepare.")
    tok = load_tokenizer(tokenizer)
    chunking = chunking_of(tok)
    work, starts_stream = shard_work(source, chunking, shard, num_shards)
    dtype = ids_dtype(tok.vocab_size)
    separator = next((i for i in (tok.eos_id, tok.bos_id) if i is not None), None)
    processes = workers or (1 if isinstance(tok, HFTokenizer) else cpu_count())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = f"{split + '_' if split else ''}{shard:05d}" + (".uint32" if dtype.itemsize == 4 else "")
    path = out / f"{name}.bin"
    remove_stale_temporaries(out, name + ".bin*")  # what a killed run of this shard left
    path.with_name(path.name + ".json").unlink(missing_ok=True)  # a sidecar never describes another run's ids
    encoder = Encoder(tok, dtype, separator, source.text_field, source.dataset, chunking)
    totals = write_ids(work, encoder, path, processes=processes, parallel=processes > 1,
                       drop_first_separator=starts_stream, desc=f"shard {shard}/{num_shards}", progress=progress)
    warn_about(totals, source)
    meta = sidecar(tok, dtype, totals, separator, chunking) | {
        "shard": shard, "num_shards": num_shards, "split": split, "text_field": source.text_field,
        "tokenizer": str(tok.path), "source": source.describe()}
    atomic_write(path.with_name(path.name + ".json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return path


def shard_work(source: Source, chunking: str, shard: int, num_shards: int) -> tuple[list[Work], bool]:
    """The units of work of `shard`, and whether the token stream starts in it (no separator before its first
    record)."""
    files = source.files
    if len(files) >= num_shards and source.fraction is None:
        lo, hi = shard * len(files) // num_shards, (shard + 1) * len(files) // num_shards
        work = plan(dataclasses.replace(source, files=files[lo:hi]), chunking)
        if lo > 0 and work and isinstance(work[0], text.Piece):  # a document after another: separated
            work[0] = dataclasses.replace(work[0], separator_before=True)
        return work, lo == 0
    work = plan(source, chunking)
    lo, hi = shard * len(work) // num_shards, (shard + 1) * len(work) // num_shards
    return work[lo:hi], lo == 0
