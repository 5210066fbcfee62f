"""`tlama plot`: train and validation loss and the learning rate of a run's CSV log, against the step."""

from __future__ import annotations

import os
from pathlib import Path

from tlama_core.training.records.metrics import read_rows


def plot_log(log: str | os.PathLike, output: str | os.PathLike | None = None) -> Path:
    """Draw `log` (a train_log.csv) into a PNG (default: beside the log, same name) and return its path.

    Needs matplotlib (`pip install "tlama-core[plot]"`).
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError as err:
        raise ImportError('tlama plot needs matplotlib: pip install "tlama-core[plot]" (or pip install matplotlib).'
                          ) from err
    log = Path(log)
    if not log.is_file():
        raise FileNotFoundError(f"log {str(log)!r}: no such file (runs write logs_dir/train_log.csv).")
    rows = read_rows(log)
    if not rows:
        raise ValueError(f"log {str(log)!r} has no rows yet: a run writes one every trainer.log_steps steps.")

    def series(column: str) -> tuple[list[int], list[float]]:
        points = [(int(r["step"]), float(r[column])) for r in rows if r[column]]
        return [s for s, _ in points], [v for _, v in points]

    # Figure, not pyplot: no global backend or state, so it works the same in scripts, servers and notebooks.
    fig = Figure(figsize=(8, 6), layout="constrained")
    loss_ax, lr_ax = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    loss_ax.plot(*series("train_loss"), label="train")
    val_steps, val_loss = series("val_loss")
    if val_loss:
        loss_ax.plot(val_steps, val_loss, "o-", label="validation")
    loss_ax.set_ylabel("loss (nats/token)")
    loss_ax.legend()
    loss_ax.grid(alpha=0.3)
    lr_ax.plot(*series("learning_rate"), color="tab:green")
    lr_ax.set_ylabel("learning rate")
    lr_ax.set_xlabel("optimizer step")
    lr_ax.grid(alpha=0.3)
    lr_ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.suptitle(str(log))
    output = Path(output) if output is not None else log.with_suffix(".png")
    output.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(output, dpi=100)
    return output
