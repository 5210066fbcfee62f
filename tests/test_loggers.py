"""Lightning loggers: the facade's metrics row reaches each of them with the CSV log's values at the CSV log's steps,
and TlamaLightningModule logs through `self.log` on a plain lightning.Trainer. Values are read back with each
tool's own reader (TensorBoard's EventAccumulator, MLflow's client, CSVLogger's metrics.csv)."""

from __future__ import annotations

import csv
import math

import lightning as L
import pytest
import trainer_utils
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from trainer_utils import WindowLoader, tiny_model

from tlama_core.training import TlamaLightningModule, Trainer
from tlama_core.training.records.metrics import read_rows

LOGGED = ("train_loss", "learning_rate", "grad_norm", "tokens_per_sec", "tokens_per_sec_per_device", "val_loss")


def make_trainer(tmp_path, **kw) -> Trainer:
    return trainer_utils.make_trainer(tmp_path, loader=WindowLoader(80, 4, 16), log_steps=3, validation_steps=4,
                                      val_data_loader=WindowLoader(8, 4, 16, seed=1), **kw)


def csv_log_values(log_file) -> dict[str, dict[int, float]]:
    """{metric: {step: value}} of the run's own CSV log."""
    rows = read_rows(log_file)
    return {name: {int(r["step"]): float(r[name]) for r in rows if r[name]} for name in LOGGED}


def csv_logger_values(metrics_csv, names=LOGGED) -> dict[str, dict[int, float]]:
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    return {name: {int(r["step"]): float(r[name]) for r in rows if r.get(name)} for name in names}


def test_every_logger_gets_the_csv_logs_rows_at_the_same_steps_and_the_hyperparameters_once(tmp_path):
    mlflow = pytest.importorskip("mlflow")
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mine = CSVLogger(tmp_path / "mine", name="run")
    t = make_trainer(tmp_path, logger=["tensorboard", "mlflow", mine])
    t.train()  # 10 steps: rows at 3, 6, 9 (log_steps), 4, 8 (validation) and 10 (the end)
    expected = csv_log_values(t.log_file)
    assert sorted(expected["train_loss"]) == [3, 4, 6, 8, 9, 10] and sorted(expected["val_loss"]) == [4, 8, 10]

    events = EventAccumulator(str(tmp_path / "logs" / "tensorboard" / "version_0"))
    events.Reload()
    for name, values in expected.items():  # TensorBoard stores float32
        assert {e.step: e.value for e in events.Scalars(name)} == pytest.approx(values, rel=1e-6), name

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'logs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tlama").experiment_id])
    for name, values in expected.items():
        assert {m.step: m.value for m in client.get_metric_history(run.info.run_id, name)} == values, name
    params = run.data.params
    assert params["model/d_model"] == "32" and params["run/tokens_per_step"] == str(t.plan.tokens_per_step)
    assert params["run/grad_accum_steps"] == "2" and params["learning_rate"] == "0.0006"

    assert csv_logger_values(tmp_path / "mine" / "run" / "version_0" / "metrics.csv") == expected
    hparams = yaml.safe_load((tmp_path / "mine" / "run" / "version_0" / "hparams.yaml").read_text())
    assert hparams["run"]["max_steps"] == 10 and hparams["model"]["n_layers"] == 2


def test_the_csv_name_builds_lightnings_csv_logger_under_logs_dir(tmp_path):
    t = make_trainer(tmp_path, logger="csv", steps=4)
    t.train()
    assert csv_logger_values(tmp_path / "logs" / "csv" / "version_0" / "metrics.csv") == csv_log_values(t.log_file)


def test_without_a_logger_nothing_but_the_csv_log_is_written(tmp_path):
    t = make_trainer(tmp_path, steps=2)
    t.train()
    assert [p.name for p in (tmp_path / "logs").iterdir()] == ["train_log.csv"]


def test_a_logger_that_is_neither_a_name_nor_a_lightning_logger_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"logger='tensorbord' is neither a lightning Logger nor one of tensorboard"):
        make_trainer(tmp_path, logger="tensorbord")


def test_wandb_logs_offline_when_not_configured(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    t = make_trainer(tmp_path, logger="wandb", steps=2)
    t.train()
    assert list((tmp_path / "logs" / "wandb").glob("offline-run-*"))


class StepLosses(Callback):
    """Records each optimizer step's mean loss and learning rate, as the module computed them."""

    def __init__(self) -> None:
        self.losses, self.lrs = [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (batch_idx + 1) % trainer.accumulate_grad_batches == 0:
            self.losses.append(float(pl_module.last_step.loss))
            self.lrs.append(pl_module.last_step.lr)


def test_the_lightning_module_logs_through_self_log_on_a_plain_lightning_trainer(tmp_path):
    from tlama_core.training import get_lr_scheduler

    module = TlamaLightningModule(model=tiny_model(), scheduler=get_lr_scheduler(1e-3, 1e-4, 1, None))
    steps, best = StepLosses(), ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_loss", save_top_k=1)
    trainer = L.Trainer(max_steps=6, accumulate_grad_batches=2, val_check_interval=4, log_every_n_steps=1,
                        logger=CSVLogger(tmp_path, name="run"), callbacks=[steps, best, LearningRateMonitor()],
                        accelerator="cpu", devices=1, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, WindowLoader(64, 4, 16), WindowLoader(8, 4, 16, seed=1))
    logged = csv_logger_values(tmp_path / "run" / "version_0" / "metrics.csv",
                               ("train_loss", "learning_rate", "val_loss", "lr-AdamW/pg1"))
    # Lightning's x axis: the optimizer step's index (from 0); the schedule ends with the run (max_steps=None).
    assert logged["train_loss"] == pytest.approx(dict(enumerate(steps.losses)), rel=1e-6)
    assert logged["learning_rate"] == pytest.approx(dict(enumerate(steps.lrs)))
    assert steps.lrs[-1] == pytest.approx(1e-4 + (1e-3 - 1e-4) * 0.5 * (1 + math.cos(math.pi * 4 / 5)))
    assert logged["lr-AdamW/pg1"] == pytest.approx(dict(enumerate(steps.lrs)))
    assert sorted(logged["val_loss"]) == [1, 3, 5]
    assert best.best_model_score.item() == pytest.approx(min(logged["val_loss"].values()), rel=1e-6)


def test_early_stopping_stops_a_plain_lightning_run_on_the_modules_val_loss():
    module = TlamaLightningModule(model=tiny_model())
    trainer = L.Trainer(max_steps=6, accumulate_grad_batches=2, val_check_interval=4, logger=False,
                        callbacks=[EarlyStopping(monitor="val_loss", stopping_threshold=100.0)], accelerator="cpu",
                        devices=1, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, WindowLoader(64, 4, 16), WindowLoader(8, 4, 16, seed=1))
    assert trainer.global_step == 2  # the first validation's val_loss is under the threshold
