"""The run's checkpoints at scale, on one process: best.ckpt a link (no second save), retention, background saves
that snapshot the weights, incomplete sharded directories, Lightning's SLURM checkpoints never resumed unasked."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
import torch
from trainer_utils import WindowLoader, make_trainer, tiny_model

from tlama_core.checkpoints import CheckpointError, find_last_checkpoint, read_checkpoint
from tlama_core.models import Transformer, load_model
from tlama_core.training import Trainer
from tlama_core.training.files.checkpoint_io import AtomicCheckpointIO
from tlama_core.training.files.tokenizer import run_tokenizer
from tlama_core.training.records.metrics import read_rows


def make(tmp_path: Path, **kwargs) -> Trainer:
    return make_trainer(tmp_path, loader=WindowLoader(96, 4, 16), **{
        "steps": 10, "checkpoint_steps": 2, "use_mixed_precision": False, "accelerator": "cpu", "devices": 1,
        **kwargs})


class BestAt:
    """Asks for a best checkpoint of val_loss `loss` at each step of `steps` (from a hook, as a user's would)."""

    def __init__(self, steps: dict[int, float]) -> None:
        self.steps = steps

    def on_step_end(self, trainer, metrics):
        if trainer.current_step in self.steps:
            trainer._save_checkpoint(val_loss=self.steps[trainer.current_step], is_best=True)


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if not p.name.startswith("tokenizer-"))


def saves(monkeypatch) -> list[Path]:
    """Every checkpoint file the run writes, in order (spied at the checkpoint IO)."""
    written: list[Path] = []
    original = AtomicCheckpointIO.save_checkpoint

    def spy(self, checkpoint, path, storage_options=None):
        written.append(Path(path))
        return original(self, checkpoint, path, storage_options)

    monkeypatch.setattr(AtomicCheckpointIO, "save_checkpoint", spy)
    return written


def test_best_is_a_link_to_the_step_checkpoint_not_a_second_save(tmp_path, monkeypatch):
    written = saves(monkeypatch)
    make(tmp_path, callbacks=[BestAt({4: 0.5})]).train()
    ckpt = tmp_path / "ckpt"
    assert (ckpt / "best.ckpt").is_symlink() and os.readlink(ckpt / "best.ckpt") == "step=00000004.ckpt"
    assert [p.name for p in written] == [f"step={s:08d}.ckpt" for s in (2, 4, 6, 8, 10)]  # each step saved once
    assert read_checkpoint(ckpt / "best.ckpt")["step"] == 4
    assert torch.equal(load_model(ckpt / "best.ckpt").output.weight,
                       load_model(ckpt / "step=00000004.ckpt").output.weight)


def test_a_best_step_without_its_own_checkpoint_is_saved_once_and_replaced_by_the_next_best(tmp_path, monkeypatch):
    written = saves(monkeypatch)
    make(tmp_path, checkpoint_steps=100, callbacks=[BestAt({3: 0.9, 5: 0.5})]).train()
    ckpt = tmp_path / "ckpt"
    # Steps 3 and 5 asked for a checkpoint (kept as step files), the run's end is saved too; 5 is best.
    assert os.readlink(ckpt / "best.ckpt") == "step=00000005.ckpt"
    assert names(ckpt) == ["best.ckpt", "step=00000003.ckpt", "step=00000005.ckpt", "step=00000010.ckpt"]
    assert len(written) == len(set(written)) == 3


def test_improvements_found_by_validation_keep_one_best_only_checkpoint(tmp_path):
    t = make(tmp_path, checkpoint_steps=100, validation_steps=2, val_data_loader=WindowLoader(8, 4, 16, seed=1))
    t.train()
    ckpt = tmp_path / "ckpt"
    target = os.readlink(ckpt / "best.ckpt")
    best_only = [n for n in names(ckpt) if n.endswith(".best.ckpt")]
    assert best_only == ([] if target == "step=00000010.ckpt" else [target])  # earlier bests' own files are gone
    assert read_checkpoint(ckpt / "best.ckpt")["val_loss"] == pytest.approx(t.best_val_loss)


def test_keep_checkpoints_keeps_the_newest_and_the_best(tmp_path):
    make(tmp_path, keep_checkpoints=2, callbacks=[BestAt({3: 0.1})]).train()
    ckpt = tmp_path / "ckpt"
    assert names(ckpt) == ["best.ckpt", "step=00000003.ckpt", "step=00000008.ckpt", "step=00000010.ckpt"]
    assert os.readlink(ckpt / "best.ckpt") == "step=00000003.ckpt"


