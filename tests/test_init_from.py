"""Continued pretraining: a run that starts from existing weights (`init_from`), at step 0 with a fresh optimizer."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import pytest
import torch
import yaml
from trainer_utils import tiny_model

from tlama_core.cli import main
from tlama_core.cli.fit import TlamaCLI
from tlama_core.models import load_model, save_safetensors, to_hf
from tlama_core.models.loading import weight_fields
from tlama_core.training import TlamaLightningModule

TINY = ["--model.config.d_model", "32", "--model.config.n_layers", "2", "--model.config.n_heads", "4",
        "--model.config.n_kv_heads", "2", "--model.config.max_seq_len", "64", "--model.scheduler.warmup_steps", "1",
        "--model.scheduler.max_steps", "4", "--data.batch_size", "4", "--data.seq_length", "32",
        "--trainer.total_batch_size", "256", "--trainer.steps", "3", "--trainer.epochs", "1",
        "--trainer.validation_steps", "3", "--trainer.validation_batches", "1", "--trainer.checkpoint_steps", "3",
        "--trainer.log_steps", "1", "--trainer.verbose", "false"]
RUN = TINY[TINY.index("--model.scheduler.warmup_steps"):]  # everything but the model's shape


def same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("kind", ["safetensors", "hugging face"])
def test_module_takes_the_weights_and_their_config(tmp_path, kind):
    model = tiny_model(seed=3)
    (save_safetensors if kind == "safetensors" else to_hf)(model, tmp_path)
    module = TlamaLightningModule(init_from=str(tmp_path))
    assert weight_fields(module.config) == weight_fields(model.config)
    assert same_weights(module.model, model) and module.model.training
    given = dataclasses.replace(model.config, dropout=0.1, max_seq_len=64)  # run settings may differ
    module = TlamaLightningModule(given, init_from=str(tmp_path))
    assert module.config == given and same_weights(module.model, model)
    with pytest.raises(ValueError, match=r"n_layers: weights 2, given 3.*leave the config out"):
        TlamaLightningModule(tiny_model(n_layers=3).config, init_from=str(tmp_path))
    with pytest.raises(ValueError, match="either `init_from`"):
        TlamaLightningModule(init_from=str(tmp_path), model=model)


def log_steps(logs: Path) -> list[int]:
    with open(logs / "train_log.csv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f)]


def test_fit_init_from_starts_a_new_run_from_the_weights(tmp_path, capsys):
    first = tmp_path / "first"
    main(["fit", *TINY, "--trainer.checkpoints_dir", str(first / "ckpt"), "--trainer.logs_dir", str(first / "logs")])
    weights = first / "ckpt" / "step=00000003.ckpt"
    second = tmp_path / "second"
    args = ["--model.init_from", str(first / "ckpt"), *RUN, "--trainer.checkpoints_dir", str(second / "ckpt"),
            "--trainer.logs_dir", str(second / "logs")]

    cli = TlamaCLI(args)  # no model.config flags: the shape comes from the weights
    assert same_weights(cli.model.model, load_model(weights))
    assert not cli.model.optimizer.state and cli.trainer.current_step == 0  # a fresh optimizer, at step 0
    cli.run()
    assert log_steps(second / "logs") == [1, 2, 3]  # a new run, counted from 0
    saved = yaml.safe_load((second / "ckpt" / "config.yaml").read_text())
    assert saved["model"]["init_from"] == str(first / "ckpt") and saved["model"]["config"]["d_model"] == 32

    with pytest.raises(SystemExit) as exit_:
        TlamaCLI([*args, "--model.config.n_layers", "3"])
    assert exit_.value.code == 2
    assert "n_layers: weights 2, given 3" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        TlamaCLI(["--model.init_from", str(tmp_path / "nothing"), *RUN])
    assert exit_.value.code == 2
    assert 'Parser key "model.init_from"' in capsys.readouterr().err
