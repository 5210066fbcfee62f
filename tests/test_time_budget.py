"""Runs planned in time (`max_time`) and warmup-stable-decay schedules, stopping and resuming.

Most tests drive the budget's clock by steps (one second a step, nothing else takes time), so that where a run
stops and which rate each step trains at are exact; one test runs on the real clock."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import warnings
from datetime import timedelta
from pathlib import Path

import pytest
import torch
from trainer_utils import ResumableLoader, WindowLoader, tiny_model

from tlama_core.training import Trainer, get_lr_scheduler, time_budget
from tlama_core.training.time_budget import CHECKPOINT_BYTES_PER_SECOND, parse_max_time

TESTS = Path(__file__).resolve().parent


class StepClock:
    """The budget's clock: one second per optimizer step (a hook advances it), no time for anything else."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def on_step_end(self, trainer, metrics) -> None:
        self.now += 1.0


@pytest.fixture
def clock(monkeypatch) -> StepClock:
    clock = StepClock()
    monkeypatch.setattr(time_budget, "_clock", clock)
    return clock


class StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, metrics) -> None:
        if trainer.current_step == self.step:
            trainer.request_stop()


def make(root: Path, clock: StepClock | None, *, callbacks=(), **kw) -> Trainer:
    defaults = dict(total_batch_size=128, log_steps=1, validation_steps=1000, checkpoint_steps=4, max_steps=1000,
                    verbose=False, max_time=20, scheduler=get_lr_scheduler(1e-2, 1e-3, 2, None, "linear"),
                    checkpoints_dir=str(root / "ckpt"), logs_dir=str(root / "logs"))
    hooks = [clock, *callbacks] if clock is not None else list(callbacks)
    return Trainer(tiny_model(), ResumableLoader(40, 4, 16), callbacks=hooks, **{**defaults, **kw})


def rows(trainer: Trainer) -> list[dict[str, str]]:
    with open(trainer.log_file, newline="") as f:
        return list(csv.DictReader(f))


def checkpoint_estimate(trainer: Trainer) -> float:
    """The budget's estimate of a first checkpoint's seconds (its bytes at the documented speed)."""
    return sum(p.numel() for p in trainer.model.parameters()) * 12 / CHECKPOINT_BYTES_PER_SECOND


# ---- the budget's value -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "seconds"), [(90, 90.0), (2.5, 2.5), ("45", 45.0), ("00:08:00:00", 28800.0),
                                                ("01:00:00:30", 86430.0), (timedelta(minutes=3), 180.0)])
def test_max_time_takes_seconds_lightnings_string_or_a_timedelta(value, seconds):
    assert parse_max_time(value) == seconds


@pytest.mark.parametrize("value", ["8 hours", "08:00:00", 0, -5, "00:00:00:00", float("nan"), True])
def test_a_bad_max_time_is_an_error_naming_it(tmp_path, value):
    with pytest.raises(ValueError, match=r"max_time=.* must be a time budget > 0: seconds .* \"DD:HH:MM:SS\""):
        make(tmp_path, None, max_time=value)


# ---- stopping at the budget with a schedule that lands ----------------------------------------------------------
def test_the_run_stops_when_one_more_step_and_its_checkpoint_would_pass_the_budget(tmp_path, clock):
    """20 s at 1 s a step: step 19 ends at 19 s, and a 20th step and its checkpoint would end after 20 s."""
    t = make(tmp_path, clock)
    result = t.train()
    assert result["steps_completed"] == 19 and not result["stopped_early"]
    assert (tmp_path / "ckpt" / "step=00000019.ckpt").exists()


def test_the_decay_follows_the_share_of_the_budget_used_and_lands_on_min_lr(tmp_path, clock):
    """Step s trains at the rate of position (s - 1) / planned, planned = the budget less the final checkpoint and
    one step; the warmup counts steps."""
    t = make(tmp_path, clock)
    t.train()
    schedule = get_lr_scheduler(1e-2, 1e-3, 2, None, "linear")
    reserve = checkpoint_estimate(t)
    lrs = [float(r["learning_rate"]) for r in rows(t)]
    expected = [1e-2 / 2, 1e-2] + [schedule.at_position(s - 1, (s - 1) / (20 - reserve - 1)) for s in range(3, 20)]
    assert lrs == pytest.approx(expected, rel=1e-9)
    assert lrs[-1] - 1e-3 < (1e-2 - 1e-3) / 18  # the last step trains within a step's share of min_lr


