"""The device check for one CUDA GPU: correctness tests, then tokens/s, MFU and peak memory through the Trainer.

    python bench/gpu_check.py --out gpu-results      # on a GPU machine: ~6-7 minutes on one H200
    python bench/gpu_check.py --smoke --out DIR      # the same pipeline on a CPU, tiny shapes (tests/test_gpu_check.py)

Parts, in order (`--parts` picks some, e.g. to rerun one after a fix; the one without a goal runs last):
  tests          tests/test_cuda.py (`pytest -m cuda`) in a subprocess: each test's outcome and the figures it records.
  gpt2-compiled  GPT-2 small's shape (124M, tied embeddings, vocab padded to 50304), 16 x 1024 tokens per
                 micro-batch, 32 accumulated (524,288 tokens a step, as configs/gpt2-small-gpu.yaml), compiled.
  bare-loop      the same run as a bare PyTorch loop in build-nanogpt's style (bf16 autocast, compile, fused AdamW,
                 TF32, the same model, batches and accumulation): the facade's reference.
  llama-1b       TinyLlama's shape (1.1B, 22 layers, 2048 wide, 32 query / 4 key-value heads), 8 x 2048 tokens per
                 micro-batch, 8 accumulated, compiled.
  llama-1b-fsdp2 the same run under strategy="fsdp2" with one shard (built on the meta device, FSDP2 per block
                 and at the root, bf16 compute weights): the code a multi-GPU sharded run runs, on one GPU.
  gpt2-eager     the GPT-2 run without compile.
Trainer figures are the CSV log's own columns (tokens_per_sec_per_device, mfu), one row per step, over the steps
after the warm-up (compilation included there); random token ids, since speed does not depend on the text.

Goals (one H200): MFU >= 50% at 124M and >= 60% at 1.1B; the facade >= 0.97 of the bare loop's tokens/s; no MFU
above 100% (that would be a counting bug). A run behind a goal carries a torch.profiler summary of its last steps
(top kernels by device time, and how busy the device was). DIR/gpu_check.json holds every figure, the date, the
commit and the versions; it is rewritten after each part, so a run cut short keeps what it measured.
Without CUDA (and without --smoke) nothing runs: the JSON says it was skipped, exit 0. Exit 1: a test failed,
a part raised, or an MFU above 100%.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning
import torch
from torch.utils.data import DataLoader, TensorDataset

from tlama_core.atomic import atomic_write
from tlama_core.models import TlamaConfig, Transformer
from tlama_core.training import Trainer, flops_per_token, has_fast_bf16, peak_flops, read_rows

ROOT = Path(__file__).resolve().parents[1]
PARTS = ("tests", "gpt2-compiled", "bare-loop", "llama-1b", "llama-1b-fsdp2", "gpt2-eager")
GOALS = {"mfu_124m": 0.50, "mfu_1b": 0.60, "facade_over_bare": 0.97}
FIGURES_ENV = "TLAMA_GPU_CHECK_FIGURES"  # tests/test_cuda.py appends each test's figures (JSON lines) there


@dataclass(frozen=True)
class RunShape:
    """One measured run: the model, one micro-batch, the accumulation, and how its steps are spent.

    Steps: `warmup` (compilation, allocator), `measured`, `profiled` (torch.profiler on), then one last step,
    which also saves the run's final checkpoint (outside the step's time, but kept away from the others)."""

    model: dict[str, Any]
    batch_size: int
    seq_length: int
    grad_accum: int
    compile: bool
    warmup: int
    measured: int
    profiled: int = 0
    strategy: str = "auto"

    @property
    def steps(self) -> int:
        return self.warmup + self.measured + self.profiled + 1

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.seq_length * self.grad_accum


GPT2 = dict(vocab_size=50257, d_model=768, n_layers=12, n_heads=12, n_kv_heads=None, max_seq_len=1024,
            multiple_of=256, rope_theta=10000.0, tie_embeddings=True, pad_vocab_multiple=64)
TINYLLAMA = dict(vocab_size=32000, d_model=2048, n_layers=22, n_heads=32, n_kv_heads=4, max_seq_len=2048,
                 ffn_hidden_size=5632, rope_theta=10000.0, tie_embeddings=False)
# Sized from the datasheet (989 TFLOP/s dense bf16) at the goals' MFU: a 124M step (524k tokens, 855 MFLOP each)
# ~0.9 s compiled, a 1.1B step (131k tokens, 7.8 GFLOP each) ~1.7 s; ~1 min of compilation per compiled model
# (the bare loop reuses Inductor's on-disk cache), ~2 min of tests: ~6-7 minutes on one H200, not yet timed.
SHAPES = {
    "gpt2-eager": RunShape(GPT2, 16, 1024, 32, compile=False, warmup=2, measured=5),
    "gpt2-compiled": RunShape(GPT2, 16, 1024, 32, compile=True, warmup=3, measured=6, profiled=2),
    "llama-1b": RunShape(TINYLLAMA, 8, 2048, 8, compile=True, warmup=2, measured=5, profiled=2),
    "llama-1b-fsdp2": RunShape(TINYLLAMA, 8, 2048, 8, compile=True, warmup=2, measured=5, strategy="fsdp2"),
}
# --smoke: every line of the pipeline on a CPU in seconds. Compilation stays off there: it alone takes minutes on
# a small CPU (bench/compile_cpu.py runs the facade's compile path on a CPU; tests/test_cuda.py on the GPU).
SMOKE_GPT2 = dict(GPT2, vocab_size=250, d_model=64, n_layers=2, n_heads=4, max_seq_len=32, multiple_of=64)
SMOKE_LLAMA = dict(TINYLLAMA, vocab_size=300, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, max_seq_len=32,
                   ffn_hidden_size=160)
SMOKE_SHAPES = {
    "gpt2-eager": RunShape(SMOKE_GPT2, 4, 32, 2, compile=False, warmup=1, measured=2),
    "gpt2-compiled": RunShape(SMOKE_GPT2, 4, 32, 2, compile=False, warmup=1, measured=2, profiled=1),
    "llama-1b": RunShape(SMOKE_LLAMA, 4, 32, 2, compile=False, warmup=1, measured=2, profiled=1),
    "llama-1b-fsdp2": RunShape(SMOKE_LLAMA, 4, 32, 2, compile=False, warmup=1, measured=2, strategy="fsdp2"),
}


# ---- data, device, profiling --------------------------------------------------------------------------------
def random_windows(batches: int, shape: RunShape, vocab: int, pin: bool) -> DataLoader:
    """`batches` micro-batches of random ids with the attributes the Trainer reads; pinned for CUDA, as
    create_dataloader does, so the host-to-device copies are asynchronous."""
    g = torch.Generator().manual_seed(1234)
    data = torch.randint(0, vocab, (batches * shape.batch_size, shape.seq_length + 1), generator=g)
    loader = DataLoader(TensorDataset(data[:, :-1], data[:, 1:]), batch_size=shape.batch_size, drop_last=True,
                        pin_memory=pin)
    loader.seq_length, loader.vocab_size = shape.seq_length, vocab
    return loader


def sync(device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.synchronize()


def free_device(device_type: str) -> None:
    """Drop what the previous part left: compiled graphs, cached blocks, the peak-memory counter."""
    gc.collect()
    torch._dynamo.reset()
    if device_type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_memory_gib(device_type: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device_type == "cuda" else None


def build_model(shape: RunShape, device_type: str) -> Transformer:
    """Built where it trains (a 1.1B model's initialisation on a CPU takes a while); for a sharded run on the meta
    device, as a multi-GPU run builds it (each process then draws its shards)."""
    torch.manual_seed(0)
    with torch.device("meta" if shape.strategy == "fsdp2" else device_type):
        return Transformer(TlamaConfig(**shape.model))


KERNEL_KINDS = (  # first match wins: attention kernels may name the architecture too
    ("attention", r"flash|fmha|sdpa|attention"),
    ("matmul", r"gemm|xmma|cutlass|nvjet|cublas|wgmma|sm90_|sm80_"),
    ("optimizer", r"adam|multi_tensor"),
    ("triton (fused by compile)", r"^triton_"),
    ("copy / fill", r"memcpy|memset|copy|fill|cat_"),
)


def profile_summary(prof: torch.profiler.profile, device_type: str, wall_seconds: float, top: int = 12) -> dict:
    """Where the profiled steps' time went: the top kernels by device time (CUDA) or operators by self CPU time,
    their kinds, and on CUDA how busy the device was (kernel time / wall time: low means the host held it up;
    the profiler's own host work lowers it a little)."""
    events = prof.key_averages()
    if device_type == "cuda":
        rows = [(e.key, e.self_device_time_total, e.count) for e in events
                if e.device_type == torch.autograd.DeviceType.CUDA and e.self_device_time_total > 0]
    else:
        rows = [(e.key, e.self_cpu_time_total, e.count) for e in events
                if e.self_cpu_time_total > 0 and not e.key.startswith(("ProfilerStep", "[memory]"))]
    rows.sort(key=lambda r: -r[1])
    total_us = sum(r[1] for r in rows) or 1.0
    busy = total_us / 1e6 / wall_seconds if device_type == "cuda" and wall_seconds > 0 else None
    kinds: dict[str, float] = {}
    for name, us, _ in rows:
        kind = next((k for k, pattern in KERNEL_KINDS if re.search(pattern, name, re.IGNORECASE)), "other")
        kinds[kind] = kinds.get(kind, 0.0) + us / total_us
    return {
        "wall_ms": wall_seconds * 1e3, "timed_ms": total_us / 1e3, "timed": "kernels" if device_type == "cuda" else
        "cpu operators", "device_busy": busy,
        "kinds": {k: round(v, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])},
        "top": [{"name": name[:160], "ms": us / 1e3, "share": us / total_us, "calls": count}
                for name, us, count in rows[:top]],
    }


class StepProfiler:
    """A Trainer hook object: torch.profiler over optimizer steps first+1 .. first+steps of a run."""

    def __init__(self, first: int, steps: int, device_type: str) -> None:
        self.first, self.steps, self.device_type = first, steps, device_type
        self.summary: dict | None = None
        self._prof: torch.profiler.profile | None = None
        self._started = 0.0

    def start(self) -> None:
        sync(self.device_type)
        activities = [torch.profiler.ProfilerActivity.CPU]
        if self.device_type == "cuda":
            activities.append(torch.profiler.ProfilerActivity.CUDA)
        self._prof = torch.profiler.profile(activities=activities)
        self._prof.start()
        self._started = time.perf_counter()

    def stop(self) -> None:
        sync(self.device_type)  # every kernel of the profiled steps has run, and is recorded
        wall = time.perf_counter() - self._started
        self._prof.stop()
        self.summary = profile_summary(self._prof, self.device_type, wall)
        self._prof = None

    def on_step_start(self, trainer: Trainer) -> None:
        if trainer.current_step == self.first:
            self.start()

    def on_optimizer_step_end(self, trainer: Trainer) -> None:
        if self._prof is not None and trainer.current_step == self.first + self.steps:
            self.stop()


def harmonic_mean(values: list[float]) -> float:
    """Tokens/s over steps of equal tokens: total tokens / total time, i.e. the harmonic mean of the rates."""
    return len(values) / sum(1.0 / v for v in values)


# ---- the measured runs --------------------------------------------------------------------------------------
def trainer_run(shape: RunShape, device_type: str) -> dict[str, Any]:
    """Train `shape` through the Trainer facade; tokens/s and MFU from its CSV log's rows of the measured steps."""
    free_device(device_type)
    model = build_model(shape, device_type)
    profiler = StepProfiler(shape.warmup + shape.measured, shape.profiled, device_type) if shape.profiled else None
    with tempfile.TemporaryDirectory(dir=checkpoint_parent(model)) as d:
        trainer = Trainer(model, random_windows(shape.steps * shape.grad_accum, shape, model.config.vocab_size,
                                                pin=device_type == "cuda"),
                          total_batch_size=shape.tokens_per_step, steps=shape.steps, log_steps=1,
                          checkpoint_steps=10**9, checkpoints_dir=d, logs_dir=d, verbose=False,
                          compile=shape.compile, accelerator="gpu" if device_type == "cuda" else "cpu", devices=1,
                          strategy=shape.strategy, callbacks=[profiler] if profiler else None)
        result = trainer.train()
        rows = read_rows(trainer.log_file)
    if torch.distributed.is_initialized():  # a sharded run's process group: the later parts run without one
        torch.distributed.destroy_process_group()
    measured = [r for r in rows if shape.warmup < int(r["step"]) <= shape.warmup + shape.measured]
    rates = [float(r["tokens_per_sec_per_device"]) for r in measured]
    mfus = [float(r["mfu"]) for r in measured if r["mfu"]]
    out = {
        **_describe(shape, model), "precision": trainer.precision,
        "tokens_per_sec_per_device": harmonic_mean(rates), "mfu": harmonic_mean(mfus) if mfus else None,
        "mfu_max_step": max(mfus) if mfus else None, "step_rates_spread": _spread(rates),
        "peak_memory_gib": peak_memory_gib(device_type), "train_loss": result["train_loss"],
        "wall_seconds": result["total_training_time"], "profile": profiler.summary if profiler else None,
    }
    del trainer, model
    return out


def bare_loop(shape: RunShape, device_type: str, precision: str) -> dict[str, Any]:
    """build-nanogpt's training loop (train_gpt2.py) on the same model, batches and accumulation: the reference
    the facade's tokens/s is compared with. A device sync and `loss.item()` end every step, as there (the
    facade's one-row-per-step log syncs every step too)."""
    free_device(device_type)
    model = build_model(shape, device_type)
    bf16 = precision.startswith("bf16")
    if device_type == "cuda":
        torch.set_float32_matmul_precision("high")  # TF32
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                                  lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=device_type == "cuda")
    step_model = torch.compile(model) if shape.compile else model
    batches = iter(random_windows(shape.steps * shape.grad_accum, shape, model.config.vocab_size,
                                  pin=device_type == "cuda"))
    profiler = StepProfiler(shape.warmup + shape.measured, shape.profiled, device_type) if shape.profiled else None
    seconds, loss_accum = [], None
    for step in range(shape.steps):
        if profiler and step == profiler.first:
            profiler.start()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_accum = torch.zeros((), device=device_type)
        for _ in range(shape.grad_accum):
            x, y = next(batches)
            x, y = x.to(device_type, non_blocking=True), y.to(device_type, non_blocking=True)
            with torch.autocast(device_type=device_type, dtype=torch.bfloat16, enabled=bf16):
                _, loss = step_model(x, targets=y)
            loss = loss / shape.grad_accum
            loss_accum += loss.detach()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        sync(device_type)
        loss_accum = loss_accum.item()
        seconds.append(time.perf_counter() - t0)
        if profiler and step == profiler.first + profiler.steps - 1:
            profiler.stop()
    measured = seconds[shape.warmup:shape.warmup + shape.measured]
    rate = shape.tokens_per_step * len(measured) / sum(measured)
    peak = peak_flops(torch.device(device_type), precision)
    mfu = rate * flops_per_token(model.config, shape.seq_length) / peak if peak else None
    out = {**_describe(shape, model), "precision": precision, "tokens_per_sec_per_device": rate, "mfu": mfu,
           "mfu_max_step": None if mfu is None else mfu * sum(measured) / len(measured) / min(measured),
           "step_rates_spread": _spread([shape.tokens_per_step / s for s in measured]),
           "peak_memory_gib": peak_memory_gib(device_type), "train_loss": loss_accum,
           "wall_seconds": sum(seconds), "profile": profiler.summary if profiler else None}
    del model, step_model, optimizer
    return out


