"""Records: JSONL (`.jsonl`, `.jsonl.gz`), Parquet and `datasets` data, each record one document.

A record's text is its `text_field` field (JSON) or column (Parquet, datasets). The records are read in units of
work that each fit in memory whatever the corpus size: ~PIECE_BYTES of whole JSONL lines, one Parquet row group,
DATASET_ROWS rows of a dataset, or a whole `.jsonl.gz` (read line by line, gzip cannot seek). A record is
numbered by its line (JSONL, blank lines included) or row; a 90/10 split keeps the first TRAIN_FRACTION of the
records for "train". `datasets` and `pyarrow` are imported only when such data is read.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
DATASET_ROWS = 4096
LINE_BLOCK = 1 << 20  # JSONL is read a block at a time; a longer line on its own
_SPLIT_NAMES = {"train": ("train",), "val": ("val", "validation", "valid", "dev")}


@dataclass(frozen=True)
class Unit:
    """Records [first, first + count) of one file (or of the dataset when `path` is ""), read as one unit.

    `start`/`end` are bytes (JSONL), a row group (Parquet: start only) or rows (dataset); `keep` is the range of
    the unit's own record numbers a split keeps, None for all.
    """

    kind: str  # "jsonl", "jsonl.gz", "parquet" or "dataset"
    path: str
    start: int
    end: int
    first: int
    count: int | None  # None: not counted (a .jsonl.gz read whole)
    keep: tuple[int, int] | None = None


def extra_import(module: str) -> Any:
    """Import an optional dependency, or an ImportError naming the extra that installs it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise ImportError(f"reading this data needs {module.split('.')[0]!r}: pip install 'tlama-core[data]'") from e


# ---- datasets objects and save_to_disk directories ----------------------------------------------------------
def _saved(path: Any, marker: str) -> bool:
    return isinstance(path, (str, os.PathLike)) and (Path(path) / marker).is_file()


def _of_class(obj: Any, name: str) -> bool:
    return type(obj).__module__.startswith("datasets") and type(obj).__name__ == name


def is_dataset(obj: Any) -> bool:
    """A `datasets.Dataset`, or a directory its `save_to_disk` wrote."""
    return _of_class(obj, "Dataset") or _saved(obj, "state.json")


def is_dataset_dict(obj: Any) -> bool:
    """A `datasets.DatasetDict`, or a directory its `save_to_disk` wrote."""
    return _of_class(obj, "DatasetDict") or _saved(obj, "dataset_dict.json")


def open_dataset(data_path: Any, split: str | None, text_field: str) -> tuple[Any, bool]:
    """The Dataset at `data_path` (one split of a DatasetDict, chosen by `split`), checked to hold `text_field`
    as strings; and whether a split name chose it."""
    data = data_path
    if isinstance(data_path, (str, os.PathLike)):
        data = extra_import("datasets").load_from_disk(str(data_path))
    named = False
    if _of_class(data, "DatasetDict"):
        names = [n for n in _SPLIT_NAMES.get(split or "", ()) if n in data]
        if not names:
            raise ValueError(f"data_path: a DatasetDict with splits {sorted(data)}; pass split='train' or 'val' "
                             "(naming one of them), or pass one split, e.g. data_path=dataset['train'].")
        data, named = data[names[0]], True
    if text_field not in data.column_names:
        raise ValueError(f"data_path: the dataset has no column text_field={text_field!r}; its columns are "
                         f"{data.column_names}: pass text_field=... naming the text column.")
    dtype = getattr(data.features[text_field], "dtype", None)
    if dtype not in ("string", "large_string"):
        raise ValueError(f"data_path: the dataset's column {text_field!r} holds {data.features[text_field]}, not "
                         "strings: pass text_field=... naming the text column.")
    return data, named


_DIGESTS: dict[tuple[str, str], bytes] = {}  # by (fingerprint, text_field): the train and val loaders ask alike