def test_best_and_retention_work_on_sharded_directories(tmp_path, monkeypatch):
    """strategy="fsdp2": best.ckpt links to the best step's directory, retention removes older directories."""
    from tlama_core.training.files.sharded_saves import ShardedSaves

    files, sharded, original = saves(monkeypatch), [], ShardedSaves.save
    monkeypatch.setattr(ShardedSaves, "save", lambda self, trainer, path: (sharded.append(path.name),
                                                                          original(self, trainer, path)))
    make(tmp_path, steps=6, strategy="fsdp2", keep_checkpoints=1, callbacks=[BestAt({3: 0.1})]).train()
    ckpt = tmp_path / "ckpt"
    assert names(ckpt) == ["best.ckpt", "step=00000003.ckpt", "step=00000006.ckpt"]
    assert os.readlink(ckpt / "best.ckpt") == "step=00000003.ckpt" and (ckpt / "best.ckpt").is_dir()
    assert files == [] and sharded == [f"step={s:08d}.ckpt" for s in (2, 3, 4, 6)]  # each step saved once
    assert read_checkpoint(ckpt / "best.ckpt", tensors=False)["step"] == 3


def test_keep_checkpoints_must_be_at_least_one(tmp_path):
    with pytest.raises(ValueError, match="keep_checkpoints=0 must be an integer >= 1"):
        make(tmp_path, keep_checkpoints=0)