def _describe(shape: RunShape, model: Transformer) -> dict[str, Any]:
    return {"model": {k: v for k, v in asdict(model.config).items() if k in shape.model},
            "params": model.num_params(), "batch_size": shape.batch_size, "seq_length": shape.seq_length,
            "grad_accum": shape.grad_accum, "tokens_per_step": shape.tokens_per_step, "compile": shape.compile,
            "steps": shape.steps, "measured_steps": [shape.warmup + 1, shape.warmup + shape.measured]}


def _spread(rates: list[float]) -> float | None:
    """(max - min) / median of the measured steps' rates: how steady the measurement was."""
    return (max(rates) - min(rates)) / statistics.median(rates) if len(rates) > 1 else None


def checkpoint_parent(model: Transformer) -> str | None:
    """Where a run's (unused) final checkpoint goes: RAM-backed /dev/shm when the weights and AdamW state fit
    there twice over (the 1.1B run writes ~13 GB), else the default temporary directory."""
    need = 2 * 12 * model.num_params()  # fp32 weights and AdamW's two moments: 12 bytes a parameter
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > need:
        return str(shm)
    return None


# ---- the correctness tests ----------------------------------------------------------------------------------
def run_cuda_tests(timeout: float) -> dict[str, Any]:
    """tests/test_cuda.py in a subprocess (`pytest -m cuda`): each test's outcome (from its JUnit XML) and the
    figures it recorded. The subprocess gets its own process group, so a timeout ends the runs it started too."""
    with tempfile.TemporaryDirectory() as d:
        xml, figures = Path(d) / "junit.xml", Path(d) / "figures.jsonl"
        cmd = [sys.executable, "-m", "pytest", "tests/test_cuda.py", "-m", "cuda", "-q", "-p", "no:cacheprovider",
               f"--junitxml={xml}"]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, FIGURES_ENV: str(figures)}, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return {**tests_error(f"pytest timed out after {timeout:.0f} s"), "output_tail": output[-3000:]}
        out = {"returncode": proc.returncode, "seconds": time.perf_counter() - started, **junit_outcomes(xml),
               "figures": {}}
        if figures.exists():
            for line in figures.read_text().splitlines():
                record = json.loads(line)
                out["figures"][record.pop("test")] = record
    if out["failed"] or out["errors"] or proc.returncode != 0:
        out["output_tail"] = output[-3000:]
    return out


