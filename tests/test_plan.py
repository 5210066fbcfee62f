"""StepPlan: the one translation between optimizer steps and Lightning's micro-batch counters."""

from __future__ import annotations

import pytest

from tlama_core.training.plan import Accumulation, plan_steps, step_tokens


def test_a_plan_counts_steps_of_the_tokens_asked_for_and_gives_lightning_micro_batches():
    # 8 x 16 tokens a micro-batch on 2 readers: 4096 tokens a step are 16 accumulated micro-batches each.
    plan = plan_steps(8, 16, 100, 4096, True, None, 3, world_size=2)
    assert plan.grad_accum == 4096 // (8 * 16 * 2)
    assert plan.steps_per_epoch == 100 // plan.grad_accum  # a short last window is dropped
    assert plan.process_tokens_per_step == 8 * 16 * plan.grad_accum
    assert plan.tokens_per_step == plan.process_tokens_per_step * 2 == 4096
    assert plan.lightning_counts(validation_steps=5) == {
        "max_epochs": 3, "max_steps": 3 * 6, "limit_train_batches": 6 * 16, "accumulate_grad_batches": 16,
        "val_check_interval": 5 * 16}


def test_the_step_of_each_micro_batch_is_the_hand_counted_one():
    plan = plan_steps(2, 4, 30, 24, True, None, 1)  # 3 micro-batches a step
    starts = [i for i in range(12) if plan.starts_step(i)]
    ends = [i for i in range(12) if plan.ends_step(i)]
    assert (starts, ends) == ([0, 3, 6, 9], [2, 5, 8, 11])
    assert [plan.steps_in(n) for n in (0, 2, 3, 11, 12)] == [0, 0, 1, 3, 4]
    assert plan.micro_batches(4) == 12
    assert Accumulation(3).ends_step(5) and not Accumulation(3).ends_step(6)  # a plain lightning.Trainer's


def test_max_steps_overrides_epochs_and_a_checkpoints_step_shape_counts_its_tokens_as_a_plan_does():
    plan = plan_steps(4, 8, 40, 64, True, 5, 1, world_size=4, max_steps=12, data_parallel=2)
    assert (plan.max_steps, plan.epochs) == (12, 3)  # 5 steps an epoch: the third one cut short
    assert plan.readers == 2 and plan.grad_accum == 1
    assert step_tokens(4, 8, 1, 2) == plan.tokens_per_step == 64


def test_a_total_batch_smaller_than_one_micro_batch_round_names_the_parameter():
    with pytest.raises(ValueError, match="total_batch_size=100 tokens is smaller"):
        plan_steps(8, 16, 100, 100, True, None, 1)
