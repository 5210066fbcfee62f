"""TlamaLightningModule on a plain lightning.Trainer, with Lightning's own tools: `validate()` and `test()` with and
without a logger, `Tuner.lr_find`, weight averaging, and validation metrics under DDP (2 CPU processes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, StochasticWeightAveraging
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.tuner import Tuner
from trainer_utils import WindowLoader, tiny_model

from tlama_core.data import TlamaDataModule
from tlama_core.training import TlamaLightningModule, Trainer, get_lr_scheduler

DDP_SCRIPT = Path(__file__).with_name("plain_ddp_validate.py")


def plain_trainer(tmp_path, **kw) -> L.Trainer:
    defaults = dict(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path)
    return L.Trainer(**{**defaults, **kw})


@torch.no_grad()
def token_weighted_loss(model, loader) -> float:
    """The reference: every batch's mean loss weighted by its predicted tokens, by hand (the model left in the mode
    it was in)."""
    total, tokens = 0.0, 0
    for x, y in loader:
        total += float(model(x, targets=y)[1]) * y.numel()
        tokens += y.numel()
    return total / tokens


class RateRecorder(TlamaLightningModule):
    """Records the rate each optimizer step trained with (a module hook: Lightning's finder replaces the callbacks)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.rates: list[float] = []

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        super().on_train_batch_end(outputs, batch, batch_idx)
        self.rates.append(self.last_step.lr)


# ---- validate() and test() ----------------------------------------------------------------------------
@pytest.mark.parametrize("with_logger", [False, True])
def test_validate_and_test_return_the_token_weighted_loss_and_bits_per_char(tmp_path, data_text, with_logger):
    dm = TlamaDataModule(str(data_text), batch_size=4, seq_length=16, cache_dir=str(tmp_path / "cache"))
    module = TlamaLightningModule(model=tiny_model(vocab_size=dm.vocab_size))
    trainer = plain_trainer(tmp_path, logger=CSVLogger(tmp_path, name="run") if with_logger else False)
    loader = dm.val_dataloader()
    loss = token_weighted_loss(module.model, loader)
    bpc = loss * loader.num_tokens / loader.text_chars / math.log(2)
    (validated,) = trainer.validate(module, datamodule=dm, verbose=False)
    assert validated == pytest.approx({"val_loss": loss, "val_bpc": bpc}, rel=1e-5)
    (tested,) = trainer.test(module, dataloaders=loader, verbose=False)
    assert tested == pytest.approx({"test_loss": loss, "test_bpc": bpc}, rel=1e-5)
    (again,) = trainer.validate(module, datamodule=dm, verbose=False)  # each pass starts from nothing
    assert again == pytest.approx(validated, rel=1e-6)


def test_test_without_text_length_returns_the_loss_alone(tmp_path):
    module = TlamaLightningModule(model=tiny_model())
    loader = WindowLoader(12, 4, 16, seed=3)
    (tested,) = plain_trainer(tmp_path).test(module, dataloaders=loader, verbose=False)
    assert tested == pytest.approx({"test_loss": token_weighted_loss(module.model, loader)}, rel=1e-5)


# ---- Tuner.lr_find -------------------------------------------------------------------------------------
def test_lr_find_sets_the_rate_alone_and_its_suggestion_trains_the_next_fit(tmp_path):
    module = RateRecorder(model=tiny_model(), learning_rate=1e-3)
    loader = WindowLoader(16, 4, 16)  # 4 batches the model can learn
    start = token_weighted_loss(module.model, loader)
    trainer = plain_trainer(tmp_path, max_steps=4)
    finder = Tuner(trainer).lr_find(module, train_dataloaders=loader, min_lr=1e-4, max_lr=30, num_training=60)
    losses, rates = finder.results["loss"], finder.results["lr"]
    assert module.rates == pytest.approx(rates)  # every step at the finder's rate: the module's schedule stood aside
    # Lightning smooths the curve from 0 (its first points read low, Lightning issue #14167): the shape is read
    # past them. It falls below the untrained loss, then rises past it as the rate diverges.
    low = int(np.argmin(losses[10:])) + 10
    assert losses[10] > losses[low] < start < losses[-1] and low < len(losses) - 5
    suggestion = finder.suggestion()
    assert rates[0] < suggestion < rates[-1] and losses[rates.index(suggestion)] < start
    module.rates.clear()
    trainer.fit(module, loader)
    assert module.learning_rate == suggestion and module.rates == [suggestion] * 4


def test_lr_find_with_a_schedule_warns_and_the_schedule_keeps_every_step(tmp_path):
    schedule = get_lr_scheduler(1e-3, 1e-4, 1, 4)
    module = RateRecorder(model=tiny_model(), scheduler=schedule)
    trainer = plain_trainer(tmp_path, max_steps=4)
    with pytest.warns(UserWarning, match=r"learning_rate set to .* is not used.*max_lr is"):
        Tuner(trainer).lr_find(module, train_dataloaders=WindowLoader(16, 4, 16), num_training=20)
    module.rates.clear()
    trainer.fit(module, WindowLoader(16, 4, 16))
    assert module.rates == pytest.approx([schedule(s) for s in range(4)])  # the first step's too


# ---- weight averaging ----------------------------------------------------------------------------------
def test_stochastic_weight_averaging_is_refused_before_a_step_naming_the_per_step_callbacks(tmp_path):
    module = TlamaLightningModule(model=tiny_model())
    before = [p.detach().clone() for p in module.parameters()]
    trainer = plain_trainer(tmp_path, max_steps=4, callbacks=[StochasticWeightAveraging(swa_lrs=1e-3)])
    with pytest.raises(ValueError, match=r"StochasticWeightAveraging .*\.WeightAveraging .*EMAWeightAveraging"):
        trainer.fit(module, WindowLoader(16, 4, 16))
    assert trainer.global_step == 0 and all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_the_trainer_facade_refuses_stochastic_weight_averaging_at_construction(tmp_path):
    with pytest.raises(ValueError, match=r"^Trainer: StochasticWeightAveraging .*EMAWeightAveraging"):
        Trainer(tiny_model(), WindowLoader(16, 4, 16), callbacks=[StochasticWeightAveraging(swa_lrs=1e-3)],
                checkpoints_dir=str(tmp_path / "ckpt"), logs_dir=str(tmp_path / "logs"), verbose=False)


def test_ema_weight_averaging_validates_after_fit_as_at_the_end_of_fit(tmp_path):
    module = TlamaLightningModule(model=tiny_model(), learning_rate=1e-2)
    loader = WindowLoader(16, 4, 16)
    untrained = token_weighted_loss(module.model, loader)
    trainer = plain_trainer(tmp_path, max_steps=20, callbacks=[EMAWeightAveraging(decay=0.8)])
    trainer.fit(module, loader, loader)  # validates at every epoch's end (4 steps), the last at step 20
    at_end = module.last_val["val_loss"]
    (after,) = trainer.validate(module, loader, verbose=False)
    assert after["val_loss"] == pytest.approx(at_end, rel=1e-6) and at_end < untrained - 0.3


# ---- DDP ---------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_validation_under_ddp_is_reduced_once_without_lightnings_sync_dist_warning(tmp_path, data_text):
    dm = TlamaDataModule(str(data_text), batch_size=2, seq_length=16, cache_dir=str(tmp_path / "cache"))
    module = TlamaLightningModule(model=tiny_model(vocab_size=dm.vocab_size))  # as the script builds it
    loader = dm.val_dataloader()
    shares = [token_weighted_loss(module.model, loader.shard(rank, 2)) for rank in (0, 1)]
    loss = sum(shares) / 2  # each process reads as many windows of as many tokens
    expected = {"val_loss": loss, "val_bpc": loss * loader.num_tokens / loader.text_chars / math.log(2)}
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    done = subprocess.run([sys.executable, str(DDP_SCRIPT), str(tmp_path), str(data_text)], capture_output=True,
                          text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sync_dist" not in done.stderr + done.stdout
    for rank in (0, 1):
        seen = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert seen["validated"] == pytest.approx(expected, rel=1e-5)
        assert seen["callback_metrics"] == pytest.approx(expected, rel=1e-5)