def tests_error(message: str) -> dict[str, Any]:
    """The tests part's record when pytest could not report (timed out, or the part raised)."""
    return {"error": message, "passed": 0, "failed": 0, "skipped": 0, "errors": 1, "results": {}, "figures": {}}


def junit_outcomes(xml: Path) -> dict[str, Any]:
    counts = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    results: dict[str, dict[str, str]] = {}
    if not xml.exists():
        return {**counts, "errors": 1, "results": results}
    for case in ET.parse(xml).getroot().iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        outcome, message = "passed", ""
        for tag, kind in (("failure", "failed"), ("error", "errors"), ("skipped", "skipped")):
            node = case.find(tag)
            if node is not None:
                outcome, message = kind, (node.get("message") or "")[:500]
                break
        counts[outcome] += 1
        results[name] = {"outcome": {"errors": "error"}.get(outcome, outcome), "message": message}
    return {**counts, "results": results}


# ---- the report ---------------------------------------------------------------------------------------------
def header(device_type: str, smoke: bool, commit: str | None) -> dict[str, Any]:
    return {
        "script": "bench/gpu_check.py",
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or git_commit(), "smoke": smoke, "skipped": False,
        "device": torch.cuda.get_device_name() if device_type == "cuda" else f"cpu ({platform.machine()})",
        "torch": torch.__version__, "cuda": torch.version.cuda, "lightning": lightning.__version__,
        "python": platform.python_version(), "gpu": gpu_properties() if device_type == "cuda" else None,
    }


