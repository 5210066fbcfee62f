"""`tlama fit`: a YAML run is the facade run, writes its config, resumes, and reports bad keys like jsonargparse."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
from pathlib import Path

import docstring_parser
import lightning as L
import pytest
import torch
import yaml

from tlama_core.cli import main
from tlama_core.cli.fit import BUILTIN_RUN, PYTHON_ONLY, RunSettings
from tlama_core.data import TlamaDataModule
from tlama_core.models import TlamaConfig
from tlama_core.training import TlamaLightningModule, Trainer, get_lr_scheduler
from tlama_core.training.records.metrics import read_rows

REPO = Path(__file__).resolve().parents[1]

# A run of a few seconds: a 2-layer, 32-wide model, 4 x 32-token micro-batches, 2 accumulated per step.
TINY_RUN = {
    "trainer": {"total_batch_size": 256, "steps": 4, "epochs": 1, "validation_steps": 2, "validation_batches": 2,
                "checkpoint_steps": 2, "log_steps": 1, "seed": 7, "verbose": False},
    "model": {"config": {"vocab_size": 1024, "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
                         "max_seq_len": 32, "multiple_of": 32, "zero_init_residual": True},
              "learning_rate": 1e-3, "weight_decay": 0.05, "muon": True,
              "scheduler": {"max_lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 1, "max_steps": 4}},
    "data": {"batch_size": 4, "seq_length": 32},
}


def write_yaml(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def losses(log: str | Path) -> list[tuple[str, ...]]:
    return [(r["step"], r["train_loss"], r["learning_rate"], r["grad_norm"], r["val_loss"]) for r in read_rows(log)]


def test_the_readme_parameter_table_is_the_trainer_signature_with_its_defaults():
    text = (REPO / "README.md").read_text()
    table = text[text.index("### Parameters"):].split("\n\n")[1]
    rows = [re.match(r"^\| `(\w+)` \| (.+?) \|", line).groups() for line in table.splitlines()[2:]]
    parameters = [p for name, p in inspect.signature(Trainer.__init__).parameters.items() if name != "self"]
    assert [name for name, _ in rows] == [p.name for p in parameters]
    for (name, default), p in zip(rows, parameters, strict=True):
        expected = "—" if p.default is inspect.Parameter.empty else p.default
        assert (default if default == "—" else ast.literal_eval(default.strip("`"))) == expected, name


def test_fit_help_shows_every_run_setting_with_the_trainer_docs_and_default(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = capsys.readouterr().out
    docs = {p.arg_name: " ".join(p.description.split()) for p in docstring_parser.parse(Trainer.__doc__).params}
    settings = [f.name for f in dataclasses.fields(RunSettings)]
    assert set(settings) == set(inspect.signature(Trainer.__init__).parameters) - set(PYTHON_ONLY)
    for name in settings:
        option = " ".join(help_text[help_text.index(f"\n  --trainer.{name} "):].split())  # its entry in the options
        default = BUILTIN_RUN.get(f"trainer.{name}", inspect.signature(Trainer.__init__).parameters[name].default)
        assert docs[name][:40] in option, name
        shown = re.split(r"[,)]", option.split("(type: ", 1)[1].split("default: ", 1)[1])[0]
        assert shown == ("null" if default is None else str(default)), name


def test_print_config_without_a_config_is_the_shakespeare_cpu_run(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--print_config"])
    assert exit_.value.code == 0
    default = capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(REPO / "configs/shakespeare-cpu.yaml"), "--print_config"])
    assert capsys.readouterr().out == default, (
        "configs/shakespeare-cpu.yaml and tlama_core.cli.fit.BUILTIN_RUN differ: `tlama fit` without a config "
        "must train what the YAML says; change both together.")
    config = yaml.safe_load(default)
    assert set(config) == {"trainer", "model", "data", "ckpt_path"}
    assert set(config["trainer"]) == {f.name for f in dataclasses.fields(RunSettings)}
    assert set(config["model"]["config"]) == {f.name for f in dataclasses.fields(TlamaConfig)}
    data = config["data"]["init_args"]
    assert config["data"]["class_path"] == "tlama_core.data.TlamaDataModule"
    assert data["train_path"] is None and data["tokenizer_path"] is None  # built-in corpus


def test_print_config_comments_documents_every_key(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--print_config=comments"])
    lines = capsys.readouterr().out.splitlines()
    undocumented = []
    for i, line in enumerate(lines):
        if not line.strip() or line.lstrip().startswith(("#", "class_path:")):  # a class_path: its section's comment
            continue
        above = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        if not above.startswith("# ") or above.startswith("#  ("):  # "#  (type: ...)": no description
            undocumented.append(line.strip())
    assert not undocumented, f"keys without a description: {undocumented}"
    assert "# Width of the residual stream. (type: int, default: 4096)" in "\n".join(lines)


def test_fit_writes_the_log_the_checkpoints_and_a_config_that_round_trips(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN))])
    assert [r[0] for r in losses("logs/train_log.csv")] == ["1", "2", "3", "4"]
    names = sorted(p.name for p in Path("checkpoints").iterdir())
    assert [n for n in names if not n.startswith("tokenizer-")] == [
        "best.ckpt", "config.yaml", "step=00000002.ckpt", "step=00000004.ckpt"]
    assert len([n for n in names if n.startswith("tokenizer-")]) == 1  # the run's tokenizer, see test_run_tokenizer
    saved = yaml.safe_load(Path("checkpoints/config.yaml").read_text())
    assert saved["trainer"]["steps"] == 4 and saved["model"]["config"]["d_model"] == 32
    assert saved["ckpt_path"] is None
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["fit", "--config", "checkpoints/config.yaml", "--print_config"])
    assert capsys.readouterr().out == Path("checkpoints/config.yaml").read_text()


def test_yaml_run_and_hand_built_facade_run_reach_the_same_losses(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN)),
          "--trainer.checkpoints_dir", "cli/checkpoints", "--trainer.logs_dir", "cli/logs"])

    run, model = TINY_RUN["trainer"], TINY_RUN["model"]
    torch.manual_seed(run["seed"])
    module = TlamaLightningModule(TlamaConfig(**model["config"]), learning_rate=model["learning_rate"],
                                  weight_decay=model["weight_decay"], scheduler=get_lr_scheduler(**model["scheduler"]),
                                  muon=model["muon"])
    data = TlamaDataModule(**TINY_RUN["data"])
    Trainer(model=module, train_data_loader=data.train_dataloader(), val_data_loader=data.val_dataloader(),
            checkpoints_dir="py/checkpoints", logs_dir="py/logs", **run).train()

    assert losses("cli/logs/train_log.csv") == losses("py/logs/train_log.csv")
    assert len(losses("py/logs/train_log.csv")) == 4


def test_ckpt_path_last_resumes_after_the_newest_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = str(write_yaml(tmp_path / "run.yaml", TINY_RUN))
    main(["fit", "--config", config])
    uninterrupted = losses("logs/train_log.csv")
    # As if the run had been killed before saving step 4; the resumed run drops the log rows after step 2 itself.
    Path("checkpoints/step=00000004.ckpt").unlink()
    main(["fit", "--config", config, "--ckpt_path", "last", "--trainer.verbose", "true"])
    assert "resuming checkpoints/step=00000002.ckpt" in capsys.readouterr().out
    assert losses("logs/train_log.csv") == uninterrupted
    assert Path("checkpoints/step=00000004.ckpt").is_file()


def test_a_fresh_run_in_an_old_runs_directory_keeps_the_old_config_and_checkpoints(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(write_yaml(tmp_path / "run.yaml", TINY_RUN))
    main(["fit", "--config", config])
    old = Path("checkpoints/config.yaml").read_text()
    with pytest.warns(UserWarning, match="superseded-"):
        main(["fit", "--config", config, "--trainer.seed", "8", "--trainer.steps", "2"])
    assert [p.read_text() for p in Path("checkpoints").glob("config-*.yaml")] == [old]
    (aside,) = Path("checkpoints").glob("superseded-*")
    assert sorted(p.name for p in aside.iterdir()) == ["best.ckpt", "step=00000002.ckpt", "step=00000004.ckpt"]
    assert sorted(p.name for p in Path("checkpoints").glob("step=*")) == ["step=00000002.ckpt"]  # the new run's


def test_unknown_key_in_flags_or_yaml_exits_2_naming_the_key(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--trainer.epochz", "3"])
    assert exit_.value.code == 2
    assert "epochz" in capsys.readouterr().err

    bad = write_yaml(tmp_path / "bad.yaml", {"model": {"config": {"d_modl": 64}}})
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(bad)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "model.config" in err and "d_modl" in err


def test_value_of_the_wrong_type_exits_2_naming_the_key(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--trainer.steps", "many"])
    assert exit_.value.code == 2
    assert 'Parser key "trainer.steps"' in capsys.readouterr().err


def test_value_a_class_rejects_exits_2_with_its_message(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--model.config.d_model", "30", "--model.config.n_heads", "4"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "d_model=30" in err and "n_heads=4" in err and "Traceback" not in err
    assert not Path("checkpoints").exists()


class StepFile:
    """A spec-style callback (no base class) that appends each finished step to a JSON-lines file."""

    def __init__(self, path: str, tag: str = "") -> None:
        self.path, self.tag = path, tag

    def on_step_end(self, trainer, metrics) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps({"tag": self.tag, "step": trainer.current_step, "loss": metrics["train_loss"]}) + "\n")


def test_callbacks_given_in_yaml_are_built_and_called(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    callbacks = [{"class_path": f"{__name__}.StepFile", "init_args": {"path": "steps.jsonl", "tag": "yaml"}}]
    run = {**TINY_RUN, "trainer": {**TINY_RUN["trainer"], "callbacks": callbacks}}
    main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", run))])
    lines = [json.loads(line) for line in Path("steps.jsonl").read_text().splitlines()]
    assert [(x["tag"], x["step"]) for x in lines] == [("yaml", 1), ("yaml", 2), ("yaml", 3), ("yaml", 4)]
    assert yaml.safe_load(Path("checkpoints/config.yaml").read_text())["trainer"]["callbacks"] == callbacks


def test_callback_that_cannot_be_imported_exits_2_naming_its_key(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run = {**TINY_RUN, "trainer": {**TINY_RUN["trainer"], "callbacks": [{"class_path": f"{__name__}.Nope"}]}}
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", run))])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith('error: Parser key "trainer.callbacks": cannot import') and f"{__name__}.Nope" in error


def test_missing_checkpoint_file_exits_2(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN)), "--ckpt_path", "nope.ckpt"])
    assert exit_.value.code == 2
    assert "nope.ckpt" in capsys.readouterr().err


# The GPU presets: their keys parse, and the same file trains on a CPU once shrunk by flags.
SHRINK = ["--model.config.vocab_size", "1024", "--model.config.d_model", "32", "--model.config.n_layers", "2",
          "--model.config.n_heads", "4", "--model.config.n_kv_heads", "2", "--model.config.ffn_hidden_size", "64",
          "--model.config.max_seq_len", "32", "--model.scheduler.warmup_steps", "1", "--model.scheduler.max_steps",
          "2", "--data.train_path", "null", "--data.tokenizer_path", "null", "--data.batch_size", "2",
          "--data.seq_length", "32", "--data.num_workers", "0", "--trainer.total_batch_size", "128",
          "--trainer.steps", "2", "--trainer.validation_batches", "1", "--trainer.compile", "false",
          "--trainer.accelerator", "cpu", "--trainer.devices", "1", "--trainer.strategy", "auto",
          "--trainer.log_steps", "1", "--trainer.checkpoints_dir", "checkpoints", "--trainer.logs_dir", "logs",
          "--trainer.verbose", "false"]


@pytest.mark.parametrize("preset", ["gpt2-small-gpu", "llama-1b-fsdp"])
def test_gpu_preset_parses_and_trains_on_cpu_when_shrunk(preset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    config = str(REPO / "configs" / f"{preset}.yaml")
    with pytest.raises(SystemExit):
        main(["fit", "--config", config, "--print_config"])
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["use_mixed_precision"] is True
    main(["fit", "--config", config, *SHRINK])
    assert [r[0] for r in losses("logs/train_log.csv")] == ["1", "2"]
    saved = yaml.safe_load(Path("checkpoints/config.yaml").read_text())
    assert saved["model"]["config"]["d_model"] == 32 and saved["trainer"]["strategy"] == "auto"


def test_a_file_that_is_not_a_tokenizer_exits_2_naming_the_key_and_file(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.model"
    bad.write_text("not a tokenizer\n")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--data.tokenizer_path", str(bad)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "tokenizer_path" in err and "bad.model" in err and "Traceback" not in err
    assert not Path("checkpoints").exists()


def snapshot(*directories: str) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for d in directories for p in sorted(Path(d).rglob("*")) if p.is_file()}


def test_a_refused_resume_changes_none_of_the_runs_files(tmp_path, monkeypatch, capsys):
    """The sequence of issue 20: a run, a resume refused for another optimizer, then README's resume line."""
    monkeypatch.chdir(tmp_path)
    config = str(write_yaml(tmp_path / "tiny.yaml", TINY_RUN))
    main(["fit", "--config", config])
    before, trained = snapshot("checkpoints", "logs"), losses("logs/train_log.csv")
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", config, "--model.muon", "false", "--ckpt_path", "last"])
    assert exit_.value.code == 2
    assert "model.muon=true" in capsys.readouterr().err
    assert snapshot("checkpoints", "logs") == before
    assert yaml.safe_load(Path("checkpoints/config.yaml").read_text())["model"]["muon"] is True
    main(["fit", "--config", "checkpoints/config.yaml", "--ckpt_path", "last"])  # README's resume works
    assert losses("logs/train_log.csv") == trained


