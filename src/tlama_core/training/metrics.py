"""The per-step metrics row: one producer (`metrics_row`) and its sinks (the CSV log and Lightning's loggers
through `MetricSinks`; `on_step_end` through `hook_metrics`), so every sink sees the same numbers at the same step.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from lightning.pytorch.loggers import Logger

from tlama_core.training.csv_log import CsvLog
from tlama_core.training.throughput import tokens_per_sec

# The row's measured values, under the CSV log's column names; loggers get these (and the epoch) at x = step.
VALUES = ("train_loss", "learning_rate", "grad_norm", "val_loss", "val_bpc", "tokens_per_sec",
          "tokens_per_sec_per_device", "mfu")


def step_values(rec: Any) -> dict[str, float | None]:
    """An optimizer step's own numbers from its `StepRecord` (this reads device values: a sync on GPUs)."""
    return {"train_loss": float(rec.loss), "learning_rate": rec.lr,
            "grad_norm": float(rec.grad_norm) if rec.grad_norm is not None else None}


def metrics_row(epoch: int, step: int, rec: Any, rates: dict[str, float | None],
                val: dict[str, float] | None) -> dict[str, Any]:
    """The row of one logged optimizer step: its values, the throughput since the previous row and, at a
    validated step, its validation metrics."""
    return {"epoch": epoch, "step": step, "timestamp": round(time.time(), 3), **step_values(rec),
            "val_loss": val["val_loss"] if val else None, "val_bpc": val.get("val_bpc") if val else None, **rates}


def hook_metrics(rec: Any) -> dict[str, float]:
    """What `on_step_end` receives after every step: the step's values (`lr` is `learning_rate`'s documented
    name there) and this step's own tokens/s; nan where a value is unknown."""
    values = {k: (math.nan if v is None else v) for k, v in step_values(rec).items()}
    rate = tokens_per_sec(rec.tokens, rec.seconds)
    return {**values, "lr": rec.lr, "tokens_per_sec": math.nan if rate is None else rate, "step": rec.step}


def run_hyperparameters(module: Any, plan: Any, **run: Any) -> dict[str, Any]:
    """What loggers record once per run: the module's model and optimisation, the batch arithmetic of the
    `StepPlan` and the run's other settings (`run`)."""
    return {**module.hyperparameters(), "run": {
        "batch_size": plan.batch_size, "seq_length": plan.seq_length, "grad_accum_steps": plan.grad_accum,
        "world_size": plan.world_size, "tokens_per_step": plan.tokens_per_step,
        "steps_per_epoch": plan.steps_per_epoch, "epochs": plan.epochs, "max_steps": plan.max_steps, **run}}


class MetricSinks:
    """Where rows go: the CSV log (None on a process that writes no files) and the run's Lightning loggers.

    `hyperparameters` (plain values, nested dicts allowed) go to every logger once, when the run's log opens.
    """

    def __init__(self, csv_log: CsvLog | None, hyperparameters: dict[str, Any] | None = None) -> None:
        self.csv_log = csv_log
        self.hyperparameters = hyperparameters or {}

    def open(self, loggers: Sequence[Logger], resume_step: int | None) -> None:
        """Start the run's log (`CsvLog.open`: a resumed run keeps its rows up to `resume_step`) and log the
        hyperparameters."""
        if self.csv_log is not None:
            self.csv_log.open(resume_step=resume_step)
        if self.hyperparameters:
            for logger in loggers:
                logger.log_hyperparams(self.hyperparameters)

    def write(self, row: dict[str, Any], loggers: Sequence[Logger]) -> None:
        if self.csv_log is not None:
            self.csv_log.write(row)
        values = {k: row[k] for k in VALUES if row.get(k) is not None}
        for logger in loggers:
            logger.log_metrics({"epoch": row["epoch"], **values}, step=row["step"])
