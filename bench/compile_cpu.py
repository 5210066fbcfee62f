"""Does torch.compile pay on this CPU? The Shakespeare run's shape trained through the Trainer, eager and compiled.

Prints the compiled / eager ratio of steady-state tokens/s (the second half of the run, compilation excluded)
and of the whole run's wall time (compilation included): the first says what compile buys per step, the
second whether a run of this length wins the compilation back. `compile` stays off by default on CPU unless
both favour it.

    python bench/compile_cpu.py [--steps 60] [--threads 2]
"""

from __future__ import annotations

import argparse

import torch
from gpu_check import RunShape, trainer_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = dict(vocab_size=1024, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=64,
                 zero_init_residual=True)
    half = args.steps // 2  # the second half's steps are measured: compilation and warm-up excluded
    eager, compiled = (trainer_run(RunShape(model, 32, 64, 4, compile=flag, warmup=half,
                                            measured=args.steps - half - 1), "cpu") for flag in (False, True))
    print(f"{args.steps} steps of 4 x 32 x 64 tokens, {args.threads} threads")
    for name, r in (("eager", eager), ("compiled", compiled)):
        print(f"  {name + ':':<10}{r['tokens_per_sec_per_device']:8.0f} tokens/s, run {r['wall_seconds']:5.1f} s")
    steady = compiled["tokens_per_sec_per_device"] / eager["tokens_per_sec_per_device"]
    whole = eager["wall_seconds"] / compiled["wall_seconds"]
    print(f"  compiled / eager: steady tokens/s {steady:.2f}, whole run {whole:.2f}")


if __name__ == "__main__":
    main()
