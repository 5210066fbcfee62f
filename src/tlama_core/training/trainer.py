"""The documented `Trainer`: its parameters become a configured `lightning.Trainer`, which runs the loop.

The facade translates (tokens -> accumulation, optimizer steps -> micro-batch counts, spec hooks -> Lightning
hooks, mixed precision -> a precision, logger names -> Lightning loggers); Lightning executes. Each mechanism it
adds lives in a module named for it (cadence, metrics, ...).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.data import sized_len
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.strategies import Strategy

from tlama_core.atomic import remove_stale_temporaries
from tlama_core.checkpoints import find_last_checkpoint, read_checkpoint
from tlama_core.data.workers import shield_workers
from tlama_core.locks import RunLock
from tlama_core.models import Transformer
from tlama_core.models.transformer import out_of_memory, training_too_large
from tlama_core.training import arguments, lightning_internals
from tlama_core.training.files.checkpoint_io import (
    check_resumable,
    check_same_data,
    data_record,
    model_checkpoint,
    resolve_ckpt_path,
    set_aside_hpc_checkpoints,
    step_checkpoint_name,
)
from tlama_core.training.files.run_checkpoints import RunCheckpoints
from tlama_core.training.files.tokenizer import RunTokenizer
from tlama_core.training.lightning.cadence import StepCadence, StepLoader
from tlama_core.training.lightning.hooks import HookBridge
from tlama_core.training.lightning.module import TlamaLightningModule
from tlama_core.training.lightning.precision import allow_tf32, device_type, resolve_precision
from tlama_core.training.lightning.progress import print_end, print_start, progress_display, quiet_lightning
from tlama_core.training.lightning.signals import (
    PREEMPTION,
    TakeBackSigterm,
    peer_lost,
    requeue_slurm_job,
    stop_on_signals,
    take_over_requeue,
)
from tlama_core.training.optim import check_muon_strategy, shards_parameters
from tlama_core.training.plan import StepPlan, plan_steps
from tlama_core.training.records.loggers import build_loggers
from tlama_core.training.records.metrics import CsvLog, MetricSinks, hook_metrics
from tlama_core.training.scheduler import fit_schedule_to_run
from tlama_core.training.sharding import has_meta, share_data
from tlama_core.training.time_budget import TimeBudget, parse_max_time

LOG_NAME = "train_log.csv"


class Trainer:
    """Trains a Tlama model on Lightning. These docs are `tlama fit`'s too (its `trainer:` section is this signature).

    Args:
        model: A Transformer, or a TlamaLightningModule wrapping one (which then holds the optimisation settings).
        train_data_loader: Yields (x, y); its batch_size and seq_length attributes (else its first batch) size
            the micro-batch.
        optimizer: None: AdamW (weight decay on 2-D weight matrices only), or any torch optimizer.
        scheduler: A function step -> learning rate, applied before every optimizer step; None: learning_rate.
        val_data_loader: Validation data; val_loss is the token-weighted mean over it.
        total_batch_size: Tokens per optimizer step on all devices; turned into gradient accumulation steps
            (floor division, with a warning when it is not a multiple of one micro-batch).
        gradient_accumulation: Accumulate gradients to reach total_batch_size (false: one micro-batch per step).
        weight_decay: Weight decay of the default optimizer.
        learning_rate: The learning rate when no scheduler is given.
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
        allow_data_change: Resume on training (or validation) data other than the checkpoint's, from the same
            position (counted in windows of the new data's order); false: such a resume is refused.
        max_time: A time budget for the whole run, from the start of training (a resumed run's earlier time
            counts): seconds or "DD:HH:MM:SS". The run stops in time for its final validation and checkpoint,
            and a schedule with max_steps null decays over the budget; null: the run is planned in steps.
    """

    def __init__(self, model: torch.nn.Module, train_data_loader: Any, optimizer: torch.optim.Optimizer | None = None,
                 scheduler: Any = None, val_data_loader: Any | None = None, total_batch_size: int = 524288,
                 gradient_accumulation: bool = True, weight_decay: float = 0.1, learning_rate: float = 6e-4,
                 epochs: int = 1, steps: int | None = None, validation_steps: int = 250, checkpoint_steps: int = 5000,
                 log_steps: int = 10, gradient_clip_val: float = 1.0, use_mixed_precision: bool = True,
                 checkpoints_dir: str = "checkpoints", logs_dir: str = "logs", seed: int = 1337,
                 verbose: bool = True, callbacks: list[Any] | None = None, master_process: bool = True, *,
                 compile: bool = False, activation_checkpointing: bool = False,
                 validation_batches: int | None = None, accelerator: str = "auto",
                 devices: Any = "auto", num_nodes: int = 1, strategy: Any = "auto",
                 trainer_kwargs: dict[str, Any] | None = None, logger: Any = None, precision: str | None = None,
                 max_steps: int | None = None, keep_checkpoints: int | None = None,
                 allow_data_change: bool = False, max_time: float | str | timedelta | None = None) -> None:
        # ---- arguments, checked before anything runs
        arguments.check_counts(total_batch_size=total_batch_size, epochs=epochs, steps=steps,
                            validation_steps=validation_steps, checkpoint_steps=checkpoint_steps, log_steps=log_steps,
                            validation_batches=validation_batches, max_steps=max_steps,
                            keep_checkpoints=keep_checkpoints)
        arguments.check_run_settings(rates={"gradient_clip_val": gradient_clip_val, "learning_rate": learning_rate,
                                         "weight_decay": weight_decay}, seed=seed, devices=devices,
                                  directories={"checkpoints_dir": checkpoints_dir, "logs_dir": logs_dir})
        arguments.check_model_and_optimisation(model, isinstance(model, TlamaLightningModule), optimizer, scheduler,
                                               learning_rate, weight_decay, _DEFAULTS)
        overrides = arguments.check_trainer_kwargs(trainer_kwargs)
        seconds = parse_max_time(max_time)
        shield_workers(train_data_loader, val_data_loader)  # loader workers leave SIGTERM to this process
        self.verbose, self.seed = verbose, seed
        self._set_seed(seed)

        # ---- model and data
        module = model if isinstance(model, TlamaLightningModule) else TlamaLightningModule(
            model=model, learning_rate=learning_rate, weight_decay=weight_decay, scheduler=scheduler,
            optimizer=optimizer)
        if module.muon:
            check_muon_strategy(strategy)
        self._module, self.scheduler = module, scheduler
        self.model: Transformer = module.model
        self.train_data_loader, self.val_data_loader = train_data_loader, val_data_loader
        batch_size, seq_length = arguments.check_loaders_fit_model(train_data_loader, val_data_loader,
                                                                   self.model.config)

        # ---- device, precision, files, loggers, Lightning callbacks
        self.device_type = device_type(accelerator)
        self.precision = resolve_precision(precision, use_mixed_precision, self.device_type)
        allow_tf32(self.device_type)
        self.logs_dir = Path(logs_dir)
        self.log_file = str(self.logs_dir / LOG_NAME)
        loggers = build_loggers(logger, logs_dir)
        hooks, self._lightning_callbacks = arguments.split_callbacks(callbacks, overrides.pop("callbacks", None),
                                                                     loggers, checkpoints_dir)
        self._bridge = HookBridge(self, hooks)
        self._checkpoints = RunCheckpoints(checkpoints_dir, self._bridge.checkpoint_written, keep=keep_checkpoints,
                                           expected_config=self.model.config.to_dict(), writes=master_process)
        # train_step() builds a second lightning.Trainer, which needs a strategy object of its own: a Trainer
        # configures the one it is given in place (accelerator, checkpoint IO), so keep an unused copy.
        self._stepper_strategy = copy.deepcopy(strategy) if isinstance(strategy, Strategy) else strategy
        self._lightning_kwargs = {
            "accelerator": accelerator, "devices": devices, "num_nodes": num_nodes, "strategy": strategy,
            "precision": self.precision, "gradient_clip_val": gradient_clip_val or None,
            "gradient_clip_algorithm": "norm", "check_val_every_n_epoch": None, "num_sanity_val_steps": 0,
            "logger": loggers or False, "log_every_n_steps": log_steps, "enable_model_summary": False,
            "enable_checkpointing": any(isinstance(cb, ModelCheckpoint) for cb in self._lightning_callbacks),
            "use_distributed_sampler": False, "default_root_dir": checkpoints_dir,
            "limit_val_batches": validation_batches or 1.0,
            **overrides, "plugins": [self._checkpoints.io, *overrides.get("plugins", [])],
        }

        # ---- what runs around each step: hooks, the cadence (rows, checkpoints, stop), the one Lightning trainer
        self._tokenizer = RunTokenizer(getattr(train_data_loader, "tokenizer_path", None))
        self._inputs = {**self._tokenizer.annotations, **data_record(train_data_loader, val_data_loader)}
        self._allow_data_change = allow_data_change
        csv_log = CsvLog(self.log_file) if master_process else None
        sinks = MetricSinks(csv_log, {"total_batch_size": total_batch_size, "seed": seed, "gradient_clip_val":
                                      gradient_clip_val, "precision": self.precision}) if master_process else None
        self._budget = TimeBudget(seconds) if seconds is not None else None  # max_time: the run planned in time
        self._cadence = StepCadence(log_steps, validation_steps, checkpoint_steps, self._checkpoints, sinks,
                                    has_validation=val_data_loader is not None, tokenizer=self._tokenizer,
                                    inputs=self._inputs, budget=self._budget)
        self._trainer = self._lightning_trainer(self._cadence, self._bridge, progress=verbose and master_process)
        self.master_process = master_process and self._trainer.is_global_zero
        self._requeue = take_over_requeue(self._trainer)  # SLURM: requeue the job after a preemption signal
        self._csv = csv_log if self.master_process else None
        self.device: torch.device = self._trainer.strategy.root_device

        # ---- the step arithmetic: the built trainer knows the world size; the loaders read this process's share
        world = self._trainer.world_size
        readers = share_data(self._trainer.strategy, self._trainer.global_rank, world, self.model.config,
                             train_data_loader, val_data_loader)
        self.plan: StepPlan = plan_steps(batch_size, seq_length, sized_len(train_data_loader), total_batch_size,
                                         gradient_accumulation, steps, epochs, world, max_steps, readers)
        lightning_internals.set_loop_counts(self._trainer, **self.plan.lightning_counts(validation_steps))
        self.grad_accum_steps = self.plan.grad_accum
        schedule = (self._budget.plan(module.schedule) if self._budget is not None
                    else fit_schedule_to_run(module.schedule, self.plan.max_steps))
        module.attach_run(self.plan, seed=seed, compile=compile, schedule=schedule,
                          activation_checkpointing=activation_checkpointing,
                          optimizer_device=None if shards_parameters(strategy) or has_meta(self.model)
                          else self.device_type)
        self._validation_tokens = (arguments.validation_tokens(val_data_loader, validation_batches)
                                   if self._budget is not None else None)  # the time budget's first estimate
        self.optimizer = module.optimizer
        self._stepper: L.Trainer | None = None  # train_step()'s own lightning.Trainer, built at its first call
        self._trained = False
        self._run_lock: RunLock | None = None  # held by train() on the master process
        self._bridge.fire("on_init_end")

    # ---- translation ---------------------------------------------------------------------------------
    def _lightning_trainer(self, cadence: StepCadence, bridge: HookBridge, progress: bool, **overrides) -> L.Trainer:
        # The user's Lightning callbacks come before the cadence: an EarlyStopping's stop is then seen by the cadence
        # at the same validation, which finishes that step with its row and final checkpoint.
        callbacks = [bridge, *self._lightning_callbacks, cadence]
        if cadence.enabled:  # train(): the cadence stops at a step end; train_step() keeps Lightning's own handler
            callbacks.append(TakeBackSigterm(self._on_stop_signal))
        kwargs = {**self._lightning_kwargs, "enable_progress_bar": progress,
                  "callbacks": callbacks + ([progress_display(cadence)] if progress else []), **overrides}
        with quiet_lightning(self.verbose and progress):
            return L.Trainer(**kwargs)

    # ---- documented attributes -----------------------------------------------------------------------
    @property
    def current_step(self) -> int:
        """Optimizer steps completed (the global step)."""
        return (self._trainer if self._stepper is None else self._stepper).global_step

    @property
    def checkpoints_dir(self) -> Path:
        """The run's checkpoint directory (its checkpoints' own, which the lock, resume and tokenizer use)."""
        return self._checkpoints.directory

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch

    @property
    def best_val_loss(self) -> float:
        return self._cadence.best_val_loss

    def _fitting(self) -> bool:
        """Whether `train()` is running its steps (this is called from a hook), not yet past its final one."""
        state = self._trainer.state
        return self._stepper is None and state.fn == "fit" and state.stage is not None and not self._cadence.finished

    # ---- documented methods --------------------------------------------------------------------------
    def _set_seed(self, seed: int) -> None:
        """Seed Python, NumPy and torch (and loader workers) through Lightning's seeding."""
        L.seed_everything(seed, workers=True, verbose=False)

    def _log_metrics(self, metrics: dict[str, Any]) -> None:
        """Append one row to the CSV log (master process only); epoch, step and timestamp are filled in. Outside
        `train()` the log directory's lock is held for the write: another run's log is never appended to."""
        if self._csv is None:
            return
        row = {"epoch": self.current_epoch, "step": self.current_step, "timestamp": round(time.time(), 3), **metrics}
        with contextlib.nullcontext() if self._run_lock is not None else RunLock(self.logs_dir):  # train() holds it
            self._csv.write(row)

    def _save_checkpoint(self, val_loss: float | None = None, is_best: bool = False) -> str | None:
        """Save a checkpoint of the current step (and `best.ckpt` when is_best); the master returns its path.

        From a hook while `train()` runs: the run's own resumable `step=N.ckpt`, written once the step is finished
        (after its validation and CSV row), agreed on by all processes. Outside training: `model-step=N.ckpt` (and
        `model-best.ckpt`), the model, its config and the optimizer, which "last" never picks (no loop state)."""
        if self._fitting():
            self._cadence.request_save(val_loss, is_best)
            path = self.checkpoints_dir / step_checkpoint_name(self.current_step)
            return str(path) if self.master_process else None
        checkpoint = model_checkpoint(self._module, self.optimizer, self.current_epoch, self.current_step, val_loss)
        checkpoint.update(self._tokenizer.annotations)
        path = None
        if self.master_process:
            self._tokenizer.keep(self.checkpoints_dir)
            path = str(self._checkpoints.save_model(checkpoint, self.current_step, best=is_best))
        if is_best and val_loss is not None:
            self._cadence.record_val_loss(val_loss)
        return path

    def validate(self) -> float | None:
        """Mean validation loss over the val loader (its first `validation_batches`), or None without one."""
        if self.val_data_loader is None:
            return None
        if self._fitting():
            raise RuntimeError("Trainer.validate(): called while train() runs (from a hook), where Lightning cannot "
                               "validate; the run validates every validation_steps steps (see on_validate_end).")
        with quiet_lightning(False):
            self._trainer.validate(self._module, dataloaders=self.val_data_loader, verbose=False)
        val_loss = self._module.last_val["val_loss"]
        self._cadence.record_val_loss(val_loss)
        return val_loss

    def train_step(self) -> dict[str, float]:
        """Run exactly one optimizer step (all its micro-batches) and return its metrics; successive calls continue
        one data stream and optimizer state. For driving steps by hand: not mixed with `train()` in one Trainer."""
        if self._trained:
            raise RuntimeError("Trainer.train_step(): this Trainer already ran train(); build a new Trainer to step.")
        if self._stepper is None:  # quiet run-level hooks, no rows or periodic checkpoints: a step at a time
            bridge = HookBridge(self, self._bridge.callbacks, run_hooks=False)
            self._checkpoints.announce_to(bridge.checkpoint_written)
            self._cadence = self._cadence.stepping_copy()
            self._stepper = self._lightning_trainer(self._cadence, bridge, progress=False,
                                                    strategy=self._stepper_strategy, limit_val_batches=0)
            lightning_internals.set_loop_counts(self._stepper, **self.plan.stepping_counts())
            self._step_loader = StepLoader(self.train_data_loader, self.plan.grad_accum)
        lightning_internals.allow_one_more_step(self._stepper)
        with quiet_lightning(False):
            self._stepper.fit(self._module, train_dataloaders=self._step_loader)
        return hook_metrics(self._module.reduce_step_loss())

    def request_stop(self) -> None:
        """Stop `train()` after the current optimizer step (validated, logged and checkpointed); callable from
        any hook, e.g. early stopping in `on_validate_end`. The result then says `stopped_early`. With several
        processes a stop asked for on one (a hook on the master) stops them all at the same step."""
        self._cadence.request_stop("request")

    def train(self, ckpt_path: str | None = None) -> dict[str, Any]:
        """Run the whole training; `ckpt_path` (a file or "last") resumes exactly where that checkpoint stopped."""
        if self._stepper is not None:
            raise RuntimeError("Trainer.train(): train_step() was used on this Trainer; build a new Trainer to train.")
        self._run_lock = RunLock(self.checkpoints_dir, self.logs_dir).acquire() if self.master_process else None
        try:  # the run owns its directories from here: nothing of another run's is moved before
            ckpt = resolve_ckpt_path(ckpt_path, self.checkpoints_dir)
            if ckpt is None and self.master_process:  # Lightning would resume from these unasked under SLURM
                set_aside_hpc_checkpoints(self.checkpoints_dir)
            if ckpt is not None:  # here, for every kind: a sharded run's strategy loads without our checkpoint IO
                saved = read_checkpoint(ckpt, tensors=False)
                check_resumable(saved, ckpt, self.model.config.to_dict())
                self._tokenizer.check_resume(saved, ckpt)
                check_same_data(saved, ckpt, self._inputs, allow_data_change=self._allow_data_change)
            if self.master_process:
                remove_stale_temporaries(self.checkpoints_dir, "*.ckpt")
            start = time.perf_counter()
            if self._budget is not None:
                self._budget.start(self.plan, sum(p.numel() for p in self.model.parameters()),
                                   self._validation_tokens)
            if self.verbose and self.master_process:
                print_start(self, ckpt, self._budget.seconds if self._budget is not None else None)
            self._trained = True
            with quiet_lightning(self.verbose and self.master_process), stop_on_signals(self._on_stop_signal):
                try:
                    self._trainer.fit(self._module, train_dataloaders=self.train_data_loader,
                                      val_dataloaders=self.val_data_loader, ckpt_path=ckpt)
                except RuntimeError as err:  # a peer's death reaches the others as a collective's backend error
                    log = self.logs_dir / f"traceback-rank{self._trainer.global_rank}.txt"
                    lost = peer_lost(err, self._trainer.world_size, log, find_last_checkpoint(self.checkpoints_dir))
                    if lost is not None:
                        raise lost from None
                    if out_of_memory(err):
                        raise training_too_large(self.model, self.current_step, self.device) from None
                    raise
        finally:
            if self._csv is not None:
                self._csv.close()
            if self._run_lock is not None:
                self._run_lock.release()
                self._run_lock = None
        elapsed = time.perf_counter() - start
        last, stop = self._module.last_step, self._cadence.stop_reason
        result = {"best_val_loss": self.best_val_loss, "train_loss": float(last.loss) if last else math.nan,
                  "steps_completed": self.current_step, "epochs_completed": self.current_epoch,
                  "tokens": self.current_step * self.plan.tokens_per_step, "total_training_time": elapsed,
                  "interrupted": stop in ("signal", "preempt"), "stopped_early": stop == "request",
                  "requeued": None}
        budget = self._budget
        if budget is not None and stop is None and not budget.reached and self.master_process and last is not None:
            warnings.warn(budget.step_limit_warning(self.current_step, last.lr, self._module.schedule), stacklevel=2)
        if stop == "preempt" and self._requeue and self.master_process:
            result["requeued"] = requeue_slurm_job()
        if self.master_process:
            print_end(result, self._cadence.start_step, self.checkpoints_dir, self.verbose)
        return result

    def _on_stop_signal(self, signum, frame) -> None:
        self._cadence.request_stop("preempt" if signum == PREEMPTION else "signal")
        lightning_internals.clear_sigterm_flag(self._trainer)


_DEFAULTS = {name: p.default for name, p in inspect.signature(Trainer).parameters.items()}