def test_a_background_save_writes_the_weights_of_its_step_while_training_goes_on(tmp_path, monkeypatch):
    """The file is written on a thread while training goes on: it must hold the weights at the save."""
    gate, events = threading.Event(), []
    original = torch.save

    def held_save(obj, f, *args, **kwargs):
        gate.wait(timeout=30)  # held until the next steps have changed the weights
        events.append("written")
        return original(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", held_save)
    seen = {}

    class Weights:
        def on_step_end(self, trainer, metrics):
            seen[trainer.current_step] = trainer.model.output.weight.detach().clone()
            events.append(f"step {trainer.current_step}")
            if trainer.current_step == 4:
                gate.set()

    make(tmp_path, steps=4, callbacks=[Weights()]).train()
    saved = read_checkpoint(tmp_path / "ckpt" / "step=00000002.ckpt")["state_dict"]["model.output.weight"]
    assert torch.equal(saved, seen[2]) and not torch.equal(saved, seen[4])
    assert events.index("step 3") < events.index("written")  # step 3 trained while step 2's file was being written


def test_last_skips_an_incomplete_sharded_directory_with_a_warning(tmp_path):
    make(tmp_path, steps=2).train()
    broken = tmp_path / "ckpt" / "step=00000009.ckpt"
    broken.mkdir()
    (broken / "__0_0.distcp").write_bytes(b"half")
    (tmp_path / "ckpt" / "step=00000010.ckpt.tmp").mkdir()  # a staged save never finished: not a checkpoint
    with pytest.warns(UserWarning, match="step=00000009.ckpt is an incomplete sharded checkpoint"):
        assert find_last_checkpoint(tmp_path / "ckpt").name == "step=00000002.ckpt"


def test_a_sharded_run_directory_loads_on_one_process_and_names_its_tokenizer(tmp_path):
    from tlama_core.data import builtin_corpus_path, builtin_tokenizer_path, create_dataloader

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(Path(builtin_corpus_path()).read_text()[:20_000])
    loader = create_dataloader(corpus, builtin_tokenizer_path(), batch_size=2, seq_length=16, cache_dir=tmp_path)
    model = tiny_model(vocab_size=1024)
    t = Trainer(model, loader, total_batch_size=64, steps=3, checkpoint_steps=3, use_mixed_precision=False,
                checkpoints_dir=str(tmp_path / "ckpt"), logs_dir=str(tmp_path / "logs"), verbose=False,
                accelerator="cpu", devices=1, strategy="fsdp2")
    t.train()
    step = tmp_path / "ckpt" / "step=00000003.ckpt"
    assert step.is_dir()
    loaded = load_model(tmp_path / "ckpt")  # the directory's newest checkpoint, gathered on this process
    for (name, p), q in zip(t.model.named_parameters(), loaded.parameters(), strict=True):
        assert torch.equal(p.full_tensor().detach(), q.detach()), name
    assert run_tokenizer(step).read_bytes() == Path(builtin_tokenizer_path()).read_bytes()


def test_lightnings_slurm_checkpoints_are_set_aside_not_resumed_unasked(tmp_path, monkeypatch):
    for name, value in {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
                        "SLURM_NODEID": "0", "SLURM_NNODES": "1", "SLURM_JOB_ID": "7", "SLURM_JOB_NAME": "train",
                        "SLURM_NODELIST": "localhost"}.items():
        monkeypatch.setenv(name, value)
    make(tmp_path, steps=2).train()
    hpc = tmp_path / "ckpt" / "hpc_ckpt_1.ckpt"
    os.link(tmp_path / "ckpt" / "step=00000002.ckpt", hpc)  # what Lightning's own SIGUSR1 handler leaves
    again = make(tmp_path, steps=2)
    with pytest.warns(UserWarning, match="hpc_ckpt_1.ckpt .*moved to"):
        again.train()
    assert again._cadence.start_step == 0  # trained from the start: Lightning alone would have resumed at step 2
    assert not hpc.exists()


def test_a_learning_rate_of_zero_trains_a_frozen_model(tmp_path):
    """learning_rate=0.0 without a schedule is a real check of a pipeline (torch's optimizers take it): every step
    runs, at rate 0, and no weight moves (AdamW's decay is scaled by the rate too)."""
    t = make(tmp_path, steps=3, learning_rate=0.0)
    before = {k: v.clone() for k, v in t.model.state_dict().items()}
    t.train()
    rates = [float(r["learning_rate"]) for r in read_rows(tmp_path / "logs" / "train_log.csv")]
    assert t.current_step == 3 and rates == [0.0, 0.0, 0.0]
    assert all(torch.equal(before[k], v) for k, v in t.model.state_dict().items())


def test_a_model_checkpoint_of_yours_named_like_a_best_is_never_removed(tmp_path):
    """best.ckpt's own checkpoints (step=N.best.ckpt) are removed when another step is best; a ModelCheckpoint of
    yours saving into the same directory under its own names keeps its files."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    mine = ModelCheckpoint(filename="best-{step}", every_n_train_steps=3, save_top_k=-1)
    make(tmp_path, checkpoint_steps=100, callbacks=[BestAt({2: 0.9, 4: 0.5}), mine]).train()
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("best-*.ckpt")) == ["best-step=3.ckpt", "best-step=6.ckpt",
                                                                              "best-step=9.ckpt"]


def test_a_tied_models_checkpoint_stores_the_shared_matrix_once(tmp_path):
    tied = Trainer(tiny_model(tie_embeddings=True), WindowLoader(96, 4, 16), total_batch_size=128, steps=1,
                   use_mixed_precision=False, checkpoints_dir=str(tmp_path / "ckpt"), logs_dir=str(tmp_path / "logs"),
                   verbose=False, accelerator="cpu", devices=1)
    tied.train()
    state = read_checkpoint(tmp_path / "ckpt" / "step=00000001.ckpt")["state_dict"]
    embedding, output = state["model.tok_embeddings.weight"], state["model.output.weight"]
    assert output.untyped_storage().data_ptr() == embedding.untyped_storage().data_ptr()  # one storage in the file


@pytest.mark.parametrize("strategy", ["auto", "ddp"])
def test_a_meta_device_model_without_sharding_trains_as_the_one_built_on_the_cpu(tmp_path, strategy):
    """Built on the meta device and trained unsharded (one process): materialised with the CPU model's weights and
    optimised on them (an optimizer built on the placeholders would train nothing)."""
    cpu_model = tiny_model(0)
    torch.manual_seed(0)
    with torch.device("meta"):
        meta_model = Transformer(cpu_model.config)
    make(tmp_path / "cpu", steps=4, model=cpu_model).train()
    make(tmp_path / "meta", steps=4, model=meta_model, strategy=strategy).train()
    losses = [[r["train_loss"] for r in read_rows(tmp_path / run / "logs" / "train_log.csv")]
              for run in ("cpu", "meta")]
    assert losses[0] == losses[1] and len(set(losses[0])) == 4  # the same, and training moved the loss


def test_a_full_disk_during_a_sharded_save_is_one_error_and_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    import errno

    fsync = os.fsync

    def full(fd):
        if ".ckpt.tmp" in os.readlink(f"/proc/self/fd/{fd}") and "step=00000004" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match=r"disk full .*step=00000004.ckpt .*resume with ckpt_path='last' \(step=00000002"):
        make(tmp_path, steps=4, strategy="fsdp2").train()
    assert names(tmp_path / "ckpt") == ["step=00000002.ckpt"]  # no staged directory left holding the space


def test_a_sharded_checkpoint_of_another_model_or_step_shape_is_refused_naming_it(tmp_path):
    """The checks a checkpoint file gets on resume apply to a sharded directory: the model's shape (before any
    shard is read) and the step's shape."""
    make(tmp_path, steps=2, strategy="fsdp2").train()
    step = tmp_path / "ckpt" / "step=00000002.ckpt"
    assert step.is_dir()
    with pytest.raises(CheckpointError, match=r"step=00000002.ckpt was made for another model shape: n_layers: "
                                              r"checkpoint 2, model 3"):
        make(tmp_path, steps=4, strategy="fsdp2", model=tiny_model(n_layers=3)).train(ckpt_path="last")
    with pytest.raises(CheckpointError, match=r"grad_accum 2 \(this run 4\); 128 tokens a step against this run's 256"):
        make(tmp_path, steps=4, strategy="fsdp2", total_batch_size=256).train(ckpt_path=str(step))


@pytest.mark.parametrize("damage", ["missing", "truncated"])
def test_a_damaged_shard_file_is_an_error_naming_it(tmp_path, damage):
    make(tmp_path, steps=2, strategy="fsdp2").train()
    step = tmp_path / "ckpt" / "step=00000002.ckpt"
    shard = step / "__0_0.distcp"
    if damage == "missing":
        shard.unlink()
    else:
        os.truncate(shard, shard.stat().st_size // 2)
    for read in (lambda: load_model(step), lambda: make(tmp_path, steps=4, strategy="fsdp2").train(ckpt_path="last")):
        with pytest.raises(CheckpointError, match="its shard file __0_0.distcp (is missing|holds .* bytes of)"):
            read()
