"""Exact resume, safe loading and atomic checkpoint files."""

from __future__ import annotations

import csv
import shutil

import pytest
import torch
from trainer_utils import Recorder, ResumableLoader, tiny_model

from tlama_core.training import MuonAdamW, TlamaLightningModule, Trainer, get_lr_scheduler
from tlama_core.training.files.checkpoint_io import CheckpointError, find_last_checkpoint, set_aside_later_checkpoints


def make(root, model=None, loader=None, **kw) -> Trainer:
    defaults = dict(val_data_loader=ResumableLoader(8, 4, 16, seed=1), total_batch_size=128, log_steps=1,
                    validation_steps=3, checkpoint_steps=2, epochs=2, verbose=False,
                    scheduler=get_lr_scheduler(3e-3, 3e-4, 2, 10),
                    checkpoints_dir=str(root / "ckpt"), logs_dir=str(root / "logs"))
    return Trainer(model or tiny_model(dropout=0.1), loader or ResumableLoader(40, 4, 16), **{**defaults, **kw})


def rows(trainer) -> list[dict[str, str]]:
    with open(trainer.log_file, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    t = make(root)
    result = t.train()
    return root, rows(t), result


@pytest.mark.parametrize("name", ["step=00000002.ckpt", "step=00000004.ckpt", "step=00000006.ckpt"])
def test_resume_continues_exactly_as_an_uninterrupted_run(uninterrupted, tmp_path, name):
    """Mid-epoch (2, 4), across the epoch boundary and from a step that validated (6): same losses, bit for bit."""
    root, full_rows, full = uninterrupted
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    t = make(tmp_path)
    result = t.train(ckpt_path=str(tmp_path / "ckpt" / name))
    resumed = rows(t)
    assert [r["step"] for r in resumed] == [r["step"] for r in full_rows]  # no row duplicated or lost
    for a, b in zip(full_rows, resumed, strict=True):
        assert (a["train_loss"], a["val_loss"], a["learning_rate"]) == (b["train_loss"], b["val_loss"],
                                                                        b["learning_rate"]), a["step"]
    assert result["steps_completed"] == full["steps_completed"] == 10
    assert result["epochs_completed"] == full["epochs_completed"] == 2
    assert result["best_val_loss"] == full["best_val_loss"]


def test_resume_from_last_picks_the_newest_step_checkpoint(uninterrupted, tmp_path):
    root, full_rows, _ = uninterrupted
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    (tmp_path / "ckpt" / "step=00000010.ckpt").unlink()
    (tmp_path / "ckpt" / "step=00000012.ckpt.tmp").write_bytes(b"half a file")  # a save killed midway
    assert find_last_checkpoint(tmp_path / "ckpt").name == "step=00000008.ckpt"
    t = make(tmp_path)
    t.train(ckpt_path="last")
    assert [r["train_loss"] for r in rows(t)] == [r["train_loss"] for r in full_rows]
    assert not list((tmp_path / "ckpt").glob("*.tmp"))  # leftovers are cleaned up by the next run


def test_a_resumed_runs_summary_times_only_its_own_steps(uninterrupted, tmp_path, capsys):
    root, _, _ = uninterrupted
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    make(tmp_path, verbose=True).train(ckpt_path=str(tmp_path / "ckpt" / "step=00000006.ckpt"))
    assert "10 steps, 1,280 tokens; 4 steps in " in capsys.readouterr().out
    make(tmp_path, verbose=True).train(ckpt_path="last")  # the run's final checkpoint: nothing left to train
    assert "10 steps, 1,280 tokens; 0 steps in " in capsys.readouterr().out


def test_last_without_checkpoints_starts_fresh_with_a_warning(tmp_path):
    t = make(tmp_path, epochs=1, steps=1)
    with pytest.warns(UserWarning, match="no checkpoint"):
        assert t.train(ckpt_path="last")["steps_completed"] == 1


def test_truncated_checkpoint_is_an_error_naming_the_file(uninterrupted, tmp_path):
    root, _, _ = uninterrupted
    bad = tmp_path / "step=00000004.ckpt"
    data = (root / "ckpt" / "step=00000004.ckpt").read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="step=00000004.ckpt: not a readable training checkpoint.*truncated"):
        make(tmp_path / "run").train(ckpt_path=str(bad))


def test_foreign_file_is_an_error_naming_the_file(tmp_path):
    import torch

    foreign = tmp_path / "other.ckpt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="other.ckpt: not a tlama-core training checkpoint"):
        make(tmp_path / "run").train(ckpt_path=str(foreign))


def test_checkpoint_of_another_shape_names_the_differing_field(uninterrupted, tmp_path):
    root, _, _ = uninterrupted
    other = make(tmp_path, model=tiny_model(n_layers=3))
    with pytest.raises(CheckpointError, match="n_layers: checkpoint 2, model 3"):
        other.train(ckpt_path=str(root / "ckpt" / "step=00000004.ckpt"))


@pytest.mark.parametrize("validate", [True, False])
@pytest.mark.parametrize("before, after", [
    ((1, None), (2, None)), ((1, 3), (1, 5)), ((2, None), (3, None)), ((1, 5), (3, 5))])
