"""TlamaLightningModule: the Transformer, its optimizer and its step -> lr schedule, as Lightning wants them."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import lightning as L
import torch
from torch.distributed.tensor import DTensor

from tlama_core.checkpoints import CheckpointError
from tlama_core.models import TlamaConfig, Transformer, load_model
from tlama_core.training import lightning_internals
from tlama_core.training.arguments import check_rate, check_weight_averaging
from tlama_core.training.files.finite import check_weights_finite
from tlama_core.training.lightning.held_out import HeldOutLoss
from tlama_core.training.optim import MuonAdamW, build_optimizer, by_index, by_name, check_muon_strategy, keyed_by_name
from tlama_core.training.plan import Accumulation, MicroBatches, StepPlan, step_tokens
from tlama_core.training.records.metrics import StepRecord
from tlama_core.training.scheduler import (
    LRSchedule,
    StepFunctionLR,
    constant_schedule,
    fit_schedule_to_run,
    follow_rate,
)
from tlama_core.training.sharding import (
    data_parallel,
    has_meta,
    is_model_parallel,
    is_sharded,
    materialize,
    shard_loaders,
    shard_model,
)

_EMPTY_INIT: ContextVar[bool] = ContextVar("tlama_empty_init", default=False)


@contextlib.contextmanager
def empty_init(enabled: bool = True) -> Iterator[None]:
    """Inside this block (when `enabled`), `TlamaLightningModule(config=...)` builds its Transformer on the meta
    device: shapes only, no memory. A sharding strategy then gives each process its shards, drawn as
    `Transformer(config)` draws them (`tlama fit` builds the model so under fsdp2 or ModelParallelStrategy)."""
    token = _EMPTY_INIT.set(enabled)
    try:
        yield
    finally:
        _EMPTY_INIT.reset(token)


class TlamaLightningModule(L.LightningModule):
    """Wraps a Transformer for Lightning: loss per micro-batch, lr per optimizer step, step metrics, val loss.

    Give either `config` (a new model, as the YAML/CLI does), `init_from` (weights to continue from) or `model` (an
    existing Transformer, as the `Trainer` facade does). `scheduler` maps an optimizer step (from 0) to a learning
    rate; without one the rate is `learning_rate` throughout.

    Args:
        config: The shape of a new model (TlamaConfig).
        learning_rate: The rate at every step when no scheduler is given.
        weight_decay: Weight decay of the 2-D weight matrices (norms decay 0).
        muon: Muon (torch.optim.Muon) for the blocks' weight matrices, AdamW for embeddings, output and norms;
            the same learning rate, schedule and weight decay drive both. False: AdamW for everything.
        scheduler: Learning rate per optimizer step (LRSchedule); null: learning_rate throughout.
        init_from: Start from these weights (a .ckpt, a checkpoints directory, a safetensors or Hugging Face
            directory) with a fresh optimizer and schedule, at step 0; the config is theirs, and a `config` given
            too must equal it.
        model: An existing Transformer instead of config (Python API).
        optimizer: An optimizer instead of the default AdamW (Python API).
    """

    def __init__(self, config: TlamaConfig | None = None, learning_rate: float = 6e-4, weight_decay: float = 0.1,
                 scheduler: LRSchedule | None = None, muon: bool = False, init_from: str | None = None, *,
                 model: Transformer | None = None, optimizer: torch.optim.Optimizer | None = None) -> None:
        super().__init__()
        if init_from is not None and model is not None:
            raise ValueError("TlamaLightningModule: give either `init_from` (weights to load) or `model`.")
        if init_from is not None:
            model, config = load_model(init_from, expect=config).train(), None
        if (config is None) == (model is None):
            raise ValueError("TlamaLightningModule: give exactly one of `config` (a new model) or `model`.")
        if muon and optimizer is not None:
            raise ValueError("TlamaLightningModule: muon=True builds its own optimizer; pass either muon=True or "
                             "optimizer=..., e.g. optimizer=build_optimizer(model, lr, weight_decay, muon=True).")
        check_rate("TlamaLightningModule", "weight_decay", weight_decay)
        with torch.device("meta") if model is None and _EMPTY_INIT.get() else contextlib.nullcontext():
            self.model = model if model is not None else Transformer(config)
        self.learning_rate, self.weight_decay, self.muon = learning_rate, weight_decay, muon
        self.schedule: Callable[[int], float] = scheduler or constant_schedule(learning_rate)
        self.optimizer = optimizer
        # What a run of the `Trainer` facade gives it (`attach_run`); these defaults serve a plain lightning.Trainer.
        self.seed = 1337  # reseeds every optimizer step, see on_train_batch_start
        self.plan: StepPlan | None = None
        self.compile_model = False
        # `self.log` feeds Lightning's callbacks (ModelCheckpoint, EarlyStopping) always, and its loggers unless
        # the facade's own metrics row reaches them (one row, one x axis).
        self.log_to_loggers = True
        # Only the Transformer goes on the meta device (`trainer.init_module(empty_init=True)`): configure_model
        # materialises it, and a meta tensor left on the module would make Lightning re-empty the whole module and
        # reset it with torch's default inits (RMSNorm, which has none, keeping uninitialised memory).
        with torch.device("cpu") if torch.get_default_device().type == "meta" else contextlib.nullcontext():
            self.val_metrics, self.test_metrics = HeldOutLoss("val"), HeldOutLoss("test")
            # The first step whose loss was not finite, kept on the device (0: none yet): checking it every step
            # would synchronise the device; the cadence reads it at logged and checkpointed steps.
            self.register_buffer("first_bad_step", torch.zeros((), dtype=torch.long), persistent=False)
        self.last_step: StepRecord | None = None
        self.last_val: dict[str, float] | None = None
        self.micro_loss: torch.Tensor | None = None  # the latest micro-batch's own mean loss
        self.saving_val_loss: float | None = None  # see `saving`
        self.weights_checked_step: int | None = None  # the step whose weights were checked before a save
        self._reset_step_accumulators()
        self._restart_step_clock()

    @property
    def config(self) -> TlamaConfig:
        return self.model.config

    @property
    def learning_rate(self) -> float:
        """The rate of every step when no scheduler is given. Setting it, as Lightning's `Tuner.lr_find` does with
        its suggestion, moves that flat schedule to the new rate; with a scheduler it warns (the scheduler's rates
        stand)."""
        return self._learning_rate

    @learning_rate.setter
    def learning_rate(self, value: float) -> None:
        old, self._learning_rate = getattr(self, "_learning_rate", None), check_rate(type(self).__name__,
                                                                                     "learning_rate", value)
        if old is not None and value != old:
            self.schedule = follow_rate(self.schedule, old, value)
            if hasattr(self, "_lr_scheduler"):
                self._lr_scheduler.fn = self.schedule

    def _reset_step_accumulators(self) -> None:
        self._loss_sum: torch.Tensor | float = 0.0
        self._step_tokens = 0  # tokens of this process's micro-batches in the running step
        self._grad_norm: torch.Tensor | None = None

    # ---- the step clock: wall time from one optimizer step's end to the next ------------------------------
    # Loading the batches, Lightning's loop, the hooks and the previous logged step's device sync all count;
    # only what the cadence excludes (validation, checkpoint saving) does not. A clock started in
    # on_train_batch_start would miss each step's first batch fetch: a stalled loader would not show.
    def _restart_step_clock(self) -> None:
        self._step_clock = time.perf_counter()
        self._excluded_seconds = 0.0

    def exclude_time(self, seconds: float) -> None:
        """Leave `seconds` (spent validating or saving a checkpoint) out of the running step's time."""
        self._excluded_seconds += seconds

    def on_train_start(self) -> None:
        self._restart_step_clock()  # the first step's time includes loading its first batch
        configs = self.trainer.lr_scheduler_configs
        if configs and configs[0].scheduler is getattr(self, "_lr_scheduler", None):
            # The schedule's rate from the first step, whatever was written into the optimizer (lr_find's
            # suggestion). A scheduler Lightning swapped in (the finder's own range) sets the rate alone.
            self._lr_scheduler.refresh()
        rank, readers = data_parallel(self.trainer.strategy, self.global_rank, self.trainer.world_size)
        if readers != self.trainer.world_size:  # a tensor-parallel group's processes read the same batches (the
            val = self.trainer.val_dataloaders  # facade shards its loaders so; on a plain lightning.Trainer, here)
            shard_loaders(rank, readers, self.trainer.train_dataloader, *(val if isinstance(val, list) else [val]))
        if self.log_to_loggers:
            for logger in self.loggers:
                logger.log_hyperparams(self.hyperparameters())

    def hyperparameters(self) -> dict:
        """The model and its optimisation as plain values, for loggers (the facade adds the run's batch arithmetic).

        Not `save_hyperparameters`: that would put a TlamaConfig object into checkpoints, which `weights_only`
        loading refuses."""
        schedule = self.schedule
        return {"model": self.config.to_dict(), "learning_rate": self.learning_rate,
                "weight_decay": self.weight_decay, "muon": self.muon,
                "optimizer": type(self.optimizer).__name__ if self.optimizer is not None else "AdamW",
                "scheduler": dataclasses.asdict(schedule) if isinstance(schedule, LRSchedule) else repr(schedule)}

    # ---- the model on the strategy's devices ------------------------------------------------------------
    def configure_model(self) -> None:
        """Lightning calls this at every fit (and validate): under ModelParallelStrategy shard the model (tensor
        parallel, then FSDP2, compiled per block); give a meta-device model its memory and weights; compile."""
        strategy = self.trainer.strategy
        if is_model_parallel(strategy) and not is_sharded(self.model):
            if self.muon:
                check_muon_strategy(strategy)
            shard_model(self.model, self.device_mesh, mixed_precision=str(self.trainer.precision) == "bf16-mixed",
                        compile=self.compile_model)
        if has_meta(self.model):
            materialize(self.model, strategy.root_device)
        if self.compile_model and not is_sharded(self.model) and getattr(self.model, "_compiled_call_impl",
                                                                         None) is None:
            self.model.compile()

    def setup(self, stage: str) -> None:
        if stage == "fit":
            check_weight_averaging(type(self).__name__, self.trainer.callbacks)

    def on_fit_start(self) -> None:
        # Lightning only checks that configure_model is overridden: one that shards nothing would train
        # unsynchronised replicas (nothing all-reduces their gradients), without a word.
        if is_model_parallel(self.trainer.strategy) and not is_sharded(self.model):
            raise RuntimeError(
                f"{type(self).__name__}: the strategy is {type(self.trainer.strategy).__name__}, which leaves "
                "sharding to the module's configure_model, and the model was not sharded: its processes would "
                "train unsynchronised copies. Call super().configure_model() in your configure_model, or use "
                "strategy='ddp'.")

    def attach_run(self, plan: StepPlan, *, seed: int, compile: bool, schedule: Callable[[int], float],
                   activation_checkpointing: bool, optimizer_device: str | None) -> None:
        """Take the facade's run (its plan, seed, compile setting, schedule fitted to its length; its metrics row
        reaches the loggers); with `optimizer_device`, build the default optimizer now, on the parameters that will
        train. A method, not constructor arguments: the plan needs the built lightning.Trainer's world size."""
        self.plan, self.seed, self.compile_model, self.schedule = plan, seed, compile, schedule
        self.log_to_loggers = False
        self.model.activation_checkpointing = activation_checkpointing
        if self.optimizer is None and optimizer_device is not None:
            self.optimizer = build_optimizer(self.model, self.learning_rate, self.weight_decay, optimizer_device,
                                             muon=self.muon)

    @property
    def accumulation(self) -> MicroBatches:
        """How micro-batches make optimizer steps: the run's plan, or on a plain lightning.Trainer its
        `accumulate_grad_batches` (the one place that reads it)."""
        return self.plan if self.plan is not None else Accumulation(self.trainer.accumulate_grad_batches)

    def readers(self) -> int:
        """Processes reading distinct batches (every process, less tensor parallelism's duplicates)."""
        if self.plan is not None:
            return self.plan.readers
        return data_parallel(self.trainer.strategy, self.global_rank, self.trainer.world_size)[1]

    # ---- optimisation -------------------------------------------------------------------------------

    def configure_optimizers(self):
        if self.optimizer is None:
            if self.muon:
                check_muon_strategy(self.trainer.strategy)
            self.optimizer = build_optimizer(self.model, self.learning_rate, self.weight_decay, self.device.type,
                                             muon=self.muon)
        if not hasattr(self, "_lr_scheduler"):
            if isinstance(self.schedule, LRSchedule) and self.schedule.max_steps is None:
                # The run's length (the facade fills it in first: asking Lightning sets up the train loader early).
                self.schedule = fit_schedule_to_run(self.schedule, int(self.trainer.estimated_stepping_batches))
            self._lr_scheduler = StepFunctionLR(self.optimizer, self.schedule)
        # The same objects on every call: `Trainer.train_step()` re-enters fit and must keep optimizer state.
        return {"optimizer": self.optimizer,
                "lr_scheduler": {"scheduler": self._lr_scheduler, "interval": "step", "frequency": 1}}

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        if self.accumulation.starts_step(batch_idx):
            # Random ops (dropout) depend only on (seed, step, rank): a resumed run draws what an uninterrupted
            # one would, with no RNG state in the checkpoint.
            torch.manual_seed((self.seed * 1_000_003 + self.global_step * 7919 + self.global_rank) % 2**63)
            self._reset_step_accumulators()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch
        _, loss = self.model(x, targets=y)
        self.micro_loss = loss.detach()
        self._loss_sum = self._loss_sum + self.micro_loss
        self._step_tokens += x.numel()
        return loss  # Lightning divides it by the accumulation count before backward

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        # Lightning's own clipping discards the total norm; clip_grad_norm_ returns it, so the logged norm
        # (before clipping) costs no second pass over the gradients.
        max_norm = gradient_clip_val if gradient_clip_val else math.inf
        strategy_clip = getattr(self.trainer.model, "clip_grad_norm_", None)  # FSDP1's shards need its own
        if callable(strategy_clip) and self.trainer.model is not self:
            self._grad_norm = strategy_clip(max_norm)
        else:  # FSDP2 and tensor-parallel gradients are DTensors: the norm comes out global (a replicated DTensor)
            norm = torch.nn.utils.clip_grad_norm_(self.parameters(), max_norm, foreach=True)
            self._grad_norm = norm.full_tensor() if isinstance(norm, DTensor) else norm

    def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None) -> None:
        lr = optimizer.param_groups[0]["lr"]
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        loss = self._loss_sum / self.accumulation.grad_accum
        step = self.global_step + 1  # Lightning counts this step as completed only after this method returns
        seconds = time.perf_counter() - self._step_clock - self._excluded_seconds
        self._restart_step_clock()
        tokens = self._step_tokens * self.readers()  # the tokens read, not planned: a short batch counts short
        self.last_step = StepRecord(step, loss, lr, self._grad_norm, seconds, tokens)
        bad_now = (self.first_bad_step == 0) & ~torch.isfinite(loss)
        self.first_bad_step = torch.where(bad_now, step, self.first_bad_step)

    def reduce_step_loss(self) -> StepRecord:
        """The latest step's record with its loss averaged over processes (once: a collective, so every process
        calls this at the same step ends). The CSV row, the loggers and `on_step_end` all report this mean."""
        rec = self.last_step
        if not rec.reduced:
            rec.loss, rec.reduced = self.trainer.strategy.reduce(rec.loss, reduce_op="mean"), True
        return rec

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.accumulation.ends_step(batch_idx) and self.last_step is not None:
            # A tensor, not prog_bar: Lightning reads it on the host only when a logger writes (log_every_n_steps).
            to_loggers = self.log_to_loggers and bool(self.loggers)
            self.log("train_loss", self.last_step.loss, logger=to_loggers)
            if to_loggers:  # a float: Lightning copies it to the device, a sync each step on a GPU; the facade's
                self.log("learning_rate", self.last_step.lr)  # metrics row carries it to its loggers instead

    # ---- validation and test: the token-weighted loss over the loader (HeldOutLoss) ---------------------
    def on_validation_epoch_start(self) -> None:
        self.val_metrics.start(self.trainer.val_dataloaders)

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.val_metrics.update(self.model(x, targets=y)[1], y.numel())

    def on_validation_epoch_end(self) -> None:
        self.last_val = self.val_metrics.log(self, logger=self.log_to_loggers)

    def on_test_epoch_start(self) -> None:
        self.test_metrics.start(self.trainer.test_dataloaders)

    def test_step(self, batch, batch_idx: int) -> None:
        x, y = batch
        self.test_metrics.update(self.model(x, targets=y)[1], y.numel())

    def on_test_epoch_end(self) -> None:
        self.test_metrics.log(self, logger=self.log_to_loggers)

    # ---- checkpoints --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def saving(self, step: int, val_loss: float | None) -> Iterator[None]:
        """A save of the run's (the cadence's) at `step`, whose weights it has checked; `val_loss` (an explicit
        `Trainer._save_checkpoint(val_loss=...)`) is the one the checkpoint records."""
        self.weights_checked_step, self.saving_val_loss = step, val_loss
        try:
            yield
        finally:
            self.saving_val_loss = None

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # Every save (a ModelCheckpoint's, a plain lightning.Trainer's) refuses non-finite weights; the facade
        # checks before its own saves, naming the checkpoint "last" keeps, and is not checked twice. Lightning
        # calls this hook on every process of a save, so the check's collective is matched.
        if self.weights_checked_step != self.global_step:
            check_weights_finite(self.trainer, self, int(self.global_step))
            self.weights_checked_step = int(self.global_step)
        checkpoint["model_config"] = self.config.to_dict()
        states = checkpoint.get("optimizer_states") or []
        if len(states) == 1 and "state" in states[0] and not keyed_by_name(states[0]) and self.optimizer is not None:
            checkpoint["optimizer_states"] = [by_name(states[0], self, self.optimizer)]
        checkpoint["step"] = int(self.global_step)
        latest = self.last_val["val_loss"] if self.last_val else None
        checkpoint["val_loss"] = self.saving_val_loss if self.saving_val_loss is not None else latest
        if self.plan is not None:
            checkpoint["step_shape"] = self._step_shape()

    def _step_shape(self) -> dict[str, int]:
        """What one optimizer step is made of. Lightning counts the run's position in micro-batches: a resume
        with another accumulation has its counters rescaled, and one whose steps hold other tokens is refused."""
        p = self.plan
        return {"batch_size": p.batch_size, "seq_length": p.seq_length, "grad_accum": p.grad_accum,
                "world_size": p.world_size, "data_parallel": p.readers}

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        saved_shape = checkpoint.get("step_shape")
        if saved_shape and self.plan is not None:
            self._check_step_shape(saved_shape, checkpoint)
        states = checkpoint.get("optimizer_states") or [{}]
        saved_muon, muon = MuonAdamW.saved_this(states[0]), isinstance(self.optimizer, MuonAdamW)
        if self.optimizer is not None and states[0] and saved_muon != muon:  # else torch fails with a KeyError
            raise CheckpointError(f"the checkpoint's optimizer state is {'Muon' if saved_muon else 'AdamW'}'s, this "
                                  f"run's optimizer is {'Muon' if muon else 'AdamW'}'s: resume with model.muon="
                                  f"{str(saved_muon).lower()} (muon={saved_muon}), the setting the run started with.")
        if self.optimizer is not None and states[0] and keyed_by_name(states[0]):  # written by a sharded run
            checkpoint["optimizer_states"] = [by_index(states[0], self, self.optimizer)]
        epoch_batches = self.plan.micro_batches(self.plan.steps_per_epoch) if self.plan else 0
        lightning_internals.restore_epoch_position(checkpoint, epoch_batches)

    def _check_step_shape(self, saved: dict[str, int], checkpoint: dict) -> None:
        """A resume may change the number of processes when its steps keep their tokens: the accumulation is then
        another, and Lightning's micro-batch counters are rescaled to it (the loader's position counts windows)."""
        shape, p = self._step_shape(), self.plan
        saved_readers = saved.get("data_parallel", saved["world_size"])
        saved_tokens = step_tokens(saved["batch_size"], saved["seq_length"], saved["grad_accum"], saved_readers)
        same_micro = (saved["batch_size"], saved["seq_length"]) == (p.batch_size, p.seq_length)
        if same_micro and saved_tokens == p.tokens_per_step:
            if saved["grad_accum"] != p.grad_accum:
                lightning_internals.rescale_batch_progress(checkpoint, saved["grad_accum"], p.grad_accum)
            return
        diff = ", ".join(f"{k} {v} (this run {shape[k]})" for k, v in saved.items() if v != shape.get(k, v))
        raise CheckpointError(
            f"the checkpoint's optimizer steps were made of another shape: {diff}; {saved_tokens} tokens a step "
            f"against this run's {p.tokens_per_step}. Resume with the micro-batch size and seq_length the run "
            f"started with and total_batch_size={saved_tokens} (any number of processes that divides it).")
