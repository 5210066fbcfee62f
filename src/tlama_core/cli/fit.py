"""`tlama fit`: a LightningCLI run of TlamaLightningModule and TlamaDataModule, executed by the `Trainer` facade.

The YAML has three sections: `model:` (TlamaLightningModule: the TlamaConfig, learning rate, weight decay and
LRSchedule), `data:` (TlamaDataModule, or any LightningDataModule given by class_path) and `trainer:` (the
facade's own parameters, under the same names, see
`RunSettings`). LightningCLI parses, validates and instantiates; the facade then translates and trains, so a YAML
run and a Python run with the same values write the same CSV log and checkpoints and reach the same losses.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shlex
import sys
import time
import warnings
from dataclasses import dataclass
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
from tlama_core.data import TlamaDataModule, load_tokenizer
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


@dataclass
class RunSettings:
    """The `trainer:` section: the Trainer facade's run parameters, with the same names and defaults.

    The model, its optimisation (learning rate, weight decay, schedule) and the data are the `model:` and
    `data:` sections.

    Args:
        total_batch_size: Tokens per optimizer step on all devices; turned into gradient accumulation steps
            (floor division, with a warning when it is not a multiple of one micro-batch).
        gradient_accumulation: Accumulate gradients to reach total_batch_size (false: one micro-batch per step).
        epochs: Passes over the training data.
        steps: Optimizer steps per epoch; null: as many as the training data holds.
        validation_steps: Validate every N optimizer steps (and at the end of the run).
        checkpoint_steps: Save `checkpoints_dir/step=NNNNNNNN.ckpt` every N optimizer steps (and at the end).
        log_steps: Append a row to `logs_dir/train_log.csv` every N optimizer steps.
        gradient_clip_val: Clip the gradient norm to this value (0: no clipping).
        use_mixed_precision: bf16 autocast on CUDA and on CPUs with bf16 units (AMX/AVX512-BF16); fp32 elsewhere.
        checkpoints_dir: Directory of the checkpoints, `best.ckpt` and this run's `config.yaml`.
        logs_dir: Directory of `train_log.csv`.
        seed: Seeds Python, NumPy and torch before the model is built, so a run is reproducible.
        verbose: Print the run summary and a progress bar.
        callbacks: Classes with any of the Trainer's hook methods (on_step_end, on_validate_end, ...) and
            Lightning callbacks (ModelCheckpoint, EarlyStopping, LearningRateMonitor, ...), each given as
            `{class_path: package.module.Class, init_args: {...}}`, or by flags: `--trainer.callbacks+=CLASS`
            then `--trainer.callbacks.ARG=VALUE` (CLASS: a Lightning callback's name or an import path).
        master_process: Whether this process writes logs and checkpoints (false on non-zero ranks).
        compile: torch.compile the model.
        activation_checkpointing: Recompute each block in the backward pass instead of storing its activations
            (less memory for long sequences, ~30% more compute).
        validation_batches: Validate on the first N validation batches only; null: all of them.
        accelerator: Lightning accelerator: auto, cpu, gpu, cuda, mps.
        devices: Devices per node: auto, a count, or a list of device indices.
        num_nodes: Machines taking part in the run.
        strategy: Lightning strategy: a name (auto, ddp, fsdp, fsdp2, ...) or a Lightning Strategy as
            `{class_path: ..., init_args: {...}}`, or by flags: `--trainer.strategy DDPStrategy
            --trainer.strategy.find_unused_parameters=true`.
        trainer_kwargs: Any other `lightning.Trainer` keyword arguments (they override the facade's defaults),
            typed as lightning.Trainer's own parameters (a class_path builds only what that parameter takes).
        logger: Lightning loggers: tensorboard, csv, mlflow or wandb (built under logs_dir), a list of them, or
            `{class_path: lightning.pytorch.loggers.X, init_args: {...}}` entries, or by flags:
            `--trainer.logger+=NAME_OR_CLASS` then `--trainer.logger.ARG=VALUE`; null: the CSV log only.
        precision: A Lightning precision (32-true, bf16-mixed, 16-mixed, ...); null: use_mixed_precision decides.
        max_steps: The whole run's optimizer steps (overrides epochs x steps); null: epochs x steps.
        keep_checkpoints: Keep only the newest N step checkpoints (and the best's); null: keep them all.
        allow_data_change: Resume on training data other than the checkpoint's, from the same position (counted
            in windows of the new data's order); false: such a resume is refused.
        max_time: A time budget for the whole run, from the start of training (a resumed run's earlier time
            counts): seconds or "DD:HH:MM:SS". The run stops in time for its final validation and checkpoint,
            and a schedule with max_steps null decays over the budget; null: the run is planned in steps.
    """

    total_batch_size: int = 524288
    gradient_accumulation: bool = True
    epochs: int = 1
    steps: int | None = None
    validation_steps: int = 250
    checkpoint_steps: int = 5000
    log_steps: int = 10
    gradient_clip_val: float = 1.0
    use_mixed_precision: bool = True
    checkpoints_dir: str = "checkpoints"
    logs_dir: str = "logs"
    seed: int = 1337
    verbose: bool = True
    callbacks: list[CallbackSlot] | None = None
    master_process: bool = True
    compile: bool = False
    activation_checkpointing: bool = False
    validation_batches: int | None = None
    accelerator: str = "auto"
    devices: int | str | list[int] = "auto"
    num_nodes: int = 1
    strategy: StrategySlot = "auto"
    trainer_kwargs: dict | None = None
    logger: LoggerSlot | None = None
    precision: str | None = None
    max_steps: int | None = None
    keep_checkpoints: int | None = None
    allow_data_change: bool = False
    max_time: float | str | None = None


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
        settings: RunSettings = self.config_init.trainer
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
    if getattr(loader, "text_chars", None) is None or loader.tokenizer_path is None or not hasattr(dataset, "window"):
        return None
    text = load_tokenizer(loader.tokenizer_path).decode(dataset.window(0)[:32].tolist()).lstrip()
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
