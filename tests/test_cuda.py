"""Correctness on a CUDA device, where the CPU suite cannot look; skipped without one.

bench/gpu_check.py runs these (`pytest -m cuda tests/test_cuda.py`) and copies the figures each test records
into its JSON. A small model (256 wide, 4 layers, 4 query / 2 key-value heads, head_dim 64) trains on the built-in
Shakespeare text through the `Trainer`, so the whole CUDA path runs: pinned loader, bf16 autocast, SDPA, fused
AdamW, TF32, compile, checkpoints. Tolerances, relative to the reference's loss at the same step:
- bf16-mixed vs fp32 (TF32 off), 50 steps: every step within 5%, the mean of the last 10 steps within 2%. On a
  CPU, bf16 autocast of this run with 128-token windows stayed within 1.6% per step and 0.7% over the last 10
  steps: bf16 rounding moves every step's loss a little, and the two trajectories drift apart slowly.
- compile=True vs eager (both bf16), 20 steps: the first step (same weights, same batch) within 0.5%, then as above.
- killed and resumed vs uninterrupted: every step within 1e-3, not exactly: FlashAttention's backward pass sums
  in another order from run to run. A resume that lost the optimizer state, the data position or the dropout
  stream would be off by 0.5% or more. The figures say whether it was bit-exact.
- cached greedy generation vs recomputing every prefix, fp32 with TF32 off: the same tokens.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tlama_core.data import builtin_corpus_path, builtin_tokenizer_path, create_dataloader
from tlama_core.models import TlamaConfig, Transformer, generate
from tlama_core.training import Trainer
from tlama_core.training.files.checkpoint_io import find_last_checkpoint, step_checkpoint_name, step_of
from tlama_core.training.records.metrics import read_rows
from tlama_core.training.records.throughput import peak_flops

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (bench/gpu_check.py)")]

BATCH, SEQ = 16, 256
FLASH_OPS = {"aten::_scaled_dot_product_flash_attention", "aten::_scaled_dot_product_cudnn_attention"}
SLOW_SDPA_OPS = {"aten::_scaled_dot_product_efficient_attention", "aten::_scaled_dot_product_attention_math"}


def small_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    shape = dict(vocab_size=1024, d_model=256, n_layers=4, n_heads=4, n_kv_heads=2, max_seq_len=SEQ,
                 rope_theta=10000.0)
    return Transformer(TlamaConfig(**{**shape, **overrides}))


def shakespeare(seed: int = 1):
    """The built-in corpus in 16 x 256-token windows (tokenized once into $TLAMA_CACHE_DIR; pinned on CUDA)."""
    return create_dataloader(builtin_corpus_path(), builtin_tokenizer_path(), BATCH, SEQ, seed=seed, split="train")


def build_trainer(root: Path, steps: int, model: Transformer | None = None, **kwargs) -> Trainer:
    options = dict(total_batch_size=BATCH * SEQ, steps=steps, learning_rate=1e-3, log_steps=1,
                   checkpoint_steps=10**6, verbose=False, checkpoints_dir=str(root / "ckpt"),
                   logs_dir=str(root / "logs"), accelerator="gpu", devices=1)
    return Trainer(model or small_model(), shakespeare(), **{**options, **kwargs})


def logged_losses(trainer: Trainer) -> list[float]:
    rows = read_rows(trainer.log_file)
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1))
    return [float(r["train_loss"]) for r in rows]


def relative_gaps(losses: list[float], reference: list[float]) -> list[float]:
    return [abs(a - b) / abs(b) for a, b in zip(losses, reference, strict=True)]


@pytest.fixture
def figures(request):
    """A dict the test fills with its figures; bench/gpu_check.py collects them (even from a failed test)."""
    record: dict = {}
    yield record
    path = os.environ.get("TLAMA_GPU_CHECK_FIGURES")
    if path and record:
        with open(path, "a") as f:
            f.write(json.dumps({"test": request.node.nodeid, **record}) + "\n")


@pytest.fixture
def fp32_matmuls():
    """True fp32 matmuls (no TF32) inside the test; the Trainer turns TF32 on for CUDA runs."""
    previous = torch.get_float32_matmul_precision()
    yield lambda: torch.set_float32_matmul_precision("highest")
    torch.set_float32_matmul_precision(previous)


def test_bf16_mixed_training_tracks_fp32(tmp_path, figures, fp32_matmuls):
    bf16 = build_trainer(tmp_path / "bf16", 50)
    assert bf16.precision == "bf16-mixed"
    bf16.train()
    fp32 = build_trainer(tmp_path / "fp32", 50, use_mixed_precision=False)
    assert fp32.precision == "32-true"
    fp32_matmuls()  # after the Trainer's construction, which turns TF32 on
    fp32.train()
    a, b = logged_losses(bf16), logged_losses(fp32)
    gaps = relative_gaps(a, b)
    last = abs(sum(a[-10:]) - sum(b[-10:])) / sum(b[-10:])
    mfu = [float(r["mfu"]) if r["mfu"] else None for r in read_rows(bf16.log_file)[1:]]
    figures.update(first_loss=b[0], last_loss_fp32=b[-1], last_loss_bf16=a[-1], max_step_gap=max(gaps),
                   last10_gap=last, mfu_small_model=None if None in mfu else max(mfu))
    assert b[0] - sum(b[-10:]) / 10 > 1.0, "the fp32 reference did not learn: the comparison would be empty"
    assert max(gaps) <= 0.05 and last <= 0.02
    if peak_flops(torch.device("cuda"), bf16.precision):  # a known device: no step counts more than it can do
        assert all(m is not None and 0 < m <= 1 for m in mfu)


def test_loader_batches_are_pinned_for_asynchronous_copies():
    x, y = next(iter(shakespeare()))
    assert x.is_pinned() and y.is_pinned()
    copied = x.to("cuda", non_blocking=True)  # as Lightning moves batches: no wait for the device
    torch.cuda.synchronize()
    assert torch.equal(copied.cpu(), x)


@pytest.mark.parametrize("n_kv_heads", [4, 2], ids=["mha", "gqa"])
def test_fused_adamw_and_flash_attention_are_the_kernels_used(tmp_path, figures, n_kv_heads):
    trainer = build_trainer(tmp_path, 3, model=small_model(n_kv_heads=n_kv_heads))
    assert trainer.optimizer.defaults["fused"] is True
    head_dim = trainer.model.config.head_dim
    q = torch.randn(2, 4, SEQ, head_dim, device="cuda", dtype=torch.bfloat16)
    kv = torch.randn(2, n_kv_heads, SEQ, head_dim, device="cuda", dtype=torch.bfloat16)
    params = torch.backends.cuda.SDPAParams(q, kv, kv, None, 0.0, True, n_kv_heads != 4)
    assert torch.backends.cuda.can_use_flash_attention(params, True)  # debug=True: warns why not
    trainer.train_step()  # setup and the first step outside the profile
    activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activities) as prof:
        trainer.train_step()
        torch.cuda.synchronize()
    events = prof.key_averages()
    ops = {e.key for e in events if e.device_type == torch.autograd.DeviceType.CPU}
    kernels = {e.key for e in events if e.device_type == torch.autograd.DeviceType.CUDA}
    attention_ops = sorted(o for o in ops if "scaled_dot_product" in o)
    figures.update(attention_ops=attention_ops, attention_kernels=sorted(
        k[:120] for k in kernels if any(s in k.lower() for s in ("flash", "fmha", "sdpa", "attention"))),
        adam_kernels=sorted(k[:120] for k in kernels if "adam" in k.lower()))
    assert ops & FLASH_OPS and not ops & SLOW_SDPA_OPS, attention_ops  # FlashAttention-2 or cuDNN's flash kernel
    assert ops & {op + "_backward" for op in FLASH_OPS}, attention_ops
    assert "aten::_fused_adamw_" in ops and any("FusedAdam" in k for k in kernels)


def test_compile_gives_the_eager_losses(tmp_path, figures):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    eager = build_trainer(tmp_path / "eager", 20)
    eager.train()
    compiled = build_trainer(tmp_path / "compiled", 20, compile=True)
    compiled.train()
    assert getattr(compiled.model, "_compiled_call_impl", None) is not None
    a, b = logged_losses(compiled), logged_losses(eager)
    gaps = relative_gaps(a, b)
    last = abs(sum(a[-5:]) - sum(b[-5:])) / sum(b[-5:])
    counters = torch._dynamo.utils.counters
    figures.update(first_step_gap=gaps[0], max_step_gap=max(gaps), last5_gap=last,
                   graph_breaks=sum(counters["graph_break"].values()),
                   graph_break_reasons=sorted(counters["graph_break"])[:10])
    assert gaps[0] <= 0.005 and max(gaps) <= 0.05 and last <= 0.02


class _KillMidRun:
    """A hook that kills its own process (SIGKILL: no cleanup) at the start of step `step + 3`, once the checkpoint
    of `step` is on disk (it is committed in the background: waiting for it keeps the test independent of the
    disk's speed, and the next checkpoint is not due before the kill)."""

    def __init__(self, step: int, checkpoints_dir: Path) -> None:
        self.step, self.checkpoints_dir = step, checkpoints_dir

    def on_step_start(self, trainer) -> None:
        if trainer.current_step == self.step + 2:
            while step_of(find_last_checkpoint(self.checkpoints_dir) or Path()) != self.step:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)