@pytest.mark.parametrize("flag, value, key", [("--trainer.seed", "-1", "trainer.seed"),
                                              ("--trainer.seed", str(2**32), "trainer.seed"),
                                              ("--trainer.devices", "0", "devices=0")])
def test_values_lightning_would_crash_on_exit_2_naming_the_key(tmp_path, monkeypatch, capsys, flag, value, key):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN)), flag, value])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert key in err and "Traceback" not in err
    assert not Path("checkpoints").exists()


def test_a_run_in_a_directory_another_run_holds_exits_2_naming_the_owner(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("checkpoints").mkdir()
    Path("checkpoints/run.lock").write_text('{"pid": 4242, "host": "node-17"}')
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN))])
    assert exit_.value.code == 2
    assert "pid 4242 on host node-17" in capsys.readouterr().err
    assert sorted(p.name for p in Path("checkpoints").iterdir()) == ["run.lock"]  # not even its config.yaml
    assert not Path("logs/train_log.csv").exists()


# ---- Lightning's loggers and callbacks, precision and max_steps from YAML and flags -----------------------
def test_trainer_logger_flag_sends_the_csv_logs_rows_to_tensorboard(tmp_path, monkeypatch):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN)), "--trainer.logger", "tensorboard"])
    events = EventAccumulator("logs/tensorboard/version_0")
    events.Reload()
    expected = {int(r["step"]): float(r["train_loss"]) for r in read_rows("logs/train_log.csv")}
    assert {e.step: e.value for e in events.Scalars("train_loss")} == pytest.approx(expected, rel=1e-6)
    assert yaml.safe_load(Path("checkpoints/config.yaml").read_text())["trainer"]["logger"] == "tensorboard"


