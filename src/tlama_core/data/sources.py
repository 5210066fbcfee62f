"""What a `data_path` means: which files, text or token ids, and which part of them a split selects.

- a text file, a directory of `.txt` files or a glob of them: text, each file one document;
- a `.bin` file of raw ids (nanoGPT's format): uint16, or uint32 when a sidecar `NAME.bin.json` says
  `{"dtype": "uint32"}` or the file name contains "uint32";
- a `.npy` file or a directory of `.npy` shards (build-nanogpt's FineWeb layout);
- a directory holding token files (`.npy`, else `.bin`) is read as those, whatever text sits beside them.

`split="train"|"val"`: in a directory or glob whose file names carry the split as a word (`x_train_000.npy`,
`val.bin`), it picks those files (and must be given when both splits are there); otherwise it keeps the first
TRAIN_FRACTION of the data for "train" and the rest for "val" (characters for text, as nanoGPT splits Tiny
Shakespeare; tokens for pre-tokenized data). A single file is always read as given.
"""

from __future__ import annotations

import glob
import json
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

TRAIN_FRACTION = 0.9
SPLITS = ("train", "val")
TOKEN_SUFFIXES = (".npy", ".bin")

_SPLIT_WORD = re.compile(r"(?:^|[^a-z])(train|val)(?:[^a-z]|$)")


@dataclass(frozen=True)
class Source:
    """Resolved input: `kind` of data, its files in reading order, and the 90/10 part to keep (or None)."""

    kind: Literal["text", "tokens"]
    files: tuple[Path, ...]
    fraction: Literal["train", "val"] | None = None

    def describe(self) -> str:
        names = ", ".join(str(f) for f in self.files[:3]) + (", ..." if len(self.files) > 3 else "")
        part = f" ({self.fraction} part)" if self.fraction else ""
        return f"{len(self.files)} {self.kind} file(s): {names}{part}"


def split_of(path: Path) -> str | None:
    """'train' or 'val' when the file name carries it as a word, else None."""
    m = _SPLIT_WORD.search(path.name.lower())
    return m.group(1) if m else None


def has_named_splits(data_path: str | os.PathLike) -> bool:
    """True when `data_path` is a directory or glob of files whose names say which split they belong to."""
    if Path(data_path).is_file():
        return False
    try:
        return any(split_of(f) for f in list_files(data_path)[1])
    except (FileNotFoundError, ValueError):
        return False


def resolve_source(data_path: str | os.PathLike, split: str | None = None) -> Source:
    """Turn `data_path` (+ split) into a Source; raise FileNotFoundError/ValueError naming what is wrong."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {SPLITS} or None.")
    kind, files = list_files(data_path)
    files = _drop_empty(files, data_path)
    named = [] if Path(data_path).is_file() else [f for f in files if split_of(f)]  # a file is taken as given
    if named:
        if split is None:
            if len({split_of(f) for f in named}) == 1:  # e.g. a glob that already picked the train shards
                return Source(kind, tuple(files))
            names = ", ".join(f.name for f in named[:4]) + (", ..." if len(named) > 4 else "")
            raise ValueError(f"data_path={str(data_path)!r}: its files carry both split names ({names}); "
                             "pass split='train' or split='val'.")
        chosen = tuple(f for f in files if split_of(f) == split)
        if not chosen:
            raise FileNotFoundError(f"data_path={str(data_path)!r}: no file is named for split={split!r}.")
        return Source(kind, chosen)
    return Source(kind, tuple(files), split)


def bin_dtype(path: Path) -> np.dtype:
    """dtype of a raw `.bin` of ids: its sidecar's "dtype", else uint32 if the name says so, else uint16."""
    sidecar = path.with_name(path.name + ".json")
    if sidecar.is_file():
        dtype = json.loads(sidecar.read_text()).get("dtype", "uint16")
    else:
        dtype = "uint32" if "uint32" in path.name.lower() else "uint16"
    if dtype not in ("uint16", "uint32"):
        raise ValueError(f"{sidecar}: dtype={dtype!r} is not supported; use 'uint16' or 'uint32'.")
    return np.dtype(dtype)


def list_files(data_path: str | os.PathLike) -> tuple[Literal["text", "tokens"], list[Path]]:
    """The kind of data at `data_path` and its files in reading order; FileNotFoundError if there are none."""
    text = str(data_path)
    path = Path(data_path)
    if path.is_file():
        return ("tokens" if path.suffix in TOKEN_SUFFIXES else "text"), [path]
    if path.is_dir():
        for suffix in TOKEN_SUFFIXES:
            shards = sorted(p for p in path.glob("*" + suffix) if p.is_file())
            if shards:
                return "tokens", shards
        texts = sorted(p for p in path.glob("*.txt") if p.is_file())
        if texts:
            return "text", texts
        raise FileNotFoundError(f"data_path={text!r}: the directory holds no .npy, .bin or .txt files.")
    if glob.has_magic(text):
        matches = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not matches:
            raise FileNotFoundError(f"data_path={text!r}: the pattern matches no file.")
        kinds = {"tokens" if p.suffix in TOKEN_SUFFIXES else "text" for p in matches}
        if len(kinds) > 1:
            raise ValueError(f"data_path={text!r}: the pattern mixes text and token files; select one kind.")
        return kinds.pop(), matches
    raise FileNotFoundError(f"data_path={text!r}: no such file or directory.")


def _drop_empty(files: list[Path], data_path: str | os.PathLike) -> list[Path]:
    """An empty file is an error on its own; inside a directory or glob it is skipped with a warning."""
    empty = [f for f in files if f.stat().st_size == 0]
    if not empty:
        return files
    if len(empty) == len(files):
        which = str(empty[0]) if len(files) == 1 else f"every file of {str(data_path)!r}"
        raise ValueError(f"data_path: {which} is empty; point data_path at a corpus with text or token ids.")
    warnings.warn(f"data_path={str(data_path)!r}: skipping {len(empty)} empty file(s): "
                  f"{', '.join(str(f) for f in empty[:5])}", stacklevel=3)
    return [f for f in files if f not in empty]
