"""Two CPU processes under Lightning's DDP (gloo), launched from a script the way a user launches theirs."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tlama_core.data import builtin_corpus_path

SCRIPT = Path(__file__).with_name("ddp_run.py")



def checkpoint_files(directory) -> list[str]:
    """The directory's files, once it is checked to hold exactly one copy of the run's tokenizer (rank 0's)."""
    names = sorted(p.name for p in directory.iterdir())
    assert len([n for n in names if n.startswith("tokenizer-")]) == 1, names
    return [n for n in names if not n.startswith("tokenizer-")]

def run(out: Path, devices: int, total: int, *extra: str) -> None:
    out.mkdir(exist_ok=True)
    if not (out / "corpus.txt").exists():
        (out / "corpus.txt").write_text(Path(builtin_corpus_path()).read_text()[:40_000])
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(SCRIPT), str(out), str(devices), str(total), *extra],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]


def windows(path: Path) -> list[tuple[str, ...]]:
    """The windows a rank trained on (their first 4 tokens each), in order."""
    tokens = path.read_text().split()
    return [tuple(tokens[i:i + 4]) for i in range(0, len(tokens), 4)]


def losses(out: Path) -> list[float]:
    with open(out / "logs" / "train_log.csv", newline="") as f:
        return [float(r["train_loss"]) for r in csv.DictReader(f)]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process_with_twice_the_accumulation(tmp_path):
    micro = 2 * 32
    run(tmp_path / "ddp", 2, total=micro * 2 * 2)  # 2 processes x 2 micro-batches
    run(tmp_path / "one", 1, total=micro * 2 * 2)  # 1 process x 4 micro-batches
    ddp, one = tmp_path / "ddp", tmp_path / "one"

    rank0, rank1 = windows(ddp / "batches_rank0.txt"), windows(ddp / "batches_rank1.txt")
    assert len(rank0) == len(rank1) == 6 * 2 * 2  # 6 steps x 2 micro-batches x 2 windows
    assert not set(rank0) & set(rank1)  # the ranks read disjoint windows
    single = windows(one / "batches_rank0.txt")
    per_step = 2 * 2  # windows per step and rank
    for step in range(6):  # together they read, step by step, the windows the single process read
        both = rank0[step * per_step:(step + 1) * per_step] + rank1[step * per_step:(step + 1) * per_step]
        assert sorted(both) == sorted(single[step * 2 * per_step:(step + 1) * 2 * per_step])

    assert sorted(p.name for p in (ddp / "logs").iterdir()) == ["train_log.csv"]  # one log, written by rank 0
    assert checkpoint_files(ddp / "ckpt") == [f"step={s:08d}.ckpt" for s in (2, 4, 6)]
    # The same windows per step and gradients averaged over processes: the same losses up to float summation
    # order (DDP reduces gradients in another order than one process accumulating them).
    assert losses(ddp) == pytest.approx(losses(one), rel=1e-4)


@pytest.mark.slow
def test_ddp_run_resumes_from_its_checkpoint(tmp_path):
    micro = 2 * 32
    run(tmp_path / "full", 2, micro * 4, "6")
    run(tmp_path / "cut", 2, micro * 4, "4")
    run(tmp_path / "cut", 2, micro * 4, "6", "--resume")
    assert losses(tmp_path / "cut") == pytest.approx(losses(tmp_path / "full"), rel=1e-6)


@pytest.mark.slow
def test_ddp_processes_signalled_a_step_apart_stop_together_and_resume(tmp_path):
    """Rank 1 is signalled as step 3 starts, rank 0 as step 4 starts: both stop after step 3, checkpoint it
    and report the interruption; resuming then trains what an uninterrupted run trains. On the way, a hook on
    the master alone asks for a checkpoint at step 1: the processes agree on it and save it together."""
    micro = 2 * 32
    run(tmp_path / "full", 2, micro * 4, "6")
    run(tmp_path / "cut", 2, micro * 4, "6", "--signal-skew", "--save-in-hook")
    cut = tmp_path / "cut"
    assert (cut / "saved_rank0.txt").read_text() == str(cut / "ckpt" / "step=00000001.ckpt")
    assert not (cut / "saved_rank1.txt").exists()
    assert [(cut / f"result_rank{r}.txt").read_text().split() for r in (0, 1)] == [["3", "True"]] * 2
    assert checkpoint_files(cut / "ckpt") == [f"step={s:08d}.ckpt" for s in (1, 2, 3)]
    run(cut, 2, micro * 4, "6", "--resume")
    assert losses(cut) == pytest.approx(losses(tmp_path / "full"), rel=1e-6)


