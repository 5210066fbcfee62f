"""AtomicCheckpointIO: a copy in the caller; torch.save, fsync and rename in the background; announced in the caller."""

from __future__ import annotations

import threading

import pytest
import torch

from tlama_core.atomic import commit as real_commit
from tlama_core.training.files import checkpoint_io as checkpointing
from tlama_core.training.files.checkpoint_io import AtomicCheckpointIO, find_last_checkpoint, step_checkpoint_name


class HeldCommits:
    """Replaces the background commit with one that waits until `release()`: a save caught mid-commit."""

    def __init__(self, monkeypatch) -> None:
        self.gate = threading.Event()
        monkeypatch.setattr(checkpointing, "commit", self._commit)

    def _commit(self, tmp, path) -> None:
        assert self.gate.wait(10), "test commit was never released"
        real_commit(tmp, path)

    def release(self) -> None:
        self.gate.set()


def announced(io: AtomicCheckpointIO) -> list[tuple[str, int]]:
    """Install a listener that records (file name, thread id) of every announcement."""
    calls: list[tuple[str, int]] = []
    io.listeners.append(lambda path: calls.append((path.name, threading.get_ident())))
    return calls


def test_a_save_is_announced_on_the_callers_thread_once_it_is_in_place(tmp_path, monkeypatch):
    held = HeldCommits(monkeypatch)
    io = AtomicCheckpointIO()
    calls = announced(io)
    path = tmp_path / step_checkpoint_name(1)
    io.save_checkpoint({"step": 1}, path)
    tmp = tmp_path / (path.name + ".tmp")
    for _ in range(1000):  # written on the writer's thread, which then waits at the held commit
        if tmp.exists():
            break
        threading.Event().wait(0.01)
    assert not path.exists() and tmp.exists()
    io.poll()
    assert calls == []  # not committed yet: nothing to announce
    held.release()
    io.wait()
    assert torch.load(path)["step"] == 1
    assert calls == [(path.name, threading.get_ident())]
    assert list(tmp_path.glob("*.tmp")) == []


def test_last_is_the_previous_complete_checkpoint_until_the_commit_is_done(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": 1}, tmp_path / step_checkpoint_name(1))
    io.wait()
    held = HeldCommits(monkeypatch)
    io.save_checkpoint({"step": 2}, tmp_path / step_checkpoint_name(2))
    assert find_last_checkpoint(tmp_path).name == step_checkpoint_name(1)
    held.release()
    io.wait()
    assert find_last_checkpoint(tmp_path).name == step_checkpoint_name(2)


def test_saving_a_file_again_waits_for_its_pending_commit(tmp_path, monkeypatch):
    """best.ckpt may be saved again while its last version is committing: the newer contents must win."""
    def slow_commit(tmp, path):
        threading.Event().wait(0.2)
        real_commit(tmp, path)

    monkeypatch.setattr(checkpointing, "commit", slow_commit)
    io = AtomicCheckpointIO()
    calls = announced(io)
    path = tmp_path / "best.ckpt"
    io.save_checkpoint({"step": 1}, path)
    io.save_checkpoint({"step": 2}, path)
    io.wait()
    assert torch.load(path)["step"] == 2
    assert [name for name, _ in calls] == ["best.ckpt", "best.ckpt"]


def test_a_failed_commit_is_raised_in_the_caller_and_not_announced(tmp_path, monkeypatch):
    def failing_commit(tmp, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpointing, "commit", failing_commit)
    io = AtomicCheckpointIO()
    calls = announced(io)
    io.save_checkpoint({"step": 1}, tmp_path / step_checkpoint_name(1))
    with pytest.raises(OSError, match="No space left"):
        io.wait()
    assert calls == [] and find_last_checkpoint(tmp_path) is None


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_a_failed_serialisation_leaves_no_temporary(tmp_path):
    io = AtomicCheckpointIO()
    with pytest.raises(RuntimeError, match="cannot pickle"):  # written in the background: raised when joined
        io.save_checkpoint({"unpicklable": Unpicklable()}, tmp_path / step_checkpoint_name(1))
        io.wait()
    assert list(tmp_path.iterdir()) == []
