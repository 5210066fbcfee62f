"""TlamaDataModule: the train and validation TokenDataLoaders for Lightning and LightningCLI."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import lightning as L

from tlama_core.data.corpus import builtin_corpus_path, builtin_tokenizer_path
from tlama_core.data.documents import is_dataset, is_dataset_dict
from tlama_core.data.loader import TokenDataLoader, check_count, create_dataloader
from tlama_core.data.sources import has_named_splits, list_files, split_of
from tlama_core.data.tokenizer import load_tokenizer


class TlamaDataModule(L.LightningDataModule):
    """Token-window loaders over a corpus: the built-in Tiny Shakespeare unless paths are given.

    Without `val_path`, the training data is split: files named for a split (`*_train_*`, `*_val_*`) go to
    their side, otherwise the first 90% (characters of text, or tokens) trains and the last 10% validates.
    The loaders are built once; every call returns the same objects (the train loader holds the position a
    checkpoint saves).

    Args:
        train_path: Training data: a .txt file, .jsonl/.jsonl.gz/.parquet records, a directory or glob of them, a
            datasets save_to_disk directory (or, from Python, a datasets.Dataset), a .bin of ids or a directory
            of .npy shards. None: the built-in Tiny Shakespeare.
        val_path: Validation data, in any of the same forms. None: split off the training data (see above).
        tokenizer_path: Sentencepiece .model or Hugging Face tokenizer.json that tokenizes text, or the name of
            one the package ships (`shakespeare-bpe-1024`, `shakespeare-bpe-2048`). None: the built-in Shakespeare
            BPE tokenizer (1024 pieces) for text (train your own for other text); pre-tokenized data needs none.
        batch_size: Sequences per micro-batch, per process.
        seq_length: Tokens per sequence.
        num_workers: DataLoader worker processes (0 reads in the training process).
        seed: Seed of the shuffled order of the training windows (the order depends only on seed and epoch).
        cache_dir: Directory of the token cache. None: $TLAMA_CACHE_DIR or ~/.cache/tlama_core/tokens.
        shuffle: Shuffle the training windows every epoch (validation is always read in order).
        text_field: The field (JSONL) or column (Parquet, datasets) holding each record's text.
    """

    def __init__(
        self,
        train_path: str | None = None,
        val_path: str | None = None,
        tokenizer_path: str | None = None,
        batch_size: int = 8,
        seq_length: int = 256,
        num_workers: int = 0,
        seed: int = 1337,
        cache_dir: str | None = None,
        shuffle: bool = True,
        text_field: str = "text",
    ) -> None:
        super().__init__()
        batch_size, seq_length = check_count("batch_size", batch_size, 1), check_count("seq_length", seq_length, 1)
        num_workers, seed = check_count("num_workers", num_workers, 0), check_count("seed", seed, 0)
        self.save_hyperparameters({  # plain values only: checkpoints are loaded with weights_only=True
            "train_path": _str_or_none(train_path), "val_path": _str_or_none(val_path),
            "tokenizer_path": _str_or_none(tokenizer_path), "batch_size": batch_size, "seq_length": seq_length,
            "num_workers": num_workers, "seed": seed, "cache_dir": _str_or_none(cache_dir), "shuffle": bool(shuffle),
            "text_field": str(text_field)})
        if train_path is None and val_path is not None:
            raise ValueError(f"val_path={val_path!r} without train_path: pass train_path too.")
        builtin = train_path is None
        self.train_path = str(builtin_corpus_path()) if builtin else _path_or_dataset(train_path)
        self.val_path = _path_or_dataset(val_path)
        kinds = {list_files(p)[0] for p in (self.train_path, self.val_path) if p is not None}  # FileNotFoundError now
        if self.val_path is None and isinstance(self.train_path, str) and not Path(self.train_path).is_file():
            splits = {split_of(f) for f in list_files(self.train_path)[1]}
            if splits in ({"train"}, {"val"}):  # e.g. a glob of *_train_* shards: the other split is missing
                (split,) = splits
                role, fix = ("validate", "pass val_path") if split == "train" else ("train", "pass train files")
                raise ValueError(f"train_path={self.train_path!r}: its files are all named for split={split!r}, so "
                                 f"none is left to {role} on; {fix}.")
        if tokenizer_path is None and (builtin or "text" in kinds or "records" in kinds):
            tokenizer_path = builtin_tokenizer_path()
        self.tokenizer_path = _str_or_none(tokenizer_path)
        # Loaded once, here (a FileNotFoundError naming the path now rather than at fit): both loaders read with it.
        self.tokenizer = load_tokenizer(self.tokenizer_path) if self.tokenizer_path is not None else None
        self.batch_size, self.seq_length, self.num_workers = batch_size, seq_length, num_workers
        self.seed, self.cache_dir, self.shuffle, self.text_field = seed, cache_dir, shuffle, text_field
        self._train: TokenDataLoader | None = None
        self._val: TokenDataLoader | None = None

    @property
    def micro_batch_tokens(self) -> int:
        """Tokens in one micro-batch of one process: batch_size * seq_length."""
        return self.batch_size * self.seq_length

    @property
    def data_fingerprint(self) -> str:
        """The training loader's `data_fingerprint` (builds the loader if needed): what a resume checks."""
        return self.train_dataloader().data_fingerprint

    @property
    def vocab_size(self) -> int:
        """The training loader's vocabulary size (builds the loader if needed)."""
        return self.train_dataloader().vocab_size

    def prepare_data(self) -> None:
        """Tokenize into the cache once (Lightning calls this on one process per node before `setup`)."""
        self.train_dataloader()
        self.val_dataloader()

    def setup(self, stage: str | None = None) -> None:
        self.train_dataloader()
        self.val_dataloader()

    def train_dataloader(self) -> TokenDataLoader:
        if self._train is None:
            self._train = self._loader(self.train_path, "train", self.shuffle)
        return self._train

    def val_dataloader(self) -> TokenDataLoader:
        if self._val is None:
            self._val = self._loader(self.val_path or self.train_path, "val", shuffle=False)
        return self._val

    def _loader(self, path: Any, role: str, shuffle: bool) -> TokenDataLoader:
        split = role if self.val_path is None or has_named_splits(path) else None
        return create_dataloader(path, self.tokenizer, self.batch_size, self.seq_length, shuffle, seed=self.seed,
                                 num_workers=self.num_workers, cache_dir=self.cache_dir, split=split,
                                 text_field=self.text_field)


def _in_memory(value: Any) -> bool:
    """A `datasets.Dataset` or `DatasetDict` object (a path to one saved on disk is a path)."""
    return not isinstance(value, (str, os.PathLike)) and (is_dataset(value) or is_dataset_dict(value))


def _str_or_none(value: object) -> str | None:
    """A path as a string; a datasets object as a short description (hyperparameters hold plain values only)."""
    if value is None:
        return None
    return f"{type(value).__name__} passed from Python" if _in_memory(value) else str(value)


def _path_or_dataset(value: Any) -> Any:
    """A `datasets` object as it is, anything else as a path string (or None)."""
    return value if value is not None and _in_memory(value) else _str_or_none(value)
