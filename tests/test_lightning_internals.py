"""The private Lightning names in tlama_core/training/lightning_internals.py still exist and mean what the facade
assumes (pyproject bounds `lightning` to the minor versions these pass on). Their effects are tested where they
matter: resume (test_resume.py), signals (test_interruption.py), ModelCheckpoint on resume
(test_lightning_callbacks.py), train_step (test_trainer.py)."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from trainer_utils import WindowLoader, tiny_model

from tlama_core.training import TlamaLightningModule, lightning_internals


def plain_trainer(**kw) -> L.Trainer:
    return L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, **kw)


def test_precision_names_are_what_lightning_accepts():
    names = lightning_internals.precision_names()
    assert {"32-true", "bf16-mixed", "16-mixed", "64-true", "bf16", "16"} <= set(names)
    for name in names:
        assert lightning_internals.canonical_precision(name) in names
    assert lightning_internals.canonical_precision("bf16") == "bf16-mixed"


def test_model_checkpoint_keeps_its_last_saved_step_where_the_facade_sets_it():
    callback = ModelCheckpoint(every_n_train_steps=1)
    trainer = plain_trainer(callbacks=[callback], max_steps=2)
    trainer.fit(TlamaLightningModule(model=tiny_model()), WindowLoader(16, 4, 16))
    assert callback._last_global_step_saved == trainer.global_step == 2  # Lightning's own bookkeeping
    callback._last_global_step_saved = -1
    lightning_internals.mark_resume_step_saved(trainer)
    assert callback._last_global_step_saved == 2


def test_the_signal_flag_and_the_step_budget_are_where_the_facade_writes_them():
    trainer = plain_trainer(max_steps=1, enable_checkpointing=False)
    module = TlamaLightningModule(model=tiny_model())
    trainer.fit(module, WindowLoader(16, 4, 16))
    trainer._signal_connector.received_sigterm = True
    lightning_internals.clear_sigterm_flag(trainer)
    assert trainer.received_sigterm is False  # Lightning's public view of the same flag
    lightning_internals.allow_one_more_step(trainer)
    trainer.fit(module, WindowLoader(16, 4, 16))
    assert trainer.global_step == 2


def test_checkpoint_loop_state_has_the_keys_restore_epoch_position_reads(tmp_path):
    trainer = plain_trainer(max_steps=2, enable_checkpointing=False)
    trainer.fit(TlamaLightningModule(model=tiny_model()), WindowLoader(8, 4, 16))  # 2 batches: one whole epoch
    trainer.save_checkpoint(tmp_path / "a.ckpt")
    checkpoint = torch.load(tmp_path / "a.ckpt", weights_only=False)
    progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"]
    assert {"current", "total", "is_last_batch"} <= set(progress) and progress["is_last_batch"]
    epochs = checkpoint["loops"]["fit_loop"]["epoch_progress"]["total"]
    assert {"ready", "started", "processed", "completed"} <= set(epochs)
    lightning_internals.restore_epoch_position(checkpoint, epoch_batches=4)  # this run's epoch is longer
    assert progress["is_last_batch"] is False