def test_a_wsd_schedule_in_time_holds_max_lr_until_its_decay_fraction(tmp_path, clock):
    t = make(tmp_path, clock, scheduler=get_lr_scheduler(1e-2, 1e-3, 2, None, "wsd", decay_fraction=0.25))
    t.train()
    lrs = [float(r["learning_rate"]) for r in rows(t)]
    planned = 20 - checkpoint_estimate(t) - 1
    stable = [s for s in range(3, 20) if (s - 1) / planned <= 0.75]
    assert [lrs[s - 1] for s in stable] == [1e-2] * len(stable)  # rows hold step s at index s - 1
    decay = lrs[stable[-1]:]
    assert decay == sorted(decay, reverse=True) and decay[-1] == pytest.approx(1e-3 + 9e-3 * (1 - 18 / planned) / 0.25)


def test_the_final_validation_is_planned_in_with_its_measured_cost(tmp_path, clock):
    """Validations of 3 s at steps 4 and 8: step 10 ends at 16 s, and step 11 and a validation would end at 20 s,
    its checkpoint after; so step 10 is the last, and its validation and checkpoint end before 20 s."""

    class SlowValidation:
        def on_validate_end(self, trainer, metrics) -> None:
            clock.now += 3.0

    t = make(tmp_path, clock, callbacks=[SlowValidation()], val_data_loader=WindowLoader(8, 4, 16, seed=1),
             validation_steps=4)
    assert t.train()["steps_completed"] == 10
    assert rows(t)[-1]["val_loss"]  # the final step validated
    saved = torch.load(tmp_path / "ckpt" / "step=00000010.ckpt", weights_only=True)
    state = next(v for k, v in saved["callbacks"].items() if "StepCadence" in k)["time_budget"]
    assert state["elapsed"] == 19.0 <= 20  # its validation done, the checkpoint being written


def test_a_step_limit_that_comes_first_ends_the_run_with_a_warning_that_the_schedule_did_not_land(tmp_path, clock):
    t = make(tmp_path, clock, max_steps=None, epochs=1)
    with pytest.warns(UserWarning, match=r"reached its last step 5 .* did not land: the last rate was 0.00\d+, not "
                                         r"min_lr=0.001"):
        result = t.train()
    assert result["steps_completed"] == 5


def test_a_schedule_with_its_own_max_steps_and_max_time_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"max_time=20 s plans the schedule's decay in time, and the scheduler's "
                                         r"max_steps=50"):
        make(tmp_path, None, scheduler=get_lr_scheduler(1e-2, 1e-3, 2, 50))


def test_a_plain_function_schedule_with_max_time_warns_that_it_cannot_follow_time(tmp_path):
    with pytest.warns(UserWarning, match="plain function of the step, which cannot follow the time budget"):
        make(tmp_path, None, scheduler=lambda step: 1e-3)


def test_max_time_on_the_real_clock_stops_before_the_step_limit(tmp_path):
    t = make(tmp_path, None, max_time=2.0, max_steps=100_000, checkpoint_steps=100_000,
             val_data_loader=WindowLoader(8, 4, 16, seed=1), validation_steps=40)
    result = t.train()
    last = rows(t)[-1]
    assert result["steps_completed"] < 100_000 and last["val_loss"]  # time ended it, with a final validation
    assert (tmp_path / "ckpt" / f"step={result['steps_completed']:08d}.ckpt").exists()


# ---- resuming -------------------------------------------------------------------------------------------------------
def test_a_time_planned_run_resumes_exactly_with_its_time_spent(tmp_path, clock):
    full = make(tmp_path / "full", clock)
    full.train()
    stopped = make(tmp_path / "cut", clock, callbacks=[StopAt(8)])
    assert stopped.train()["steps_completed"] == 8
    resumed = make(tmp_path / "cut", clock)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same budget: no jump in the rate
        result = resumed.train(ckpt_path="last")
    assert result["steps_completed"] == 19
    assert [(r["step"], r["train_loss"], r["learning_rate"]) for r in rows(resumed)] == [
        (r["step"], r["train_loss"], r["learning_rate"]) for r in rows(full)]


def test_resuming_the_final_checkpoint_of_a_run_its_budget_ended_trains_nothing(tmp_path, clock):
    first = make(tmp_path, clock)
    first.train()
    before = rows(first)
    again = make(tmp_path, clock)
    assert again.train(ckpt_path="last")["steps_completed"] == 19
    assert rows(again) == before


def test_a_new_budget_on_resume_replans_the_time_left_and_warns_of_the_rate_jump(tmp_path, clock):
    make(tmp_path, clock, callbacks=[StopAt(8)]).train()
    resumed = make(tmp_path, clock, max_time=40)
    with pytest.warns(UserWarning, match=r"resuming at step 8: the learning rate jumps from 0.00[56]\d+ \(the "
                                         r"checkpoint's run\) to 0.00[78]\d+"):
        result = resumed.train(ckpt_path="last")
    assert result["steps_completed"] == 39


