"""`tlama prepare`: shards that read as one stream, equal to one machine's run and to the token cache, id for id."""

from __future__ import annotations

import contextlib
import errno
import json
import re
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest

from tlama_core import locks
from tlama_core.cli import main
from tlama_core.data import builtin_corpus_path, builtin_tokenizer_path, create_dataloader
from tlama_core.data import streaming as streaming_module
from tlama_core.data import text as text_module
from tlama_core.data.prepare import prepare
from tlama_core.locks import LockError

pq = pytest.importorskip("pyarrow.parquet")
pa = pytest.importorskip("pyarrow")

TOK = builtin_tokenizer_path()
CORPUS = builtin_corpus_path().read_text(encoding="utf-8")[:60_000]
DOCS = [p + "\n" for p in CORPUS.split("\n\n") if p]


def ids_of(path) -> list[int]:
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    return np.fromfile(path, dtype=meta["dtype"]).tolist()


def jsonl_dir(root, parts=4):
    root.mkdir()
    for k in range(parts):
        with open(root / f"part_{k}.jsonl", "w") as f:
            for doc in DOCS[k::parts]:
                f.write(json.dumps({"text": doc}) + "\n")
    return root


def parquet_file(root):
    pq.write_table(pa.table({"text": DOCS}), root, row_group_size=10)
    return root


def text_dir(root):
    root.mkdir()
    for k in range(2):
        (root / f"{k}.txt").write_text(CORPUS[k * 30_000:(k + 1) * 30_000], encoding="utf-8")
    return root


INPUTS = {"jsonl-files": jsonl_dir, "parquet-row-groups": parquet_file, "text-pieces": text_dir}


@pytest.mark.parametrize("kind", INPUTS)
def test_shards_together_equal_one_machine_and_the_cache(tmp_path, kind, monkeypatch):
    monkeypatch.setattr(text_module, "PIECE_BYTES", 4096)  # text: several pieces per file, split among shards
    data = INPUTS[kind](tmp_path / ("data.parquet" if kind.startswith("parquet") else "data"))
    whole = ids_of(prepare(data, TOK, tmp_path / "one", progress=False))
    shards = [prepare(data, TOK, tmp_path / "many", shard=i, num_shards=5 if kind != "jsonl-files" else 3,
                      workers=1, progress=False) for i in range(5 if kind != "jsonl-files" else 3)]
    assert sum((ids_of(p) for p in shards), []) == whole
    cached = create_dataloader(data, TOK, 2, 8, shuffle=False, cache_dir=tmp_path / "cache")
    assert cached.dataset.tokens.read(0, cached.num_tokens).tolist() == whole
    loader = create_dataloader(tmp_path / "many", None, 2, 8, shuffle=False)  # the shards, read as one stream
    assert loader.dataset.tokens.read(0, loader.num_tokens).tolist() == whole
    assert (loader.text_chars, loader.vocab_size, loader.eos_id) == (cached.text_chars, 1024, 2)


def test_parallel_workers_write_the_same_ids(tmp_path, monkeypatch):
    monkeypatch.setattr(text_module, "PIECE_BYTES", 4096)
    data = text_dir(tmp_path / "data")
    one = prepare(data, TOK, tmp_path / "a", workers=1, progress=False)
    two = prepare(data, TOK, tmp_path / "b", workers=2, progress=False)
    assert ids_of(one) == ids_of(two)


def test_split_names_the_shards_and_selects_the_input(tmp_path):
    data = jsonl_dir(tmp_path / "data")
    (data / "part_3.jsonl").rename(data / "part_val.jsonl")
    for k in range(3):
        (data / f"part_{k}.jsonl").rename(data / f"part_train_{k}.jsonl")
    train = prepare(data, TOK, tmp_path / "out", split="train", progress=False)
    val = prepare(data, TOK, tmp_path / "out", split="val", progress=False)
    assert (train.name, val.name) == ("train_00000.bin", "val_00000.bin")
    loader = create_dataloader(tmp_path / "out", None, 2, 8, shuffle=False, split="val")
    assert loader.dataset.tokens.read(0, loader.num_tokens).tolist() == ids_of(val)


