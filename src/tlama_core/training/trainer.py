"""The documented `Trainer`: its parameters become a configured `lightning.Trainer`, which runs the loop.

The facade translates (tokens -> accumulation, optimizer steps -> micro-batch counts, spec hooks -> Lightning
hooks, mixed precision -> a precision plugin) and keeps the documented attributes in sync; Lightning executes.
"""

from __future__ import annotations

import inspect
import logging
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, TQDMProgressBar

from tlama_core.atomic import remove_stale_temporaries
from tlama_core.data.workers import shield_workers
from tlama_core.models import Transformer
from tlama_core.training.batching import StepPlan, ends_step, micro_batch_shape, plan_steps
from tlama_core.training.cadence import StepCadence
from tlama_core.training.checkpointing import (
    MODEL_BEST_NAME,
    AtomicCheckpointIO,
    find_last_checkpoint,
    model_checkpoint_name,
    step_checkpoint_name,
)
from tlama_core.training.checks import check_run_settings
from tlama_core.training.csv_log import CsvLog
from tlama_core.training.finite import check_model_finite
from tlama_core.training.hooks import HookBridge, step_metrics
from tlama_core.training.module import TlamaLightningModule
from tlama_core.training.optim import build_optimizer, check_muon_strategy, shards_parameters
from tlama_core.training.run_files import TOKENIZER_KEY, keep_tokenizer
from tlama_core.training.run_lock import RunLock

LOG_NAME = "train_log.csv"


class _ProgressBar(TQDMProgressBar):
    """Lightning's bar, counting optimizer steps (Lightning's counts micro-batches) and showing the metrics of the
    latest logged step (loss, lr, tokens/s)."""

    def __init__(self, cadence: StepCadence) -> None:
        super().__init__()
        self.cadence = cadence

    @property
    def total_train_batches(self) -> int | float:
        total = super().total_train_batches
        return total if math.isinf(total) else total // self.cadence.plan.grad_accum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if ends_step(batch_idx, trainer.accumulate_grad_batches):
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx // trainer.accumulate_grad_batches)

    def get_metrics(self, trainer, pl_module) -> dict[str, Any]:
        metrics = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in self.cadence.progress.items()}
        if pl_module.last_val:
            metrics["val_loss"] = f"{pl_module.last_val['val_loss']:.4f}"
        return metrics


class _SignalStop(Callback):
    """Gives SIGTERM back to the facade once training starts (Lightning registers its own handler inside fit).

    Lightning's handler broadcasts from inside the signal handler: a collective on the signalled process alone,
    which misaligns every later collective when processes are signalled a step apart (srun signals each task).
    The facade's handler only asks the cadence to stop; the cadence agrees on the stop step across processes.
    """

    def __init__(self, handler: Callable[[int, Any], None]) -> None:
        self.handler = handler

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self.handler)  # Lightning's teardown restores what preceded fit


class _StepLoader:
    """`accum` micro-batches at a time from one iterator over the train loader, kept across `train_step()` calls."""

    def __init__(self, loader: Any, accum: int) -> None:
        self.loader, self.accum = loader, accum
        self._it: Iterator | None = None

    def __len__(self) -> int:
        return self.accum

    def __iter__(self) -> Iterator:
        for _ in range(self.accum):
            batch = next(self._it, None) if self._it is not None else None
            if batch is None:  # first call, or the loader's pass is over: start the next pass
                self._it = iter(self.loader)
                batch = next(self._it)
            yield batch


