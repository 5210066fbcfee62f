"""`tlama fit`'s class slots: LightningCLI's shorthand for callbacks, loggers and strategies, and a config that
builds only classes of each slot's type (a config naming `subprocess.run` runs nothing)."""

from __future__ import annotations

import inspect
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy, ModelParallelStrategy
from test_cli import TINY_RUN, StepFile, write_yaml

from tlama_core.cli import main
from tlama_core.cli.fit import TlamaCLI
from tlama_core.data import TlamaDataModule
from tlama_core.training.records.metrics import read_rows

SHORTHAND = ["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.monitor=val_loss",
             "--trainer.callbacks.save_top_k=2", "--trainer.callbacks.filename=best-{step}",
             "--trainer.callbacks+=test_cli.StepFile", "--trainer.callbacks.path=steps.jsonl",
             "--trainer.logger+=csv", "--trainer.logger+=TensorBoardLogger", "--trainer.logger.save_dir=tb"]

TLAMA = str(Path(sys.executable).with_name("tlama"))  # this environment's, whatever PATH holds


def test_callback_and_logger_shorthand_flags_build_what_they_name_and_the_saved_config_builds_them_again(
        tmp_path, monkeypatch):
    write_yaml(tmp_path / "run.yaml", TINY_RUN)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent)}  # test_cli.StepFile, importable by the run
    done = subprocess.run([TLAMA, "fit", "--config", "run.yaml", "--trainer.validation_steps", "1", *SHORTHAND],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = read_rows(tmp_path / "logs/train_log.csv")
    best_two = sorted(sorted(rows, key=lambda r: float(r["val_loss"]))[:2], key=lambda r: int(r["step"]))
    assert len(rows) == 4 and sorted(p.name for p in (tmp_path / "checkpoints").glob("best-*.ckpt")) == [
        f"best-step={r['step']}.ckpt" for r in best_two]  # the ModelCheckpoint kept the 2 lowest val_loss of 4
    assert len((tmp_path / "steps.jsonl").read_text().splitlines()) == 4  # the hook object ran every step
    assert len(list((tmp_path / "tb/lightning_logs/version_0").glob("events.out.tfevents.*"))) == 1
    assert (tmp_path / "logs/csv/version_0/metrics.csv").is_file()

    monkeypatch.chdir(tmp_path)
    settings = TlamaCLI(["--config", "checkpoints/config.yaml"]).config_init.trainer
    checkpoint, steps = settings.callbacks
    assert isinstance(checkpoint, ModelCheckpoint) and isinstance(steps, StepFile)
    assert (checkpoint.monitor, checkpoint.save_top_k, checkpoint.filename) == ("val_loss", 2, "best-{step}")
    assert steps.path == "steps.jsonl"
    assert settings.logger[0] == "csv" and isinstance(settings.logger[1], TensorBoardLogger)
    assert settings.logger[1].save_dir == "tb"


@pytest.mark.parametrize("flags, says", [
    (["--trainer.callbacks.monitor=val_loss"], "--trainer.callbacks.monitor='val_loss' applies to no class"),
    (["--trainer.logger", "tensorboard", "--trainer.logger.save_dir=x"],
     "--trainer.logger.save_dir='x' applies to no class"),
    (["--trainer.strategy.find_unused_parameters=true"],
     "--trainer.strategy.find_unused_parameters='true' applies to no class"),
    (["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.monitr=val_loss"],
     "lightning.pytorch.callbacks.ModelCheckpoint takes no argument 'monitr'"),
    (["--trainer.callbacks+=ModelCheckpointt"], "'ModelCheckpointt' is neither a class name known here"),
    (["--trainer.strategy", "DDPStrategy", "--trainer.strategy.timeout=600"],
     "lightning.pytorch.strategies.DDPStrategy: timeout='600' is not timedelta or None (Expected a string with "
     'form "h:m:s"'),
    (["--trainer.callbacks+=EarlyStopping"],
     "lightning.pytorch.callbacks.EarlyStopping needs monitor: give it after the class "
     "(--trainer.callbacks.monitor=VALUE)"),
    (["--trainer.callbacks+=ModelCheckpoint", "--trainer.callbacks.every_n_train_steps=abc"],
     "lightning.pytorch.callbacks.ModelCheckpoint: every_n_train_steps='abc' is not int or None."),
    (["--trainer.logger", "tensorbord"], "'tensorbord' is neither one of 'tensorboard', 'csv'"),
    (["--trainer.callbacks+=TensorBoardLogger"],
     "'TensorBoardLogger' is Lightning's, for --trainer.logger, not --trainer.callbacks: give it there."),
    (["--trainer.logger+=ModelCheckpoint"],
     "'ModelCheckpoint' is Lightning's, for --trainer.callbacks, not --trainer.logger: give it there."),
])
def test_a_shorthand_argument_that_applies_to_nothing_exits_2_in_one_line(flags, says, tmp_path, monkeypatch,
                                                                            capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN)), *flags])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith("error: Parser key") and says in error
    assert not Path("checkpoints").exists()