# ---- warmup-stable-decay and extending runs ----------------------------------------------------------------------
def test_wsd_is_warmup_then_max_lr_then_a_linear_decay_over_its_share_of_the_run():
    schedule = get_lr_scheduler(1.0, 0.1, 2, 20, decay_type="wsd", decay_fraction=0.25)
    expected = [0.5, 1.0] + [1.0] * 13 + [0.1 + 0.9 * (20 - s) / 5 for s in range(15, 20)] + [0.1, 0.1]
    assert [schedule(s) for s in range(22)] == pytest.approx(expected)
    assert get_lr_scheduler(1.0, 0.1, 0, 10, decay_type="wsd")(9) == pytest.approx(0.1 + 0.9 * 1 / 2)  # 0.2


@pytest.mark.parametrize(("kwargs", "match"), [
    (dict(decay_type="cosine", decay_fraction=0.2), "decay_fraction=0.2 is the decay's share of a decay_type='wsd'"),
    (dict(decay_type="wsd", decay_fraction=0.0), r"decay_fraction=0.0 must be in \(0, 1\]"),
    (dict(decay_type="wsd", decay_fraction=1.5), r"decay_fraction=1.5 must be in \(0, 1\]")])
def test_a_bad_decay_fraction_is_an_error_naming_it(kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_lr_scheduler(1.0, 0.1, 2, 20, **kwargs)


def steps_run(root: Path, scheduler, max_steps: int, **kw) -> Trainer:
    return Trainer(tiny_model(), ResumableLoader(40, 4, 16), total_batch_size=128, log_steps=1, max_steps=max_steps,
                   validation_steps=1000, checkpoint_steps=4, verbose=False, scheduler=scheduler,
                   checkpoints_dir=str(root / "ckpt"), logs_dir=str(root / "logs"), **kw)


def test_resuming_a_finished_cosine_run_with_more_steps_warns_naming_both_rates(tmp_path):
    steps_run(tmp_path, get_lr_scheduler(6e-3, 1e-4, 2, None), 8).train()
    longer = steps_run(tmp_path, get_lr_scheduler(6e-3, 1e-4, 2, None), 16)
    stretched = get_lr_scheduler(6e-3, 1e-4, 2, 16)(8)
    with pytest.warns(UserWarning, match=rf"resuming at step 8: the learning rate jumps from 0.0001 \(the "
                                         rf"checkpoint's run\) to {stretched:.3g} "):
        longer.train(ckpt_path="last")


def test_resuming_a_wsd_run_from_its_stable_phase_with_more_steps_continues_without_a_jump(tmp_path):
    """Steps 1-12 of a 16-step WSD run are stable (decay_fraction 0.25): extend it from step 8 to 32 steps."""
    steps_run(tmp_path, get_lr_scheduler(6e-3, 1e-4, 2, None, "wsd", decay_fraction=0.25), 16).train()
    longer = steps_run(tmp_path, get_lr_scheduler(6e-3, 1e-4, 2, None, "wsd", decay_fraction=0.25), 32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        longer.train(ckpt_path=str(tmp_path / "ckpt" / "step=00000008.ckpt"))
    assert not [w for w in caught if "learning rate jumps" in str(w.message)]
    lrs = {int(r["step"]): float(r["learning_rate"]) for r in rows(longer)}
    assert [lrs[s] for s in range(7, 25)] == [6e-3] * 18  # steps 7-8 of the first run, 9-24 after the resume
    assert lrs[32] == pytest.approx(1e-4 + (6e-3 - 1e-4) / 8)


# ---- several processes --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_with_clocks_apart_agree_on_every_rate_and_the_stop(tmp_path):
    """Rank 1's clock runs at twice the speed of rank 0's (2 s a step against 1 s): the agreed (maximum) clock is
    rank 1's, so both processes stop at step 9 of a 20 s budget (rank 0 alone would run to step 19) and apply the
    same rate at every step."""
    shutil.copy(Path(time_budget.__file__).parents[1] / "data" / "assets" / "tinyshakespeare.txt",
                tmp_path / "corpus.txt")
    done = subprocess.run([sys.executable, str(TESTS / "ddp_run.py"), str(tmp_path), "2", "128", "--max-time"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rates = [(tmp_path / f"lr_rank{r}.txt").read_text().split() for r in (0, 1)]
    assert rates[0] == rates[1] and len(rates[0]) == 9 and len(set(rates[0])) == 9
    assert [(tmp_path / f"result_rank{r}.txt").read_text() for r in (0, 1)] == ["9 False\n"] * 2
