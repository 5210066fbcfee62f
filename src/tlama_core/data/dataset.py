"""Token windows: the corpus as one stream of ids on disk, read through memory maps, cut into (x, y) pairs.

Window i is tokens[i*T : i*T + T + 1] (non-overlapping, T = seq_length); x is its first T ids and y its last T,
so y is x shifted by one. The stream may span several files (shards); a window may cross from one to the next.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tlama_core.data.sources import TRAIN_FRACTION, bin_dtype, bin_sidecar


@dataclass(frozen=True)
class TokenFile:
    """Ids [start, stop) of one file: a `.npy` array or a raw array of `dtype`."""

    path: Path
    dtype: str
    start: int
    stop: int

    @staticmethod
    def open(path: Path) -> TokenFile:
        """Describe a whole `.npy` or `.bin` file, checking that it holds a 1-D array of integer ids (a `.bin`: as
        many as its sidecar's `num_tokens`, when it has one)."""
        if path.suffix == ".npy":
            array = np.load(path, mmap_mode="r")
            if array.ndim != 1 or array.dtype.kind not in "ui":
                raise ValueError(f"{path}: expected a 1-D array of integer token ids, got {array.dtype} {array.shape}.")
            return TokenFile(path, array.dtype.name, 0, len(array))
        dtype = bin_dtype(path)
        size = path.stat().st_size
        expected = bin_sidecar(path).get("num_tokens")
        if isinstance(expected, int) and size != expected * dtype.itemsize:  # a cut copy, an interrupted rsync
            raise ValueError(f"{path}: holds {size // dtype.itemsize:,} tokens ({size:,} bytes) but its sidecar "
                             f"{path.name}.json says num_tokens={expected:,} ({expected * dtype.itemsize:,} bytes): "
                             "the file changed after it was written (a cut or interrupted copy?); copy it again, or "
                             "run `tlama prepare` for it again.")
        if size % dtype.itemsize:
            raise ValueError(f"{path}: {size} bytes is not a whole number of {dtype.name} ids; is the dtype right "
                             f"(a sidecar {path.name}.json with {{\"dtype\": \"uint32\"}} selects uint32)?")
        return TokenFile(path, dtype.name, 0, size // dtype.itemsize)

    def memmap(self) -> np.ndarray:
        if self.path.suffix == ".npy":
            return np.load(self.path, mmap_mode="r")
        return np.memmap(self.path, dtype=self.dtype, mode="r")


class TokenStream:
    """The concatenation of token files, opened lazily in each process (pickling copies paths, not data)."""

    def __init__(self, files: list[TokenFile]) -> None:
        self.files = [f for f in files if f.stop > f.start]
        self.offsets = np.cumsum([0] + [f.stop - f.start for f in self.files]).tolist()
        self.signed = any(np.dtype(f.dtype).kind == "i" for f in self.files)  # may hold negative ids
        self._maps: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return self.offsets[-1]

    def read(self, start: int, stop: int) -> np.ndarray:
        """Ids [start, stop) of the stream (a copy, safe to keep)."""
        maps = self._open()
        k = bisect.bisect_right(self.offsets, start) - 1
        parts = []
        while start < stop:
            f, base = self.files[k], self.offsets[k]
            end = min(stop, self.offsets[k + 1])
            parts.append(maps[k][f.start + start - base: f.start + end - base])
            start, k = end, k + 1
        return np.concatenate(parts) if len(parts) > 1 else np.array(parts[0])

    def fraction(self, split: str | None) -> TokenStream:
        """The first TRAIN_FRACTION of the ids ("train"), the rest ("val"), or all (None)."""
        if split is None:
            return self
        boundary = int(len(self) * TRAIN_FRACTION)
        lo, hi = (0, boundary) if split == "train" else (boundary, len(self))
        kept = []
        for f, base in zip(self.files, self.offsets[:-1], strict=True):
            a, b = max(lo, base), min(hi, base + f.stop - f.start)
            if a < b:
                kept.append(TokenFile(f.path, f.dtype, f.start + a - base, f.start + b - base))
        return TokenStream(kept)

    def max_id(self) -> int:
        """Largest id in the stream (reads every id once, a block at a time)."""
        maps, best = self._open(), 0
        for f, m in zip(self.files, maps, strict=True):
            for a in range(f.start, f.stop, 1 << 24):
                best = max(best, int(m[a: min(f.stop, a + (1 << 24))].max()))
        return best

    def _open(self) -> list[np.ndarray]:
        if self._maps is None:
            self._maps = [f.memmap() for f in self.files]
        return self._maps

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_maps": None}  # worker processes map the files themselves


@dataclass
class CorpusInfo:
    """Facts about a corpus the trainer reads: ids in the vocabulary, characters behind the tokens, special ids."""

    vocab_size: int | None  # None: not known without reading the ids (pre-tokenized data, no tokenizer)
    text_chars: int | None
    eos_id: int | None = None
    bos_id: int | None = None
    description: str = ""


class TokenWindows(Dataset):
    """Map-style dataset of non-overlapping (x, y) windows of `seq_length` over a TokenStream."""

    def __init__(self, tokens: TokenStream, seq_length: int, info: CorpusInfo) -> None:
        self.tokens, self.seq_length, self.info = tokens, seq_length, info
        self.num_windows = max(0, (len(tokens) - 1) // seq_length)

    def __len__(self) -> int:
        return self.num_windows

    def window(self, i: int) -> np.ndarray:
        """Ids of window i: seq_length + 1 of them."""
        if not 0 <= i < self.num_windows:
            raise IndexError(f"window {i} out of range [0, {self.num_windows})")
        t = self.seq_length
        return self.tokens.read(i * t, i * t + t + 1)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        w = torch.from_numpy(self._in_vocabulary(self.window(i)).astype(np.int64))
        return w[:-1], w[1:]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch at once (the DataLoader calls this instead of __getitem__): x, y of shape (B, T)."""
        w = np.stack([self.window(i) for i in indices])  # (B, T+1)
        w = torch.from_numpy(self._in_vocabulary(w).astype(np.int64))
        return w[:, :-1].contiguous(), w[:, 1:].contiguous()

    def _in_vocabulary(self, ids: np.ndarray) -> np.ndarray:
        """ids, checked against the tokenizer's vocabulary when one is known: pre-tokenized ids made with another
        tokenizer would otherwise fail in the model's embedding (a device-side assert on CUDA). One max over the
        batch: a small cost beside the copy that follows it; checking the whole corpus up front would read it all.
        Signed ids (.npy of int32/int64) get one min too: a negative id fails in the embedding, or as a target is
        silently ignored by the loss."""
        if self.tokens.signed and ids.size and int(ids.min()) < 0:
            raise ValueError(f"{self.info.description}: token id {int(ids.min())} is negative; token ids are >= 0. "
                             "Is this file token ids, saved with the dtype they were made in?")
        vocab = self.info.vocab_size
        if vocab is not None and ids.size and int(ids.max()) >= vocab:
            raise ValueError(f"{self.info.description}: token id {int(ids.max())} is outside the tokenizer's "
                             f"vocabulary of {vocab}; these ids were made with another tokenizer: pass its "
                             "tokenizer_path (or none).")
        return ids


def batch_as_is(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """collate_fn for batches that `TokenWindows.__getitems__` already stacked."""
    return batch