@pytest.mark.slow
def test_a_best_checkpoint_asked_for_on_the_master_alone_sets_every_process_best_val_loss(tmp_path):
    """The master alone saves a "best" of val_loss 0.5 at step 1: every process must then hold 0.5 as its best,
    or at step 2's validation (loss ~7) the others would find an improvement the master does not and save
    `best.ckpt` alone, waiting at a barrier the master never reaches."""
    micro = 2 * 32
    run(tmp_path, 2, micro * 4, "4", "--best-in-hook")
    assert [float((tmp_path / f"best_rank{r}.txt").read_text()) for r in (0, 1)] == [0.5, 0.5]
    best = torch.load(tmp_path / "ckpt" / "best.ckpt", map_location="cpu", weights_only=False)
    assert (best["step"], best["val_loss"]) == (1, 0.5)


@pytest.mark.slow
def test_tlama_fit_with_two_devices(tmp_path):
    """The same DDP run from the command line: one CSV, one set of checkpoints, the run's config beside them."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(Path(builtin_corpus_path()).read_text()[:40_000])
    tlama = Path(sys.executable).with_name("tlama")
    flags = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
             "--trainer.total_batch_size", "256", "--trainer.epochs", "1", "--trainer.steps", "4",
             "--trainer.validation_steps", "2", "--trainer.validation_batches", "2", "--trainer.checkpoint_steps", "2",
             "--trainer.verbose", "false", "--data.train_path", str(corpus), "--data.batch_size", "2",
             "--data.seq_length", "32", "--data.cache_dir", str(tmp_path / "cache"),
             "--model.config.d_model", "32", "--model.config.n_layers", "2", "--model.config.n_heads", "4",
             "--model.config.n_kv_heads", "2", "--model.config.max_seq_len", "32",
             "--model.scheduler.warmup_steps", "1", "--model.scheduler.max_steps", "4"]
    done = subprocess.run([str(tlama), "fit", *flags], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["train_log.csv"]
    assert checkpoint_files(tmp_path / "checkpoints") == [
        "best.ckpt", "config.yaml", "step=00000002.ckpt", "step=00000004.ckpt"]
    with open(tmp_path / "logs" / "train_log.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [2, 4]  # validation steps (log_steps defaults to 10)
    # tokens/s counts both processes: twice the per-device figure
    assert float(rows[-1]["tokens_per_sec"]) == pytest.approx(2 * float(rows[-1]["tokens_per_sec_per_device"]))


@pytest.mark.slow
def test_a_process_whose_peer_died_ends_with_one_line_naming_the_checkpoint(tmp_path):
    """Rank 1 is killed (SIGKILL) as its step 3 starts; rank 0 meets the dead peer in its next collective and
    `tlama fit` ends with one line, exit 2, naming the peer and the checkpoint to resume from; gloo's traceback
    goes to a log file, not to the screen."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(Path(builtin_corpus_path()).read_text()[:40_000])
    tlama = Path(sys.executable).with_name("tlama")
    flags = ["--trainer.accelerator", "cpu", "--trainer.devices", "2", "--trainer.strategy", "ddp",
             "--trainer.total_batch_size", "256", "--trainer.steps", "6", "--trainer.checkpoint_steps", "2",
             "--trainer.validation_steps", "100", "--trainer.verbose", "false",
             "--trainer.callbacks+=ddp_run.KillRank1", "--data.train_path", str(corpus), "--data.batch_size", "2",
             "--data.seq_length", "32", "--data.cache_dir", str(tmp_path / "cache"), "--model.config.d_model", "32",
             "--model.config.n_layers", "2", "--model.config.n_heads", "4", "--model.config.n_kv_heads", "2",
             "--model.config.max_seq_len", "32"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(Path(__file__).parent)}
    done = subprocess.run([str(tlama), "fit", *flags], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=env)
    assert done.returncode == 2, done.stderr[-3000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: the process at 127.0.0.1:") and "died" in last, done.stderr[-3000:]
    assert "resume from checkpoints/step=00000002.ckpt with ckpt_path='last'" in last  # relative to the run's cwd
    assert "Traceback" not in done.stderr and "gloo" not in done.stderr
    hidden = (tmp_path / "logs" / "traceback-rank0.txt").read_text()  # gloo's words vary with the moment it noticed
    assert hidden.startswith("Traceback") and re.search(r"Connection (reset|closed) by peer|remote worker", hidden)