def test_max_steps_flag_sets_the_runs_length_and_a_null_schedule_ends_with_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scheduler = {**TINY_RUN["model"]["scheduler"], "max_steps": None}
    run = {**TINY_RUN, "model": {**TINY_RUN["model"], "scheduler": scheduler}}
    main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", run)), "--trainer.max_steps", "3"])
    rows = read_rows("logs/train_log.csv")
    schedule = get_lr_scheduler(2e-3, 2e-4, 1, 3)
    assert [(int(r["step"]), float(r["learning_rate"])) for r in rows] == [(s, schedule(s - 1)) for s in (1, 2, 3)]


def test_max_time_flag_plans_the_run_in_time_and_is_saved_with_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scheduler = {**TINY_RUN["model"]["scheduler"], "max_steps": None, "decay_type": "wsd", "decay_fraction": 0.5}
    run = {**TINY_RUN, "model": {**TINY_RUN["model"], "scheduler": scheduler}}
    main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", run)), "--trainer.max_time", "00:00:00:04",
          "--trainer.max_steps", "100000"])
    rows = read_rows("logs/train_log.csv")
    assert int(rows[-1]["step"]) < 100000 and rows[-1]["val_loss"]  # time ended it, with a final validation
    assert Path(f"checkpoints/step={int(rows[-1]['step']):08d}.ckpt").exists()
    saved = yaml.safe_load(Path("checkpoints/config.yaml").read_text())
    assert saved["trainer"]["max_time"] == "00:00:00:04" and saved["model"]["scheduler"]["decay_type"] == "wsd"


