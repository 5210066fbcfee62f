"""The data pipeline on a large generated corpus: tokenizing, loading, memory. Prints ratios.

(a) the token cache builder (processes over pieces) against a single-threaded sentencepiece encode loop over the
    same text (lines in ~1 MB batches, `num_threads=1`: the fastest single-threaded way to call it). Target >= 1.8
    on 2 cores.
(b) loader batches/s (16 x 256, cache built) against training steps/s of a small Transformer (forward, backward,
    AdamW): the loader must not be what a run waits for.
(c) peak RSS while iterating the loader over the whole corpus, against RSS once the same loader is built
    (target < 2x); also the peak RSS of building the cache. Each is measured in a fresh subprocess.
(d) `tlama prepare` on the corpus as JSONL records (~4 KB each) against a bare loop of the same tokenizer
    library over the same records (read, json.loads, encode ~1 MB of records per call): sentencepiece with
    `--workers 2` against a single-threaded `encode` (target >= 1.8 on 2 cores), and a byte-level BPE
    tokenizer.json against `tokenizers`' own `encode_batch` (target >= 0.9); and prepare's peak RSS on the
    corpus and on one twice its size (target: flat).

    python bench/data_throughput.py [--mb 100] [--rounds 3] [--workdir DIR] [--only a|prepare]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH, SEQ = 16, 256


def generate_corpus(path: Path, megabytes: float, seed: int = 0) -> int:
    """Tiny Shakespeare's lines, shuffled block by block, until the file holds `megabytes` MB; returns bytes."""
    from tlama_core.data import builtin_corpus_path

    lines = builtin_corpus_path().read_text(encoding="utf-8").splitlines(keepends=True)
    rng, target, written = random.Random(seed), int(megabytes * 1e6), 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            rng.shuffle(lines)
            block = "".join(lines)[: target - written]
            f.write(block)
            written += len(block.encode("utf-8"))
    return written


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its finished children (the builder's pool)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def reference_encode_seconds(path: Path) -> tuple[float, int]:
    """Single-threaded encode loop over the file's lines, ~1 MB of lines per call."""
    import sentencepiece as spm

    from tlama_core.data import builtin_tokenizer_path

    sp = spm.SentencePieceProcessor(model_file=str(builtin_tokenizer_path()))
    start, tokens = time.perf_counter(), 0
    with open(path, encoding="utf-8", newline="") as f:
        while lines := f.readlines(1 << 20):
            tokens += sum(map(len, sp.encode(lines, num_threads=1)))
    return time.perf_counter() - start, tokens


def cache_build_seconds(path: Path, cache_dir: Path) -> tuple[float, int]:
    from tlama_core.data import builtin_tokenizer_path
    from tlama_core.data.cache import cached_tokens
    from tlama_core.data.sources import resolve_source

    start = time.perf_counter()
    entry = cached_tokens(resolve_source(path), builtin_tokenizer_path(), cache_dir)
    return time.perf_counter() - start, entry.meta["num_tokens"]


def loader_batches_per_second(path: Path, cache_dir: Path, batches: int) -> float:
    import itertools

    from tlama_core.data import builtin_tokenizer_path, create_dataloader

    loader = create_dataloader(path, builtin_tokenizer_path(), BATCH, SEQ, cache_dir=cache_dir)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    n = sum(1 for _ in itertools.islice(it, batches))
    return n / (time.perf_counter() - start)


def model_steps_per_second(steps: int = 5) -> float:
    import torch

    from tlama_core.models import TlamaConfig, Transformer

    torch.manual_seed(0)
    model = Transformer(TlamaConfig(vocab_size=1024, d_model=256, n_layers=4, n_heads=4, max_seq_len=256))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.randint(0, 1024, (BATCH, SEQ)), torch.randint(0, 1024, (BATCH, SEQ))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(x, targets=y)[1].backward()
        opt.step()

    step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def rss_child(mode: str, path: Path, cache_dir: Path) -> None:
    """Runs in a subprocess: build (or load) and maybe iterate, then print peak RSS in MB as JSON."""
    from tlama_core.data import builtin_tokenizer_path, create_dataloader

    loader = create_dataloader(path, builtin_tokenizer_path(), BATCH, SEQ, cache_dir=cache_dir)
    batches = sum(1 for _ in loader) if mode == "iterate" else 0
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak_rss_mb(), "children_peak_mb": children, "batches": batches}))


def peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: on Linux ru_maxrss survives exec, so a subprocess would
    report the peak of the (large) process that started it."""
    try:
        status = Path("/proc/self/status").read_text()
        return next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1 << 20 if sys.platform == "darwin" else 1024)


def peak_rss(mode: str, path: Path, cache_dir: Path) -> dict:
    command = [sys.executable, __file__, "--rss-child", mode, "--data", str(path), "--cache", str(cache_dir)]
    out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def write_jsonl(corpus: Path, out: Path, copies: int = 1) -> int:
    """The corpus as JSONL records of ~4 KB (whole lines), `copies` times over; returns the record count."""
    records = 0
    with open(corpus, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as f:
        for _ in range(copies):
            src.seek(0)
            while lines := src.readlines(4096):
                f.write(json.dumps({"text": "".join(lines)}) + "\n")
                records += 1
    return records


def byte_level_tokenizer(out: Path) -> Path:
    """A GPT-2-style byte-level BPE tokenizer.json (1,024 tokens) trained on Tiny Shakespeare."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from tlama_core.data import builtin_corpus_path

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([builtin_corpus_path().read_text(encoding="utf-8")],
                            trainers.BpeTrainer(vocab_size=1024, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                show_progress=False))
    tok.save(str(out))
    return out


def bare_loop_seconds(jsonl: Path, tokenizer: Path) -> tuple[float, int]:
    """Read the records and encode ~1 MB of them per call with the tokenizer's own library: single-threaded
    `SentencePieceProcessor.encode`, or `tokenizers`' `encode_batch` (every core)."""
    start, tokens = time.perf_counter(), 0
    if tokenizer.suffix == ".json":
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(tokenizer))
        encode = lambda texts: [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    else:
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(tokenizer))
        encode = lambda texts: sp.encode(texts, num_threads=1)
    with open(jsonl, encoding="utf-8") as f:
        while lines := f.readlines(1 << 20):
            tokens += sum(map(len, encode([json.loads(line)["text"] for line in lines])))
    return time.perf_counter() - start, tokens


def prepare_seconds(jsonl: Path, tokenizer: Path, out: Path, workers: int | None) -> tuple[float, dict]:
    from tlama_core.data.prepare import prepare

    start = time.perf_counter()
    path = prepare(jsonl, tokenizer, out, workers=workers, progress=False)
    seconds = time.perf_counter() - start
    return seconds, json.loads(path.with_name(path.name + ".json").read_text())


def prepare_rss_child(jsonl: Path, tokenizer: Path, out: Path) -> None:
    """Runs in a subprocess: prepare with 2 workers, then print peak RSS in MB (this process, largest worker)."""
    from tlama_core.data.prepare import prepare

    prepare(jsonl, tokenizer, out, workers=2, progress=False)
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"peak_mb": peak_rss_mb(), "children_peak_mb": children}))


