"""Lightning's own pieces through the facade: ModelCheckpoint, EarlyStopping, LearningRateMonitor, `precision`,
`trainer_kwargs`, `max_steps` and the schedule that follows the run."""

from __future__ import annotations

import csv
import warnings

import pytest
import trainer_utils
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor, ModelCheckpoint
from trainer_utils import WindowLoader

from tlama_core.training import Trainer, get_lr_scheduler
from tlama_core.training.files.checkpoint_io import find_last_checkpoint
from tlama_core.training.records.metrics import read_rows


def make_trainer(tmp_path, **kw) -> Trainer:
    return trainer_utils.make_trainer(tmp_path, **{"validation_steps": 2,
                                                   "val_data_loader": WindowLoader(8, 4, 16, seed=1), **kw})


def lightning_files(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("epoch="))


# ---- ModelCheckpoint, EarlyStopping, LearningRateMonitor --------------------------------------------------
def test_model_checkpoint_keeps_the_best_val_loss_files_beside_the_runs_own(tmp_path):
    best = ModelCheckpoint(monitor="val_loss", save_top_k=2)
    t = make_trainer(tmp_path, callbacks=[best])
    t.train()  # 8 steps, validated at 2, 4, 6, 8
    vals = {int(r["step"]): float(r["val_loss"]) for r in read_rows(t.log_file) if r["val_loss"]}
    kept = sorted(vals, key=vals.get)[:2]
    assert lightning_files(tmp_path) == sorted(f"epoch=0-step={s}.ckpt" for s in kept)
    assert best.best_model_score.item() == pytest.approx(min(vals.values()))
    assert find_last_checkpoint(tmp_path / "ckpt").name == "step=00000008.ckpt"  # "last" is still the run's


def test_model_checkpoint_every_n_train_steps_counts_optimizer_steps_and_a_resume_saves_nothing_twice(tmp_path):
    every = dict(every_n_train_steps=2, save_top_k=-1)
    make_trainer(tmp_path, callbacks=[ModelCheckpoint(**every)], checkpoint_steps=2, steps=4).train()
    assert lightning_files(tmp_path) == [f"epoch=0-step={s}.ckpt" for s in (2, 4)]
    t = make_trainer(tmp_path, callbacks=[ModelCheckpoint(**every)], checkpoint_steps=2, steps=6)
    t.train(ckpt_path="last")  # step 4
    # Lightning alone would save step 4 again (as step=4-v1) after the resumed run's first micro-batch.
    assert lightning_files(tmp_path) == [f"epoch=0-step={s}.ckpt" for s in (2, 4, 6)]


def test_early_stopping_stops_at_a_step_writes_its_checkpoint_and_returns(tmp_path):
    t = make_trainer(tmp_path, callbacks=[EarlyStopping(monitor="val_loss", stopping_threshold=100.0)])
    result = t.train()  # the first validation, at step 2, is under the threshold
    assert result["steps_completed"] == 2 and result["stopped_early"] and not result["interrupted"]
    assert find_last_checkpoint(tmp_path / "ckpt").name == "step=00000002.ckpt"
    assert [r["step"] for r in read_rows(t.log_file)] == ["1", "2"]


def test_learning_rate_monitor_logs_the_rate_of_each_step(tmp_path):
    t = make_trainer(tmp_path, callbacks=[LearningRateMonitor()], logger="csv", steps=4,
                     scheduler=get_lr_scheduler(1e-3, 1e-4, 1, None))
    t.train()
    with open(tmp_path / "logs" / "csv" / "version_0" / "metrics.csv", newline="") as f:
        monitored = {int(r["step"]): float(r["lr-AdamW/pg1"]) for r in csv.DictReader(f) if r["lr-AdamW/pg1"]}
    # Lightning's monitor labels a step by its index (from 0), the run's rows by steps completed (from 1).
    assert {s + 1: lr for s, lr in monitored.items()} == {int(r["step"]): float(r["learning_rate"])
                                                          for r in read_rows(t.log_file)}


def test_learning_rate_monitor_without_a_logger_is_an_error_at_construction(tmp_path):
    with pytest.raises(ValueError, match="LearningRateMonitor.*logger='tensorboard'"):
        make_trainer(tmp_path, callbacks=[LearningRateMonitor()])


