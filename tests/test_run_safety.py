"""A run on a hostile machine (issue 20): non-finite settings and weights, a full disk, unusable directories, logs
of runs started within a second, negative token ids, and the lock that gives a running run its directories."""

from __future__ import annotations

import errno
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from kill_run import build_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from test_interruption import wait_for
from trainer_utils import ResumableLoader, tiny_model

import tlama_core.atomic
import tlama_core.locks
from tlama_core.checkpoints import read_checkpoint
from tlama_core.data import create_dataloader
from tlama_core.data.workers import IgnoreStopSignals
from tlama_core.locks import LOCK_NAME, RunLock, RunLockError
from tlama_core.training import TlamaLightningModule, Trainer, get_lr_scheduler
from tlama_core.training.files.checkpoint_io import find_last_checkpoint
from tlama_core.training.records.metrics import CsvLog, read_rows


def make(root: Path, **kw) -> Trainer:
    """Six steps, a checkpoint and a CSV row every step."""
    defaults = dict(val_data_loader=ResumableLoader(8, 4, 16, seed=1), total_batch_size=128, steps=6, log_steps=1,
                    validation_steps=3, checkpoint_steps=1, verbose=False, scheduler=get_lr_scheduler(3e-3, 3e-4, 2, 6),
                    checkpoints_dir=str(root / "ckpt"), logs_dir=str(root / "logs"))
    return Trainer(tiny_model(dropout=0.1), ResumableLoader(64, 4, 16), **{**defaults, **kw})