def dataset_digest(dataset: Any, text_field: str) -> bytes:
    """Hash of the dataset's texts in order (a dataset's files do not say which rows a select or shuffle kept).
    Walking every row is slow, so it is done once per process for a dataset `datasets` fingerprints the same
    (its fingerprint changes with every transform)."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None:
        return _hash_texts(dataset, text_field)
    if (fingerprint, text_field) not in _DIGESTS:
        _DIGESTS[fingerprint, text_field] = _hash_texts(dataset, text_field)
    return _DIGESTS[fingerprint, text_field]


def _hash_texts(dataset: Any, text_field: str) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    column = dataset.select_columns([text_field]).with_format("arrow")
    for batch in column.iter(batch_size=DATASET_ROWS):
        for text in batch.column(0).to_pylist():
            data = (text or "").encode("utf-8", "surrogatepass")
            h.update(len(data).to_bytes(8, "little") + data)
    return h.digest()


# ---- checks done before any tokenizing ----------------------------------------------------------------------
def check_file(path: Path, text_field: str) -> None:
    """Fail now, naming the file, when it cannot hold `text_field`: a Parquet schema without the column, or a
    JSONL whose first record lacks it."""
    if path.name.lower().endswith(".parquet"):
        pq = extra_import("pyarrow.parquet")
        try:
            schema = pq.read_schema(path)
        except Exception as e:  # pyarrow raises ArrowInvalid for a file that is not Parquet; name the file
            raise ValueError(f"{path}: not a readable Parquet file ({e}).") from e
        if text_field not in schema.names:
            raise ValueError(f"{path}, row 0: no column text_field={text_field!r}; its columns are {schema.names}: "
                             "pass text_field=... naming the text column.")
        kind = str(schema.field(text_field).type)
        if kind not in ("string", "large_string", "string_view"):
            raise ValueError(f"{path}: column {text_field!r} holds {kind}, not strings: pass text_field=... naming "
                             "the text column.")
        return
    for _ in read(Unit(_kind(path), str(path), 0, _first_line_end(path), 0, None), text_field):
        return


def _first_line_end(path: Path) -> int:
    if _kind(path) != "jsonl":
        return 0
    with open(path, "rb") as f:
        return next_line_start(f, 0, path.stat().st_size)


def _kind(path: Path) -> str:
    name = path.name.lower()
    return "parquet" if name.endswith(".parquet") else "jsonl.gz" if name.endswith(".gz") else "jsonl"


# ---- planning -----------------------------------------------------------------------------------------------
def plan(files: tuple[Path, ...], dataset: Any, fraction: str | None, piece_bytes: int,
         train_fraction: float) -> list[Unit]:
    """Units covering the records in order; with a fraction, only those holding the kept records."""
    if dataset is not None:
        n = len(dataset)
        units = [Unit("dataset", "", a, min(n, a + DATASET_ROWS), a, min(n, a + DATASET_ROWS) - a)
                 for a in range(0, n, DATASET_ROWS)]
    else:
        units = [u for f in files for u in _file_units(f, piece_bytes, counted=fraction is not None)]
    if fraction is None:
        return units
    total = sum(u.count or 0 for u in units)
    boundary = int(total * train_fraction)
    lo, hi = (0, boundary) if fraction == "train" else (boundary, total)
    kept, seen = [], 0
    for u in units:
        a, b = max(lo - seen, 0), min(hi - seen, u.count or 0)
        if a < b:
            kept.append(replace(u, keep=(a, b)))
        seen += u.count or 0
    return kept


def _file_units(path: Path, piece_bytes: int, counted: bool) -> list[Unit]:
    kind = _kind(path)
    if kind == "parquet":
        meta = extra_import("pyarrow.parquet").ParquetFile(path).metadata
        rows = [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
        return [Unit(kind, str(path), g, g + 1, sum(rows[:g]), n) for g, n in enumerate(rows)]
    if kind == "jsonl.gz":
        count = None
        if counted:
            with gzip.open(path, "rb") as f:
                count = sum(1 for _ in f)
        return [Unit(kind, str(path), 0, 0, 0, count)]
    size, units, pos, line = path.stat().st_size, [], 0, 0
    with open(path, "rb") as f:
        while pos < size:
            cut = next_line_start(f, pos + piece_bytes, size)
            f.seek(pos)
            lines = _count_lines(f, cut - pos, ends_file=cut == size)
            units.append(Unit(kind, str(path), pos, cut, line, lines))
            pos, line = cut, line + lines
    return units


def next_line_start(f: Any, target: int, end: int) -> int:
    """Just after the first newline at or after byte `target` (a JSON line is never cut), or `end`."""
    if target >= end:
        return end
    f.seek(target)
    pos = target
    while block := f.read(1 << 16):
        newline = block.find(b"\n")
        if newline >= 0:
            return min(end, pos + newline + 1)
        pos += len(block)
    return end


def _count_lines(f: Any, size: int, ends_file: bool) -> int:
    count, left, last = 0, size, b"\n"
    while left > 0 and (block := f.read(min(left, 1 << 22))):
        count += block.count(b"\n")
        left -= len(block)
        last = block[-1:]
    return count + (1 if ends_file and last != b"\n" and size > 0 else 0)


# ---- reading ------------------------------------------------------------------------------------------------
def read(unit: Unit, text_field: str, dataset: Any = None) -> Iterator[str]:
    """The texts of the unit's kept records, in order (empty ones too: the caller counts them)."""
    lo, hi = unit.keep or (0, None)
    for i, text in enumerate(_texts(unit, text_field, dataset)):
        if hi is not None and i >= hi:
            return
        if i >= lo:
            yield text


