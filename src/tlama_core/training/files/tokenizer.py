"""The run's tokenizer travels with its checkpoints: a copy in `checkpoints_dir`, its name in every checkpoint.

Ids mean nothing without the tokenizer that made them, and a path given at training time (a user's own file, a
temporary directory) may be gone or changed when the checkpoint is sampled or exported. So the Trainer copies
the tokenizer of its training data into `checkpoints_dir/tokenizer-<hash>/` (once per tokenizer version,
atomically: a directory renamed into place) and records `{"dir", "file", "content_hash"}` under TOKENIZER_KEY in
every checkpoint; `run_tokenizer(checkpoint)` finds it again. The files are hashed once per run, with the data's
algorithm (blake2b-256, as shard sidecars and the token cache).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from tlama_core.atomic import fsync_dir
from tlama_core.checkpoints import CheckpointError, read_checkpoint
from tlama_core.data.integrity import HASH

TOKENIZER_KEY = "tokenizer"
_BESIDE = ("tokenizer_config.json",)  # a tokenizer.json's BOS/EOS are named there


def tokenizer_files(tokenizer_path: str | os.PathLike) -> tuple[list[Path], dict[str, str]]:
    """The tokenizer file (and a tokenizer_config.json beside a tokenizer.json) and the record checkpoints carry:
    its copy's directory, named by the files' hash."""
    source = Path(tokenizer_path)
    files = [source] + [source.with_name(n) for n in _BESIDE if source.suffix == ".json"
                        and source.with_name(n).is_file()]
    content = hashlib.blake2b(digest_size=32)
    for f in files:
        content.update(f.read_bytes())
    digest = content.hexdigest()
    # The bytes alone are what a resume compares (the same tokenizer under another name is the same); the copy's
    # directory is named by the bytes and the names, which its path holds.
    names = hashlib.blake2b("\0".join([digest, *(f.name for f in files)]).encode(), digest_size=8).hexdigest()
    return files, {"dir": f"tokenizer-{names}", "file": source.name, "content_hash": f"{HASH}:{digest}"}


def sha256_of(files: list[Path], *, with_names: bool) -> str:
    """The hash checkpoints written before 0.2 record: "content_sha256" (the bytes) or, older, "sha256" (names and
    bytes); computed only to resume from such a checkpoint."""
    h = hashlib.sha256()
    for f in files:
        h.update((f.name.encode() + b"\0" if with_names else b"") + f.read_bytes())
    return h.hexdigest()


def copy_tokenizer(files: list[Path], record: dict[str, str], checkpoints_dir: str | os.PathLike) -> None:
    """Copy `files` into `checkpoints_dir/record["dir"]` atomically, unless that copy is there already."""
    target = Path(checkpoints_dir) / record["dir"]
    if target.is_dir():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(".tokenizer-*.tmp"):  # left by a run killed while copying
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=".tokenizer-", suffix=".tmp", dir=target.parent))
    try:
        for f in files:
            shutil.copyfile(f, staging / f.name)
        os.rename(staging, target)  # atomic; fails if another writer got there first, with the same bytes
    except OSError:
        if not target.is_dir():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_dir(target.parent)


def keep_tokenizer(tokenizer_path: str | os.PathLike, checkpoints_dir: str | os.PathLike) -> dict[str, str]:
    """Copy the tokenizer into `checkpoints_dir` unless the same bytes are there already; return its record."""
    files, record = tokenizer_files(tokenizer_path)
    copy_tokenizer(files, record, checkpoints_dir)
    return record


class RunTokenizer:
    """The tokenizer of one run: its record, known when the run is built, and its copy, written by `keep` once the
    run is accepted (a Trainer that is built and never trained, or a refused resume, writes nothing). The files
    are hashed once, here: the copy goes to the directory every checkpoint records."""

    def __init__(self, tokenizer_path: str | os.PathLike | None) -> None:
        self._files, record = tokenizer_files(tokenizer_path) if tokenizer_path is not None else ([], None)
        self.annotations: dict[str, Any] = {TOKENIZER_KEY: record} if record else {}  # for every checkpoint

    def keep(self, checkpoints_dir: str | os.PathLike) -> None:
        """Copy the tokenizer into the run's `checkpoints_dir` (the run's checkpoints own that directory)."""
        if self.annotations:
            copy_tokenizer(self._files, self.annotations[TOKENIZER_KEY], checkpoints_dir)

    def check_resume(self, checkpoint: dict[str, Any], path: str | Path) -> None:
        """A resumed run reads its data with the tokenizer the checkpoint's run had, else its weights learnt other
        ids. Checkpoints that record none (older ones, runs on ids alone) pass; records before 0.2 hold sha256."""
        old, new = checkpoint.get(TOKENIZER_KEY), self.annotations.get(TOKENIZER_KEY)
        if not old or not new:
            return
        key = next(k for k in ("content_hash", "content_sha256", "sha256") if k in old)
        mine = new[key] if key == "content_hash" else sha256_of(self._files, with_names=key == "sha256")
        if old[key] != mine:
            was, now = old[key].split(":")[-1][:12], mine.split(":")[-1][:12]
            raise CheckpointError(
                f"checkpoint {path} was trained with the tokenizer {old['file']} ({was}), and this run reads its "
                f"data with {new['file']} ({now}): the weights learnt other ids. Resume with the run's tokenizer "
                f"(its copy: {Path(path).parent / old['dir'] / old['file']}), or start a new run from these weights "
                "with init_from.")


def run_tokenizer(checkpoint: str | os.PathLike) -> Path | None:
    """The tokenizer file a checkpoint records, beside it (or one level up: `superseded-*/` holds set-aside
    checkpoints); None when it records none (saved before this was recorded, or trained on ids alone).
    A recorded tokenizer that is missing is a FileNotFoundError: another one would silently give other ids."""
    checkpoint = Path(checkpoint)
    try:
        saved: Any = read_checkpoint(checkpoint, tensors=False)
    except (CheckpointError, OSError):
        return None  # not a readable checkpoint: the weights loader names the problem
    record = saved.get(TOKENIZER_KEY)
    if not record:
        return None
    for directory in (checkpoint.parent, checkpoint.parent.parent):
        path = directory / record["dir"] / record["file"]
        if path.is_file():
            return path
    raise FileNotFoundError(f"checkpoint {checkpoint} was trained with the tokenizer {record['file']} that "
                            f"{checkpoint.parent / record['dir']} held, which is gone; pass it (--tokenizer).")