def run_command(path: str) -> dict:
    """A class_path entry that would create `path` if it were called."""
    return {"class_path": "subprocess.run", "init_args": {"args": [sys.executable, "-c", f"open({path!r}, 'w')"]}}


@pytest.mark.parametrize("section, slot, key, expected", [
    ("trainer", {"callbacks": [run_command("PWNED")]}, "trainer.callbacks", "a Lightning Callback or a class with"),
    ("trainer", {"logger": {**run_command("PWNED"), "class_path": "subprocess.Popen"}}, "trainer.logger",
     "a Lightning Logger"),
    ("trainer", {"strategy": run_command("PWNED")}, "trainer.strategy", "a Lightning Strategy"),
    ("trainer", {"trainer_kwargs": {"plugins": [run_command("PWNED")]}}, "trainer.trainer_kwargs.plugins",
     "a Precision or a ClusterEnvironment"),
    ("data", run_command("PWNED"), "data", "a LightningDataModule"),
    ("model", {"scheduler": run_command("PWNED")}, "model.scheduler", "a LRSchedule"),
    ("model", {"config": run_command("PWNED")}, "model.config", "a TlamaConfig"),
])
def test_a_config_builds_only_classes_of_each_slots_type(section, slot, key, expected, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    value = {**TINY_RUN[section], **slot} if section != "data" else slot
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", {**TINY_RUN, section: value}))])
    assert exit_.value.code == 2
    error = capsys.readouterr().err.splitlines()[-1]
    assert error.startswith(f'error: Parser key "{key}": subprocess.') and f"is not {expected}" in error
    assert not Path("PWNED").exists() and not Path("checkpoints").exists()


class Untyped:
    """A hook object whose arguments carry no type hints: any value passes, as plain data."""

    def __init__(self, path, every=1) -> None:
        self.path, self.every = path, every

    def on_step_end(self, trainer, metrics) -> None:
        with open(self.path, "a") as f:
            f.write(f"{trainer.current_step} {self.every!r}\n")


def test_an_untyped_argument_takes_a_class_path_as_data_and_builds_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    untyped = {"path": "steps.txt", "every": run_command("PWNED")}
    callbacks = [{"class_path": f"{__name__}.Untyped", "init_args": untyped}]
    main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN)), "--trainer.steps", "2",
          "--config", str(write_yaml(tmp_path / "hooks.yaml", {"trainer": {"callbacks": callbacks}}))])
    assert not Path("PWNED").exists()
    assert Path("steps.txt").read_text().splitlines() == [f"{step} {run_command('PWNED')!r}" for step in (1, 2)]


def test_a_class_without_hooks_is_not_a_callback(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN)),
              "--trainer.callbacks+=collections.OrderedDict"])
    assert exit_.value.code == 2
    assert "collections.OrderedDict is not a Lightning Callback" in capsys.readouterr().err


