"""The Trainer facade against its documentation (../shared/SPEC.md) and against a hand-written loop."""

from __future__ import annotations

import copy
import csv
import math
import time
import warnings
from collections import Counter

import pytest
import torch
from trainer_utils import VOCAB, Recorder, SlowLoader, WindowLoader, make_trainer, tiny_model

from tlama_core.checkpoints import read_checkpoint
from tlama_core.training import Trainer, get_lr_scheduler
from tlama_core.training.lightning.precision import has_fast_bf16
from tlama_core.training.plan import grad_accum_steps


def read_csv(path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ---- documented defaults and attributes -------------------------------------------------------------------
def test_documented_defaults_and_attributes_after_construction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    loader = WindowLoader(32 * 1024, 32, 16)  # 512 tokens per micro-batch: the default 524288 -> 1024 of accum
    t = Trainer(tiny_model(), loader, verbose=False)
    assert t.grad_accum_steps == 524288 // 512
    assert (t.current_epoch, t.current_step, t.best_val_loss) == (0, 0, math.inf)
    assert t.device == torch.device("cpu") and t.device_type == "cpu"
    assert isinstance(t.optimizer, torch.optim.AdamW) and t.scheduler is None
    assert t.log_file == str(tmp_path / "logs" / "train_log.csv") or t.log_file.endswith("logs/train_log.csv")
    assert t.optimizer.param_groups[0]["lr"] == 6e-4
    decays = {g["weight_decay"] for g in t.optimizer.param_groups}
    assert decays == {0.1, 0.0}
    assert not (tmp_path / "logs").exists() and not (tmp_path / "checkpoints").exists()  # files are made lazily


def test_a_lightning_module_brings_its_own_learning_rate_and_weight_decay(tmp_path):
    from tlama_core.training import TlamaLightningModule

    module = TlamaLightningModule(model=tiny_model(), learning_rate=1e-2, weight_decay=0.0)
    t = make_trainer(tmp_path, model=module)
    assert [g["weight_decay"] for g in t.optimizer.param_groups] == [0.0, 0.0]
    assert t.optimizer.param_groups[0]["lr"] == 1e-2


def test_weight_decay_only_on_matrices(tmp_path):
    t = make_trainer(tmp_path)
    decayed, plain = t.optimizer.param_groups
    assert all(p.dim() == 2 for p in decayed["params"]) and all(p.dim() == 1 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(t.model.parameters()))


def test_spec_accumulation_example_rounds_down_with_a_warning(tmp_path):
    with pytest.warns(UserWarning, match="999424") as caught:
        assert grad_accum_steps(1_000_000, 8 * 2048) == 61
    with pytest.warns(UserWarning, match="an effective batch of 128 tokens") as through_trainer:
        Trainer(tiny_model(), WindowLoader(64, 4, 16), total_batch_size=4 * 16 * 2 + 7, verbose=False,
                checkpoints_dir=str(tmp_path / "ckpt"), logs_dir=str(tmp_path / "logs"))
    assert caught[0].filename == through_trainer[0].filename == __file__  # the warning points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert grad_accum_steps(1 << 20, 8 * 2048) == 64
        assert grad_accum_steps(1_000_000, 8 * 2048, enabled=False) == 1


def test_accumulation_counts_every_process():
    assert grad_accum_steps(64 * 16, 16, world_size=2) == 32


# ---- bad input at construction -----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(total_batch_size=10), "total_batch_size=10"),
    (dict(epochs=0), "epochs=0"),
    (dict(steps=0), "steps=0"),
    (dict(validation_steps=0), "validation_steps=0"),
    (dict(checkpoint_steps=-1), "checkpoint_steps=-1"),
    (dict(log_steps=0), "log_steps=0"),
    (dict(gradient_clip_val=-1.0), "gradient_clip_val=-1.0"),
    (dict(learning_rate=-1e-3), "learning_rate=-0.001"),
    (dict(weight_decay=-0.1), "weight_decay=-0.1"),
    (dict(total_batch_size=64.0), "total_batch_size=64.0"),
    (dict(total_batch_size="4096"), "total_batch_size='4096'"),
    (dict(epochs=True), "epochs=True"),
    (dict(learning_rate="x"), "learning_rate='x'"),
    (dict(val_data_loader=WindowLoader(8, 4, 64)), "val_data_loader's seq_length=64"),
    (dict(val_data_loader=WindowLoader(8, 4, 16, vocab=VOCAB * 2)), "val_data_loader's tokenizer vocab"),
])
def test_bad_parameters_fail_at_construction(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_trainer(tmp_path, **kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(model=torch.nn.Linear(4, 4)), "Transformer"),
    (dict(optimizer="adam"), "torch.optim.Optimizer"),
    (dict(scheduler=5), "scheduler must map"),
    (dict(callbacks=Recorder()), r"callbacks=\[Recorder"),
])
def test_arguments_of_the_wrong_kind_fail_at_construction(tmp_path, kwargs, match):
    with pytest.raises(TypeError, match=match):
        make_trainer(tmp_path, **kwargs)


