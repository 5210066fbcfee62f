"""The window sampler's epoch order: computed (order 3) against the stored torch.randperm (order 2). Prints ratios.

(a) memory per process for a 1T-token corpus in windows of 2048 tokens (488M windows), process 5 of 64 reading
    its first 100 batches of 8: growth of RSS (VmHWM less VmRSS once the sampler is built), each order in a fresh
    subprocess. Target for the computed order: < 64 MB. `--tokens` sets the corpus size.
(b) iteration speed on 10M windows (`--windows`): one process's whole epoch of indices through the sampler
    (building the order included), computed against stored, for 1 and 8 processes (median of `--rounds`).
(c) what the order costs a loader: the computed order's time per batch of 16 windows against the time per batch
    of a loader (16 x 256, shuffled, in memory-mapped ids) measured in the same run; bench/data_throughput.py (b)
    compares the loader with the model's training steps.

    python bench/sampler_order.py [--tokens 1e12] [--windows 10_000_000] [--rounds 3] [--skip-stored-memory]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEMORY_CHILD = """
import itertools, json, sys
from pathlib import Path
from tlama_core.data.sampler import WindowSampler

def rss(field):
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
    return int(line.split()[1]) / 1024

windows, order = int(sys.argv[1]), int(sys.argv[2])
sampler = WindowSampler(windows, 8, shuffle=True, seed=1337)
sampler.shard(5, 64)
sampler.load_state_dict({"epoch": 0, "batch": 0, "seed": 1337, "batch_size": 8, "order": order, "world_size": 64})
before = rss("VmRSS")
first = list(itertools.islice(iter(sampler), 8 * 100))
print(json.dumps({"grew_mb": rss("VmHWM") - before, "indices": len(set(first))}))
"""


def memory_mb(windows: int, order: int) -> float:
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(windows), str(order)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)["grew_mb"]


def epoch_seconds(windows: int, order: int, world: int) -> float:
    from tlama_core.data.sampler import WindowSampler

    sampler = WindowSampler(windows, 16, shuffle=True, seed=1337)
    sampler.shard(0, world)
    sampler.load_state_dict({"epoch": 0, "batch": 0, "seed": 1337, "batch_size": 16, "order": order,
                             "world_size": world})
    start = time.perf_counter()
    count = sum(1 for _ in sampler)
    assert count == windows // world // 16 * 16
    return time.perf_counter() - start


def loader_seconds_per_batch(work: Path, batches: int) -> float:
    import numpy as np

    from tlama_core.data import create_dataloader

    path = work / "ids.bin"
    np.random.default_rng(0).integers(0, 1024, 16 * 257 * 4 * batches, dtype=np.uint16).tofile(path)
    loader = create_dataloader(path, None, 16, 256, shuffle=True)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    n = sum(1 for _ in itertools.islice(it, batches))
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=float, default=1e12, help="corpus size of (a) in tokens (default 1e12)")
    parser.add_argument("--windows", type=int, default=10_000_000, help="windows of (b) (default 10M)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of (b), alternating (default 3)")
    parser.add_argument("--skip-stored-memory", action="store_true",
                        help="skip (a) for the stored order (it needs ~4 GB and a minute at 1e12 tokens)")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before starting")

    windows = int(args.tokens) // 2048
    computed = memory_mb(windows, 3)
    line = f"(a) {args.tokens:.0e} tokens = {windows:,} windows of 2048: computed order +{computed:.1f} MB"
    if not args.skip_stored_memory:
        stored = memory_mb(windows, 2)
        line += f", stored randperm +{stored:.0f} MB: ratio {stored / computed:.0f}"
    print(line + " (target for the computed order < 64 MB)")

    for world in (1, 8):
        stored, computed = [], []
        for _ in range(args.rounds):  # alternate, so that load from other processes hits both alike
            stored.append(epoch_seconds(args.windows, 2, world))
            computed.append(epoch_seconds(args.windows, 3, world))
        s, c = statistics.median(stored), statistics.median(computed)
        per_rank = args.windows // world
        print(f"(b) {args.windows:,} windows, {world} process(es), one process's epoch ({per_rank:,} indices): "
              f"stored {s:.2f} s, computed {c:.2f} s: computed / stored {c / s:.2f}; computed "
              f"{c / per_rank * 1e9:.0f} ns a window")

    order_batch = statistics.median(computed) / (args.windows // 8) * 16
    with tempfile.TemporaryDirectory() as tmp:
        loader_batch = loader_seconds_per_batch(Path(tmp), 500)
    print(f"(c) computed order {order_batch * 1e6:.1f} us a batch of 16 windows; a loader batch (16 x 256, "
          f"shuffled) {loader_batch * 1e6:.0f} us: the order is {order_batch / loader_batch:.1%} of it")
    print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