def prepare_report(corpus: Path, work: Path, size: int, rounds: int) -> None:
    from tlama_core.data import builtin_tokenizer_path

    jsonl = work / "records.jsonl"
    records = write_jsonl(corpus, jsonl)
    kinds = {"sentencepiece": (builtin_tokenizer_path(), 2, 1.8),
             "tokenizer.json": (byte_level_tokenizer(work / "tokenizer.json"), None, 0.9)}
    for kind, (tokenizer, workers, target) in kinds.items():
        refs, preps, ref_cpu, prep_cpu = [], [], [], []
        for r in range(rounds):  # alternate, so that load from other processes hits both alike
            cpu = cpu_seconds()
            ref_s, ref_tokens = bare_loop_seconds(jsonl, tokenizer)
            ref_cpu.append(cpu_seconds() - cpu)
            cpu = cpu_seconds()
            prep_s, meta = prepare_seconds(jsonl, tokenizer, work / f"prep-{kind}-{r}", workers)
            prep_cpu.append(cpu_seconds() - cpu)
            assert meta["num_tokens"] == ref_tokens + records - 1, (meta["num_tokens"], ref_tokens)  # + separators
            refs.append(ref_s), preps.append(prep_s)
        ref_s, prep_s = statistics.median(refs), statistics.median(preps)
        print(f"(d) tlama prepare, {kind}, {records} JSONL records, workers={workers or 'default'} (median of "
              f"{rounds}): bare loop {size / ref_s / 1e6:.2f} MB/s, prepare {size / prep_s / 1e6:.2f} MB/s: ratio "
              f"{ref_s / prep_s:.2f} (target >= {target}); CPU time prepare / bare loop "
              f"{statistics.median(prep_cpu) / statistics.median(ref_cpu):.2f}")
    double = work / "records-x2.jsonl"
    write_jsonl(corpus, double, copies=2)
    rss = []
    for data in (jsonl, double):
        command = [sys.executable, __file__, "--prepare-rss-child", "--data", str(data), "--cache",
                   str(work / f"rss-{data.stem}")]
        out = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        rss.append(json.loads(out.strip().splitlines()[-1]))
    print(f"    prepare's peak RSS (main process, largest worker): {rss[0]['peak_mb']:.0f} MB, "
          f"{rss[0]['children_peak_mb']:.0f} MB on {size / 1e6:.0f} MB of text; {rss[1]['peak_mb']:.0f} MB, "
          f"{rss[1]['children_peak_mb']:.0f} MB on {2 * size / 1e6:.0f} MB: ratio "
          f"{rss[1]['peak_mb'] / rss[0]['peak_mb']:.2f} (target: flat, ~1)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=float, default=100.0, help="size of the generated corpus in MB (default 100)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of (a), alternating (default 3)")
    parser.add_argument("--workdir", type=Path, default=None, help="where to put the corpus (default: a temp dir)")
    parser.add_argument("--only", choices=["a", "prepare"], default=None,
                        help="run only (a)-(c) or only (d) (default: all)")
    parser.add_argument("--rss-child", choices=["build", "iterate"], help=argparse.SUPPRESS)
    parser.add_argument("--prepare-rss-child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--cache", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.rss_child:
        rss_child(args.rss_child, args.data, args.cache)
        return
    if args.prepare_rss_child:
        from tlama_core.data import builtin_tokenizer_path

        prepare_rss_child(args.data, builtin_tokenizer_path(), args.cache)
        return

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        corpus = work / "corpus.txt"
        size = generate_corpus(corpus, args.mb)
        print(f"corpus: {size / 1e6:.1f} MB of shuffled Tiny Shakespeare lines; {os.cpu_count()} CPUs, "
              f"load average {os.getloadavg()[0]:.1f} before starting")
        if args.only == "prepare":
            prepare_report(corpus, work, size, args.rounds)
            print(f"load average {os.getloadavg()[0]:.1f} at the end")
            return

        refs, builds, ref_cpu, build_cpu = [], [], [], []
        for r in range(args.rounds):  # alternate, so that load from other processes hits both alike
            cpu = cpu_seconds()
            ref_s, ref_tokens = reference_encode_seconds(corpus)
            ref_cpu.append(cpu_seconds() - cpu)
            cpu = cpu_seconds()
            build_s, tokens = cache_build_seconds(corpus, work / f"cache-{r}")
            build_cpu.append(cpu_seconds() - cpu)
            assert tokens == ref_tokens, f"cache holds {tokens} tokens, the reference encode {ref_tokens}"
            refs.append(ref_s), builds.append(build_s)
        ref_s, build_s = statistics.median(refs), statistics.median(builds)
        print(f"(a) tokenizing {tokens / 1e6:.1f} M tokens (median of {args.rounds}): single-threaded encode "
              f"{size / ref_s / 1e6:.2f} MB/s, cache builder {size / build_s / 1e6:.2f} MB/s (hashing and writing "
              f"included): ratio {ref_s / build_s:.2f} (target >= 1.8)")
        print(f"    CPU time: builder {statistics.median(build_cpu):.1f} s over all its processes, reference "
              f"{statistics.median(ref_cpu):.1f} s: {statistics.median(build_cpu) / statistics.median(ref_cpu):.2f}x "
              "the work, spread over the pool")

        loader_bps = loader_batches_per_second(corpus, work / "cache-0", batches=2000)
        model_sps = model_steps_per_second()
        print(f"(b) loader {loader_bps:.0f} batches/s of {BATCH}x{SEQ}; small Transformer (d256, 4 layers) "
              f"{model_sps:.2f} training steps/s: loader/model ratio {loader_bps / model_sps:.0f}")

        built = peak_rss("build", corpus, work / "fresh-cache")
        empty = peak_rss("build", corpus, work / "cache-0")
        full = peak_rss("iterate", corpus, work / "cache-0")
        print(f"(c) RSS: loader built {empty['peak_mb']:.0f} MB; peak while iterating all {full['batches']} batches "
              f"{full['peak_mb']:.0f} MB: ratio {full['peak_mb'] / empty['peak_mb']:.2f} (target < 2)")
        print(f"    building the cache from scratch: peak {built['peak_mb']:.0f} MB in the main process, "
              f"{built['children_peak_mb']:.0f} MB in the largest encoding process "
              f"(the corpus is {size / 1e6:.0f} MB of text, {tokens * 2 / 1e6:.0f} MB of ids)")
        if args.only is None:
            prepare_report(corpus, work, size, args.rounds)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