def test_optimisation_arguments_beside_a_lightning_module_are_an_error_not_ignored(tmp_path):
    from tlama_core.training import TlamaLightningModule

    module = TlamaLightningModule(model=tiny_model())
    with pytest.raises(ValueError, match="learning_rate, weight_decay would be ignored"):
        make_trainer(tmp_path, model=module, learning_rate=0.2, weight_decay=0.0)


def test_an_optimizers_own_rate_replaced_by_learning_rate_is_a_warning(tmp_path):
    model = tiny_model()
    with pytest.warns(UserWarning, match=r"lr=0.1 is replaced by learning_rate=0.0006"):
        t = make_trainer(tmp_path, model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    t.train_step()
    assert t.optimizer.param_groups[0]["lr"] == 6e-4


def test_lightning_callbacks_among_callbacks_join_lightnings_own(tmp_path):
    from lightning.pytorch.callbacks import Callback

    class CountBatches(Callback):
        batches = 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.batches += 1

    counter, rec = CountBatches(), Recorder()
    make_trainer(tmp_path, callbacks=[counter, rec], steps=3).train()
    assert counter.batches == 3 * 2 and rec.names().count("on_step_end") == 3


def test_more_steps_than_the_loader_holds_is_an_error(tmp_path):
    with pytest.raises(ValueError, match=r"steps=9 optimizer steps per epoch need 18 micro-batches.*gives 16"):
        make_trainer(tmp_path, steps=9)


def test_request_stop_from_a_hook_ends_the_run_at_that_step(tmp_path):
    class StopAtThree:
        def on_step_end(self, trainer, metrics):
            if trainer.current_step == 3:
                trainer.request_stop()

    t = make_trainer(tmp_path, callbacks=[StopAtThree()], checkpoint_steps=100,
                     val_data_loader=WindowLoader(8, 4, 16, seed=1))
    result = t.train()
    assert result["steps_completed"] == 3 and result["stopped_early"] and not result["interrupted"]
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["best.ckpt", "step=00000003.ckpt"]
    assert read_csv(t.log_file)[-1]["val_loss"] != ""  # the stopping step was validated


def test_sequence_longer_than_model_names_both_numbers(tmp_path):
    with pytest.raises(ValueError, match=r"seq_length=64.*max_seq_len=32"):
        make_trainer(tmp_path, loader=WindowLoader(16, 4, 64), total_batch_size=256)


def test_tokenizer_vocab_larger_than_model_says_vocab(tmp_path):
    with pytest.raises(ValueError, match=r"vocab \(100 ids\).*vocab_size=64"):
        make_trainer(tmp_path, loader=WindowLoader(64, 4, 16, vocab=100))


def test_loader_without_shape_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="batch size and sequence length"):
        make_trainer(tmp_path, loader=[["not", "tensors"]])


def test_batch_shape_read_from_first_batch_when_loader_has_no_attributes(tmp_path):
    data = torch.randint(0, VOCAB, (32, 17))
    batches = [(data[i:i + 4, :-1], data[i:i + 4, 1:]) for i in range(0, 32, 4)]
    t = make_trainer(tmp_path, loader=batches, total_batch_size=4 * 16 * 4)
    assert t.grad_accum_steps == 4 and t.plan.steps_per_epoch == 2