def gpu_properties() -> dict[str, Any]:
    props = torch.cuda.get_device_properties(0)
    return {"capability": f"{props.major}.{props.minor}", "multiprocessors": props.multi_processor_count,
            "memory_gib": props.total_memory / 2**30, "cudnn": torch.backends.cudnn.version(),
            "visible_devices": torch.cuda.device_count()}


def git_commit() -> str | None:
    """HEAD, marked "-dirty" when the tree has changes; None where the copy has no git history (then pass --commit)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return head.stdout.strip() + ("-dirty" if status.stdout.strip() else "")


def evaluate(report: dict[str, Any]) -> None:
    """Ratios, goals (met: True / False / None where not measured) and the MFU sanity flag, from the runs."""
    runs = report.get("runs", {})

    def figure(run: str, key: str) -> float | None:
        value = runs.get(run, {}).get(key)
        return value if isinstance(value, (int, float)) else None

    rate = "tokens_per_sec_per_device"
    facade, bare, eager = figure("gpt2-compiled", rate), figure("bare-loop", rate), figure("gpt2-eager", rate)
    single, sharded = figure("llama-1b", rate), figure("llama-1b-fsdp2", rate)
    report["ratios"] = {"facade_over_bare": facade / bare if facade and bare else None,
                        "compiled_over_eager": facade / eager if facade and eager else None,
                        "fsdp2_over_single": sharded / single if sharded and single else None}
    # The bare loop must do the facade's work: same initial weights, batches and updates give the same last loss
    # (exactly on a CPU; on a GPU up to the order of some kernels' sums).
    facade_loss, bare_loss = figure("gpt2-compiled", "train_loss"), figure("bare-loop", "train_loss")
    report["bare_loop_loss_gap"] = abs(facade_loss - bare_loss) / facade_loss if facade_loss and bare_loss else None
    values = {"mfu_124m": figure("gpt2-compiled", "mfu"), "mfu_1b": figure("llama-1b", "mfu"),
              "facade_over_bare": report["ratios"]["facade_over_bare"]}
    report["goals"] = {name: {"target": target, "value": values[name],
                              "met": None if values[name] is None else values[name] >= target}
                       for name, target in GOALS.items()}
    over = [name for name, run in runs.items() if (run.get("mfu_max_step") or 0) > 1.0 or (run.get("mfu") or 0) > 1.0]
    report["mfu_above_100"] = over
    # Profiles are kept where they explain a missed (or unmeasured) goal; the rest would only add noise.
    explains = {"gpt2-compiled": ("mfu_124m", "facade_over_bare"), "bare-loop": ("facade_over_bare",),
                "llama-1b": ("mfu_1b",)}
    for name, run in runs.items():
        if run.get("profile") is not None and not any(report["goals"][g]["met"] is False
                                                      or report["goals"][g]["met"] is None
                                                      for g in explains.get(name, ())):
            run["profile"] = None
    tests = report.get("tests")
    report["ok"] = (not over and not any("error" in run for run in runs.values())
                    and (tests is None or not (tests["failed"] or tests["errors"])))


def save(report: dict[str, Any], path: Path) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(report, indent=2) + "\n").encode()))


def summary(report: dict[str, Any]) -> str:
    lines = [f"gpu_check {report['date']} commit {report['commit']} on {report['device']} "
             f"(torch {report['torch']}, lightning {report['lightning']}){' [smoke]' if report['smoke'] else ''}"]
    if report["skipped"]:
        return "\n".join(lines + [f"skipped: {report['reason']}"])
    tests = report.get("tests")
    if tests:
        error = f"; {tests['error']}" if "error" in tests else ""
        lines.append(f"tests (pytest -m cuda): {tests['passed']} passed, {tests['failed']} failed, "
                     f"{tests['errors']} errors, {tests['skipped']} skipped{error}")
        lines += [f"  {name.split('::')[-1]}: {r['outcome']}" for name, r in tests["results"].items()
                  if r["outcome"] != "passed"]
    lines.append(f"{'run':<15}{'params':>8}{'tokens/s/device':>17}{'MFU':>8}{'peak GiB':>10}{'wall s':>8}")
    for name, run in report.get("runs", {}).items():
        if "error" in run:
            lines.append(f"{name:<15} error: {run['error'].splitlines()[-1][:90]}")
            continue
        mfu = f"{run['mfu']:.1%}" if run["mfu"] is not None else "-"
        peak = f"{run['peak_memory_gib']:.1f}" if run["peak_memory_gib"] is not None else "-"
        lines.append(f"{name:<15}{run['params'] / 1e6:>7.1f}M{run['tokens_per_sec_per_device']:>17,.0f}{mfu:>8}"
                     f"{peak:>10}{run['wall_seconds']:>8.0f}")
    for name, value in report.get("ratios", {}).items():
        lines.append(f"{name}: {value:.3f}" if value is not None else f"{name}: -")
    for name, goal in report.get("goals", {}).items():
        state = {True: "met", False: "MISSED", None: "not measured"}[goal["met"]]
        value = f"{goal['value']:.3f}" if goal["value"] is not None else "-"
        lines.append(f"goal {name} >= {goal['target']}: {value} {state}")
    if report.get("mfu_above_100"):
        lines.append(f"MFU ABOVE 100% (a counting bug): {', '.join(report['mfu_above_100'])}")
    lines.append("ok" if report.get("ok") else "NOT OK")
    return "\n".join(lines)


# ---- main ---------------------------------------------------------------------------------------------------
@dataclass
class Check:
    """The state of one invocation: what to run, where the JSON goes, and the report so far."""

    parts: tuple[str, ...]
    shapes: dict[str, RunShape]
    device_type: str
    path: Path
    report: dict[str, Any]
    test_timeout: float

    def run_part(self, name: str) -> None:
        runs = self.report.setdefault("runs", {})
        started = time.perf_counter()
        try:
            if name == "tests":
                self.report["tests"] = run_cuda_tests(self.test_timeout)
            elif name == "bare-loop":
                compiled = runs.get("gpt2-compiled", {})
                precision = compiled.get("precision") or ("bf16-mixed" if has_fast_bf16(self.device_type)
                                                          else "32-true")
                runs[name] = bare_loop(self.shapes["gpt2-compiled"], self.device_type, precision)
            else:
                runs[name] = trainer_run(self.shapes[name], self.device_type)
        except Exception as err:  # one broken part must not cost the others' figures: record it and go on
            message = "".join(traceback.format_exception(err))[-3000:]
            if name == "tests":
                self.report["tests"] = tests_error(message)
            else:
                runs[name] = {"error": message}
        print(f"gpu_check: {name} done in {time.perf_counter() - started:.0f} s", flush=True)
        evaluate(self.report)
        save(self.report, self.path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".", help="directory of gpu_check.json (default: the current one)")
    parser.add_argument("--smoke", action="store_true", help="run every part with tiny shapes, on CPU if need be")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    parser.add_argument("--commit", default=None, help="commit to record where the copy has no git history")
    parser.add_argument("--test-timeout", type=float, default=240.0, help="seconds for the pytest part")
    args = parser.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"--parts: unknown {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    report = header(device_type, args.smoke, args.commit)
    path = out / "gpu_check.json"
    if device_type != "cuda" and not args.smoke:
        report.update(skipped=True, reason="no CUDA device on this machine; nothing was measured (--smoke runs the "
                                           "script's pipeline on the CPU with tiny shapes)")
        save(report, path)
        print(summary(report))
        return 0
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    report["peak_flops"] = peak_flops(torch.device(device_type), "bf16-mixed")
    report["shapes"] = {name: {**asdict(s), "steps": s.steps} for name, s in shapes.items()}
    check = Check(parts, shapes, device_type, path, report, args.test_timeout)
    started = time.perf_counter()
    for name in PARTS:
        if name in parts:
            check.run_part(name)
    report["seconds"] = time.perf_counter() - started
    evaluate(report)
    save(report, path)
    print(summary(report))
    print(f"gpu_check: figures in {path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
