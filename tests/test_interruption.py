"""Interrupted runs: SIGKILL at random moments loses nothing, SIGINT/SIGTERM stop cleanly; resuming is exact.

Each run is `tests/kill_run.py` in a subprocess (a real process to kill), resuming with ckpt_path="last".
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kill_run import build_trainer

from tlama_core.checkpoints import read_checkpoint
from tlama_core.training.files.checkpoint_io import find_last_checkpoint
from tlama_core.training.records.metrics import read_rows

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
            read_checkpoint(path)
    print("kills during a save:", hit_a_save)
    assert hit_a_save >= 1, "no kill landed during a save: the test did not exercise a half-written file"

    proc = start(tmp_path)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert json.loads(out.splitlines()[-1])["steps_completed"] == STEPS
    assert not temporaries(ckpt)
    for path in ckpt.glob("*.ckpt"):
        read_checkpoint(path)
    assert losses(tmp_path) == pytest.approx(uninterrupted, rel=1e-4)


@pytest.mark.slow
def test_sigkill_during_sharded_saves_leaves_only_complete_checkpoints_and_resumes_exactly(uninterrupted, tmp_path):
    """strategy="fsdp2": a kill while a step's shards are being written leaves its staged directory, never a
    `step=N.ckpt/` without its metadata; the next run removes it and ends as the uninterrupted run does."""
    ckpt = tmp_path / "ckpt"

    def saving_with_one_to_resume_from() -> bool:  # a save is under way, and a complete one is on disk
        return bool(temporaries(ckpt)) and any(ckpt.glob("step=*.ckpt"))

    # One kill covers it: the run below must remove the staged directory and end as the uninterrupted one.
    proc = start(tmp_path, "--strategy", "fsdp2", "--save_sleep", "0.5")
    assert wait_for(saving_with_one_to_resume_from, timeout=120), "no sharded save started"
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before it was killed"
    staged = temporaries(ckpt)
    assert len(staged) == 1 and (ckpt / staged[0]).is_dir()  # killed half-way, under its staging name
    steps = list(ckpt.glob("step=*.ckpt"))
    assert steps and all(p.is_dir() for p in steps)
    for path in steps:  # every directory under a step's name is a whole checkpoint
        read_checkpoint(path)
    assert find_last_checkpoint(ckpt) == max(steps)

    proc = start(tmp_path, "--strategy", "fsdp2")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0
    assert json.loads(out.splitlines()[-1])["steps_completed"] == STEPS
    assert not temporaries(ckpt)
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


def children(pid: int) -> list[int]:
    """The live child processes of `pid` (the loader workers of a run)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] not in "ZX":
            found.append(int(stat.parent.name))
    return found


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the loader workers in /proc")
def test_sigterm_to_the_whole_process_group_with_loader_workers_saves_the_step_and_resumes_exactly(
        tmp_path, monkeypatch):
    """What scancel, a preemption or systemctl stop do: SIGTERM to every process of the job, workers included."""
    from test_cli import TINY_RUN, losses, write_yaml

    from tlama_core.cli import main

    slow = {"class_path": "kill_run._SlowSteps", "init_args": {"seconds": 0.2}}
    run = {**TINY_RUN, "data": {**TINY_RUN["data"], "num_workers": 2},
           "trainer": {**TINY_RUN["trainer"], "steps": 16, "checkpoint_steps": 8, "validation_steps": 4,
                       "callbacks": [slow]},
           "model": {**TINY_RUN["model"], "scheduler": {**TINY_RUN["model"]["scheduler"], "max_steps": 16}}}
    config = write_yaml(tmp_path / "run.yaml", run)
    (tmp_path / "full").mkdir()
    monkeypatch.chdir(tmp_path / "full")
    main(["fit", "--config", str(config)])
    uninterrupted = losses("logs/train_log.csv")

    job = tmp_path / "job"
    job.mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SCRIPT.parent), *sys.path])}
    proc = subprocess.Popen([sys.executable, "-m", "tlama_core.cli", "fit", "--config", str(config)], cwd=job,
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = job / "logs" / "train_log.csv"
    assert wait_for(lambda: log.exists() and len(read_rows(log)) >= 5, timeout=120, poll=0.02)
    assert len(children(proc.pid)) >= 2, "the run's loader workers are not running"
    os.killpg(proc.pid, signal.SIGTERM)  # the run is its session's and group's leader
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    stopped = int(re.search(r"interrupted; checkpoint of step (\d+) saved", out).group(1))
    assert 5 <= stopped < 16
    assert find_last_checkpoint(job / "checkpoints").name == f"step={stopped:08d}.ckpt"
    assert int(read_rows(log)[-1]["step"]) == stopped

    monkeypatch.chdir(job)
    main(["fit", "--config", "checkpoints/config.yaml", "--ckpt_path", "last"])
    resumed = losses("logs/train_log.csv")
    assert [r[:4] for r in resumed] == [r[:4] for r in uninterrupted]  # step, loss, lr, grad norm: bit for bit
    # Stopping validates the stopped step, which the uninterrupted run did not: every other val_loss is equal.
    assert [r for r in resumed if r[0] != str(stopped)] == [r for r in uninterrupted if r[0] != str(stopped)]
