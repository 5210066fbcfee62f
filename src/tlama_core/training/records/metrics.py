"""The per-step metrics row: one producer (`metrics_row`) and its sinks (the run's CSV log and Lightning's loggers
through `MetricSinks`; `on_step_end` through `hook_metrics`), so every sink sees the same numbers at the same step.

The CSV log is ours, not Lightning's CSVLogger (which `logger="csv"` adds beside it): on resume it keeps exactly
the rows up to the checkpoint's step, where CSVLogger would keep the rows of the steps the resumed run trains again.
It appends and flushes one line per logged step, in one file per run with the documented columns.
"""

from __future__ import annotations

import csv
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger

from tlama_core.atomic import atomic_write
from tlama_core.training.records.throughput import tokens_per_sec

COLUMNS = ("epoch", "step", "timestamp", "train_loss", "learning_rate", "grad_norm", "val_loss", "tokens_per_sec",
           "tokens_per_sec_per_device", "mfu", "val_bpc")


class CsvLog:
    """Appends rows with the documented columns to `path`; empty cells for values not measured at that step."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file: io.TextIOWrapper | None = None
        # Rows `write` appended before the run opened its log (`Trainer._log_metrics`); None once it has.
        self._rows_before_run: list[dict[str, Any]] | None = []

    def open(self, resume_step: int | None = None) -> None:
        """Start the run's log. A fresh run moves an older log aside; a resumed run keeps rows with step <=
        resume_step. Rows written before the run started stay in the run's log either way."""
        self.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            if resume_step is None:
                self.path.rename(_unused_name(self.path))
                if self._rows_before_run:
                    atomic_write(self.path, lambda f: f.write(_format(self._rows_before_run).encode()))
            else:  # rows written before the run are of step 0: kept
                kept = [r for r in read_rows(self.path) if int(r["step"]) <= resume_step]
                atomic_write(self.path, lambda f: f.write(_format(kept).encode()))
        self._rows_before_run = None
        self._append()

    def _append(self) -> None:
        new = not self.path.exists()
        self._file = open(self.path, "a", newline="")  # noqa: SIM115 - kept open for the run, closed by close()
        if new:
            self._file.write(",".join(COLUMNS) + "\n")
            self._file.flush()

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (before the run opens its log too: `open` carries such rows over)."""
        unknown = set(row) - set(COLUMNS)
        if unknown:
            raise ValueError(f"CSV log: no column for {sorted(unknown)}; the log's columns are {', '.join(COLUMNS)}. "
                             "Keep other metrics in your own file or logger.")
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._append()
        self._file.write(_format([row], header=False))
        self._file.flush()
        if self._rows_before_run is not None:
            self._rows_before_run.append(row)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _unused_name(path: Path) -> Path:
    """`NAME-<unix time>.csv`, or `NAME-<unix time>-2.csv`, ...: two runs started within a second each keep their
    log (the run's lock keeps a concurrent run from picking the same name meanwhile)."""
    stem = f"{path.stem}-{int(time.time())}"
    candidate, n = path.with_name(stem + path.suffix), 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{stem}-{n}{path.suffix}")
    return candidate


def read_rows(path: str | Path) -> list[dict[str, str]]:
    """The log's rows as dicts of strings (a line cut short by a kill is dropped)."""
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if r.get(COLUMNS[-1]) is not None]


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _format(rows: list[dict[str, Any]], header: bool = True) -> str:
    lines = [",".join(COLUMNS)] if header else []
    lines += [",".join(_cell(r.get(c)) for c in COLUMNS) for r in rows]
    return "".join(line + "\n" for line in lines)


# The row's measured values, under the CSV log's column names; loggers get these (and the epoch) at x = step.
VALUES = ("train_loss", "learning_rate", "grad_norm", "val_loss", "val_bpc", "tokens_per_sec",
          "tokens_per_sec_per_device", "mfu")


@dataclass
class StepRecord:
    """What one optimizer step produced; tensors stay on the device until a number is asked for."""

    step: int  # optimizer steps completed, this one included
    loss: torch.Tensor  # mean over the step's micro-batches
    lr: float
    grad_norm: torch.Tensor | None  # before clipping
    seconds: float
    tokens: int  # on all devices
    reduced: bool = False  # `loss` is the mean over processes (`TlamaLightningModule.reduce_step_loss`)


def step_values(rec: StepRecord) -> dict[str, float | None]:
    """An optimizer step's own numbers from its `StepRecord` (this reads device values: a sync on GPUs)."""
    return {"train_loss": float(rec.loss), "learning_rate": rec.lr,
            "grad_norm": float(rec.grad_norm) if rec.grad_norm is not None else None}


def metrics_row(epoch: int, step: int, rec: StepRecord, rates: dict[str, float | None],
                val: dict[str, float] | None) -> dict[str, Any]:
    """The row of one logged optimizer step: its values, the throughput since the previous row and, at a
    validated step, its validation metrics."""
    return {"epoch": epoch, "step": step, "timestamp": round(time.time(), 3), **step_values(rec),
            "val_loss": val["val_loss"] if val else None, "val_bpc": val.get("val_bpc") if val else None, **rates}


def hook_metrics(rec: StepRecord) -> dict[str, float]:
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

    `run`: the run's settings that loggers record beside the module's and the plan's (`run_hyperparameters`), once,
    when the run's log opens.
    """

    def __init__(self, csv_log: CsvLog | None, run: dict[str, Any]) -> None:
        self.csv_log, self.run = csv_log, run

    def open(self, loggers: Sequence[Logger], resume_step: int | None, module: Any, plan: Any) -> None:
        """Start the run's log (`CsvLog.open`: a resumed run keeps its rows up to `resume_step`) and log the
        hyperparameters of `module` and `plan`."""
        if self.csv_log is not None:
            self.csv_log.open(resume_step=resume_step)
        for logger in loggers:
            logger.log_hyperparams(run_hyperparameters(module, plan, **self.run))

    def write(self, row: dict[str, Any], loggers: Sequence[Logger]) -> None:
        if self.csv_log is not None:
            self.csv_log.write(row)
        values = {k: row[k] for k in VALUES if row.get(k) is not None}
        for logger in loggers:
            logger.log_metrics({"epoch": row["epoch"], **values}, step=row["step"])