@pytest.mark.parametrize("recipe, vocab_size", [("shakespeare-60s", 1024), ("shakespeare-5min", 2048)])
def test_each_time_recipe_trains_its_own_shape_and_tokenizer_until_its_budget_ends(recipe, vocab_size, tmp_path,
                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    main(["fit", "--config", str(REPO / "configs" / f"{recipe}.yaml"), "--trainer.max_time", "3",
          "--trainer.validation_batches", "2", "--trainer.verbose", "false"])
    rows = read_rows("logs/train_log.csv")
    assert rows[-1]["val_loss"] and int(rows[-1]["step"]) < 10_000  # time ended it, with a final validation
    saved = yaml.safe_load(Path("checkpoints/config.yaml").read_text())
    assert saved["trainer"]["max_time"] == 3 and saved["model"]["scheduler"]["decay_type"] == "linear"
    checkpoint = torch.load(next(Path("checkpoints").glob("step=*.ckpt")), weights_only=True)
    assert checkpoint["state_dict"]["model.output.weight"].shape[0] == vocab_size  # the recipe's tokenizer


def test_a_bad_max_time_flag_exits_2_naming_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN)), "--trainer.max_time", "soon"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "max_time='soon'" in err and "DD:HH:MM:SS" in err and "Traceback" not in err


