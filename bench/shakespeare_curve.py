"""Quality per minute: train configs/shakespeare-cpu.yaml and print validation bits per character against wall time,
next to nanoGPT's CPU recipe measured on a machine like ours (../shared/anchors/nanogpt-shakespeare-cpu.md).

Bits per character = total nats over the whole validation text / its characters / ln 2: it does not depend on the
tokenizer, so our BPE model and nanoGPT's character model compare fairly. Wall time runs from the launch of
`tlama fit` (imports, tokenization and validations included), so our figures are on the conservative side.
Targets on 2 CPU cores: <= 2.25 bits/char at 60 s and <= 2.12 at 300 s. Run it with nothing else on the machine.

    python bench/shakespeare_curve.py [--config configs/shakespeare-cpu.yaml] [--validation_steps 12] [-- flags]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# nanoGPT's train_shakespeare_char CPU recipe (the anchor file): (wall seconds, val bits/char)
NANOGPT_CPU = [(2, 6.01), (11, 3.53), (20, 3.34), (29, 3.16), (38, 2.96), (48, 2.90), (57, 2.77), (67, 2.73),
               (76, 2.72)]
NANOGPT_GPU_BEST = 2.12  # its GPU recipe's best val loss, 1.4697 nats/char
CHECKPOINTS = (20, 60, 120, 300)
TARGETS = {60: 2.25, 300: 2.12}


def bpc_at(curve: list[tuple[float, float]], seconds: float) -> float | None:
    """The latest measurement at or before `seconds` (None before the first)."""
    seen = [bpc for t, bpc in curve if t <= seconds]
    return seen[-1] if seen else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(Path(__file__).resolve().parents[1] / "configs/shakespeare-cpu.yaml"))
    parser.add_argument("--validation_steps", type=int, default=12, help="how often to measure (optimizer steps)")
    parser.add_argument("extra", nargs="*", help="more `tlama fit` flags, after --")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="shakespeare-curve-"))
    command = [sys.executable, "-m", "tlama_core.cli", "fit", "--config", args.config,
               "--trainer.validation_steps", str(args.validation_steps), "--trainer.validation_batches", "null",
               "--trainer.checkpoint_steps", "1000000", "--trainer.verbose", "false",
               "--trainer.checkpoints_dir", str(work / "checkpoints"), "--trainer.logs_dir", str(work / "logs"),
               *args.extra]
    start = time.time()
    subprocess.run(command, check=True)
    with open(work / "logs" / "train_log.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["val_bpc"]]
    curve = [(float(r["timestamp"]) - start, float(r["val_bpc"])) for r in rows]

    print(f"\nval bits/char by wall time ({args.config}):")
    print(f"{'seconds':>8} {'tlama-core':>11} {'nanoGPT CPU':>12} {'target':>7}")
    for s in CHECKPOINTS:
        ours, theirs = bpc_at(curve, s), bpc_at(NANOGPT_CPU, s)
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
        print(f"{s:>8} {fmt(ours):>11} {fmt(theirs):>12} {fmt(TARGETS.get(s)):>7}")
    print(f"final: {curve[-1][1]:.3f} bits/char at {curve[-1][0]:.0f} s; nanoGPT's GPU recipe reaches "
          f"{NANOGPT_GPU_BEST} (its best), its CPU recipe 2.72 at 76 s")
    print("full curve: " + ", ".join(f"{t:.0f}s {b:.3f}" for t, b in curve))
    print("\nsample from the final model:")
    subprocess.run([sys.executable, "-m", "tlama_core.cli", "generate", "--checkpoint", str(work / "checkpoints"),
                    "--prompt", "ROMEO:", "--max_new_tokens", "120", "--seed", "0"], check=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