def test_raising_epochs_or_steps_on_resume_trains_on_as_one_longer_run(tmp_path, validate, before, after):
    """A finished run resumed with more epochs or more steps per epoch continues as if planned so from the start."""
    from tlama_core.data import builtin_corpus_path, builtin_tokenizer_path, create_dataloader

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(builtin_corpus_path().read_text()[:6000])

    def run(root, epochs_steps, ckpt_path=None) -> Trainer:
        def loader(seed):
            return create_dataloader(corpus, builtin_tokenizer_path(), 4, 16, seed=seed, cache_dir=tmp_path / "c")
        t = make(root, model=tiny_model(dropout=0.1, vocab_size=1024), loader=loader(0), epochs=epochs_steps[0],
                 steps=epochs_steps[1], val_data_loader=loader(1) if validate else None)
        t.train(ckpt_path=ckpt_path)
        return t

    longer = run(tmp_path / "long", after)
    run(tmp_path / "short", before)
    resumed = run(tmp_path / "short", after, ckpt_path="last")
    assert (resumed.current_step, resumed.current_epoch) == (longer.current_step, longer.current_epoch)
    assert [r["train_loss"] for r in rows(resumed)] == [r["train_loss"] for r in rows(longer)]


def test_a_muon_run_resumes_exactly(tmp_path):
    """Muon's momentum and AdamW's moments both come back from the checkpoint: same losses, bit for bit."""
    def muon_run(root) -> Trainer:
        module = TlamaLightningModule(model=tiny_model(dropout=0.1), weight_decay=0.5, muon=True,
                                      scheduler=get_lr_scheduler(3e-3, 3e-4, 2, 10))
        return make(root, model=module, scheduler=None)  # the module holds the schedule

    full = muon_run(tmp_path / "full")
    full.train()
    assert isinstance(full.optimizer, MuonAdamW)
    shutil.copytree(tmp_path / "full", tmp_path / "resumed")
    resumed = muon_run(tmp_path / "resumed")
    resumed.train(ckpt_path=str(tmp_path / "resumed" / "ckpt" / "step=00000004.ckpt"))
    assert [(r["step"], r["train_loss"], r["val_loss"]) for r in rows(resumed)] == \
        [(r["step"], r["train_loss"], r["val_loss"]) for r in rows(full)]

    adamw = make(tmp_path / "resumed", model=TlamaLightningModule(model=tiny_model(dropout=0.1), muon=False),
                 scheduler=None)
    with pytest.raises(CheckpointError, match="resume with model.muon=true"):
        adamw.train(ckpt_path=str(tmp_path / "resumed" / "ckpt" / "step=00000004.ckpt"))


def test_a_checkpoint_from_before_a_config_field_existed_still_resumes(uninterrupted, tmp_path):
    """A config field the checkpoint lacks counts as its default, not as another model shape."""
    root, full_rows, _ = uninterrupted
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "ckpt" / "step=00000008.ckpt"
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["model_config"]["zero_init_residual"]
    torch.save(checkpoint, path)
    t = make(tmp_path)
    t.train(ckpt_path=str(path))
    assert [r["train_loss"] for r in rows(t)] == [r["train_loss"] for r in full_rows]


class SaveAtStep:
    """Calls the documented `_save_checkpoint` from `on_step_end` at `step`."""

    def __init__(self, step: int, val_loss: float) -> None:
        self.step, self.val_loss, self.path = step, val_loss, None

    def on_step_end(self, trainer, metrics):
        if trainer.current_step == self.step:
            self.path = trainer._save_checkpoint(val_loss=self.val_loss)


def test_save_checkpoint_from_a_hook_writes_the_step_once_it_is_finished_and_resumes_exactly(
        uninterrupted, tmp_path):
    """Step 3 is neither a checkpoint step nor the last, and it validates: the file written on request holds
    its validation and row, so resuming from it gives the uninterrupted run's rows exactly."""
    _, full_rows, full = uninterrupted
    hook, rec = SaveAtStep(3, val_loss=0.25), Recorder()
    make(tmp_path, callbacks=[hook, rec]).train()
    assert hook.path == str(tmp_path / "ckpt" / "step=00000003.ckpt")
    assert (hook.path in [e[2] for e in rec.events if e[0] == "on_checkpoint_end"])
    saved = torch.load(hook.path, weights_only=False)
    assert saved["val_loss"] == 0.25 and saved["global_step"] == 3

    resumed = make(tmp_path)
    with pytest.warns(UserWarning, match="superseded-"):  # steps 4..10 belong to the run it no longer continues
        resumed.train(ckpt_path=hook.path)
    assert [(r["step"], r["train_loss"], r["val_loss"]) for r in rows(resumed)] == \
        [(r["step"], r["train_loss"], r["val_loss"]) for r in full_rows]
    assert resumed.current_step == full["steps_completed"]


