"""Training: the `Trainer` facade on Lightning, its LightningModule and the learning-rate schedules."""

from tlama_core.training.module import TlamaLightningModule
from tlama_core.training.optim import MuonAdamW, build_optimizer
from tlama_core.training.scheduler import get_lr_scheduler, plot_lr_schedule
from tlama_core.training.trainer import Trainer

__all__ = ["Trainer", "TlamaLightningModule", "MuonAdamW", "build_optimizer", "get_lr_scheduler", "plot_lr_schedule"]
