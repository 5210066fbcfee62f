"""Training: the `Trainer` facade on Lightning, its LightningModule, optimizers and learning-rate schedules.

Layout: trainer.py (the facade), arguments.py (its checks), plan.py (optimizer steps <-> Lightning's micro-batch
counters), optim.py, scheduler.py, sharding.py, time_budget.py, lightning_internals.py (the one file of Lightning's
private names, at the bottom: every layer may need one); lightning/ (the adapters Lightning calls: the module, the
hook bridge, the step cadence, signals, progress, precision); records/ (the metrics row, its CSV log and loggers,
throughput and MFU); files/ (checkpoint IO, the run's checkpoints, sharded saves, finite-weight checks, the run's
tokenizer).
"""

from tlama_core.training import moved
from tlama_core.training.files.checkpoint_io import AtomicCheckpointIO
from tlama_core.training.files.finite import weights_finite
from tlama_core.training.lightning.module import TlamaLightningModule, empty_init
from tlama_core.training.lightning.precision import has_fast_bf16
from tlama_core.training.optim import MuonAdamW, build_optimizer
from tlama_core.training.records.metrics import read_rows
from tlama_core.training.records.throughput import flops_per_token, peak_flops
from tlama_core.training.scheduler import get_lr_scheduler, plot_lr_schedule
from tlama_core.training.trainer import Trainer

moved.install()

__all__ = ["Trainer", "TlamaLightningModule", "MuonAdamW", "build_optimizer", "get_lr_scheduler", "plot_lr_schedule",
           "empty_init", "has_fast_bf16", "weights_finite", "read_rows", "AtomicCheckpointIO", "flops_per_token",
           "peak_flops"]
