"""What a `data_path` means: which files, text, records or token ids, and which part of them a split selects.

- a `.txt` file, a directory of `.txt` files or a glob of them: text, each file one document;
- `.jsonl`, `.jsonl.gz` and `.parquet` files (one, a directory or a glob): records, each one document, its text in
  the `text_field` field or column; a directory written by `datasets`' `save_to_disk`, or a `datasets.Dataset`
  passed as the path itself, likewise (see `documents.py`);
- a `.bin` file of raw ids (nanoGPT's format): uint16, or uint32 when a sidecar `NAME.bin.json` says
  `{"dtype": "uint32"}` or the file name contains "uint32";
- a `.npy` file or a directory of `.npy` shards (build-nanogpt's FineWeb layout);
- a directory holding token files (`.npy`, else `.bin`) is read as those, whatever text sits beside them.

`split="train"|"val"`: in a directory or glob whose file names carry the split as a word (`x_train_000.npy`,
`val.bin`), it picks those files (and must be given when both splits are there); otherwise it keeps the first
TRAIN_FRACTION of the data for "train" and the rest for "val" (characters for text, as nanoGPT splits Tiny
Shakespeare; records for records; tokens for pre-tokenized data). A single file is always read as given; a
`DatasetDict` (saved or passed) is split by its split names.
"""

from __future__ import annotations

import glob
import json
import os
import re
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tlama_core.data import documents

TRAIN_FRACTION = 0.9
SPLITS = ("train", "val")
TOKEN_SUFFIXES = (".npy", ".bin")
TEXT_SUFFIXES = (".txt",)
KINDS = "text (.txt), records (.jsonl, .jsonl.gz, .parquet), token ids (.npy, .bin)"
Kind = Literal["text", "records", "tokens"]

_SPLIT_WORD = re.compile(r"(?:^|[^a-z])(train|val)(?:[^a-z]|$)")


@dataclass(frozen=True)
class Source:
    """Resolved input: `kind` of data, its files in reading order, and the 90/10 part to keep (or None).

    Records are read from `files` or, for a `datasets.Dataset`, from `dataset` (then `files` is empty); their
    text is the `text_field` field.
    """

    kind: Kind
    files: tuple[Path, ...]
    fraction: Literal["train", "val"] | None = None
    text_field: str = "text"
    dataset: Any = field(default=None, compare=False)

    def describe(self) -> str:
        if self.dataset is not None:
            return f"a datasets.Dataset of {len(self.dataset)} records" + (f" ({self.fraction} part)"
                                                                          if self.fraction else "")
        names = ", ".join(str(f) for f in self.files[:3]) + (", ..." if len(self.files) > 3 else "")
        part = f" ({self.fraction} part)" if self.fraction else ""
        return f"{len(self.files)} {self.kind} file(s): {names}{part}"


def split_of(path: Path) -> str | None:
    """'train' or 'val' when the file name carries it as a word, else None."""
    m = _SPLIT_WORD.search(path.name.lower())
    return m.group(1) if m else None


def has_named_splits(data_path: Any) -> bool:
    """True when `data_path` is a directory or glob of files whose names say which split they belong to, or a
    `DatasetDict` (saved or passed)."""
    if documents.is_dataset_dict(data_path):
        return True
    if documents.is_dataset(data_path) or Path(data_path).is_file():
        return False
    try:
        return any(split_of(f) for f in list_files(data_path)[1])
    except (FileNotFoundError, ValueError):
        return False