def resume_run(root: str, steps: int, kill_after: int | None) -> None:
    """The run under test_kill_and_resume (a subprocess): dropout on, so the device's random streams must resume
    too; a checkpoint every 5 steps; `train(ckpt_path="last")` continues whatever is in root."""
    callbacks = [_KillMidRun(kill_after, Path(root) / "ckpt")] if kill_after else None
    trainer = build_trainer(Path(root), steps, model=small_model(dropout=0.1), checkpoint_steps=5,
                            callbacks=callbacks)
    result = trainer.train(ckpt_path="last")
    print(json.dumps({"steps_completed": result["steps_completed"]}), flush=True)


def _run(root: Path, steps: int, kill_after: int | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, __file__, str(root), str(steps)] + ([str(kill_after)] if kill_after else [])
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def test_kill_and_resume_on_the_device_continues_the_run(tmp_path, figures):
    whole = _run(tmp_path / "whole", 20)
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = _run(tmp_path / "cut", 20, kill_after=10)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    assert find_last_checkpoint(tmp_path / "cut" / "ckpt").name == step_checkpoint_name(10)
    assert len(read_rows(tmp_path / "cut" / "logs" / "train_log.csv")) == 12  # it died in step 13
    resumed = _run(tmp_path / "cut", 20)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1]) == {"steps_completed": 20}

    def losses(root: Path) -> list[float]:
        rows = read_rows(root / "logs" / "train_log.csv")
        assert [int(r["step"]) for r in rows] == list(range(1, 21))  # no step lost, none logged twice
        return [float(r["train_loss"]) for r in rows]

    a, b = losses(tmp_path / "cut"), losses(tmp_path / "whole")
    figures.update(bit_exact=a == b, max_step_gap_before_kill=max(relative_gaps(a[:10], b[:10])),
                   max_step_gap_after_resume=max(relative_gaps(a[10:], b[10:])))
    assert max(relative_gaps(a, b)) <= 1e-3


def test_cached_generation_equals_recompute(figures, fp32_matmuls):
    fp32_matmuls()
    model = small_model(max_seq_len=128).cuda().eval()
    prompt = torch.randint(0, 1024, (2, 16), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    cached = generate(model, prompt, max_new_tokens=64, temperature=0)
    recomputed = prompt
    with torch.no_grad():
        for _ in range(64):  # no cache: every token from a forward pass over the whole prefix
            logits, _ = model(recomputed)
            recomputed = torch.cat((recomputed, logits[:, -1].argmax(-1, keepdim=True)), dim=1)
    figures.update(tokens_equal=bool(torch.equal(cached, recomputed)),
                   first_difference=None if torch.equal(cached, recomputed) else
                   int((cached != recomputed).any(0).nonzero()[0]))
    assert torch.equal(cached, recomputed)


if __name__ == "__main__":  # the subprocess of test_kill_and_resume_on_the_device_continues_the_run
    resume_run(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
