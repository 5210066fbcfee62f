"""What checking a prepared shard costs at every start: its length against the sidecar, or its content hash.
Prints ratios against reading the shard once.

A shard of `--mb` MB of random uint16 ids (default 1024) with its sidecar is written; then timed: opening it as
a loader does (`TokenFile.open`: a stat and the sidecar, the length check), reading every byte (4 MB blocks, warm
page cache: the second of two reads), and `content_hash` (blake2b, what `tlama prepare --verify` computes). A
loader maps its shards and reads nothing at the start, so hashing every start would cost the hash's full time.

    python bench/shard_integrity.py [--mb 1024] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def seconds(fn, repeat: int = 1) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def read_all(path: Path) -> None:
    with open(path, "rb") as f:
        while f.read(1 << 22):
            pass


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, default=1024, help="shard size in MB (default 1024)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to write it (default: a temp dir)")
    args = parser.parse_args()
    from tlama_core.data.dataset import TokenFile
    from tlama_core.data.integrity import content_hash

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        path = Path(tmp) / "00000.bin"
        rng = np.random.default_rng(0)
        with open(path, "wb") as f:
            for _ in range(args.mb):
                f.write(rng.integers(0, 65536, 1 << 19, dtype=np.uint16).tobytes())
        num_tokens = path.stat().st_size // 2
        path.with_name(path.name + ".json").write_text(json.dumps({"dtype": "uint16", "num_tokens": num_tokens}))
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; shard of {args.mb} MB")
        read_all(path)
        read = seconds(lambda: read_all(path))
        hashed = seconds(lambda: content_hash(path))
        opened = seconds(lambda: TokenFile.open(path), repeat=100)
        size = path.stat().st_size / 1e9
        print(f"read every byte {read:.2f} s ({size / read:.1f} GB/s); content hash {hashed:.2f} s "
              f"({size / hashed:.2f} GB/s): hash / read {hashed / read:.1f}")
        print(f"length check (TokenFile.open) {opened * 1e6:.0f} us: {opened / read:.1e} of a read")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