def _texts(unit: Unit, text_field: str, dataset: Any) -> Iterator[str]:
    if unit.kind == "parquet":
        column = extra_import("pyarrow.parquet").ParquetFile(unit.path).read_row_group(unit.start,
                                                                                      columns=[text_field])
        for i, text in enumerate(column.column(0).to_pylist()):
            yield _checked(text, f"{unit.path}, row {unit.first + i}", text_field)
    elif unit.kind == "dataset":
        texts = dataset.select_columns([text_field]).with_format(None)[unit.start:unit.end][text_field]
        for i, text in enumerate(texts):
            yield _checked(text, f"the dataset's row {unit.first + i}", text_field)
    else:
        number = unit.first
        for line in _lines(unit):  # not enumerate: its cached tuple would keep the last line alive
            number += 1
            where = f"{unit.path}, line {number}"
            if line.isspace() or not line:  # a blank line holds no record
                yield ""
                continue
            decoded = _decoded(line, where)
            del line  # a long record is held as bytes, then as JSON text, then as its text: two at a time
            text = _text_of_line(decoded, where, text_field)
            del decoded
            yield text


def _lines(unit: Unit) -> Iterator[bytes]:
    """The unit's lines, read LINE_BLOCK bytes at a time; a longer line in one read of its size (keeping its
    "\n", which JSON ignores), so that a record of any length is held once."""
    if unit.kind == "jsonl.gz":
        with gzip.open(unit.path, "rb") as f:
            try:
                yield from f
            except (OSError, EOFError) as e:  # gzip's "Not a gzipped file" / truncated stream names no file
                raise ValueError(f"{unit.path}: not a readable gzip file ({e}).") from e
        return
    with open(unit.path, "rb") as f:
        pos = unit.start
        while pos < unit.end:
            f.seek(pos)
            block = f.read(min(LINE_BLOCK, unit.end - pos))
            whole = block.rfind(b"\n") + 1 if pos + len(block) < unit.end else len(block)
            if whole:  # "\n" only ends a line, as the line count and gzip's lines do
                lines = block[:whole].split(b"\n")
                yield from lines[:-1] if lines[-1] == b"" else lines
                pos += whole
                continue
            del block
            stop = next_line_start(f, pos + LINE_BLOCK, unit.end)
            f.seek(pos)
            yield f.read(stop - pos)
            pos = stop


def _decoded(line: bytes, where: str) -> str:
    try:
        return line.decode("utf-8-sig", "surrogatepass")  # as json.loads decodes bytes
    except UnicodeDecodeError as e:
        raise ValueError(f"{where}: not a JSON object ({e}); each line of a JSONL file must be one.") from e


def _text_of_line(line: str, where: str, text_field: str) -> str:
    try:
        record = json.loads(line)
    except ValueError as e:
        raise ValueError(f"{where}: not a JSON object ({e}); each line of a JSONL file must be one.") from e
    if not isinstance(record, dict):
        raise ValueError(f"{where}: a JSON {type(record).__name__}, not an object with a {text_field!r} field.")
    if text_field not in record:
        raise ValueError(f"{where}: no field text_field={text_field!r}; the record has fields {sorted(record)}: "
                         "pass text_field=... naming the text field.")
    return _checked(record[text_field], where, text_field)


def _checked(text: Any, where: str, text_field: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{where}: {text_field!r} is a {type(text).__name__} ({str(text)[:40]!r}), not a string.")
    return text