def test_a_killed_shard_reruns_cleanly(tmp_path):
    data = jsonl_dir(tmp_path / "data")
    first = prepare(data, TOK, tmp_path / "out", shard=1, num_shards=2, progress=False)
    good = ids_of(first)
    (tmp_path / "out" / "00001.bin.tmp").write_bytes(b"half written by a killed run")
    first.write_bytes(first.read_bytes()[:10])  # and a sidecar that no longer matches
    again = prepare(data, TOK, tmp_path / "out", shard=1, num_shards=2, progress=False)
    assert ids_of(again) == good
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["00001.bin", "00001.bin.json"]


def test_cli_prepare_writes_a_shard_and_refuses_a_shard_out_of_range(tmp_path, capsys):
    data = jsonl_dir(tmp_path / "data")
    main(["prepare", "--data", str(data), "--tokenizer", str(TOK), "--out", str(tmp_path / "out"),
          "--shard", "0", "--num_shards", "2", "--workers", "1"])
    assert "00000.bin" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--data", str(data), "--tokenizer", str(TOK), "--out", str(tmp_path / "out"),
              "--shard", "2", "--num_shards", "2"])
    assert exit_.value.code == 2 and "shard=2" in capsys.readouterr().err


def test_token_ids_are_not_prepared_again(tmp_path):
    np.arange(100, dtype=np.uint16).tofile(tmp_path / "ids.bin")
    with pytest.raises(ValueError, match="already holds token ids"):
        prepare(tmp_path / "ids.bin", TOK, tmp_path / "out")


def test_a_shard_that_gets_no_input_is_warned_about_naming_it(tmp_path):
    (tmp_path / "small.txt").write_text(CORPUS[:2000], encoding="utf-8")
    with pytest.warns(UserWarning, match=r"shard 0 of 2 gets no data: .* makes 1 unit\(s\) of work .*00000\.bin is "
                                         r"written empty .*num_shards=1 or fewer"):
        empty = prepare(tmp_path / "small.txt", TOK, tmp_path / "out", shard=0, num_shards=2, progress=False)
    assert ids_of(empty) == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shard that gets the unit: no warning
        assert len(ids_of(prepare(tmp_path / "small.txt", TOK, tmp_path / "out", shard=1, num_shards=2,
                                  progress=False))) > 100


# ---- one writer per shard ------------------------------------------------------------------------------------
WAITING_WRITER = """
import pathlib, sys, time
from tlama_core.data import encoding
go, encode = pathlib.Path(sys.argv[4]), encoding.Encoder.__call__
def waiting(self, work):  # holds the shard's lock and its open temporary until the test says go
    print("writing", flush=True)
    while not go.exists():
        time.sleep(0.02)
    return encode(self, work)
encoding.Encoder.__call__ = waiting
from tlama_core.data.prepare import prepare
print(prepare(sys.argv[1], sys.argv[2], sys.argv[3], workers=1, progress=False))
"""


