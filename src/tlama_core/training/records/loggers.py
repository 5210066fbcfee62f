"""Lightning loggers from the facade's `logger` argument: logger objects pass through, names are built under
`logs_dir` (the YAML's `trainer.logger` takes the same values)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger

NAMES = ("tensorboard", "csv", "mlflow", "wandb")
EXTRA = "pip install 'tlama-core[loggers]'"


def build_loggers(spec: Any, logs_dir: str | Path) -> list[Logger]:
    """None/False: no logger; a Lightning `Logger`, a name in NAMES, or a list of them: those loggers."""
    if spec is None or spec is False:
        return []
    items = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    loggers = []
    for item in items:
        if isinstance(item, Logger):
            loggers.append(item)
        elif isinstance(item, str) and item.lower() in NAMES:
            loggers.append(_by_name(item.lower(), Path(logs_dir)))
        else:
            raise ValueError(f"Trainer: logger={item!r} is neither a lightning Logger nor one of {', '.join(NAMES)}; "
                             "pass e.g. logger='tensorboard' or logger=[CSVLogger('logs')].")
    return loggers


def _by_name(name: str, logs_dir: Path) -> Logger:
    """A logger writing under `logs_dir/<name>/`; MLflow into a SQLite store (MLflow 3 has retired its file
    store for local use), W&B offline unless the environment configures it (WANDB_MODE or WANDB_API_KEY)."""
    try:
        if name == "tensorboard":
            from lightning.pytorch.loggers import TensorBoardLogger

            return TensorBoardLogger(save_dir=str(logs_dir), name="tensorboard")
        if name == "csv":
            from lightning.pytorch.loggers import CSVLogger

            return CSVLogger(save_dir=str(logs_dir), name="csv")
        if name == "mlflow":
            from lightning.pytorch.loggers import MLFlowLogger

            store = logs_dir.resolve()
            store.mkdir(parents=True, exist_ok=True)  # the SQLite file is created in it, not the folder
            return MLFlowLogger(experiment_name="tlama", tracking_uri=f"sqlite:///{store / 'mlflow.db'}",
                                artifact_location=str(store / "mlflow-artifacts"))
        from lightning.pytorch.loggers import WandbLogger

        configured = os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY")
        return WandbLogger(save_dir=str(logs_dir), project="tlama", offline=not configured)
    except ModuleNotFoundError as err:
        raise ImportError(f"Trainer: logger={name!r} needs a package that is not installed ({err}); {EXTRA}"
                          + (" wandb" if name == "wandb" else "") + ".") from err
