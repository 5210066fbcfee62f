"""Muon's orthogonalisation on this CPU: torch's (bf16, always) against ours in fp32, per optimizer step, next to
the model's own forward and backward on the same step.

torch.optim.Muon casts every update to bf16; a CPU without bf16 matrix units (AMX, AVX512-BF16) emulates those
matmuls. `build_optimizer(..., muon=True)` orthogonalises in fp32 there and in bf16 where bf16 is fast. Prints
the bf16 / fp32 ratio of the Muon step's time and each as a share of a forward + backward of the
configs/shakespeare-cpu.yaml model (4 blocks of width 256) on 32 x 64 tokens.

    python bench/muon_cpu.py [--repeats 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training import has_fast_bf16
from tlama_core.training.optim import Muon


def seconds(work, repeats: int) -> float:
    """The median wall time of `work()` over `repeats` calls, after one warm-up call."""
    work()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        work()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Transformer(TlamaConfig(vocab_size=1024, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2,
                                    max_seq_len=64))
    tokens = torch.randint(0, 1024, (32, 65))

    def forward_backward() -> None:
        model.zero_grad()
        model(tokens[:, :-1], targets=tokens[:, 1:])[1].backward()

    step = seconds(forward_backward, args.repeats)
    hidden = [p for p in model.layers.parameters() if p.dim() == 2]
    muon = {name: Muon(hidden, lr=1e-4, adjust_lr_fn="match_rms_adamw", ns_dtype=dtype)
            for name, dtype in (("bf16 (torch's)", torch.bfloat16), ("fp32", torch.float32))}
    cost = {name: seconds(optimizer.step, args.repeats) for name, optimizer in muon.items()}
    print(f"{sum(p.numel() for p in hidden):,} Muon parameters, {args.threads} threads, "
          f"fast bf16 on this CPU: {has_fast_bf16('cpu')}")
    for name, s in cost.items():
        print(f"  Muon step, {name:<15} {s * 1e3:8.1f} ms = {s / step:5.2f} x a forward + backward")
    print(f"  bf16 / fp32: {cost[next(iter(cost))] / cost['fp32']:.1f}")


if __name__ == "__main__":
    main()