@pytest.mark.slow
def test_a_second_writer_of_a_shard_is_refused_naming_the_first(tmp_path):
    """Two real processes: `tlama prepare` of a shard another process is writing exits 2 naming it, touching
    nothing; the first finishes with the ids a lone run writes."""
    data, out = jsonl_dir(tmp_path / "data"), tmp_path / "out"
    first = subprocess.Popen([sys.executable, "-c", WAITING_WRITER, str(data), str(TOK), str(out),
                              str(tmp_path / "go")], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline().strip() == "writing"
        temporaries = sorted(out.glob("00000.bin.*.tmp"))
        assert len(temporaries) == 1  # the first writer's own temporary
        second = subprocess.run([sys.executable, "-m", "tlama_core.cli", "prepare", "--data", str(data), "--tokenizer",
                                 str(TOK), "--out", str(out), "--workers", "1"], capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2
        (line,) = second.stderr.splitlines()  # one line: the command was right, so no usage either
        assert line.startswith(f"error: {out / '00000.bin'} is being written by another `tlama prepare` (pid "
                               f"{first.pid} on host {socket.gethostname()}, lock file {out / '00000.lock'})")
        assert sorted(out.glob("00000.bin.*.tmp")) == temporaries
        (tmp_path / "go").touch()
        stdout, _ = first.communicate(timeout=120)
        assert first.returncode == 0, stdout
    finally:
        if first.poll() is None:
            first.kill()
    assert ids_of(out / "00000.bin") == ids_of(prepare(data, TOK, tmp_path / "alone", workers=1, progress=False))
    assert sorted(p.name for p in out.iterdir()) == ["00000.bin", "00000.bin.json"]


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_stale_lock_of_a_dead_writer_is_taken_over_with_a_warning(tmp_path):
    out, pid = tmp_path / "out", dead_pid()
    out.mkdir()
    (out / "00001.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname()}))
    (out / f"00001.bin.{pid}-0a1b2c3d.tmp").write_bytes(b"half written by the dead writer")
    data = jsonl_dir(tmp_path / "data")
    with pytest.warns(UserWarning, match=rf"00001\.lock: taking over the lock of a `tlama prepare` that is no longer "
                                         rf"running \(pid {pid} on host"):
        path = prepare(data, TOK, out, shard=1, num_shards=2, progress=False)
    assert ids_of(path) == ids_of(prepare(data, TOK, tmp_path / "alone", shard=1, num_shards=2, progress=False))
    assert sorted(p.name for p in out.iterdir()) == ["00001.bin", "00001.bin.json"]


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "00000.lock").write_text('{"pid": 1, "host": "node-17"}')
    with pytest.raises(LockError, match=r"00000\.bin is being written by another `tlama prepare` \(pid 1 on host "
                                        r"node-17.*delete the lock file"):
        prepare(jsonl_dir(tmp_path / "data"), TOK, out, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["00000.lock"]


# ---- a full disk --------------------------------------------------------------------------------------------
class FullDisk:
    """A file that takes `room` bytes, then fails as a full disk does."""

    def __init__(self, f, room: int) -> None:
        self.f, self.room = f, room

    def write(self, data) -> int:
        size = memoryview(data).nbytes
        if size > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.room -= size
        return self.f.write(data)


def test_a_full_disk_is_one_line_naming_the_shard_and_the_free_space_and_loses_nothing(tmp_path, monkeypatch,
                                                                                     capsys):
    data, out = jsonl_dir(tmp_path / "data"), tmp_path / "out"
    good = prepare(data, TOK, out, workers=1, progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    atomic_open = streaming_module.atomic_open

    @contextlib.contextmanager
    def filling(path, unique=False):
        with atomic_open(path, unique) as f:
            yield FullDisk(f, room=1000)

    monkeypatch.setattr(streaming_module, "atomic_open", filling)
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--data", str(data), "--tokenizer", str(TOK), "--out", str(out), "--workers", "1"])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(rf"error: \[Errno 28\] disk full \(No space left on device\) writing 00000\.bin in {out}/ "
                        r"\([\d.]+ MiB free\); nothing was replaced: free space there \(or write to another "
                        rf"directory\) and run shard 0 again: '{good}'", line)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the earlier shard and sidecar, no leftovers


def test_a_full_disk_while_taking_the_shards_lock_is_one_line_naming_the_lock_and_leaves_none(tmp_path, monkeypatch,
                                                                                               capsys):
    """A re-run on a disk still full fails at its first write, the lock file: named, and not left behind empty (a
    later run would read it as a writer that never wrote its name)."""
    def full(directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks, "fsync_dir", full)
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--data", str(jsonl_dir(tmp_path / "data")), "--tokenizer", str(TOK), "--out", str(out)])
    assert exit_.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert re.fullmatch(rf"error: \[Errno 28\] disk full \(No space left on device\) writing 00000\.lock in {out}/ "
                        r"\([\d.]+ MiB free\); nothing was replaced: free space there .*", line)
    assert list(out.iterdir()) == []


def test_an_out_that_is_a_file_is_one_line_naming_it(tmp_path, capsys):
    (tmp_path / "out").write_text("a file")
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--data", str(jsonl_dir(tmp_path / "data")), "--tokenizer", str(TOK), "--out",
              str(tmp_path / "out")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (f"error: out={str(tmp_path / 'out')!r} is a file; the shards "
                                                        "go into a directory: name a new or existing one.")
    assert (tmp_path / "out").read_text() == "a file"
