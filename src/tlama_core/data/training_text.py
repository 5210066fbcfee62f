"""The text a tokenizer is trained on, read from any source training reads: text files, JSONL (`.jsonl`,
`.jsonl.gz`), Parquet, `datasets` data, directories and globs of them, one split or all.

Sources are resolved by `resolve_source` and read by the readers the token cache and `tlama prepare` use (text
by byte range, records by unit of work), so a tokenizer learns from the records' text, never from their JSON.
Trainers take sentences: text is given line by line, and a record is cut into its lines as a text file is, so the
same text trains the same tokenizer whether it is held as records or as a text file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from tlama_core.data import documents, text
from tlama_core.data.sources import TRAIN_FRACTION, Source, resolve_source


def training_sources(owner: str, inputs: Any, text_field: str = "text", split: str | None = None) -> list[Source]:
    """`inputs` (a path, glob, `datasets.Dataset`, or a list of them) resolved now, before any training: a path
    that is missing, of an unknown kind, holding token ids or records without `text_field` is an error naming
    `owner` and the input."""
    single = isinstance(inputs, (str, os.PathLike)) or documents.is_dataset(inputs) or \
        documents.is_dataset_dict(inputs)
    inputs = [inputs] if single else list(inputs)
    if not inputs:
        raise ValueError(f"{owner}: no input; pass text files, records (.jsonl, .jsonl.gz, .parquet), a directory "
                         "or glob of them, or a datasets directory.")
    sources = []
    for data in inputs:
        name = repr(str(data)) if isinstance(data, (str, os.PathLike)) else "(a dataset)"
        try:
            source = resolve_source(data, split, text_field)
        except (FileNotFoundError, ValueError) as e:
            said = str(e).removeprefix(f"data_path={name}: ")  # the reader names its parameter; this names the input
            raise type(e)(f"{owner}: input {name}: {said}") from e
        if source.kind == "tokens":
            raise ValueError(f"{owner}: input {name} holds token ids; a tokenizer is trained on text or records.")
        sources.append(source)
    return sources


def training_lines(sources: list[Source], keep_ends: bool) -> Iterator[str]:
    """The lines of every source in order, with their "\\n" (`keep_ends`) or without it; empty records give none."""
    for source in sources:
        if source.kind == "text":
            for segment in text.segments(source.files, source.fraction):
                for line in _segment_lines(segment):
                    yield line if keep_ends else line.removesuffix("\n")  # a "\r" stays: the model sees it
            continue
        units = documents.plan(source.files, source.dataset, source.fraction, text.PIECE_BYTES, TRAIN_FRACTION)
        for unit in units:
            for record in documents.read(unit, source.text_field, source.dataset):
                if not record:
                    continue
                lines = record.split("\n")
                if keep_ends:
                    lines = [line + "\n" for line in lines[:-1]] + ([lines[-1]] if lines[-1] else [])
                yield from lines


def _segment_lines(segment: text.Segment) -> Iterator[str]:
    """Lines of a file's byte range, split at "\\n" (a character never spans one, so lines decode alone)."""
    with open(segment.path, "rb") as f:
        f.seek(segment.start)
        left = segment.end - segment.start
        while left > 0 and (line := f.readline(left)):
            left -= len(line)
            yield line.decode("utf-8", errors="replace")