# ---- finding the data options, and a data path that is not there ----------------------------------------------
def test_help_lists_the_data_options_with_the_values_fit_uses(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--print_config"])
    used = yaml.safe_load(capsys.readouterr().out)["data"]["init_args"]
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())  # wrapped lines joined
    shown = dict(re.findall(r"--data\.(\w+) [A-Z_{},a-z]+ .*?\(type: [^,]+, default: ([^)]+)\)", help_text))
    assert set(shown) == set(inspect.signature(TlamaDataModule).parameters)
    assert {k: int(shown[k]) for k in ("batch_size", "seq_length", "num_workers", "seed")} == {
        k: used[k] for k in ("batch_size", "seq_length", "num_workers", "seed")}
    assert used["batch_size"] != inspect.signature(TlamaDataModule).parameters["batch_size"].default


@pytest.mark.parametrize("flags, says", [
    (["--data.train_path", "nope.txt"], "--data.train_path='nope.txt': no such file or directory."),
    (["--data.train_path", "corpus.txt", "--data.val_path", "nope.txt"],
     "--data.val_path='nope.txt': no such file or directory."),
    (["--data.train_path", "nope/*.txt"], "--data.train_path='nope/*.txt': the pattern matches no file."),
    (["--data.tokenizer_path", "nope.model"], "--data.tokenizer_path='nope.model': no such file;"),
])
def test_a_missing_data_file_is_one_line_naming_the_flag_and_path(flags, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("corpus.txt").write_text("To be, or not to be, that is the question. " * 200)
    with pytest.raises(SystemExit) as exit_:
        main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN)), *flags])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith(f"error: {says}")
    assert "Union" not in err and "Namespace" not in err


@pytest.mark.parametrize("command, says", [
    (["prepare", "--verify", "nope"], "--verify='nope': no such file or directory."),
    (["prepare", "--data", "nope", "--tokenizer", "t.model", "--out", "out"], "--data='nope': no such file or"),
    (["tokenizer", "train", "--input", "nope", "--vocab_size", "64", "--output", "t.model"],
     "train_tokenizer: input 'nope': no such file or directory."),
])
def test_the_tools_name_the_flag_of_a_missing_input(command, says, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(command)
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].startswith(f"error: {says}")


def test_an_unreadable_data_file_is_one_line_naming_the_flag_and_path(tmp_path):
    (tmp_path / "secret.txt").write_text("To be, or not to be. " * 500)
    (tmp_path / "secret.txt").chmod(0)
    write_yaml(tmp_path / "run.yaml", TINY_RUN)
    command = [TLAMA, "fit", "--config", "run.yaml", "--data.train_path", "secret.txt"]
    if os.geteuid() == 0:  # root reads any file: drop the capabilities that let it
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv to drop CAP_DAC_OVERRIDE")
        command = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", *command]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"error: --data.train_path='secret.txt': {tmp_path.resolve() / 'secret.txt'}: permission denied; make it "
        "readable (and the token cache writable) by this user.")