# ---- precision ----------------------------------------------------------------------------------------------
def test_precision_replaces_the_mixed_precision_choice(tmp_path):
    t = make_trainer(tmp_path, precision="bf16", use_mixed_precision=False, steps=1)
    assert t.precision == t._trainer.precision == "bf16-mixed"  # Lightning's alias, read as Lightning reads it
    assert t.train()["steps_completed"] == 1


@pytest.mark.parametrize(("precision", "match"), [
    ("16-mixed", r"precision='16-mixed' cannot run on the cpu device: fp16 autocast runs on CUDA only"),
    ("transformer-engine", r"precision='transformer-engine' cannot run on the cpu device"),
    ("fp8", r"precision='fp8' is not a Lightning precision; use one of .*'bf16-mixed'"),
])
def test_a_precision_the_device_cannot_run_names_it_and_the_device(tmp_path, precision, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, precision=precision, accelerator="cpu")


# ---- trainer_kwargs -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("key", "parameter"), [
    ("accumulate_grad_batches", "total_batch_size"), ("max_steps", "max_steps"), ("max_epochs", "epochs"),
    ("val_check_interval", "validation_steps"), ("limit_train_batches", "steps"), ("logger", "logger"),
    ("precision", "precision"),
])
def test_trainer_kwargs_the_facade_owns_name_the_parameter_to_use(tmp_path, key, parameter):
    with pytest.raises(ValueError, match=rf"trainer_kwargs\['{key}'\] is set by the facade; use the Trainer "
                                         rf"parameter {parameter}"):
        make_trainer(tmp_path, trainer_kwargs={key: 1})


def test_trainer_kwargs_override_the_facades_lightning_defaults(tmp_path):
    from lightning.pytorch.profilers import SimpleProfiler

    t = make_trainer(tmp_path, trainer_kwargs={"num_sanity_val_steps": 1, "profiler": "simple"})
    assert t._trainer.num_sanity_val_steps == 1 and isinstance(t._trainer.profiler, SimpleProfiler)


# ---- max_steps and the schedule ---------------------------------------------------------------------------------
def test_max_steps_is_the_whole_run_across_epochs(tmp_path):
    t = make_trainer(tmp_path, steps=3, epochs=1, max_steps=7, validation_steps=100)
    result = t.train()
    assert result["steps_completed"] == 7 and result["epochs_completed"] == 3
    assert [int(r["step"]) for r in read_rows(t.log_file)] == list(range(1, 8))


def test_a_schedule_without_max_steps_decays_over_the_run(tmp_path):
    t = make_trainer(tmp_path, steps=5, scheduler=get_lr_scheduler(1e-3, 1e-4, 1, None), validation_steps=100)
    t.train()
    reference = get_lr_scheduler(1e-3, 1e-4, 1, 5)
    assert [float(r["learning_rate"]) for r in read_rows(t.log_file)] == [reference(s) for s in range(5)]


@pytest.mark.parametrize(("schedule_end", "word"), [(3, "before"), (50, "after")])
def test_a_schedule_that_ends_before_or_after_the_run_warns_naming_both(tmp_path, schedule_end, word):
    with pytest.warns(UserWarning, match=rf"ends at step {schedule_end} \(max_steps\), {word} the run's last "
                                         r"step 8"):
        make_trainer(tmp_path, scheduler=get_lr_scheduler(1e-3, 1e-4, 1, schedule_end))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make_trainer(tmp_path, scheduler=get_lr_scheduler(1e-3, 1e-4, 1, 8))


def test_a_run_shorter_than_the_warmup_of_a_run_length_schedule_warns_and_trains_in_warmup(tmp_path):
    with pytest.warns(UserWarning, match=r"warmup_steps=5 is not shorter than the run's 2 steps"):
        t = make_trainer(tmp_path, steps=2, validation_steps=100, scheduler=get_lr_scheduler(1e-3, 1e-4, 5, None))
    t.train()
    assert [float(r["learning_rate"]) for r in read_rows(t.log_file)] == [1e-3 * 1 / 5, 1e-3 * 2 / 5]