def test_save_checkpoint_outside_training_never_replaces_the_runs_files(uninterrupted, tmp_path):
    root, _, _ = uninterrupted
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    t = make(tmp_path)
    t.train(ckpt_path="last")  # the run's end: nothing left to train
    best = (tmp_path / "ckpt" / "best.ckpt").read_bytes()
    path = t._save_checkpoint(val_loss=0.5, is_best=True)
    assert path == str(tmp_path / "ckpt" / "model-step=00000010.ckpt")
    assert torch.load(path, weights_only=False)["val_loss"] == 0.5 and t.best_val_loss == 0.5
    assert (tmp_path / "ckpt" / "model-best.ckpt").exists() and (tmp_path / "ckpt" / "best.ckpt").read_bytes() == best
    assert find_last_checkpoint(tmp_path / "ckpt").name == "step=00000010.ckpt"
    with pytest.raises(CheckpointError, match="no training state"):
        make(tmp_path).train(ckpt_path=path)


def test_resuming_with_another_step_shape_is_an_error_naming_it(uninterrupted, tmp_path):
    """Twice the accumulation would make the first resumed step half a step divided by the full count."""
    root, _, _ = uninterrupted
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    with pytest.raises(CheckpointError, match=r"grad_accum 2 \(this run 4\)"):
        make(tmp_path, total_batch_size=256).train(ckpt_path="last")


def test_a_resume_with_a_new_schedule_uses_it_from_the_first_resumed_step(uninterrupted, tmp_path):
    root, _, _ = uninterrupted
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    schedule = get_lr_scheduler(1e-2, 1e-3, 2, 10)
    t = make(tmp_path, scheduler=schedule)
    t.train(ckpt_path=str(tmp_path / "ckpt" / "step=00000004.ckpt"))
    lrs = {int(r["step"]): float(r["learning_rate"]) for r in rows(t)}
    assert [lrs[s] for s in range(5, 11)] == [schedule(s - 1) for s in range(5, 11)]  # step s trains at lr(s-1)


class StopAt:
    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, trainer, metrics):
        if trainer.current_step == self.step:
            trainer.request_stop()


def test_a_fresh_start_sets_the_old_runs_checkpoints_aside_so_last_resumes_the_new_run(uninterrupted, tmp_path):
    """Run A reached step 10 in this directory; run B starts over there and stops at step 5. "last" must resume
    B (not jump to A's step 10), and A's files are kept in a superseded-* folder."""
    root, full_rows, _ = uninterrupted
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    with pytest.warns(UserWarning, match="superseded-"):
        make(tmp_path, callbacks=[StopAt(5)]).train()
    aside = [p for p in (tmp_path / "ckpt").iterdir() if p.name.startswith("superseded-")]
    assert len(aside) == 1 and (aside[0] / "step=00000010.ckpt").exists() and (aside[0] / "best.ckpt").exists()
    assert find_last_checkpoint(tmp_path / "ckpt").name == "step=00000005.ckpt"
    t = make(tmp_path)
    assert t.train(ckpt_path="last")["steps_completed"] == 10
    assert [(r["step"], r["train_loss"]) for r in rows(t)] == [(r["step"], r["train_loss"]) for r in full_rows]


def test_resuming_an_earlier_step_sets_the_later_ones_aside(uninterrupted, tmp_path):
    root, _, _ = uninterrupted
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    with pytest.warns(UserWarning, match="superseded-"):
        make(tmp_path, callbacks=[StopAt(5)]).train(ckpt_path=str(tmp_path / "ckpt" / "step=00000004.ckpt"))
    kept = sorted(p.name for p in (tmp_path / "ckpt").glob("step=*.ckpt") if not p.name.endswith(".best.ckpt"))
    assert kept == ["step=00000002.ckpt", "step=00000004.ckpt", "step=00000005.ckpt"]


def test_set_aside_twice_in_one_second_keeps_both(tmp_path):
    for run in ("a", "b"):
        (tmp_path / "step=00000004.ckpt").write_text(run)
        set_aside_later_checkpoints(tmp_path, None)
    assert sorted(p.read_text() for p in tmp_path.glob("superseded-*/step=00000004.ckpt")) == ["a", "b"]


def test_metrics_logged_before_a_resumed_run_stay_in_its_log(uninterrupted, tmp_path):
    root, full_rows, _ = uninterrupted
    shutil.copytree(root, tmp_path, dirs_exist_ok=True)
    t = make(tmp_path)
    t._log_metrics({"val_loss": 9.0})
    with pytest.warns(UserWarning, match="superseded-"):
        t.train(ckpt_path=str(tmp_path / "ckpt" / "step=00000004.ckpt"))
    steps = [r["step"] for r in rows(t)]
    assert steps == ["1", "2", "3", "4", "0"] + [str(s) for s in range(5, 11)]
    assert not list((tmp_path / "logs").glob("train_log-*"))  # nothing of this run's log was set aside


def test_a_users_tmp_file_in_the_checkpoints_dir_is_left_alone(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "notes.tmp").write_text("mine")
    (tmp_path / "ckpt" / "step=00000009.ckpt.tmp").write_bytes(b"a save killed midway")
    make(tmp_path, epochs=1, steps=1).train()
    assert (tmp_path / "ckpt" / "notes.tmp").exists() and not (tmp_path / "ckpt" / "step=00000009.ckpt.tmp").exists()