def log_losses(root: Path) -> list[tuple[str, str, str]]:
    return [(r["step"], r["train_loss"], r["val_loss"]) for r in read_rows(root / "logs" / "train_log.csv")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> list[tuple[str, str, str]]:
    root = tmp_path_factory.mktemp("reference")
    make(root).train()
    return log_losses(root)


# ---- non-finite settings and weights --------------------------------------------------------------------
@pytest.mark.parametrize("name, value", [("weight_decay", math.nan), ("gradient_clip_val", math.nan),
                                         ("learning_rate", math.inf), ("learning_rate", -math.inf),
                                         ("weight_decay", math.inf)])
def test_non_finite_settings_fail_at_construction_naming_the_parameter(tmp_path, name, value):
    with pytest.raises(ValueError, match=rf"^Trainer: {name}={value!r} must be a finite number"):
        make(tmp_path, **{name: value})


@pytest.mark.parametrize("name", ["learning_rate", "weight_decay"])
def test_lightning_module_rejects_non_finite_settings_naming_the_parameter(name):
    with pytest.raises(ValueError, match=rf"^TlamaLightningModule: {name}=nan must be a finite number"):
        TlamaLightningModule(model=tiny_model(), **{name: math.nan})


class PoisonAfterStep:
    """Fills one weight with `value` at the end of optimizer step `step`: the step's loss is still finite."""

    def __init__(self, step: int, value: float = math.nan) -> None:
        self.step, self.value = step, value

    def on_step_end(self, trainer, metrics) -> None:
        if trainer.current_step == self.step:
            with torch.no_grad():
                trainer.model.layers[0].attention.wq.weight[0, 0] = self.value


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_never_checkpointed_and_last_stays_the_good_one(tmp_path, reference, value):
    with pytest.raises(FloatingPointError, match=r"non-finite values \(nan/inf\) at step 3.*step=00000002\.ckpt"):
        make(tmp_path, callbacks=[PoisonAfterStep(3, value)]).train()
    ckpt = tmp_path / "ckpt"
    assert sorted(p.name for p in ckpt.iterdir()) == ["step=00000001.ckpt", "step=00000002.ckpt"]
    assert find_last_checkpoint(ckpt).name == "step=00000002.ckpt"
    assert all(torch.isfinite(t).all() for t in read_checkpoint(ckpt / "step=00000002.ckpt")["state_dict"]
               .values() if t.is_floating_point())
    make(tmp_path).train(ckpt_path="last")  # the good checkpoint resumes the run exactly
    assert log_losses(tmp_path) == reference


def test_a_model_checkpoint_of_the_users_never_holds_non_finite_weights(tmp_path):
    """ModelCheckpoint saves every step, the run's own cadence never (checkpoint_steps=100): the check is the
    module's own on every save."""
    every = ModelCheckpoint(dirpath=tmp_path / "user", every_n_train_steps=1, save_top_k=-1, save_last=True)
    with pytest.raises(FloatingPointError, match=r"non-finite values \(nan/inf\) at step 3.*written before are "):
        make(tmp_path, checkpoint_steps=100, validation_steps=100,
             callbacks=[PoisonAfterStep(3), every]).train()
    saved = sorted(p.name for p in (tmp_path / "user").iterdir())
    assert saved == ["epoch=0-step=1.ckpt", "epoch=0-step=2.ckpt", "last.ckpt"]
    last = read_checkpoint(tmp_path / "user" / "last.ckpt")
    assert last["step"] == 2
    assert all(torch.isfinite(t).all() for t in last["state_dict"].values() if t.is_floating_point())


def test_weights_are_checked_once_a_step_however_many_checkpoints_it_saves(tmp_path, monkeypatch):
    """The step file, best.ckpt and a ModelCheckpoint's two files (its own and last.ckpt) share one check; at
    the 2 validated steps ModelCheckpoint saves before the validation and the run's own files after it (the
    step's hooks run in between and may change the weights), so those steps are checked twice."""
    from tlama_core.training.files import finite

    checked, check = [], finite.weights_finite
    monkeypatch.setattr(finite, "weights_finite", lambda params: checked.append(1) or check(params))
    every = ModelCheckpoint(dirpath=tmp_path / "user", every_n_train_steps=1, save_top_k=-1, save_last=True)
    make(tmp_path, callbacks=[every]).train()
    assert len(checked) == 6 + 2  # of 6 + 6 + 6 + 2 saves


def test_save_checkpoint_outside_training_refuses_non_finite_weights(tmp_path):
    t = make(tmp_path)
    with torch.no_grad():
        t.model.output.weight[1, 1] = math.inf
    with pytest.raises(FloatingPointError, match="model-step=00000000.ckpt was not written"):
        t._save_checkpoint()
    assert not (tmp_path / "ckpt").exists()


# ---- a full disk ------------------------------------------------------------------------------------------
def fill_disk_at(monkeypatch, name: str, how: str) -> None:
    """Writing checkpoint `name` finds the disk full: torch.save's C++ writer fails half-way with its bare
    message (the directory has 4 KiB left), or the fsync of a file system that allocates late raises ENOSPC."""
    if how == "torch.save":
        save = torch.save

        def full_save(obj, f, *args, **kwargs):
            if Path(f).name != name + ".tmp":
                return save(obj, f, *args, **kwargs)
            Path(f).write_bytes(b"PK\x03\x04" + bytes(4096))
            monkeypatch.setattr(tlama_core.atomic, "_free_bytes", lambda directory: 4096)
            raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 4160 vs 4096")

        monkeypatch.setattr(torch, "save", full_save)
    else:
        fsync = tlama_core.atomic.fsync_file

        def full_fsync(path):
            if Path(path).name == name + ".tmp":
                raise OSError(errno.ENOSPC, "No space left on device")
            fsync(path)

        monkeypatch.setattr(tlama_core.atomic, "fsync_file", full_fsync)


@pytest.mark.parametrize("how", ["torch.save", "fsync"])
def test_disk_full_while_saving_names_the_disk_the_file_and_the_directory_and_stays_resumable(
        tmp_path, monkeypatch, reference, how):
    fill_disk_at(monkeypatch, "step=00000003.ckpt", how)
    with pytest.raises(OSError, match="disk full") as error:
        make(tmp_path).train()
    ckpt = tmp_path / "ckpt"
    assert error.value.errno == errno.ENOSPC
    assert error.value.filename == str(ckpt / "step=00000003.ckpt")
    message = str(error.value)
    assert f"in {ckpt}/" in message and "step=00000002.ckpt" in message  # what ckpt_path='last' resumes
    assert not list(ckpt.glob("*.tmp"))
    assert find_last_checkpoint(ckpt).name == "step=00000002.ckpt"
    assert not (ckpt / LOCK_NAME).exists() and not (tmp_path / "logs" / LOCK_NAME).exists()
    monkeypatch.undo()  # space freed
    make(tmp_path).train(ckpt_path="last")
    assert log_losses(tmp_path) == reference


def test_a_library_write_error_on_a_disk_with_room_is_not_called_disk_full(tmp_path, monkeypatch):
    def broken_save(obj, f, *args, **kwargs):
        raise RuntimeError("some other failure")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(RuntimeError, match="^some other failure$"):
        make(tmp_path).train()


# ---- directories ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["checkpoints_dir", "logs_dir"])
def test_a_file_valued_directory_fails_at_construction(tmp_path, name):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(ValueError, match=rf"^Trainer: {name}='.*file' is a file"):
        make(tmp_path, **{name: str(tmp_path / "file")})
    with pytest.raises(ValueError, match=rf"^Trainer: {name}='.*file/sub' is under '.*file', which is a file"):
        make(tmp_path, **{name: str(tmp_path / "file" / "sub")})


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
@pytest.mark.parametrize("name", ["checkpoints_dir", "logs_dir"])
def test_an_unwritable_directory_fails_at_construction(tmp_path, name):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(ValueError, match=rf"^Trainer: {name}='.*locked' is not writable"):
        make(tmp_path, **{name: str(locked)})
    with pytest.raises(ValueError, match=rf"^Trainer: {name}='.*locked/run' cannot be created"):
        make(tmp_path, **{name: str(locked / "run")})


def test_building_a_trainer_creates_no_directory(tmp_path):
    make(tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_fresh_runs_within_one_second_each_keep_their_log(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.25)
    path = tmp_path / "train_log.csv"
    for run in range(4):
        log = CsvLog(path)
        log.open()
        log.write({"epoch": 0, "step": 1, "train_loss": float(run)})
        log.close()
    kept = sorted(tmp_path.iterdir())
    assert [p.name for p in kept] == ["train_log-1700000000-2.csv", "train_log-1700000000-3.csv",
                                      "train_log-1700000000.csv", "train_log.csv"]
    assert sorted(read_rows(p)[0]["train_loss"] for p in kept) == ["0.0", "1.0", "2.0", "3.0"]


# ---- negative token ids -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", ["int32", "int64", "int16"])
def test_negative_token_ids_fail_at_their_batch_naming_the_file(tmp_path, dtype):
    ids = np.arange(4096, dtype=dtype) % 100
    ids[3000] = -7
    np.save(tmp_path / "ids.npy", ids)
    loader = create_dataloader(tmp_path / "ids.npy", None, batch_size=4, seq_length=32, shuffle=False)
    batches = iter(loader)
    for _ in range(3000 // (4 * 32)):  # the batches before the bad id are fine
        next(batches)
    with pytest.raises(ValueError, match=r"ids\.npy.*token id -7 is negative"):
        next(batches)


def test_unsigned_ids_skip_the_smallest_id_check(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(4096, dtype="uint16") % 100)
    assert not create_dataloader(tmp_path / "ids.npy", None, 4, 32).dataset.tokens.signed
    np.save(tmp_path / "ids.npy", np.arange(4096, dtype="int32") % 100)
    assert create_dataloader(tmp_path / "ids.npy", None, 4, 32).dataset.tokens.signed


# ---- the run's lock on its directories ------------------------------------------------------------------
@pytest.mark.slow
def test_a_second_run_in_a_running_runs_directory_is_an_error_naming_the_owner(tmp_path):
    """Two real processes: a run in a subprocess, a second one in this process, in the same directories."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), *sys.path])}
    first = subprocess.Popen([sys.executable, str(Path(__file__).with_name("kill_run.py")), str(tmp_path), "--steps",
                              "12", "--step_sleep", "0.4"], stdout=subprocess.PIPE, text=True, env=env)
    assert first.stdout.readline().strip() == "training"
    lock = tmp_path / "ckpt" / LOCK_NAME
    assert wait_for(lock.exists, poll=0.01)
    with pytest.raises(RunLockError, match=rf"in use by another run \(pid {first.pid} on host "
                                           rf"{socket.gethostname()}, lock file {lock}\)"):
        build_trainer(tmp_path, 12).train()
    with pytest.raises(RunLockError, match=f"pid {first.pid}"):  # a run sharing only the logs directory too
        Trainer(tiny_model(), ResumableLoader(40, 4, 16), total_batch_size=128, verbose=False,
                checkpoints_dir=str(tmp_path / "other"), logs_dir=str(tmp_path / "logs")).train()
    assert not (tmp_path / "other" / LOCK_NAME).exists()  # a refused run keeps none of its locks
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    assert "\"steps_completed\": 12" in out
    steps = [int(r["step"]) for r in read_rows(tmp_path / "logs" / "train_log.csv")]
    assert steps == list(range(1, 13))  # the first run's log: every step once, in order, never moved aside
    assert not lock.exists() and not (tmp_path / "logs" / LOCK_NAME).exists()
    assert not list(tmp_path.glob("*/superseded-*")) and not list(tmp_path.glob("logs/train_log-*"))


def test_log_metrics_outside_training_never_appends_to_a_running_runs_log(tmp_path):
    """A lock of another host stands for a run alive elsewhere; the log written before it stays as it was."""
    t = make(tmp_path)
    t._log_metrics({"val_loss": 4.5})
    before = (tmp_path / "logs" / "train_log.csv").read_bytes()
    (tmp_path / "logs" / LOCK_NAME).write_text('{"pid": 1, "host": "node-17"}')
    with pytest.raises(RunLockError, match="pid 1 on host node-17"):
        t._log_metrics({"val_loss": 3.5})
    assert (tmp_path / "logs" / "train_log.csv").read_bytes() == before
    (tmp_path / "logs" / LOCK_NAME).unlink()
    t._log_metrics({"val_loss": 3.5})
    assert [r["val_loss"] for r in read_rows(tmp_path / "logs" / "train_log.csv")] == ["4.5", "3.5"]
    assert not (tmp_path / "logs" / LOCK_NAME).exists()


class LogAtTrainEnd:
    def on_train_end(self, trainer) -> None:  # train() still holds the lock, past its final step
        trainer._log_metrics({"val_loss": 1.25})


def test_log_metrics_from_a_hook_of_the_running_train_writes_under_its_lock(tmp_path):
    make(tmp_path, callbacks=[LogAtTrainEnd()]).train()
    assert read_rows(tmp_path / "logs" / "train_log.csv")[-1]["val_loss"] == "1.25"
    assert not (tmp_path / "logs" / LOCK_NAME).exists()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.parametrize("holder", ["dead", "this process, not holding it"])
def test_a_stale_lock_of_this_host_is_taken_over_with_a_warning(tmp_path, reference, holder):
    pid = dead_pid() if holder == "dead" else os.getpid()
    for directory in ("ckpt", "logs"):
        (tmp_path / directory).mkdir()
        (tmp_path / directory / LOCK_NAME).write_text(f'{{"pid": {pid}, "host": "{socket.gethostname()}"}}')
    with pytest.warns(UserWarning, match=rf"taking over the lock of a run that is no longer running \(pid {pid}"):
        make(tmp_path).train()
    assert log_losses(tmp_path) == reference
    assert not (tmp_path / "ckpt" / LOCK_NAME).exists() and not (tmp_path / "logs" / LOCK_NAME).exists()


def test_a_lock_whose_pid_now_belongs_to_a_younger_process_is_stale(tmp_path):
    (tmp_path / LOCK_NAME).write_text(f'{{"pid": {os.getppid()}, "host": "{socket.gethostname()}", "start": "1"}}')
    with pytest.warns(UserWarning, match="taking over"):
        RunLock(tmp_path).acquire().release()


def test_a_lock_of_another_host_is_never_taken_over(tmp_path):
    (tmp_path / LOCK_NAME).write_text('{"pid": 1, "host": "node-17"}')
    with pytest.raises(RunLockError, match=r"pid 1 on host node-17.*delete the lock file"):
        RunLock(tmp_path).acquire()
    assert (tmp_path / LOCK_NAME).read_text() == '{"pid": 1, "host": "node-17"}'


def test_a_refused_lock_keeps_none_of_the_others(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / LOCK_NAME).write_text('{"pid": 1, "host": "node-17"}')
    with pytest.raises(RunLockError):
        RunLock(tmp_path / "a", tmp_path / "b").acquire()
    assert not (tmp_path / "a" / LOCK_NAME).exists()


def test_a_full_disk_when_taking_the_run_lock_names_it_and_leaves_no_empty_lock(tmp_path, monkeypatch):
    def full(directory):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tlama_core.locks, "fsync_dir", full)
    with pytest.raises(tlama_core.atomic.DiskFullError, match=rf"disk full .* writing {LOCK_NAME} in {tmp_path}/"):
        RunLock(tmp_path).acquire()
    assert list(tmp_path.iterdir()) == []


# ---- loader workers and stop signals ------------------------------------------------------------------------
class SignalDispositions(torch.utils.data.Dataset):
    """Each item says, from inside the worker that reads it: SIGTERM ignored, SIGINT ignored, own init ran."""

    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.tensor([signal.getsignal(signal.SIGTERM) == signal.SIG_IGN,
                             signal.getsignal(signal.SIGINT) == signal.SIG_IGN, os.environ.get("OWN_INIT") == "1"])


def own_init(worker_id: int) -> None:
    os.environ["OWN_INIT"] = "1"


def test_workers_of_a_users_loader_ignore_stop_signals_and_still_run_its_own_init(tmp_path):
    def loader() -> torch.utils.data.DataLoader:
        return torch.utils.data.DataLoader(SignalDispositions(), batch_size=2, num_workers=2, worker_init_fn=own_init)

    plain = loader()
    assert torch.cat(list(plain)).tolist() == [[False, False, True]] * 8  # torch's workers: killed by either
    shielded = loader()
    Trainer(tiny_model(), ResumableLoader(64, 4, 16), val_data_loader=shielded, total_batch_size=128,
            verbose=False, checkpoints_dir=str(tmp_path / "ckpt"), logs_dir=str(tmp_path / "logs"))
    assert torch.cat(list(shielded)).tolist() == [[True, True, True]] * 8
    assert signal.getsignal(signal.SIGTERM) != signal.SIG_IGN  # the training process still handles them


def test_the_librarys_loaders_shield_their_workers_without_a_trainer(tmp_path):
    """TlamaDataModule on a plain lightning.Trainer too (the group SIGTERM test runs them end to end)."""
    np.save(tmp_path / "ids.npy", np.arange(4096, dtype="uint16") % 100)
    loader = create_dataloader(tmp_path / "ids.npy", None, 4, 32, num_workers=2)
    assert isinstance(loader.worker_init_fn, IgnoreStopSignals) and loader.worker_init_fn.inner is None
