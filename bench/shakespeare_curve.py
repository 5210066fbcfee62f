"""Quality per minute: train Shakespeare recipes and print validation bits per character against wall time, each
recipe beside the others and nanoGPT's CPU recipe measured on a machine like ours
(../shared/anchors/nanogpt-shakespeare-cpu.md).

Bits per character = total nats over the whole validation text / its characters / ln 2: it does not depend on the
tokenizer, so our BPE model and nanoGPT's character model compare fairly. Wall time runs from the launch of
`tlama fit` (imports, tokenization and validations included), so our figures are on the conservative side; the
final checkpoint's time is when its file is complete. A recipe planned in steps is validated every
`--validation_steps` for its curve; one planned in time (`trainer.max_time`) keeps its own validations, since more
would spend its budget. Goals on 2 CPU cores: <= 2.12 bits/char within 60 s (configs/shakespeare-60s.yaml) and
<= 2.00 within 300 s (configs/shakespeare-5min.yaml). Run it with nothing else on the machine: it prints the load
average before and after each run.

    python bench/shakespeare_curve.py [--config configs/shakespeare-60s.yaml --config ...] [--validation_steps 12]
        [-- more tlama fit flags]
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

# nanoGPT's train_shakespeare_char CPU recipe (the anchor file): (wall seconds, val bits/char)
NANOGPT_CPU = [(2, 6.01), (11, 3.53), (20, 3.34), (29, 3.16), (38, 2.96), (48, 2.90), (57, 2.77), (67, 2.73),
               (76, 2.72)]
NANOGPT_GPU_BEST = 2.12  # its GPU recipe's best val loss, 1.4697 nats/char
CHECKPOINTS = (20, 60, 120, 300)
GOALS = {60: 2.12, 300: 2.00}
REPO = Path(__file__).resolve().parents[1]


def bpc_at(curve: list[tuple[float, float]], seconds: float) -> float | None:
    """The latest measurement at or before `seconds` (None before the first)."""
    seen = [bpc for t, bpc in curve if t <= seconds]
    return seen[-1] if seen else None


def run_recipe(config: str, validation_steps: int, extra: list[str], work: Path) -> dict:
    """Train one recipe with `tlama fit`; its curve (seconds from launch, val bpc), final checkpoint time, load."""
    trainer = (yaml.safe_load(Path(config).read_text()) or {}).get("trainer") or {}
    timed = trainer.get("max_time") is not None
    flags = [] if timed else ["--trainer.validation_steps", str(validation_steps), "--trainer.validation_batches",
                              "null", "--trainer.checkpoint_steps", "1000000"]
    command = [sys.executable, "-m", "tlama_core.cli", "fit", "--config", config, *flags, "--trainer.verbose",
               "false", "--trainer.checkpoints_dir", str(work / "checkpoints"), "--trainer.logs_dir",
               str(work / "logs"), *extra]
    load_before = os.getloadavg()[0]
    start = time.time()
    subprocess.run(command, check=True)
    with open(work / "logs" / "train_log.csv", newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["val_bpc"]]
    final = max((work / "checkpoints").glob("step=*.ckpt"))
    return {"config": config, "timed": timed, "load": (load_before, os.getloadavg()[0]),
            "curve": [(float(r["timestamp"]) - start, float(r["val_bpc"])) for r in rows],
            "final_checkpoint": final.stat().st_mtime - start, "steps": int(rows[-1]["step"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", action="append", help="a recipe (repeat for several); default: "
                        "configs/shakespeare-cpu.yaml")
    parser.add_argument("--validation_steps", type=int, default=12,
                        help="how often to measure a recipe planned in steps (optimizer steps)")
    parser.add_argument("--no_sample", action="store_true", help="skip the sample from each final model")
    parser.add_argument("extra", nargs="*", help="more `tlama fit` flags for every recipe, after --")
    args = parser.parse_args()
    configs = args.config or [str(REPO / "configs/shakespeare-cpu.yaml")]

    results = []
    for config in configs:
        work = Path(tempfile.mkdtemp(prefix="shakespeare-curve-"))
        result = run_recipe(config, args.validation_steps, args.extra, work)
        results.append(result)
        if not args.no_sample:
            print(f"\nsample from {Path(config).name}'s final model:")
            subprocess.run([sys.executable, "-m", "tlama_core.cli", "generate", "--checkpoint",
                            str(work / "checkpoints"), "--prompt", "ROMEO:", "--max_new_tokens", "120", "--seed",
                            "0"], check=True)
        shutil.rmtree(work, ignore_errors=True)

    fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
    names = [Path(r["config"]).stem for r in results]
    print("\nval bits/char by wall time from launch (latest validation at or before each time):")
    print(f"{'seconds':>8} " + " ".join(f"{n:>18}" for n in names) + f" {'nanoGPT CPU':>12} {'goal':>6}")
    for s in CHECKPOINTS:
        ours = " ".join(f"{fmt(bpc_at(r['curve'], s)):>18}" for r in results)
        print(f"{s:>8} {ours} {fmt(bpc_at(NANOGPT_CPU, s)):>12} {fmt(GOALS.get(s)):>6}")
    for name, r in zip(names, results, strict=True):
        t, bpc = r["curve"][-1]
        print(f"{name}: final {bpc:.3f} bits/char after {r['steps']} steps, validated at {t:.1f} s, final "
              f"checkpoint complete at {r['final_checkpoint']:.1f} s; load average {r['load'][0]:.2f} before, "
              f"{r['load'][1]:.2f} after")
        print("  curve: " + ", ".join(f"{t:.0f}s {b:.3f}" for t, b in r["curve"]))
    print(f"nanoGPT: its CPU recipe 2.72 at 76 s, its GPU recipe's best {NANOGPT_GPU_BEST}")


if __name__ == "__main__":
    main()