# ---- the run against a reference ---------------------------------------------------------------------------
def hand_loop_losses(model, loader, accum, steps, schedule, clip=1.0, weight_decay=0.1):
    """The reference: plain PyTorch, the same optimizer groups, clipping and per-step lr."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=1.0, betas=(0.9, 0.95), eps=1e-8)
    batches = iter(loader)
    losses = []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = schedule(step)
        total = 0.0
        for _ in range(accum):
            x, y = next(batches)
            _, loss = model(x, targets=y)
            (loss / accum).backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(total / accum)
    return losses


def test_losses_equal_a_hand_written_loop(tmp_path):
    schedule = get_lr_scheduler(3e-3, 3e-4, warmup_steps=2, max_steps=8)
    loader = WindowLoader(64, 4, 16)
    reference = hand_loop_losses(tiny_model(), loader, accum=2, steps=8, schedule=schedule)
    t = make_trainer(tmp_path, loader=loader, scheduler=schedule, use_mixed_precision=False)  # an fp32 reference
    t.train()
    rows = read_csv(t.log_file)
    assert [int(r["step"]) for r in rows] == list(range(1, 9))
    assert [float(r["train_loss"]) for r in rows] == pytest.approx(reference, rel=1e-5)
    assert [float(r["learning_rate"]) for r in rows] == pytest.approx([schedule(s) for s in range(8)])


@pytest.mark.skipif(not has_fast_bf16("cpu"), reason="this CPU has no bf16 matrix units (AMX / AVX512-BF16)")
def test_mixed_precision_trains_in_bf16_on_a_cpu_with_bf16_units(tmp_path):
    loader = WindowLoader(64, 4, 16)
    fp32 = hand_loop_losses(tiny_model(), loader, accum=2, steps=4, schedule=lambda step: 6e-4)
    t = make_trainer(tmp_path, loader=loader, steps=4)
    assert t.precision == "bf16-mixed"
    t.train()
    bf16 = [float(r["train_loss"]) for r in read_csv(t.log_file)]
    assert bf16 == pytest.approx(fp32, rel=2e-2)  # the same training, at bf16's ~3 significant digits
    assert bf16 != pytest.approx(fp32, rel=1e-6)  # ...but the matmuls did run in bf16 (fp32 agrees to ~1e-7)


def test_accumulated_gradient_equals_the_large_batch_gradient(tmp_path):
    loader = WindowLoader(8, 2, 16)  # 4 micro-batches of 2 make one step of 8 sequences
    reference = copy.deepcopy(tiny_model())
    x = torch.cat([b[0] for b in loader])
    y = torch.cat([b[1] for b in loader])
    _, loss = reference(x, targets=y)
    loss.backward()

    class GradProbe:
        def on_optimizer_step_start(self, trainer):
            self.grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters()}

    probe = GradProbe()
    t = make_trainer(tmp_path, loader=loader, total_batch_size=8 * 16, callbacks=[probe], steps=1,
                     gradient_clip_val=0.0, use_mixed_precision=False)
    t.train()
    assert t.grad_accum_steps == 4
    for name, p in reference.named_parameters():
        torch.testing.assert_close(probe.grads[name], p.grad, rtol=1e-4, atol=1e-6,
                                   msg=lambda m, name=name: f'{name}: {m}')


def test_same_seed_same_losses_bit_for_bit(tmp_path):
    runs = []
    for i in range(2):
        t = make_trainer(tmp_path / str(i), model=tiny_model(dropout=0.1), loader=WindowLoader(64, 4, 16), seed=7)
        t.train()
        runs.append([r["train_loss"] for r in read_csv(t.log_file)])
    assert runs[0] == runs[1]


# ---- hooks -------------------------------------------------------------------------------------------------
def test_hooks_fire_in_order_with_documented_counts_and_arguments(tmp_path):
    rec = Recorder()
    steps, accum, epochs = 3, 2, 2
    t = make_trainer(tmp_path, loader=WindowLoader(24, 4, 16), val_data_loader=WindowLoader(8, 4, 16, seed=1),
                     callbacks=[rec], epochs=epochs, validation_steps=2, checkpoint_steps=4)
    assert t.plan.steps_per_epoch == steps and t.grad_accum_steps == accum
    t.train()
    counts = Counter(rec.names())
    total_steps = steps * epochs
    assert counts["on_init_end"] == counts["on_train_start"] == counts["on_train_end"] == 1
    assert counts["on_epoch_start"] == counts["on_epoch_end"] == epochs
    for hook in ("on_step_start", "on_step_end", "on_optimizer_step_start", "on_optimizer_step_end"):
        assert counts[hook] == total_steps, hook
    assert counts["on_backward_start"] == counts["on_backward_end"] == total_steps * accum
    validated_at = [e[1] for e in rec.events if e[0] == "on_validate_end"]
    assert validated_at == [2, 4, 6]  # every 2 optimizer steps; the last step is one of them
    assert rec.names()[0] == "on_init_end" and rec.names()[1] == "on_train_start"
    assert rec.names()[-1] == "on_train_end"
    one_step = rec.names()[rec.names().index("on_step_start"):rec.names().index("on_step_end") + 1]
    assert one_step == ["on_step_start", "on_backward_start", "on_backward_end", "on_backward_start",
                        "on_backward_end", "on_optimizer_step_start", "on_optimizer_step_end", "on_step_end"]
    for name, step, *args in rec.events:
        if name == "on_step_end":
            assert args[0]["train_loss"] > 0 and set(args[0]) >= {"train_loss", "lr", "grad_norm", "tokens_per_sec"}
            assert step >= 1
        if name == "on_backward_start":
            assert args[0].dim() == 0 and args[0] > 3.0  # the micro-batch's own loss, not divided by accum
        if name == "on_validate_end":
            assert set(args[0]) >= {"val_loss"}
        # best.ckpt moves to later bests, whose checkpoints saved for the best alone (step=N.best.ckpt) then go
        if name == "on_checkpoint_end" and not args[0].endswith("best.ckpt"):
            # the file is complete; announced once its background commit is done
            saved_step = read_checkpoint(args[0])["step"]
            assert saved_step <= step
            assert args[0].endswith(f"step={saved_step:08d}.ckpt")
    saved = sorted(e[2].rsplit("/", 1)[1] for e in rec.events if e[0] == "on_checkpoint_end")
    assert saved.count("best.ckpt") >= 1 and "step=00000004.ckpt" in saved and "step=00000006.ckpt" in saved


def test_step_end_metrics_loss_is_the_mean_over_micro_batches(tmp_path):
    seen = []

    class Watch:
        def on_backward_start(self, trainer, loss):
            seen.append(float(loss))

        def on_step_end(self, trainer, metrics):
            seen.append(("end", metrics["train_loss"]))

    make_trainer(tmp_path, callbacks=[Watch()], steps=2, total_batch_size=4 * 16 * 4).train()
    micro, end = seen[:4], seen[4]
    assert end[1] == pytest.approx(sum(micro) / 4, rel=1e-6)


# ---- CSV log and checkpoints -------------------------------------------------------------------------------
def test_csv_log_has_documented_columns_and_rows_per_log_step(tmp_path):
    t = make_trainer(tmp_path, loader=WindowLoader(80, 4, 16), val_data_loader=WindowLoader(8, 4, 16, seed=1),
                     log_steps=3, validation_steps=4)
    t.train()  # 10 steps: rows at 3, 6, 9 (log), 4, 8 (validation) and 10 (the end, validated)
    rows = read_csv(t.log_file)
    assert list(rows[0])[:8] == ["epoch", "step", "timestamp", "train_loss", "learning_rate", "grad_norm",
                                 "val_loss", "tokens_per_sec"]
    assert [int(r["step"]) for r in rows] == [3, 4, 6, 8, 9, 10]
    assert [bool(r["val_loss"]) for r in rows] == [False, True, False, True, False, True]
    for r in rows:
        assert float(r["tokens_per_sec"]) > 0 and float(r["grad_norm"]) > 0 and r["epoch"] == "0"
        assert r["mfu"] == ""  # no peak FLOP/s is known for a CPU: left empty rather than invented
    assert t.best_val_loss == pytest.approx(min(float(r["val_loss"]) for r in rows if r["val_loss"]))


@pytest.mark.slow
def test_compile_trains_the_compiled_model_to_the_eager_losses(tmp_path):
    losses = {}
    for compiled in (False, True):
        t = make_trainer(tmp_path / str(compiled), steps=3, compile=compiled)
        t.train()
        assert (getattr(t.model, "_compiled_call_impl", None) is not None) == compiled
        losses[compiled] = [float(r["train_loss"]) for r in read_csv(t.log_file)]
    assert losses[True] == pytest.approx(losses[False], rel=1e-4)


def test_mfu_is_the_per_device_rate_times_flops_per_token_over_the_peak(tmp_path, monkeypatch):
    from tlama_core.training.records import throughput
    from tlama_core.training.records.throughput import flops_per_token

    monkeypatch.setattr(throughput, "peak_flops", lambda device, precision: 1e10)  # a device with a known peak
    t = make_trainer(tmp_path, steps=2)
    t.train()
    row = read_csv(t.log_file)[-1]
    expected = float(row["tokens_per_sec_per_device"]) * flops_per_token(t.model.config, 16) / 1e10
    assert float(row["mfu"]) == pytest.approx(expected)


def test_val_bpc_is_the_validation_nats_per_character_in_bits(tmp_path):
    val = WindowLoader(8, 4, 16, seed=1)
    val.num_tokens, val.text_chars = 8 * 16, 300  # what the token cache tells a real loader
    t = make_trainer(tmp_path, val_data_loader=val, steps=4, validation_steps=2)
    t.train()
    rows = [r for r in read_csv(t.log_file) if r["val_loss"]]
    assert [int(r["step"]) for r in rows] == [2, 4]
    for r in rows:
        assert float(r["val_bpc"]) == pytest.approx(float(r["val_loss"]) * 128 / 300 / math.log(2))
    plain = make_trainer(tmp_path / "plain", val_data_loader=WindowLoader(8, 4, 16, seed=1), steps=2,
                         validation_steps=2)
    plain.train()
    assert read_csv(plain.log_file)[-1]["val_bpc"] == ""  # no text length known: no figure invented


def test_tokens_per_sec_counts_batch_loading_but_not_validation_or_checkpoint_saving(tmp_path, monkeypatch):
    """On a clock that only the loaders' and the saves' waits move (computing takes no time on it), the rate is
    exactly the tokens over the loading time: whatever the machine's load, validation and saving are left out and
    each step's first batch fetch is counted."""
    import lightning

    clock = [1000.0]
    monkeypatch.setattr(time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(time, "sleep", lambda seconds: clock.__setitem__(0, clock[0] + seconds))
    save = lightning.Trainer.save_checkpoint

    def slow_save(self, *args, **kwargs):
        time.sleep(0.4)
        return save(self, *args, **kwargs)

    monkeypatch.setattr(lightning.Trainer, "save_checkpoint", slow_save)
    delay = 0.05  # per micro-batch; 2 micro-batches of 4 x 16 tokens per step: 128 tokens in 0.1 s
    t = make_trainer(tmp_path, loader=SlowLoader(64, 4, 16, delay=delay),
                     val_data_loader=SlowLoader(8, 4, 16, seed=1, delay=1.0), steps=6, log_steps=2,
                     validation_steps=2, checkpoint_steps=2)
    t.train()
    rates = [float(r["tokens_per_sec"]) for r in read_csv(t.log_file)]
    # Counting the 2 s of validation and 0.4 s of saving per row would give 256 / 2.6; skipping each step's first
    # batch fetch, 2560.
    assert rates == pytest.approx([128 / (2 * delay)] * 3)


def test_checkpoints_hold_the_documented_contents(tmp_path):
    t = make_trainer(tmp_path, val_data_loader=WindowLoader(8, 4, 16, seed=1), validation_steps=4,
                     checkpoint_steps=4)
    t.train()  # 8 steps
    names = sorted(p.name for p in (tmp_path / "ckpt").iterdir())
    assert names == ["best.ckpt", "step=00000004.ckpt", "step=00000008.ckpt"]
    ckpt = read_checkpoint(tmp_path / "ckpt" / "step=00000004.ckpt")
    assert ckpt["step"] == ckpt["global_step"] == 4 and isinstance(ckpt["epoch"], int)
    assert ckpt["model_config"] == t.model.config.to_dict()
    assert set(ckpt["state_dict"]) == {"model." + k for k in t.model.state_dict()}
    assert ckpt["optimizer_states"][0]["state"]  # AdamW moments
    assert math.isfinite(ckpt["val_loss"])
    best = read_checkpoint(tmp_path / "ckpt" / "best.ckpt")
    assert best["val_loss"] == pytest.approx(t.best_val_loss)


# ---- validate(), train_step() and the documented private methods ------------------------------------------
def test_validate_returns_the_token_mean_loss_over_the_val_loader(tmp_path):
    val = WindowLoader(12, 4, 16, seed=3)
    t = make_trainer(tmp_path, val_data_loader=val, use_mixed_precision=False)
    with torch.no_grad():
        expected = sum(t.model(x, targets=y)[1].item() for x, y in val) / len(val)
    assert t.validate() == pytest.approx(expected, rel=1e-6)
    assert t.best_val_loss == pytest.approx(expected, rel=1e-6)
    assert make_trainer(tmp_path / "b").validate() is None


def test_validation_batches_limits_validation(tmp_path):
    val = WindowLoader(40, 4, 16, seed=3)
    t = make_trainer(tmp_path, val_data_loader=val, validation_batches=2, use_mixed_precision=False)
    with torch.no_grad():
        expected = sum(t.model(x, targets=y)[1].item() for x, y in list(val)[:2]) / 2
    assert t.validate() == pytest.approx(expected, rel=1e-6)


def test_train_step_runs_one_optimizer_step_and_continues_the_stream(tmp_path):
    loader = WindowLoader(64, 4, 16)
    full = make_trainer(tmp_path / "full", loader=loader, steps=3)
    full.train()
    expected = [float(r["train_loss"]) for r in read_csv(full.log_file)]
    rec = Recorder()
    t = make_trainer(tmp_path / "step", loader=loader, callbacks=[rec])
    losses = []
    for i in range(3):
        metrics = t.train_step()
        assert t.current_step == i + 1 and t.current_epoch == 0
        assert set(metrics) >= {"train_loss", "lr", "grad_norm", "tokens_per_sec"}
        losses.append(metrics["train_loss"])
    assert losses == pytest.approx(expected, rel=1e-6)
    counts = Counter(rec.names())
    assert counts["on_step_start"] == counts["on_step_end"] == 3
    assert counts["on_train_start"] == counts["on_epoch_start"] == counts["on_train_end"] == 0
    with pytest.raises(RuntimeError, match="train_step"):
        t.train()


def test_save_checkpoint_and_log_metrics_called_directly(tmp_path):
    rec = Recorder()
    t = make_trainer(tmp_path, callbacks=[rec])
    path = t._save_checkpoint(val_loss=1.5, is_best=True)
    assert path == str(tmp_path / "ckpt" / "model-step=00000000.ckpt")  # before training: nothing to resume
    ckpt = read_checkpoint(path)
    assert ckpt["val_loss"] == 1.5 and ckpt["step"] == 0 and ckpt["model_config"] == t.model.config.to_dict()
    assert (tmp_path / "ckpt" / "model-best.ckpt").exists()
    assert [e[2] for e in rec.events if e[0] == "on_checkpoint_end"][0] == path
    t._log_metrics({"train_loss": 2.0, "learning_rate": 1e-3})
    rows = read_csv(t.log_file)
    assert rows[-1]["train_loss"] == "2.0" and rows[-1]["step"] == "0" and rows[-1]["val_loss"] == ""


def test_set_seed_makes_random_draws_repeat(tmp_path):
    t = make_trainer(tmp_path)
    t._set_seed(5)
    a = torch.rand(3)
    t._set_seed(5)
    assert torch.equal(a, torch.rand(3))


def test_non_finite_loss_stops_with_the_step_and_keeps_checkpoints_clean(tmp_path):
    class Poison:
        def on_step_start(self, trainer):
            if trainer.current_step == 2:
                with torch.no_grad():
                    trainer.model.output.weight.fill_(float("nan"))

    t = make_trainer(tmp_path, callbacks=[Poison()], checkpoint_steps=1, steps=6)
    with pytest.raises(FloatingPointError, match="step 3"):
        t.train()
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["step=00000001.ckpt", "step=00000002.ckpt"]


def test_verbose_false_prints_nothing(tmp_path, capfd):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, steps=2).train()
    out, err = capfd.readouterr()
    assert out == ""
    assert not [w for w in caught if "validation_step" in str(w.message)]  # Lightning's, about no val loader


