"""Interrupted runs: SIGKILL at random moments loses nothing, SIGINT/SIGTERM stop cleanly; resuming is exact.

Each run is `tests/kill_run.py` in a subprocess (a real process to kill), resuming with ckpt_path="last".
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kill_run import build_trainer

from tlama_core.training.checkpointing import find_last_checkpoint, load_checkpoint_file
from tlama_core.training.csv_log import read_rows

SCRIPT = Path(__file__).with_name("kill_run.py")
STEPS = 30
D_MODEL = 64  # ~2 MB checkpoints with AdamW state: a save takes long enough to be killed in the middle


def start(root: Path, *args: str) -> subprocess.Popen:
    """Start the run and return once it is about to train (Python, Lightning and the model are loaded)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPT.parent), *sys.path])}
    proc = subprocess.Popen([sys.executable, str(SCRIPT), str(root), "--steps", str(STEPS), "--d_model",
                             str(D_MODEL), *args], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "training"
    return proc


def wait_for(condition, timeout: float = 30.0, poll: float = 0.0005) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(poll)
    return False


def temporaries(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".tmp")] if directory.is_dir() else []


def losses(root: Path) -> dict[int, float]:
    rows = read_rows(root / "logs" / "train_log.csv")
    steps = [int(r["step"]) for r in rows]
    assert steps == list(range(1, STEPS + 1)), "every step logged exactly once, in order"
    return {int(r["step"]): float(r["train_loss"]) for r in rows}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict[int, float]:
    """The losses of the same run, never interrupted (in this process: same code, same numbers)."""
    root = tmp_path_factory.mktemp("uninterrupted")
    assert build_trainer(root, STEPS, D_MODEL).train()["steps_completed"] == STEPS
    return losses(root)


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_nothing_and_resumes_exactly(uninterrupted, tmp_path):
    """Four SIGKILLs (two during a checkpoint save, two after random delays), then a run to the end."""
    rng = random.Random(20240611)
    ckpt = tmp_path / "ckpt"
    hit_a_save = 0
    for kill in range(4):
        proc = start(tmp_path, "--save_sleep", "0.05")
        if kill % 2 == 0:  # the moment a checkpoint file starts being written
            assert wait_for(lambda: temporaries(ckpt)), "no checkpoint save started"
        else:
            time.sleep(rng.uniform(0.05, 1.0))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before it was killed"
        hit_a_save += bool(temporaries(ckpt))
        for path in ckpt.glob("*.ckpt"):  # whatever the kill interrupted, every finished file is whole
            load_checkpoint_file(path)
    print("kills during a save:", hit_a_save)
    assert hit_a_save >= 1, "no kill landed during a save: the test did not exercise a half-written file"

    proc = start(tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert json.loads(out.splitlines()[-1])["steps_completed"] == STEPS
    assert not temporaries(ckpt)
    for path in ckpt.glob("*.ckpt"):
        load_checkpoint_file(path)
    assert losses(tmp_path) == pytest.approx(uninterrupted, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_finishes_the_step_checkpoints_it_and_resumes_exactly(uninterrupted, tmp_path, signum):
    proc = start(tmp_path, "--step_sleep", "0.1")
    log = tmp_path / "logs" / "train_log.csv"
    assert wait_for(lambda: log.exists() and len(read_rows(log)) >= 5, poll=0.01)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    assert "ckpt_path='last'" in out
    result = json.loads(out.splitlines()[-1])
    assert result["interrupted"] is True
    stopped = result["steps_completed"]
    assert 5 <= stopped < STEPS
    assert find_last_checkpoint(tmp_path / "ckpt").name == f"step={stopped:08d}.ckpt"  # the step it finished
    assert int(read_rows(log)[-1]["step"]) == stopped

    result = build_trainer(tmp_path, STEPS, D_MODEL).train(ckpt_path="last")
    assert (result["steps_completed"], result["interrupted"]) == (STEPS, False)
    assert losses(tmp_path) == pytest.approx(uninterrupted, rel=1e-4)
