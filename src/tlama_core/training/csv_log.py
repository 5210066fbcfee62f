"""The run's CSV log: one row per logged optimizer step, appended and flushed as it happens.

Not Lightning's CSVLogger (which `logger="csv"` adds beside it): that one starts a new version directory per fit,
writes only at its save cadence (a kill loses the rows since), and cannot drop the rows of steps a resumed run
trains again; this log keeps the documented columns in one file per run, appends and flushes one line at a time
and, on resume, keeps exactly the rows up to the checkpoint's step.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

from tlama_core.atomic import atomic_write

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
