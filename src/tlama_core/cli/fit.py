"""`tlama fit`: a LightningCLI run of TlamaLightningModule and TlamaDataModule, executed by the `Trainer` facade.

The YAML has three sections: `model:` (TlamaLightningModule: the TlamaConfig, learning rate, weight decay and
LRSchedule), `data:` (TlamaDataModule, or any LightningDataModule given by class_path) and `trainer:` (the
facade's own parameters, under the same names: `RunSettings`, read from its signature). LightningCLI parses,
validates and instantiates; the facade then translates and trains, so a YAML run and a Python run with the same
values write the same CSV log and checkpoints and reach the same losses.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import os
import shlex
import sys
import time
import typing
import warnings
from pathlib import Path
from typing import Any

from jsonargparse import ArgumentParser
from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.strategies import ModelParallelStrategy

from tlama_core import __version__
from tlama_core.atomic import DiskFullError, atomic_write
from tlama_core.checkpoints import is_sharded_checkpoint
from tlama_core.cli.errors import build_error, one_line, unreadable_error
from tlama_core.cli.slots import CallbackSlot, LightningKeywords, LoggerSlot, StrategySlot, keep_untyped_values_as_data
from tlama_core.data import TlamaDataModule
from tlama_core.locks import RunLockError
from tlama_core.models import TlamaConfig, find_weights
from tlama_core.models.config import preset
from tlama_core.training import TlamaLightningModule, Trainer
from tlama_core.training.arguments import check_seed
from tlama_core.training.files.checkpoint_io import CheckpointError
from tlama_core.training.lightning.module import empty_init
from tlama_core.training.lightning.signals import PeerLostError
from tlama_core.training.sharding import is_model_parallel

CONFIG_NAME = "config.yaml"  # written into trainer.checkpoints_dir by every run


# The `trainer:` section is the facade's own signature and docs, less what a YAML cannot hold (an existing model,
# loaders, optimizer or schedule function) or the `model:` section owns (learning rate, weight decay). The slots
# type what a YAML builds by class_path, where the facade takes any object.
PYTHON_ONLY = ("self", "model", "train_data_loader", "val_data_loader", "optimizer", "scheduler", "learning_rate",
               "weight_decay")
SLOT_TYPES: dict[str, Any] = {"callbacks": list[CallbackSlot] | None, "devices": int | str | list[int],
                              "strategy": StrategySlot, "logger": LoggerSlot | None, "max_time": float | str | None,
                              "trainer_kwargs": dict | None}


def run_settings_class() -> type:
    """A dataclass of the Trainer's run parameters (their types, defaults and docstring), which jsonargparse reads
    as the `trainer:` section."""
    hints = typing.get_type_hints(Trainer.__init__)
    fields = [(name, SLOT_TYPES.get(name, hints[name]), dataclasses.field(default=p.default))
              for name, p in inspect.signature(Trainer.__init__).parameters.items() if name not in PYTHON_ONLY]
    doc = inspect.getdoc(Trainer)
    settings = dataclasses.make_dataclass("RunSettings", fields)
    settings.__module__ = __name__
    settings.__doc__ = "The `trainer:` section: the Trainer's run parameters.\n\n" + doc[doc.index("Args:"):]
    return settings


RunSettings = run_settings_class()


def shards(strategy: Any) -> bool:
    """Whether a `trainer.strategy` value (a name, or a class_path namespace) shards the model in configure_model."""
    path = strategy.get("class_path") if hasattr(strategy, "get") else None
    if path is None:
        return is_model_parallel(strategy)
    module, _, name = str(path).rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return False  # the parser names the bad class_path
    return isinstance(cls, type) and issubclass(cls, ModelParallelStrategy)


# What `tlama fit` trains when the YAML leaves a key out: the run of configs/shakespeare-cpu.yaml (a ~3.5M
# parameter model on the built-in corpus, ~2 minutes on 2 CPU cores). tests/test_cli.py keeps the two equal.
BUILTIN_RUN: dict[str, Any] = {
    "model.config": {"vocab_size": 1024, "d_model": 256, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2,
                     "max_seq_len": 64, "multiple_of": 64, "max_batch_size": 8, "zero_init_residual": True},
    "model.learning_rate": 6e-3,
    "model.weight_decay": 2.5,
    "model.muon": True,
    "model.scheduler": {"max_lr": 6e-3, "min_lr": 1e-4, "warmup_steps": 5, "max_steps": None,
                        "decay_type": "cosine"},
    "data": {"class_path": "tlama_core.data.TlamaDataModule", "init_args": {"batch_size": 64, "seq_length": 64}},
    "trainer.total_batch_size": 8192,
    "trainer.epochs": 5,
    "trainer.validation_steps": 100,
    "trainer.validation_batches": 20,
    "trainer.checkpoint_steps": 250,
    "trainer.log_steps": 10,
}


class TlamaCLI(LightningCLI):
    """LightningCLI over TlamaLightningModule and TlamaDataModule whose `trainer:` section is the facade's.

    `TlamaCLI(args)` parses and builds everything (model, data, `Trainer` facade) without training; `run()` saves
    the resolved config next to the checkpoints and trains. Errors in the YAML or the flags, and values the
    classes reject when they are built, end the program with jsonargparse's message and exit code 2.
    """

    def __init__(self, args: list[str] | None = None) -> None:
        keep_untyped_values_as_data()
        with warnings.catch_warnings():  # `args` given while sys.argv holds `tlama fit ...`: intended here
            warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
            super().__init__(
                TlamaLightningModule, TlamaDataModule, save_config_callback=None, args=args, run=False,
                auto_configure_optimizers=False, load_from_checkpoint_support=False, parser_class=_Parser,
                parser_kwargs={"prog": "tlama fit", "description": "Train a Tlama model (a LightningCLI run).",
                               "dump_header": [f"tlama-core {__version__}: tlama fit --config THIS_FILE"]},
            )

    # ---- parser ---------------------------------------------------------------------------------------
    def add_core_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # fail_untyped=False: a hook object's untyped arguments are taken as given (they build nothing, see slots).
        parser.add_class_arguments(RunSettings, "trainer", sub_configs=True, fail_untyped=False)
        # `model` and `optimizer` are the facade's way in (an existing Transformer / optimizer): not YAML keys.
        parser.add_class_arguments(TlamaLightningModule, "model", skip={"model", "optimizer"}, sub_configs=True)
        # Any LightningDataModule (`data: {class_path: ..., init_args: ...}`); TlamaDataModule's arguments alone
        # (`data: {batch_size: ...}`) keep meaning TlamaDataModule, the default class.
        parser.add_lightning_class_args(LightningDataModule, "data", subclass_mode=True, required=False)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_argument("--ckpt_path", type=str | None, default=None,
                            help='Resume from this checkpoint file, or "last": the newest in trainer.checkpoints_dir.')
        # LightningCLI seeds with `seed_everything` before it builds the model: make that trainer.seed.
        parser.link_arguments("trainer.seed", "seed_everything")
        parser.set_defaults(BUILTIN_RUN)

    def parse_arguments(self, parser: LightningArgumentParser, args: list[str] | None) -> None:
        """Parse twice when `model.init_from` names weights or `model.config.name` a preset: the weights' config
        (else the preset's fields) then become the defaults of `model.config`, under whatever the YAML and the
        flags set. The first pass only reads those two keys, so `--print_config` is left to the second."""
        argv = list(sys.argv[1:] if args is None else args)
        probe = parser.parse_args([a for a in argv if a.split("=")[0] != "--print_config"])
        init_from, name = probe.get("model.init_from"), probe.get("model.config.name")
        key = "model.init_from" if init_from else "model.config.name"
        try:
            if init_from:
                fields = find_weights(init_from).config().to_dict()
            elif name:
                fields = {**{f.name: f.default for f in dataclasses.fields(TlamaConfig)}, **preset(name), "name": name}
        except (ValueError, FileNotFoundError) as err:
            parser.error(f'Parser key "{key}": {err}')
        if init_from or name:
            parser.set_defaults({"model.config": fields})
        super().parse_arguments(parser, args)
        # LightningCLI seeds from trainer.seed before it builds anything: check the seed (and what
        # trainer_kwargs would build) first.
        try:
            check_seed("Trainer", self.config.get("trainer.seed"))
        except ValueError as err:
            parser.error(f'Parser key "trainer.seed": {err}')
        try:
            self._lightning_keywords = LightningKeywords(self.config.get("trainer.trainer_kwargs"))
        except ValueError as err:
            parser.error(str(err))

    # ---- building -------------------------------------------------------------------------------------
    def instantiate_classes(self) -> None:
        try:
            with empty_init(shards(self.config.get("trainer.strategy"))):  # each process builds its shards only
                super().instantiate_classes()
        except (ValueError, FileNotFoundError, ImportError, MemoryError) as err:  # the classes' errors, one line each
            if os.environ.get("JSONARGPARSE_DEBUG"):
                raise
            self.parser.error(build_error(str(err), self._data_args()))
        except PermissionError as err:  # a data file (or the token cache) this user may not read (or write)
            self.parser.error(unreadable_error(err, self._data_args()))

    def _data_args(self) -> dict[str, Any]:
        data = self.config.get("data")
        return dict(data.get("init_args") or {}) if data else {}

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        settings = self.config_init.trainer
        values = {f.name: getattr(settings, f.name) for f in dataclasses.fields(settings)}
        values["callbacks"] = list(settings.callbacks or [])
        try:
            values["trainer_kwargs"] = self._lightning_keywords.build()
        except ValueError as err:
            self.parser.error(str(err))
        ckpt_path = self.config.ckpt_path
        if ckpt_path not in (None, "last") and not (Path(ckpt_path).is_file() or is_sharded_checkpoint(ckpt_path)):
            self.parser.error(f'Parser key "ckpt_path": no checkpoint file or sharded checkpoint directory '
                              f'{ckpt_path!r} (or give "last").')
        values["callbacks"].append(_SaveConfigOnceAccepted(self))
        data: LightningDataModule = self.datamodule
        data.prepare_data()  # Lightning's order for a DataModule: prepare (download, tokenize), set up, then loaders
        data.setup("fit")
        has_val = type(data).val_dataloader is not LightningDataModule.val_dataloader
        return Trainer(model=self.model, train_data_loader=data.train_dataloader(),
                       val_data_loader=data.val_dataloader() if has_val else None, **values, **kwargs)

    # ---- running --------------------------------------------------------------------------------------
    def save_config(self) -> Path | None:
        """Write the resolved configuration to `checkpoints_dir/config.yaml` (master process only, atomically).

        `ckpt_path` is left out: the file describes the run, and `tlama fit --config` on it starts that run again.
        A fresh run keeps an earlier run's different config as `config-<unix ns>.yaml` (its checkpoints go to
        `superseded-*/`).
        """
        if not self.trainer.master_process:
            return None
        config = self.config.clone()
        config.ckpt_path = None
        text = self.parser.dump(config, skip_unset=False)
        path = self.trainer.checkpoints_dir / CONFIG_NAME
        if self.config.ckpt_path is None and path.is_file() and path.read_text() != text:
            path.rename(path.with_name(f"{path.stem}-{time.time_ns()}{path.suffix}"))  # unique: never overwrites
        atomic_write(path, lambda f: f.write(text.encode()))
        return path

    def run(self) -> dict[str, Any]:
        """Train (resuming from `--ckpt_path`), saving the config once the run is accepted; return the facade's
        result dict."""
        try:
            result = self.trainer.train(ckpt_path=self.config.ckpt_path)
        # A refused checkpoint, another run's directory, a dead peer process, a full disk, memory: the run was
        # accepted as flags go, so one line without the flags' usage, exit 2.
        except (CheckpointError, RunLockError, PeerLostError, DiskFullError, MemoryError) as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None
        if self.trainer.verbose and self.trainer.master_process:
            prompt = opening_words(self.trainer.train_data_loader)
            print(f"Sample from it: tlama generate --checkpoint {self.trainer.checkpoints_dir} --prompt "
                  + (shlex.quote(prompt) if prompt else "TEXT"))
        return result


def opening_words(loader: Any, words: int = 4) -> str | None:
    """The first words of a run's training text (its first line, at most `words`): a prompt in the corpus's own
    style for the sample hint. None for token ids (no text behind them) or a loader that is not ours."""
    dataset = getattr(loader, "dataset", None)
    tokenizer = getattr(loader, "tokenizer", None)  # the one the loader read its text with
    if getattr(loader, "text_chars", None) is None or tokenizer is None or not hasattr(dataset, "window"):
        return None
    text = tokenizer.decode(dataset.window(0)[:32].tolist()).lstrip()
    line, newline, _ = text.partition("\n")
    found = line.split()[:words] if newline else line.split()[:-1][:words]  # a line cut by the 32 tokens: drop
    return " ".join(found) or None                                         # its last (maybe partial) word


class _Parser(LightningArgumentParser):
    """LightningArgumentParser whose errors about a config's slots are one line (see errors.one_line), and whose
    --help lists the default `data:` class's options with the values `tlama fit` gives them (the `data:` slot
    takes any LightningDataModule, so jsonargparse itself lists none)."""

    def error(self, message: str, ex: Exception | None = None):
        super().error(one_line(message), ex)

    def format_help(self) -> str:
        text = super().format_help()
        if self.prog != "tlama fit":  # not the command's own parser
            return text
        data = ArgumentParser(prog=self.prog, usage="-", add_help=False)
        data.add_class_arguments(TlamaDataModule, "data", help=(
            "Data and tokenizer (TlamaDataModule, the default data: section), with the values tlama fit uses"))
        data.set_defaults({f"data.{k}": v for k, v in BUILTIN_RUN["data"]["init_args"].items()})
        section = "".join(line for line in data.format_help().split("\n\n", 1)[1].splitlines(keepends=True)
                          if not line.startswith("  --data CONFIG"))  # without its usage and --data (shown above)
        at = text.find("\nLinked arguments:")
        return text + "\n" + section if at < 0 else text[:at + 1] + section + text[at:]


class _SaveConfigOnceAccepted(Callback):
    """Writes `config.yaml` once the run is accepted: Lightning has loaded the checkpoint and the run's checks
    passed (a refused resume changes none of the run's files), inside the run's lock on its directory."""

    def __init__(self, cli: TlamaCLI) -> None:
        self.cli, self.saved = cli, False

    def on_train_start(self, trainer, pl_module) -> None:
        self._save()

    def on_fit_end(self, trainer, pl_module) -> None:
        self._save()  # a resume from the run's final checkpoint trains nothing and skips on_train_start

    def _save(self) -> None:
        if not self.saved:
            self.saved = True
            self.cli.save_config()


def fit(args: list[str] | None = None) -> dict[str, Any]:
    """`tlama fit ARGS`: parse, build, train; returns the `Trainer.train()` result."""
    return TlamaCLI(args).run()