class Trainer:
    """Trains a Tlama model on Lightning; every documented parameter keeps its documented default.

    Extras beyond the documented parameters (keyword-only): `compile` (torch.compile the model),
    `activation_checkpointing` (recompute each block in the backward pass: long sequences), `validation_batches`
    (validate on the first N val batches), `accelerator`, `devices`, `num_nodes`, `strategy` (passed to
    `lightning.Trainer`) and `trainer_kwargs` (any other `lightning.Trainer` keyword).
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
                 trainer_kwargs: dict[str, Any] | None = None) -> None:
        _check_counts(total_batch_size=total_batch_size, epochs=epochs, steps=steps,
                      validation_steps=validation_steps, checkpoint_steps=checkpoint_steps, log_steps=log_steps,
                      validation_batches=validation_batches)
        check_run_settings(rates={"gradient_clip_val": gradient_clip_val, "learning_rate": learning_rate,
                                  "weight_decay": weight_decay}, seed=seed, devices=devices,
                           directories={"checkpoints_dir": checkpoints_dir, "logs_dir": logs_dir})
        _check_model_and_optimisation(model, optimizer, scheduler, learning_rate, weight_decay)
        if not isinstance(callbacks, (list, tuple, type(None))):
            raise TypeError(f"Trainer: callbacks must be a list of hook objects, got {type(callbacks).__name__}; "
                            f"pass callbacks=[{type(callbacks).__name__}(...)].")
        shield_workers(train_data_loader, val_data_loader)  # before anything starts their workers
        self.verbose = verbose
        self.seed = seed
        self._set_seed(seed)

        module = model if isinstance(model, TlamaLightningModule) else TlamaLightningModule(
            model=model, learning_rate=learning_rate, weight_decay=weight_decay, scheduler=scheduler,
            optimizer=optimizer)
        if module.muon:
            check_muon_strategy(strategy)
        self._module = module
        self.model: Transformer = module.model
        self.scheduler = scheduler
        self.train_data_loader, self.val_data_loader = train_data_loader, val_data_loader
        batch_size, seq_length = micro_batch_shape(train_data_loader)
        _check_data_fits_model(train_data_loader, seq_length, self.model.config, "train_data_loader")
        if val_data_loader is not None:  # now, not at the first validation after hours of training
            _check_data_fits_model(val_data_loader, micro_batch_shape(val_data_loader, "val_data_loader")[1],
                                   self.model.config, "val_data_loader")

        self.device_type = _device_type(accelerator)
        self.precision = "bf16-mixed" if use_mixed_precision and has_fast_bf16(self.device_type) else "32-true"
        if self.device_type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~free speed, bf16 autocast covers the rest
            torch.backends.cudnn.allow_tf32 = True
        self._checkpoint_io = AtomicCheckpointIO()
        self._checkpoint_io.expected_config = self.model.config.to_dict()
        self._lightning_kwargs = dict(
            accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy, precision=self.precision,
            gradient_clip_val=gradient_clip_val or None, gradient_clip_algorithm="norm",
            check_val_every_n_epoch=None, num_sanity_val_steps=0, logger=False, enable_checkpointing=False,
            enable_model_summary=False, use_distributed_sampler=False, plugins=[self._checkpoint_io],
            default_root_dir=checkpoints_dir, limit_val_batches=validation_batches or 1.0,
            **(trainer_kwargs or {}),
        )
        # Lightning callbacks among `callbacks` join Lightning's own; the rest are hook objects (HookBridge).
        callbacks = list(callbacks or [])
        self._lightning_kwargs["callbacks"] = [cb for cb in callbacks if isinstance(cb, Callback)] + list(
            self._lightning_kwargs.get("callbacks") or [])
        callbacks = [cb for cb in callbacks if not isinstance(cb, Callback)]
        with _quiet_lightning(verbose):
            probe = L.Trainer(**{**self._lightning_kwargs, "enable_progress_bar": False})
        world_size = probe.world_size
        self.plan: StepPlan = plan_steps(batch_size, seq_length, _len_or_none(train_data_loader), total_batch_size,
                                         gradient_accumulation, steps, epochs, world_size)
        self.grad_accum_steps = self.plan.grad_accum
        module.seed, module.plan, module.compile_model = seed, self.plan, compile
        self.model.activation_checkpointing = activation_checkpointing

        self.master_process = master_process and probe.is_global_zero
        self._checkpoint_io.writes = self.master_process  # Lightning asks global rank 0 only; master_process too
        # The run's tokenizer, recorded in every checkpoint (generate/convert find it); copied when the run owns
        # its directory (`_keep_tokenizer`), not here: a Trainer that is built and never trained writes nothing.
        self._tokenizer_path = getattr(train_data_loader, "tokenizer_path", None)
        tokenizer = keep_tokenizer(self._tokenizer_path, checkpoints_dir, write=False)
        if tokenizer is not None:
            self._checkpoint_io.annotations[TOKENIZER_KEY] = tokenizer
        self.checkpoints_dir, self.logs_dir = Path(checkpoints_dir), Path(logs_dir)
        self.log_file = str(self.logs_dir / LOG_NAME)
        self._csv = CsvLog(self.log_file) if self.master_process else None
        self._bridge = HookBridge(self, callbacks)
        self._checkpoint_io.listeners.append(self._bridge.checkpoint_written)
        self._cadence = StepCadence(self.plan, log_steps, validation_steps, checkpoint_steps, checkpoints_dir,
                                    self._csv, has_validation=val_data_loader is not None)
        self._trainer = self._lightning_trainer(self._cadence, self._bridge, progress=verbose and self.master_process,
                                                extra_callbacks=[_SignalStop(self._on_stop_signal)])
        self.device: torch.device = self._trainer.strategy.root_device
        if optimizer is None and not shards_parameters(strategy):
            module.optimizer = build_optimizer(self.model, module.learning_rate, module.weight_decay, self.device_type,
                                               muon=module.muon)
        self.optimizer = module.optimizer
        self._stepper: L.Trainer | None = None
        self._trained = False
        self._bridge.fire("on_init_end")

    # ---- translation ---------------------------------------------------------------------------------
    def _lightning_trainer(self, cadence: StepCadence, bridge: HookBridge, progress: bool,
                           extra_callbacks: list[Callback] | None = None, **overrides: Any) -> L.Trainer:
        callbacks = [bridge, cadence, *(extra_callbacks or [])] + ([_ProgressBar(cadence)] if progress else [])
        callbacks += self._lightning_kwargs["callbacks"]  # Lightning callbacks from `callbacks` and trainer_kwargs
        kwargs = {**self._lightning_kwargs, "enable_progress_bar": progress, "callbacks": callbacks,
                  "max_epochs": self.plan.epochs, "max_steps": self.plan.max_steps,
                  "limit_train_batches": self.plan.steps_per_epoch * self.plan.grad_accum,
                  "accumulate_grad_batches": self.plan.grad_accum,
                  "val_check_interval": self._cadence.validation_steps * self.plan.grad_accum, **overrides}
        with _quiet_lightning(self.verbose and self.master_process):
            return L.Trainer(**kwargs)

    # ---- documented attributes -----------------------------------------------------------------------
    @property
    def current_step(self) -> int:
        """Optimizer steps completed (the global step)."""
        return self._active().global_step

    @property
    def current_epoch(self) -> int:
        return self._trainer.current_epoch

    @property
    def best_val_loss(self) -> float:
        return self._cadence.best_val_loss

    def _active(self) -> L.Trainer:
        return self._stepper if self._stepper is not None else self._trainer

    def _fitting(self) -> bool:
        """Whether `train()` is running its steps (this is called from a hook), not yet past its final one."""
        state = self._trainer.state
        return (self._stepper is None and state.fn == "fit" and state.stage is not None
                and not self._cadence.finished)

    # ---- documented methods --------------------------------------------------------------------------
    def _set_seed(self, seed: int) -> None:
        """Seed Python, NumPy and torch (and loader workers) through Lightning's seeding."""
        L.seed_everything(seed, workers=True, verbose=False)

    def _log_metrics(self, metrics: dict[str, Any]) -> None:
        """Append one row to the CSV log (master process only); epoch, step and timestamp are filled in."""
        if self._csv is None:
            return
        row = {"epoch": self.current_epoch, "step": self.current_step, "timestamp": round(time.time(), 3), **metrics}
        self._csv.write(row)

    def _save_checkpoint(self, val_loss: float | None = None, is_best: bool = False) -> str | None:
        """Save a checkpoint of the current step (and `best.ckpt` when is_best); the master returns its path.

        From a hook while `train()` runs, the run's own resumable `step=N.ckpt` is written when the step is
        finished, after its validation and CSV row (a file saved before them would resume past them), and
        `on_checkpoint_end` announces it; processes agree on it, so a hook running on the master alone is fine.
        Outside training (before it, after it, around `train_step()`) the file is `model-step=N.ckpt` (and
        `model-best.ckpt`): the model, its config and the optimizer, for `load_model`. Only a
        running fit can write the loop and loader state a resume needs: such files never replace a run's own,
        "last" never picks them, and resuming from one is an error that says so.
        """
        if self._fitting():
            self._cadence.request_save(val_loss, is_best)
            path = self.checkpoints_dir / step_checkpoint_name(self.current_step)
            return str(path) if self.master_process else None
        path = self.checkpoints_dir / model_checkpoint_name(self.current_step)
        checkpoint = {  # the contents SPEC.md documents, by hand: Lightning saves only inside fit
            "state_dict": self._module.state_dict(), "model_config": self.model.config.to_dict(),
            "optimizer_states": [self.optimizer.state_dict()] if self.optimizer else [],
            "epoch": self.current_epoch, "global_step": self.current_step, "step": self.current_step,
            "val_loss": val_loss, "pytorch-lightning_version": L.__version__,
        }
        check_model_finite(self.model, path)
        if self.master_process:
            self._keep_tokenizer()
            self._checkpoint_io.save_checkpoint(checkpoint, path)
            if is_best:
                self._checkpoint_io.save_checkpoint(checkpoint, self.checkpoints_dir / MODEL_BEST_NAME)
            self._checkpoint_io.wait()  # an explicit save returns once its files are in place (and announced)
        if is_best and val_loss is not None:
            self._cadence.best_val_loss = min(self._cadence.best_val_loss, val_loss)
        return str(path) if self.master_process else None

    def validate(self) -> float | None:
        """Mean validation loss over the val loader (its first `validation_batches`), or None without one."""
        if self.val_data_loader is None:
            return None
        if self._fitting():
            raise RuntimeError(
                "Trainer.validate(): called while train() runs (from a hook); Lightning cannot start a validation "
                "inside its fit. The run validates every validation_steps steps and passes the result to "
                "on_validate_end; lower validation_steps to validate more often."
            )
        with _quiet_lightning(False):
            self._trainer.validate(self._module, dataloaders=self.val_data_loader, verbose=False)
        val_loss = self._module.last_val["val_loss"]
        self._cadence.best_val_loss = min(self._cadence.best_val_loss, val_loss)
        return val_loss

    def train_step(self) -> dict[str, float]:
        """Run exactly one optimizer step (all its micro-batches) and return its metrics.

        Successive calls continue one data stream and one optimizer state. For driving steps by hand
        (notebooks, debugging): `train()` runs a whole run instead, and the two are not mixed in one Trainer.
        """
        if self._trained:
            raise RuntimeError("Trainer.train_step(): this Trainer already ran train(); build a new Trainer to step.")
        if self._stepper is None:
            bridge = HookBridge(self, self._bridge.callbacks)
            bridge.run_hooks = False
            self._checkpoint_io.listeners = [bridge.checkpoint_written]
            cadence = StepCadence(self.plan, 1, 1, 1, self.checkpoints_dir, None, has_validation=False)
            cadence.enabled = False
            cadence.load_state_dict(self._cadence.state_dict())
            self._cadence = cadence
            self._stepper = self._lightning_trainer(cadence, bridge, progress=False, max_epochs=-1,
                                                    limit_train_batches=None, val_check_interval=None,
                                                    limit_val_batches=0)
            self._step_loader = _StepLoader(self.train_data_loader, self.plan.grad_accum)
        self._stepper.fit_loop.epoch_loop.max_steps = self._stepper.global_step + 1
        with _quiet_lightning(False):
            self._stepper.fit(self._module, train_dataloaders=self._step_loader)
        return step_metrics(self._module)

    def request_stop(self) -> None:
        """Stop `train()` after the current optimizer step (validated, logged and checkpointed); callable from
        any hook, e.g. early stopping in `on_validate_end`. The result then says `stopped_early`. With several
        processes a stop asked for on one (a hook on the master) stops them all at the same step."""
        self._cadence.request_stop("request")

    def train(self, ckpt_path: str | None = None) -> dict[str, Any]:
        """Run the whole training; `ckpt_path` (a file or "last") resumes exactly where that checkpoint stopped."""
        if self._stepper is not None:
            raise RuntimeError("Trainer.train(): train_step() was used on this Trainer; build a new Trainer to train.")
        lock = RunLock(self.checkpoints_dir, self.logs_dir).acquire() if self.master_process else None
        try:
            self._keep_tokenizer()
            ckpt = self._resolve_checkpoint(ckpt_path)
            if self.master_process:
                remove_stale_temporaries(self.checkpoints_dir, "*.ckpt")
            start = time.perf_counter()
            self._summary_start(ckpt)
            self._trained = True
            with _quiet_lightning(self.verbose and self.master_process), self._stop_on_signals():
                self._trainer.fit(self._module, train_dataloaders=self.train_data_loader,
                                  val_dataloaders=self.val_data_loader, ckpt_path=ckpt)
        finally:
            if self._csv is not None:
                self._csv.close()
            if lock is not None:
                lock.release()
        elapsed = time.perf_counter() - start
        last = self._module.last_step
        result = {
            "best_val_loss": self.best_val_loss,
            "train_loss": float(last.loss) if last is not None else math.nan,
            "steps_completed": self.current_step,
            "epochs_completed": self.current_epoch,
            "tokens": self.current_step * self.plan.tokens_per_step,
            "total_training_time": elapsed,
            "interrupted": self._cadence.stop_reason == "signal",
            "stopped_early": self._cadence.stop_reason == "request",
        }
        self._summary_end(result)
        return result

    # ---- run plumbing --------------------------------------------------------------------------------
    def _keep_tokenizer(self) -> None:
        """Copy the run's tokenizer into checkpoints_dir (master process, once per tokenizer version)."""
        if self.master_process:
            keep_tokenizer(self._tokenizer_path, self.checkpoints_dir)

    def _resolve_checkpoint(self, ckpt_path: str | None) -> str | None:
        if ckpt_path != "last":
            return ckpt_path
        last = find_last_checkpoint(self.checkpoints_dir)
        if last is None:
            warnings.warn(f"ckpt_path='last': no checkpoint in {self.checkpoints_dir} yet; starting fresh.",
                          stacklevel=3)
            return None
        return str(last)

    @contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        """SIGINT/SIGTERM: finish the current optimizer step, checkpoint it, and stop (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {s: signal.signal(s, self._on_stop_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    def _on_stop_signal(self, signum, frame) -> None:
        self._cadence.request_stop("signal")
        # Lightning chains its own SIGTERM handler before this one while fit sets up (until _SignalStop takes
        # SIGTERM back); its flag makes the loops raise SIGTERMException, a silent exit 0 mid-step with no
        # checkpoint. The cadence owns the stop.
        self._trainer._signal_connector.received_sigterm = False

    def _summary_start(self, ckpt: str | None) -> None:
        if not (self.verbose and self.master_process):
            return
        p = self.plan
        print(f"tlama-core: {self.model.num_params() / 1e6:.2f}M parameters on {self.device} "
              f"({self._trainer.precision}), {p.world_size} process(es)")
        print(f"  {p.batch_size} x {p.seq_length} tokens per micro-batch, {p.grad_accum} accumulation step(s): "
              f"{p.tokens_per_step:,} tokens per optimizer step; {p.steps_per_epoch} steps x {p.epochs} epoch(s)")
        print(f"  log: {self.log_file}  checkpoints: {self.checkpoints_dir}/" + (f"  resuming {ckpt}" if ckpt else ""))

    def _summary_end(self, result: dict[str, Any]) -> None:
        if self.master_process and result["interrupted"]:
            print(f"tlama-core: interrupted; checkpoint of step {result['steps_completed']} saved in "
                  f"{self.checkpoints_dir}/. Resume with train(ckpt_path='last') (CLI: --ckpt_path last).")
        if not (self.verbose and self.master_process):
            return
        start = self._cadence.start_step  # None: resumed from the run's final checkpoint, nothing left to train
        run_steps = result["steps_completed"] - start if start is not None else 0  # this run's time covers these
        print(f"tlama-core: {result['steps_completed']} steps, {result['tokens']:,} tokens; {run_steps} steps in "
              f"{result['total_training_time']:.1f} s this run; last train loss {result['train_loss']:.4f}, "
              f"best val loss {result['best_val_loss']:.4f}")


def _check_counts(**counts: int | None) -> None:
    for name, value in counts.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"Trainer: {name}={value!r} must be an integer >= 1" + (
                " (or None)." if name in ("steps", "validation_batches") else "."))


def _check_model_and_optimisation(model: Any, optimizer: Any, scheduler: Any, learning_rate: float,
                                  weight_decay: float) -> None:
    """The model is ours; the optimisation arguments fit it and each other (else they would be dropped)."""
    if not isinstance(model, (Transformer, TlamaLightningModule)):
        raise TypeError(f"Trainer: model must be a tlama_core Transformer (or a TlamaLightningModule wrapping one), "
                        f"got {type(model).__name__}; build it with Transformer(TlamaConfig(...)).")
    if isinstance(model, TlamaLightningModule):
        defaults = inspect.signature(Trainer).parameters
        given = [name for name, value in (("optimizer", optimizer), ("scheduler", scheduler),
                                          ("learning_rate", learning_rate), ("weight_decay", weight_decay))
                 if value != defaults[name].default]
        if given:
            raise ValueError(f"Trainer: model is a TlamaLightningModule, which holds its own optimisation settings, "
                             f"so {', '.join(given)} would be ignored; give them to TlamaLightningModule(...).")
    if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"Trainer: optimizer must be a torch.optim.Optimizer over the model's parameters, got "
                        f"{optimizer!r}.")
    if scheduler is not None and not callable(scheduler):
        raise TypeError(f"Trainer: scheduler must map an optimizer step to a learning rate (e.g. get_lr_scheduler"
                        f"(...)), got {scheduler!r}.")
    if optimizer is not None and scheduler is None and optimizer.param_groups[0]["lr"] != learning_rate:
        warnings.warn(f"Trainer: the optimizer's lr={optimizer.param_groups[0]['lr']} is replaced by "
                      f"learning_rate={learning_rate} (without a scheduler the run trains at learning_rate); pass "
                      f"learning_rate={optimizer.param_groups[0]['lr']} to keep it.", stacklevel=3)


def _check_data_fits_model(loader: Any, seq_length: int, config, name: str) -> None:
    if seq_length > config.max_seq_len:
        raise ValueError(
            f"Trainer: {name}'s seq_length={seq_length} exceeds the model's max_seq_len={config.max_seq_len}; "
            "use shorter sequences or a model with a larger max_seq_len."
        )
    vocab = getattr(loader, "vocab_size", None)
    if vocab is None:
        first = next(iter(loader))
        vocab = int(max(t.max() for t in first[:2])) + 1
    if vocab > config.vocab_size:
        raise ValueError(
            f"Trainer: {name}'s tokenizer vocab ({vocab} ids) is larger than the model's vocab_size="
            f"{config.vocab_size}; build the model with vocab_size >= {vocab}."
        )


def _device_type(accelerator: str) -> str:
    if accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available():
        return "cuda"
    if accelerator in ("auto", "mps") and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def has_fast_bf16(device_type: str) -> bool:
    """Whether bf16 autocast speeds training up on this device: CUDA, and CPUs with bf16 matrix units (AMX or
    AVX512-BF16, where oneDNN's bf16 matmuls run about twice as fast as fp32). Elsewhere bf16 is emulated, slower."""
    if device_type == "cuda":
        return True
    if device_type != "cpu" or not hasattr(torch.cpu, "get_capabilities"):  # older torch: no way to ask
        return False
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("amx_bf16") or capabilities.get("avx512_bf16"))


def _len_or_none(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:
        return None


@contextmanager
def _quiet_lightning(verbose: bool) -> Iterator[None]:
    """Keep Lightning's info lines (device summary) and loader-worker hints out of a quiet run's output."""
    lightning_logger = logging.getLogger("lightning.pytorch")
    level = lightning_logger.level
    if not verbose:
        lightning_logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=".*The number of training batches.*")
            # The module always defines validation_step; a run without a val loader is the facade's normal case.
            warnings.filterwarnings("ignore", message=".*defined a `validation_step` but have no `val_dataloader`.*")
            yield
    finally:
        lightning_logger.setLevel(level)