def resolve_source(data_path: Any, split: str | None = None, text_field: str = "text") -> Source:
    """Turn `data_path` (+ split) into a Source; raise FileNotFoundError/ValueError naming what is wrong.

    Records are checked now (each file's first record or its schema holds `text_field`), not at tokenizing.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split={split!r}: must be one of {SPLITS} or None.")
    if not isinstance(text_field, str) or not text_field:
        raise ValueError(f"text_field={text_field!r}: must be the name of the field that holds each record's text.")
    if documents.is_dataset(data_path) or documents.is_dataset_dict(data_path):
        dataset, named = documents.open_dataset(data_path, split, text_field)
        return Source("records", (), None if named else split, text_field, dataset)
    source = _resolve_files(data_path, split)
    if source.kind == "records":
        for f in source.files:
            documents.check_file(f, text_field)
    return replace(source, text_field=text_field)


def _resolve_files(data_path: str | os.PathLike, split: str | None) -> Source:
    kind, files = list_files(data_path)
    if kind == "tokens":
        check_shard_set(files)
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


def check_shard_set(files: list[Path]) -> None:
    """The `.bin` shards that `tlama prepare` wrote (their sidecars say shard I of N) are one whole set per split:
    shards 0..N-1 of one N, each present once, no sidecar left without its ids. A shard left by an earlier prepare
    with another N, or one missing, would be read (or skipped) without a word. ValueError naming the files."""
    bins = [f for f in files if f.suffix == ".bin"]
    for directory in sorted({f.parent for f in bins}):
        orphans = sorted(p.name for p in directory.glob("*.bin.json") if not p.with_suffix("").exists())
        if orphans:
            raise ValueError(f"{directory}/: {', '.join(orphans)} describe ids that are not there (a shard renamed "
                             "or deleted?); put the .bin back beside its sidecar, or delete the sidecar.")
    groups: dict[tuple[Path, Any], dict[int, list[tuple[Path, int]]]] = {}
    for f in bins:
        facts = bin_sidecar(f)
        if isinstance(facts.get("num_shards"), int) and isinstance(facts.get("shard"), int):
            group = groups.setdefault((f.parent, facts.get("split")), {})
            group.setdefault(facts["num_shards"], []).append((f, facts["shard"]))
    for (directory, split), by_count in groups.items():
        part = f" ({split})" if split else ""
        if len(by_count) > 1:
            sets = "; ".join(f"{', '.join(f.name for f, _ in shards)}: of {n}"
                             for n, shards in sorted(by_count.items()))
            raise ValueError(f"{directory}/{part}: its shards come from prepares into different numbers of shards "
                             f"({sets}): one was left by an earlier `tlama prepare`; remove the files of the old run.")
        (n, shards), = by_count.items()
        missing = sorted(set(range(n)) - {i for _, i in shards})
        if missing:
            raise ValueError(f"{directory}/{part}: shard(s) {', '.join(map(str, missing))} of {n} are missing (their "
                             f"`tlama prepare --shard I --num_shards {n}` has not run, or its file was lost).")


def bin_sidecar(path: Path) -> dict[str, Any]:
    """The JSON sidecar `NAME.bin.json` of a raw `.bin` of ids (the cache's, `tlama prepare`'s), or {}."""
    sidecar = path.with_name(path.name + ".json")
    if path.suffix != ".bin" or not sidecar.is_file():
        return {}
    try:
        facts = json.loads(sidecar.read_text())
    except ValueError as e:
        raise ValueError(f"{sidecar}: not a JSON sidecar ({e}); delete it or fix it.") from e
    return facts if isinstance(facts, dict) else {}


def bin_dtype(path: Path) -> np.dtype:
    """dtype of a raw `.bin` of ids: its sidecar's "dtype", else uint32 if the name says so, else uint16."""
    sidecar = path.with_name(path.name + ".json")
    if sidecar.is_file():
        dtype = bin_sidecar(path).get("dtype", "uint16")
    else:
        dtype = "uint32" if "uint32" in path.name.lower() else "uint16"
    if dtype not in ("uint16", "uint32"):
        raise ValueError(f"{sidecar}: dtype={dtype!r} is not supported; use 'uint16' or 'uint32'.")
    return np.dtype(dtype)


def kind_of(path: Path) -> Kind | None:
    """What a file holds, known by its name alone (never guessed from its bytes); None for other files."""
    name = path.name.lower()
    if path.suffix in TOKEN_SUFFIXES:
        return "tokens"
    if name.endswith(documents.SUFFIXES):
        return "records"
    if path.suffix.lower() in TEXT_SUFFIXES:
        return "text"
    return None


def list_files(data_path: Any) -> tuple[Kind, list[Path]]:
    """The kind of data at `data_path` and its files in reading order; FileNotFoundError if there are none, a
    ValueError for a file of a kind not read here."""
    if documents.is_dataset(data_path) or documents.is_dataset_dict(data_path):
        return "records", []
    text = str(data_path)
    path = Path(data_path)
    if path.is_file():
        kind = kind_of(path)
        if kind is None:
            raise ValueError(f"data_path={text!r}: not a kind of file read here; pass {KINDS} files, a directory "
                             "or glob of them, or a datasets save_to_disk directory.")
        return kind, [path]
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        for kind in ("tokens", "records", "text"):  # ids first: nanoGPT keeps input.txt beside train.bin
            chosen = [p for p in files if kind_of(p) == kind and (kind != "tokens" or p.suffix == files_suffix(files))]
            if chosen:
                return kind, chosen
        raise FileNotFoundError(f"data_path={text!r}: the directory holds no data files; pass a directory of "
                                f"{KINDS} files.")
    if glob.has_magic(text):
        matches = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
        if not matches:
            raise FileNotFoundError(f"data_path={text!r}: the pattern matches no file.")
        unknown = [p for p in matches if kind_of(p) is None]
        if unknown:
            raise ValueError(f"data_path={text!r}: {unknown[0]} is not a kind of file read here; the pattern must "
                             f"match only {KINDS} files.")
        kinds = {kind_of(p) for p in matches}
        if len(kinds) > 1:
            raise ValueError(f"data_path={text!r}: the pattern mixes kinds ({', '.join(sorted(kinds))}); "
                             "select one kind.")
        return kinds.pop(), matches
    raise FileNotFoundError(f"data_path={text!r}: no such file or directory.")


def files_suffix(files: list[Path]) -> str | None:
    """The token suffix a directory's shards use: `.npy` when it has any, else `.bin`."""
    suffixes = {p.suffix for p in files}
    return next((s for s in TOKEN_SUFFIXES if s in suffixes), None)


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
