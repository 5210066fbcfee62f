"""Preemption on SLURM: SIGUSR1 (`#SBATCH --signal=USR1@120`) stops every task at the same step end with that step's
checkpoint, the job is requeued, and the relaunch resumes exactly. Two tasks launched by hand with SLURM's
environment, as srun would start them; `scontrol` is a stand-in that records what it was asked."""

from __future__ import annotations

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tlama_core.data import builtin_corpus_path

SCRIPT = Path(__file__).with_name("slurm_run.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def srun(out: Path, bin_dir: Path, *args: str) -> None:
    """Both tasks of the job, as srun starts them."""
    out.mkdir(exist_ok=True)
    if not (out / "corpus.txt").exists():
        (out / "corpus.txt").write_text(Path(builtin_corpus_path()).read_text()[:40_000])
    port = str(free_port())
    tasks = []
    for rank in (0, 1):
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYTHONWARNINGS": "ignore",
               "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_TASKS_PER_NODE": "2", "SLURM_NNODES": "1",
               "SLURM_PROCID": str(rank), "SLURM_LOCALID": str(rank), "SLURM_NODEID": "0", "SLURM_JOB_ID": "4242",
               "SLURM_JOB_NAME": "train", "SLURM_NODELIST": "localhost", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": port}
        tasks.append(subprocess.Popen([sys.executable, str(SCRIPT), str(out), *args], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    for task in tasks:
        output, _ = task.communicate(timeout=300)
        assert task.returncode == 0, output[-3000:]


def losses(out: Path) -> list[float]:
    with open(out / "logs" / "train_log.csv", newline="") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_a_preempted_slurm_job_checkpoints_its_step_is_requeued_and_resumes_exactly(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    record = tmp_path / "scontrol.txt"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {record}\n')
    (bin_dir / "scontrol").chmod(0o755)
    srun(tmp_path / "full", bin_dir, "6")
    cut = tmp_path / "cut"
    srun(cut, bin_dir, "6", "--preempt")  # rank 1 signalled as step 3 starts, rank 0 as step 4 starts
    results = [json.loads((cut / f"result_rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["steps_completed"], r["interrupted"]) for r in results] == [(3, True), (3, True)]
    assert results[0]["requeued"] == "4242" and results[1]["requeued"] is None  # the master requeues, once
    assert record.read_text().split("\n")[:-1] == ["requeue 4242"]
    assert sorted(p.name for p in (cut / "ckpt").iterdir() if p.name.endswith(".ckpt")) == ["step=00000003.ckpt"]
    srun(cut, bin_dir, "6", "--resume")  # the requeued job's script: --ckpt_path last
    assert losses(cut) == pytest.approx(losses(tmp_path / "full"), rel=1e-6)


@pytest.mark.parametrize("auto_requeue", [True, False])
def test_a_single_task_slurm_job_is_requeued_too(tmp_path, monkeypatch, auto_requeue):
    """One task (SingleDeviceStrategy, whose strategy has no cluster environment of its own): SIGUSR1 checkpoints
    the step and the job is requeued; with SLURMEnvironment(auto_requeue=False) the run returns without asking
    scontrol, for the user's own requeue."""
    import signal

    from lightning.fabric.plugins.environments import SLURMEnvironment
    from trainer_utils import make_trainer

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.txt"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for name, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                        "SLURM_NODEID": "0", "SLURM_NNODES": "1", "SLURM_JOB_ID": "77", "SLURM_JOB_NAME": "train",
                        "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(name, value)

    class Preempt:
        def on_step_end(self, trainer, metrics):
            if trainer.current_step == 2:
                os.kill(os.getpid(), signal.SIGUSR1)

    plugins = [] if auto_requeue else [SLURMEnvironment(auto_requeue=False)]
    result = make_trainer(tmp_path, steps=6, checkpoint_steps=100, callbacks=[Preempt()],
                          trainer_kwargs={"plugins": plugins}).train()
    requeued = "77" if auto_requeue else None
    assert (result["steps_completed"], result["interrupted"], result["requeued"]) == (2, True, requeued)
    scontrol = tmp_path / "scontrol.txt"
    assert (scontrol.read_text() if auto_requeue else scontrol.exists()) == ("requeue 77\n" if auto_requeue else False)
    assert (tmp_path / "ckpt" / "step=00000002.ckpt").is_file()
