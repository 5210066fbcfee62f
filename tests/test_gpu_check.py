"""bench/gpu_check.py, the one-command device check, tested where there is no GPU: its skip path, its whole
pipeline on tiny shapes (--smoke), its goals and its reading of pytest's results. The GPU machine it is written
for has no jsonargparse, datasets or mlflow, so the script runs here with those imports made to fail."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tlama_core.models import TlamaConfig, Transformer

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
ABSENT_ON_GPU_MACHINE = ("jsonargparse", "datasets", "mlflow")


def _load_script():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


gpu_check = _load_script()


def run_script(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Run the script as the GPU machine would, with the packages it lacks unimportable; return its JSON."""
    blocked = tmp_path / "blocked"
    for name in ABSENT_ON_GPU_MACHINE:
        (blocked / name).mkdir(parents=True)
        (blocked / name / "__init__.py").write_text(f"raise ImportError('{name} is not on the GPU machine')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(blocked), os.environ.get("PYTHONPATH")]))}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc, json.loads((out / "gpu_check.json").read_text())


def check_header(report: dict) -> None:
    import lightning

    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", report["date"])
    assert report["commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", report["commit"])
    assert (report["torch"], report["lightning"]) == (torch.__version__, lightning.__version__)
    assert report["device"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the skip path is the one of machines without CUDA")
def test_without_cuda_it_says_it_skipped(tmp_path):
    proc, report = run_script(tmp_path)
    check_header(report)
    assert report["skipped"] is True and "no CUDA device" in report["reason"]
    assert "runs" not in report and "tests" not in report
    assert "skipped: no CUDA device" in proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU machine the script itself is the check")
def test_smoke_runs_every_part_and_writes_sane_figures(tmp_path):
    proc, report = run_script(tmp_path, "--smoke", "--commit", "0123456789abcdef0123456789abcdef01234567")
    check_header(report)
    assert report["commit"] == "0123456789abcdef0123456789abcdef01234567"
    assert report["smoke"] is True and report["skipped"] is False and report["ok"] is True
    assert report["peak_flops"] is None  # no known peak on a CPU: no MFU anywhere

    tests = report["tests"]  # pytest -m cuda ran and reported through its JUnit XML: every test skipped here
    assert tests["returncode"] == 0 and tests["failed"] == tests["errors"] == tests["passed"] == 0
    assert tests["skipped"] == len(tests["results"]) >= 5
    assert all(r["outcome"] == "skipped" and "CUDA" in r["message"] for r in tests["results"].values())

    runs = report["runs"]
    assert list(runs) == ["gpt2-compiled", "bare-loop", "llama-1b", "llama-1b-fsdp2", "gpt2-eager"]
    for name, run in runs.items():
        shape = gpu_check.SMOKE_SHAPES["gpt2-compiled" if name == "bare-loop" else name]
        assert run["params"] == Transformer(TlamaConfig(**shape.model)).num_params()
        assert run["tokens_per_step"] == shape.batch_size * shape.seq_length * shape.grad_accum
        assert run["measured_steps"] == [shape.warmup + 1, shape.warmup + shape.measured]
        assert run["tokens_per_sec_per_device"] > 0 and run["wall_seconds"] > 0
        assert run["mfu"] is None and run["mfu_max_step"] is None and run["peak_memory_gib"] is None
        assert run["train_loss"] > 0
    # The bare loop did the facade's work: the same weights, batches and updates give the same last loss.
    assert report["bare_loop_loss_gap"] < 1e-4
    ratios = report["ratios"]
    assert ratios["facade_over_bare"] == pytest.approx(
        runs["gpt2-compiled"]["tokens_per_sec_per_device"] / runs["bare-loop"]["tokens_per_sec_per_device"])
    assert ratios["compiled_over_eager"] > 0
    # FSDP2 with one shard trains the same model on the same batches: the same last loss, up to bf16 (under bf16
    # autocast FSDP2 computes with bf16 weights, so the residual stream is bf16 too; autocast casts per matmul).
    assert runs["llama-1b-fsdp2"]["train_loss"] == pytest.approx(runs["llama-1b"]["train_loss"], rel=2e-2)
    assert ratios["fsdp2_over_single"] == pytest.approx(
        runs["llama-1b-fsdp2"]["tokens_per_sec_per_device"] / runs["llama-1b"]["tokens_per_sec_per_device"])
    goals = report["goals"]
    assert goals["mfu_124m"]["met"] is None and goals["mfu_1b"]["met"] is None
    assert goals["facade_over_bare"]["met"] is (ratios["facade_over_bare"] >= 0.97)
    assert report["mfu_above_100"] == []
    # Unmeasured MFU goals keep the profiles of the runs they concern: top CPU operators, largest first.
    for name in ("gpt2-compiled", "llama-1b"):
        profile = runs[name]["profile"]
        times = [row["ms"] for row in profile["top"]]
        assert times == sorted(times, reverse=True) and times[0] > 0
        assert 0.99 < sum(profile["kinds"].values()) < 1.01 and profile["timed_ms"] <= profile["wall_ms"] * 1.05
    assert runs["gpt2-eager"]["profile"] is None  # no goal concerns it
    for words in ("tokens/s/device", "facade_over_bare", "goal mfu_124m >= 0.5: - not measured", "ok"):
        assert words in proc.stdout


def _report(mfu_124m=0.55, mfu_1b=0.65, facade=970.0, bare=1000.0, mfu_max=0.6) -> dict:
    profile = {"top": []}
    run = {"profile": profile, "mfu_max_step": mfu_max, "train_loss": 5.0}
    return {"runs": {"gpt2-eager": {**run, "tokens_per_sec_per_device": 500.0, "mfu": 0.3},
                     "gpt2-compiled": {**run, "tokens_per_sec_per_device": facade, "mfu": mfu_124m},
                     "bare-loop": {**run, "tokens_per_sec_per_device": bare, "mfu": 0.56},
                     "llama-1b": {**run, "mfu": mfu_1b}},
            "tests": {"passed": 6, "failed": 0, "errors": 0, "skipped": 0}}


def test_goals_met_drop_the_profiles():
    report = _report()
    gpu_check.evaluate(report)
    assert {k: g["met"] for k, g in report["goals"].items()} == {"mfu_124m": True, "mfu_1b": True,
                                                                 "facade_over_bare": True}
    assert report["ratios"] == {"facade_over_bare": 0.97, "compiled_over_eager": 970.0 / 500.0,
                                "fsdp2_over_single": None}  # not measured in this report
    assert report["ok"] is True and report["mfu_above_100"] == []
    assert all(run["profile"] is None for run in report["runs"].values())


def test_a_missed_goal_keeps_the_profiles_that_explain_it():
    report = _report(facade=900.0)
    gpu_check.evaluate(report)
    assert report["goals"]["facade_over_bare"]["met"] is False
    assert report["ok"] is True  # a missed speed goal is a finding, not a failure
    kept = {name for name, run in report["runs"].items() if run["profile"] is not None}
    assert kept == {"gpt2-compiled", "bare-loop"}


def test_mfu_above_100_percent_is_flagged_and_fails_the_check():
    report = _report(mfu_1b=1.02)
    gpu_check.evaluate(report)
    assert report["mfu_above_100"] == ["llama-1b"] and report["ok"] is False
    report = _report(mfu_max=1.01)  # one step over the peak is a counting bug too, whatever the mean
    gpu_check.evaluate(report)
    assert set(report["mfu_above_100"]) == {"gpt2-eager", "gpt2-compiled", "bare-loop", "llama-1b"}


def test_a_failed_test_or_a_broken_part_fails_the_check():
    report = _report()
    report["tests"]["failed"] = 1
    gpu_check.evaluate(report)
    assert report["ok"] is False
    report = _report()
    report["runs"]["llama-1b"] = {"error": "torch.OutOfMemoryError: CUDA out of memory"}
    gpu_check.evaluate(report)
    assert report["ok"] is False and report["goals"]["mfu_1b"]["met"] is None


def test_junit_outcomes_counts_each_kind(tmp_path):
    xml = tmp_path / "junit.xml"
    xml.write_text("""<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
      <testcase classname="tests.test_cuda" name="test_a" />
      <testcase classname="tests.test_cuda" name="test_b"><failure message="assert 0.07 &lt;= 0.05" /></testcase>
      <testcase classname="tests.test_cuda" name="test_c"><error message="fixture broke">x</error></testcase>
      <testcase classname="tests.test_cuda" name="test_d"><skipped message="needs a CUDA device" /></testcase>
    </testsuite></testsuites>""")
    out = gpu_check.junit_outcomes(xml)
    assert {k: out[k] for k in ("passed", "failed", "errors", "skipped")} == {"passed": 1, "failed": 1, "errors": 1,
                                                                             "skipped": 1}
    assert out["results"]["tests.test_cuda::test_b"] == {"outcome": "failed", "message": "assert 0.07 <= 0.05"}
    assert out["results"]["tests.test_cuda::test_c"]["outcome"] == "error"
    assert gpu_check.junit_outcomes(tmp_path / "missing.xml")["errors"] == 1  # pytest died before writing it


def test_unknown_parts_are_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--parts", "tests,gpt3"])
    assert exit_info.value.code == 2
    assert "--parts: unknown gpt3; choose from tests, gpt2-compiled" in capsys.readouterr().err


def test_a_part_that_raises_is_recorded_and_the_next_part_still_runs(tmp_path, monkeypatch, capsys):
    def fake_run(shape, device_type):
        if shape.model["n_kv_heads"] == 2:  # the llama-1b shape
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return {"params": 124_000_000, "tokens_per_sec_per_device": 500_000.0, "mfu": None, "mfu_max_step": None,
                "peak_memory_gib": None, "wall_seconds": 60.0, "train_loss": 5.0, "profile": None,
                "precision": "bf16-mixed"}

    monkeypatch.setattr(gpu_check, "trainer_run", fake_run)
    code = gpu_check.main(["--smoke", "--out", str(tmp_path), "--parts", "llama-1b,gpt2-eager"])
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert code == 1 and report["ok"] is False
    assert "CUDA out of memory" in report["runs"]["llama-1b"]["error"]
    assert report["runs"]["gpt2-eager"]["tokens_per_sec_per_device"] == 500_000.0
    assert re.search(r"llama-1b +error: RuntimeError: CUDA out of memory", capsys.readouterr().out)
