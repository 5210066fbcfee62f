"""`create_dataloader` and the loader it returns: a resumable, shardable DataLoader of token windows."""

from __future__ import annotations

import numbers
import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from tlama_core.data.cache import cached_tokens
from tlama_core.data.dataset import CorpusInfo, TokenFile, TokenStream, TokenWindows, batch_as_is
from tlama_core.data.integrity import fingerprint
from tlama_core.data.sampler import WindowSampler
from tlama_core.data.sources import Source, bin_sidecar, resolve_source
from tlama_core.data.tokenizer import Tokenizer, load_tokenizer
from tlama_core.data.workers import IgnoreStopSignals


class TokenDataLoader(DataLoader):
    """A DataLoader of (x, y) LongTensors (batch_size, seq_length) that carries its corpus facts and position.

    Attributes the trainer reads: `batch_size`, `seq_length`, `vocab_size`, `num_tokens`, `text_chars`,
    `eos_id`, `bos_id`, `tokenizer` (and its `tokenizer_path`), `data_fingerprint`.
    `state_dict()` / `load_state_dict()` save and restore the position to the batch
    (Lightning calls them on the loader); `shard(rank, world_size)` overrides torch.distributed's rank.
    """

    def __init__(self, dataset: TokenWindows, batch_size: int, *, shuffle: bool = True, seed: int = 1337,
                 num_workers: int = 0, pin_memory: bool = False) -> None:
        sampler = WindowSampler(len(dataset), batch_size, shuffle=shuffle, seed=seed)
        super().__init__(dataset, batch_size=batch_size, sampler=sampler, drop_last=True, collate_fn=batch_as_is,
                         num_workers=num_workers, pin_memory=pin_memory, persistent_workers=num_workers > 0,
                         worker_init_fn=IgnoreStopSignals())
        self.shuffle = shuffle
        self.seq_length: int = dataset.seq_length
        self.num_tokens: int = len(dataset.tokens)
        self.text_chars: int | None = dataset.info.text_chars
        self.eos_id: int | None = dataset.info.eos_id
        self.bos_id: int | None = dataset.info.bos_id
        self.tokenizer: Tokenizer | None = None  # the tokenizer the ids were made with (create_dataloader)
        self.tokenizer_path: Path | None = None  # its file
        self._fingerprint: str | None = None

    @property
    def vocab_size(self) -> int:
        """The tokenizer's piece count; for ids without a tokenizer, the largest id + 1 (read once, on demand)."""
        info = self.dataset.info
        if info.vocab_size is None:
            info.vocab_size = self.dataset.tokens.max_id() + 1
        return info.vocab_size

    @property
    def data_fingerprint(self) -> str:
        """A hash of the ids this loader reads, for checking that a resumed run reads what it read before: it
        changes when the text, records or shards change, and is computed from their sidecars (the content hash
        written with the ids), not by reading the data (see `integrity.fingerprint`)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.dataset.tokens.files)
        return self._fingerprint

    def shard(self, rank: int, world_size: int) -> TokenDataLoader:
        """Read only this process's share, as process `rank` of `world_size` (returns self)."""
        self.sampler.shard(rank, world_size)
        return self

    def __iter__(self) -> _Pass:
        epoch, start, num_batches = self.sampler.begin_pass()
        return _Pass(super().__iter__(), self.sampler, epoch, start, num_batches)

    def state_dict(self) -> dict[str, int]:
        """Position as plain ints: epoch, batches handed out in its current pass, seed, batch_size, order (how
        epoch orders are drawn), world_size."""
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Make the next `iter()` start at the saved batch of the saved epoch."""
        self.sampler.load_state_dict(state)


class _Pass:
    """One pass over the loader: counts the batches it hands to the consumer (not what workers prefetched)."""

    def __init__(self, batches: Any, sampler: WindowSampler, epoch: int, start: int, num_batches: int) -> None:
        self._batches, self._sampler = batches, sampler
        self.epoch, self.consumed, self.num_batches = epoch, start, num_batches

    def __iter__(self) -> _Pass:
        return self

    def __len__(self) -> int:
        return self.num_batches - self.consumed

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        batch = next(self._batches)
        self.consumed += 1
        self._sampler.advance(self.epoch, self.consumed, self.num_batches)
        return batch


def create_dataloader(
    data_path: str | os.PathLike | Any,
    tokenizer_path: str | os.PathLike | Tokenizer | None,
    batch_size: int,
    seq_length: int,
    shuffle: bool = True,
    *,
    seed: int = 1337,
    num_workers: int = 0,
    cache_dir: str | os.PathLike | None = None,
    split: str | None = None,
    pin_memory: bool | None = None,
    text_field: str = "text",
) -> TokenDataLoader:
    """A TokenDataLoader over `data_path`: text or records (tokenized once into the cache) or pre-tokenized ids.

    Args:
        data_path: a .txt file, .jsonl/.jsonl.gz/.parquet records, a directory or glob of them, a datasets.Dataset
            or save_to_disk directory, a .bin of ids, or .npy shards (see sources.py).
        tokenizer_path: sentencepiece .model or Hugging Face tokenizer.json (or a directory holding one), or a
            tokenizer `load_tokenizer` returned; needed for text and records, optional for ids (then it supplies
            vocab/special ids).
        batch_size: windows per batch. seq_length: tokens per window (x and y).
        shuffle: a permutation of the windows drawn from (seed, epoch); False reads them in order.
        seed: seed of the shuffled order. num_workers: DataLoader worker processes.
        cache_dir: where tokenized text is kept (default $TLAMA_CACHE_DIR or ~/.cache/tlama_core/tokens).
        split: "train" or "val": shards named for it, else the first 90% / last 10% of the data.
        pin_memory: pin batches for faster host-to-GPU copies; None pins when CUDA is available.
        text_field: the field (JSONL) or column (Parquet, datasets) that holds each record's text.
    """
    batch_size, seq_length = check_count("batch_size", batch_size, 1), check_count("seq_length", seq_length, 1)
    num_workers, seed = check_count("num_workers", num_workers, 0), check_count("seed", seed, 0)
    source = resolve_source(data_path, split, text_field)
    where = f"data_path={str(data_path)!r}" if isinstance(data_path, (str, os.PathLike)) else "data_path"
    tokenizer = load_tokenizer(tokenizer_path) if isinstance(tokenizer_path, (str, os.PathLike)) else tokenizer_path
    if source.kind != "tokens":
        if tokenizer is None:
            raise ValueError(f"{where} is {source.kind}: pass tokenizer_path (a sentencepiece "
                             ".model or a tokenizer.json) to tokenize it, e.g. builtin_tokenizer_path().")
        entry = cached_tokens(source, tokenizer, cache_dir)
        tokens = TokenStream([TokenFile(entry.path, entry.meta["dtype"], 0, entry.meta["num_tokens"])])
        meta = entry.meta
        info = CorpusInfo(meta["vocab_size"], meta["text_chars"], meta["eos_id"], meta["bos_id"], source.describe())
    else:
        tokens = TokenStream([TokenFile.open(f) for f in source.files]).fraction(source.fraction)
        info = sidecar_info(source)
        if tokenizer is not None:
            info.vocab_size, info.eos_id, info.bos_id = tokenizer.vocab_size, tokenizer.eos_id, tokenizer.bos_id
    need = batch_size * seq_length + 1
    if len(tokens) < need:
        raise ValueError(
            f"{where} ({info.description}) has {len(tokens)} tokens; one batch of "
            f"batch_size={batch_size} x seq_length={seq_length} needs {need}. Use more data or smaller values."
        )
    pin = torch.cuda.is_available() if pin_memory is None else pin_memory
    loader = TokenDataLoader(TokenWindows(tokens, seq_length, info), batch_size, shuffle=shuffle, seed=seed,
                             num_workers=num_workers, pin_memory=pin)
    loader.sampler.require_batches()  # under DDP, fail now rather than at the first epoch
    loader.tokenizer = tokenizer
    loader.tokenizer_path = tokenizer.path if tokenizer is not None else None
    return loader


def sidecar_info(source: Source) -> CorpusInfo:
    """What the sidecars of `.bin` shards (the cache's, `tlama prepare`'s) say about the ids, when all have one:
    vocabulary and special ids, and the characters behind the ids (when read whole)."""
    facts = [bin_sidecar(f) for f in source.files]
    info = CorpusInfo(None, None, None, None, source.describe())
    if facts and all("vocab_size" in f for f in facts):
        info.vocab_size = max(f["vocab_size"] for f in facts)
        info.eos_id, info.bos_id = facts[0].get("eos_id"), facts[0].get("bos_id")
    if facts and source.fraction is None and all(isinstance(f.get("text_chars"), int) for f in facts):
        info.text_chars = sum(f["text_chars"] for f in facts)
    return info


def check_count(name: str, value: Any, minimum: int) -> int:
    """`value` as a plain int (numpy's integers too: plain ints are what weights_only checkpoints hold), or a
    ValueError naming `name` when it is not an integer >= minimum."""
    if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name}={value!r}: must be an integer >= {minimum}.")
    return int(value)