def test_progress_bar_counts_optimizer_steps(tmp_path, capfd):
    make_trainer(tmp_path, steps=3, verbose=True).train()  # 2 micro-batches a step
    out = capfd.readouterr().out  # Lightning's bar writes to stdout
    assert "3/3" in out and "6/6" not in out


def test_a_process_that_is_not_the_master_writes_nothing_and_runs_no_hooks(tmp_path):
    rec = Recorder()
    t = make_trainer(tmp_path, callbacks=[rec], master_process=False, checkpoint_steps=1, steps=3)
    t.train()
    assert t._save_checkpoint() is None
    assert rec.events == []
    assert not (tmp_path / "ckpt").exists() and not (tmp_path / "logs").exists()


def test_validate_from_a_hook_while_training_is_a_clear_error(tmp_path):
    class ValidateInHook:
        def on_step_end(self, trainer, metrics):
            trainer.validate()

    t = make_trainer(tmp_path, val_data_loader=WindowLoader(8, 4, 16, seed=1), callbacks=[ValidateInHook()])
    with pytest.raises(RuntimeError, match="validation_steps"):
        t.train()


def test_log_metrics_before_and_after_training_lands_in_this_runs_log(tmp_path):
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "train_log.csv").write_text("an earlier run's log\n")
    t = make_trainer(tmp_path, steps=2)
    t._log_metrics({"val_loss": 4.5})  # e.g. an evaluation before training
    t.train()
    t._log_metrics({"val_loss": 3.5})
    rows = read_csv(t.log_file)
    assert [(r["step"], r["val_loss"]) for r in rows] == [("0", "4.5"), ("1", ""), ("2", ""), ("2", "3.5")]
    assert [p.name.startswith("train_log-") for p in (tmp_path / "logs").iterdir()].count(True) == 1  # set aside
    with pytest.raises(ValueError, match=r"no column for \['my_metric'\]"):
        t._log_metrics({"my_metric": 1.0})


