"""`tlama prepare` on one long JSONL record without line ends: peak memory and time. Prints ratios.

The record is Tiny Shakespeare with its line ends turned into spaces, repeated to `--mb` MB, as one JSONL line;
the reference is the same text as ~4 KB records.
Each run is a fresh subprocess (`--workers 1`) that reports its peak RSS (VmHWM) once its imports are done and
after `prepare`: the difference is what the record costs. Reported: that cost / the record's size (target: a few
times the record: it is held as bytes, then text; the ids are 2 bytes a token), and the record's seconds per MB /
the seconds per MB of the same text as ~4 KB records (target ~1: a long record costs no more than short ones).

    python bench/long_record.py [--mb 200] [--tokenizer PATH] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def write_records(out: Path, megabytes: float, one_line: bool) -> int:
    """Tiny Shakespeare with its line ends turned into spaces, to `megabytes` MB, as JSONL: one record, or ~4 KB
    records (cut before a space). Returns the text's characters."""
    from tlama_core.data import builtin_corpus_path

    corpus = builtin_corpus_path().read_text(encoding="utf-8").replace("\n", " ")
    n = int(megabytes * 1e6)
    text = (corpus * (n // len(corpus) + 1))[:n]
    with open(out, "w", encoding="utf-8") as f:
        if one_line:
            f.write(json.dumps({"text": text}) + "\n")
            return len(text)
        start = 0
        while start < len(text):
            end = text.find(" ", start + 4096)
            end = len(text) if end < 0 else end
            f.write(json.dumps({"text": text[start:end]}) + "\n")
            start = end
    return len(text)


def peak_rss_mb() -> float:
    """This process's peak RSS (VmHWM: ru_maxrss survives exec on Linux)."""
    status = Path("/proc/self/status").read_text()
    return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024


def child(data: Path, tokenizer: Path, out: Path) -> None:
    """Runs in a subprocess: prepare `data`, print peak RSS before and after and the seconds, as JSON."""
    from tlama_core.data.prepare import prepare

    before = peak_rss_mb()
    start = time.perf_counter()
    path = prepare(data, tokenizer, out, workers=1, progress=False)
    seconds = time.perf_counter() - start
    meta = json.loads(path.with_name(path.name + ".json").read_text())
    print(json.dumps({"before_mb": before, "peak_mb": peak_rss_mb(), "seconds": seconds,
                      "num_tokens": meta["num_tokens"]}))


def run_child(data: Path, tokenizer: Path, out: Path) -> dict:
    command = [sys.executable, __file__, "--child", "--data", str(data), "--tokenizer", str(tokenizer),
               "--out", str(out)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=200.0, help="size of the record in MB (default 200)")
    parser.add_argument("--tokenizer", type=Path, default=None, help="default: the built-in sentencepiece model")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the data (default: a temp dir)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.data, args.tokenizer, args.out)
        return
    from tlama_core.data import builtin_tokenizer_path

    tokenizer = args.tokenizer or builtin_tokenizer_path()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before starting; tokenizer {tokenizer}")
        chars = write_records(work / "long.jsonl", args.mb, one_line=True)
        write_records(work / "short.jsonl", args.mb, one_line=False)
        long = run_child(work / "long.jsonl", tokenizer, work / "out-long")
        short = run_child(work / "short.jsonl", tokenizer, work / "out-short")
        cost = long["peak_mb"] - long["before_mb"]
        print(f"one record of {chars / 1e6:.0f} MB without line ends: peak RSS {long['peak_mb']:.0f} MB, "
              f"{long['before_mb']:.0f} MB after the imports: the record cost {cost:.0f} MB = "
              f"{cost / (chars / 2**20):.2f}x its size; {long['seconds']:.1f} s, {long['num_tokens']:,} tokens")
        print(f"the same text as ~4 KB records: peak RSS {short['peak_mb']:.0f} MB, {short['seconds']:.1f} s; "
              f"seconds per MB, one long record / short records: {long['seconds'] / short['seconds']:.2f} "
              "(target ~1)")
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