# ---- after the run --------------------------------------------------------------------------------------------
def test_the_sample_hint_suggests_the_opening_words_of_the_runs_text_and_no_words_for_token_ids(
        tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    text = "Call me Ishmael said the sailor.\n" + "Some years ago, never mind how long precisely. " * 300
    Path("moby.txt").write_text(text)
    config = str(write_yaml(tmp_path / "run.yaml", TINY_RUN))
    main(["fit", "--config", config, "--data.train_path", "moby.txt", "--trainer.verbose", "true"])
    expected = " ".join(text.splitlines()[0].split()[:4])  # the first line's first four words
    assert capsys.readouterr().out.splitlines()[-1] == (
        f"Sample from it: tlama generate --checkpoint checkpoints --prompt '{expected}'")

    np.random.default_rng(0).integers(0, 1000, 20_000, dtype=np.uint16).tofile("ids.bin")
    main(["fit", "--config", config, "--data.train_path", "ids.bin", "--trainer.verbose", "true",
          "--trainer.checkpoints_dir", "ids-checkpoints"])
    assert capsys.readouterr().out.splitlines()[-1] == (
        "Sample from it: tlama generate --checkpoint ids-checkpoints --prompt TEXT")


def test_a_run_prints_no_pytree_deprecation_warning(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        main(["fit", "--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN))])
    assert Path("checkpoints/step=00000004.ckpt").is_file()
    assert [str(w.message) for w in caught if "LeafSpec" in str(w.message)] == []


# ---- --trainer.strategy: names and Lightning Strategy objects ------------------------------------------------
@pytest.mark.parametrize("flags, kind, fields", [
    (["--trainer.strategy", "DDPStrategy", "--trainer.strategy.find_unused_parameters=true"], DDPStrategy,
     lambda s: s._ddp_kwargs["find_unused_parameters"]),
    (["--trainer.strategy", "{class_path: lightning.pytorch.strategies.ModelParallelStrategy, init_args: "
                            "{data_parallel_size: 1, tensor_parallel_size: 1}}", "--model.muon", "false"],
     ModelParallelStrategy, lambda s: (s._data_parallel_size, s._tensor_parallel_size) == (1, 1)),
    (["--trainer.strategy", "ddp"], DDPStrategy, lambda s: not s._ddp_kwargs.get("find_unused_parameters")),
    (["--trainer.strategy", "fsdp2", "--model.muon", "false"], ModelParallelStrategy, lambda s: True),
])
def test_the_strategy_flag_hands_the_trainer_the_strategy_it_names(flags, kind, fields, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = TlamaCLI(["--config", str(write_yaml(tmp_path / "run.yaml", TINY_RUN)), "--trainer.accelerator", "cpu",
                    "--trainer.devices", "1", *flags])
    strategy = cli.trainer._trainer.strategy  # the one lightning.Trainer of the run
    assert isinstance(strategy, kind) and fields(strategy)
    if not isinstance(cli.config_init.trainer.strategy, str):
        assert strategy is cli.config_init.trainer.strategy  # the object the flags built, not a copy or a name


def test_fsdp2_from_the_command_line_builds_the_model_on_the_meta_device_and_trains_as_the_default_does(
        tmp_path, monkeypatch):
    """`tlama fit --trainer.strategy fsdp2` builds no full model (each process draws its shards from the meta
    device), and the weights it draws are those of the default build: the same losses."""
    monkeypatch.chdir(tmp_path)
    config = str(write_yaml(tmp_path / "run.yaml", {**TINY_RUN, "trainer": {**TINY_RUN["trainer"], "steps": 2}}))
    rows = {}
    for strategy in ("fsdp2", "auto"):
        cli = TlamaCLI(["--config", config, "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                        "--trainer.strategy", strategy, "--model.muon", "false", "--trainer.checkpoints_dir",
                        f"{strategy}/checkpoints", "--trainer.logs_dir", f"{strategy}/logs"])
        assert cli.model.model.output.weight.is_meta == (strategy == "fsdp2")
        cli.run()
        rows[strategy] = [float(r[k]) for r in read_rows(f"{strategy}/logs/train_log.csv")
                          for k in ("train_loss", "val_loss") if r[k]]
    assert len(rows["fsdp2"]) == 3  # two steps, one validation
    assert rows["fsdp2"] == pytest.approx(rows["auto"], rel=1e-5)


def test_a_strategy_object_from_the_command_line_trains_as_the_default_does(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = str(write_yaml(tmp_path / "run.yaml", {**TINY_RUN, "trainer": {**TINY_RUN["trainer"], "steps": 2}}))
    single = "{class_path: lightning.pytorch.strategies.SingleDeviceStrategy, init_args: {device: cpu}}"
    main(["fit", "--config", config, "--trainer.accelerator", "cpu", "--trainer.strategy", single,
          "--trainer.checkpoints_dir", "single/checkpoints", "--trainer.logs_dir", "single/logs"])
    main(["fit", "--config", config, "--trainer.accelerator", "cpu",
          "--trainer.checkpoints_dir", "auto/checkpoints", "--trainer.logs_dir", "auto/logs"])
    rows = [[(r["step"], r["train_loss"], r["val_loss"]) for r in read_rows(f"{run}/logs/train_log.csv")]
            for run in ("single", "auto")]
    assert len(rows[0]) == 2 and rows[0] == rows[1]
    saved = yaml.safe_load(Path("single/checkpoints/config.yaml").read_text())["trainer"]["strategy"]
    assert (saved["class_path"], saved["init_args"]["device"]) == (
        "lightning.pytorch.strategies.SingleDeviceStrategy", "cpu")