def test_yaml_mixes_hook_objects_with_lightning_callbacks_and_loggers(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    callbacks = [{"class_path": f"{__name__}.StepFile", "init_args": {"path": "steps.jsonl", "tag": "yaml"}},
                 {"class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                  "init_args": {"monitor": "val_loss", "save_top_k": 1, "filename": "best-{step}"}}]
    logger = ["csv", {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "mine"}}]
    run = {**TINY_RUN, "trainer": {**TINY_RUN["trainer"], "callbacks": callbacks, "logger": logger}}
    main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", run))])
    assert len(Path("steps.jsonl").read_text().splitlines()) == 4
    rows = read_rows("logs/train_log.csv")
    for metrics in ("logs/csv/version_0/metrics.csv", "mine/lightning_logs/version_0/metrics.csv"):
        logged = {int(r["step"]): float(r["train_loss"]) for r in read_csv_rows(metrics)}
        assert logged == {int(r["step"]): float(r["train_loss"]) for r in rows}
    best_step = min((float(r["val_loss"]), int(r["step"])) for r in rows if r["val_loss"])[1]
    assert [p.name for p in Path("checkpoints").glob("best-*.ckpt")] == [f"best-step={best_step}.ckpt"]


def read_csv_rows(path: str) -> list[dict[str, str]]:
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class RandomWindows(L.LightningDataModule):
    """Random token windows, train only: what a LightningCLI user's own DataModule looks like."""

    def __init__(self, windows: int = 32, seq_length: int = 32, vocab: int = 1024) -> None:
        super().__init__()
        self.windows, self.seq_length, self.vocab = windows, seq_length, vocab

    def setup(self, stage: str) -> None:
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, self.vocab, (self.windows, self.seq_length + 1), generator=g)
        self.dataset = torch.utils.data.TensorDataset(data[:, :-1], data[:, 1:])

    def train_dataloader(self):
        return torch.utils.data.DataLoader(self.dataset, batch_size=4)


def test_data_class_path_takes_a_users_own_lightning_data_module(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = {"class_path": f"{__name__}.RandomWindows", "init_args": {"windows": 32, "seq_length": 32}}
    run = {**TINY_RUN, "data": data}
    main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", run))])
    assert [(r["step"], r["val_loss"]) for r in read_rows("logs/train_log.csv")] == [(str(s), "") for s in (1, 2, 3, 4)]


def test_data_class_path_of_tlama_data_module_is_the_plain_data_section(tmp_path, capsys):
    """README's form (`data: {class_path: tlama_core.data.TlamaDataModule, init_args: ...}`) and the plain one
    resolve to the same run."""
    printed = []
    for data in (TINY_RUN["data"], {"class_path": "tlama_core.data.TlamaDataModule", "init_args": TINY_RUN["data"]}):
        with pytest.raises(SystemExit):
            main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", {**TINY_RUN, "data": data})),
                  "--print_config"])
        printed.append(capsys.readouterr().out)
    assert printed[0] == printed[1]
    assert yaml.safe_load(printed[0])["data"]["init_args"]["batch_size"] == 4