def test_the_lightning_module_trains_on_a_plain_lightning_trainer_and_counts_tokens_read():
    import lightning as L

    from tlama_core.training import TlamaLightningModule

    module = TlamaLightningModule(model=tiny_model())
    trainer = L.Trainer(max_steps=3, accumulate_grad_batches=2, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_dataloaders=WindowLoader(64, 4, 16))
    assert trainer.global_step == 3 and module.last_step.tokens == 2 * 4 * 16


def test_a_tlama_lightning_module_keeps_its_own_optimizer(tmp_path):
    from tlama_core.training import TlamaLightningModule

    model = tiny_model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = Trainer(TlamaLightningModule(model=model, optimizer=sgd), WindowLoader(16, 4, 16),
                      total_batch_size=64, steps=2, verbose=False, checkpoints_dir=str(tmp_path / "ckpt"),
                      logs_dir=str(tmp_path / "logs"))
    assert trainer.optimizer is sgd
    trainer.train()
    assert trainer.optimizer is sgd and sgd.state_dict()["param_groups"][0]["lr"] == 6e-4  # its default schedule


def test_sigterm_during_train_step_stops_the_script(tmp_path):
    import os
    import signal

    from lightning.pytorch.utilities.exceptions import SIGTERMException

    class Terminate:
        def on_step_end(self, trainer, metrics):
            os.kill(os.getpid(), signal.SIGTERM)

    trainer = Trainer(tiny_model(), WindowLoader(64, 4, 16), total_batch_size=64, verbose=False,
                      callbacks=[Terminate()], checkpoints_dir=str(tmp_path / "ckpt"), logs_dir=str(tmp_path / "logs"))
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with pytest.raises(SIGTERMException):
            for _ in range(4):
                trainer.train_step()
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert trainer.current_step < 4
