"""TlamaDataModule, and the loader inside Lightning: exact resume through a checkpoint, DDP ranks."""

from __future__ import annotations

import multiprocessing
import os

import lightning as L
import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from tlama_core.data import (
    TlamaDataModule,
    TokenDataLoader,
    builtin_corpus_path,
    builtin_tokenizer_path,
    create_dataloader,
)


def all_ids(loader) -> list[int]:
    return loader.dataset.tokens.read(0, loader.num_tokens).tolist()


def test_default_is_the_builtin_corpus_split_90_10(tmp_path, reference_ids):
    dm = TlamaDataModule(batch_size=4, seq_length=32, cache_dir=str(tmp_path))
    train, val = dm.train_dataloader(), dm.val_dataloader()
    text = builtin_corpus_path().read_text(encoding="utf-8")
    cut = int(len(text) * 0.9)
    assert (train.text_chars, val.text_chars) == (cut, len(text) - cut)
    assert all_ids(val) == reference_ids([text[cut:]])
    assert all_ids(train)[:2000] == reference_ids([text[:20_000]])[:2000]
    assert train.vocab_size == val.vocab_size == dm.vocab_size == 1024
    assert dm.tokenizer_path == str(builtin_tokenizer_path())


def test_the_tokenizer_is_loaded_once_for_both_loaders_and_the_sample_hint(tmp_path, data_text, data_sp,
                                                                            monkeypatch):
    from tlama_core.cli.fit import opening_words
    from tlama_core.data.tokenizer import SentencePieceTokenizer

    loads, load = [], SentencePieceTokenizer.__init__

    def counted(self, path) -> None:
        loads.append(path)
        load(self, path)

    monkeypatch.setattr(SentencePieceTokenizer, "__init__", counted)
    dm = TlamaDataModule(train_path=str(data_text), batch_size=4, seq_length=32, cache_dir=str(tmp_path))
    train, val = dm.train_dataloader(), dm.val_dataloader()
    words = opening_words(train)
    assert loads == [builtin_tokenizer_path()]
    assert train.tokenizer is val.tokenizer is dm.tokenizer
    assert words == " ".join(data_sp.decode(train.dataset.window(0)[:32].tolist()).split("\n")[0].split()[:4])


def test_loaders_are_built_once(tmp_path):
    dm = TlamaDataModule(batch_size=4, seq_length=32, cache_dir=str(tmp_path))
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert isinstance(train, TokenDataLoader) and isinstance(val, TokenDataLoader)
    assert dm.train_dataloader() is train and dm.val_dataloader() is val
    assert train.sampler.shuffle and not val.sampler.shuffle
    assert (train.batch_size, train.seq_length, dm.micro_batch_tokens) == (4, 32, 128)


def test_validation_reads_the_same_batches_every_time(tmp_path):
    val = TlamaDataModule(batch_size=4, seq_length=32, cache_dir=str(tmp_path)).val_dataloader()
    assert torch.equal(torch.cat([x for x, _ in val]), torch.cat([x for x, _ in val]))


def test_given_val_path_is_used_whole(tmp_path, data_text):
    other = tmp_path / "val.txt"
    other.write_text("Speak, speak.\n" * 200)
    dm = TlamaDataModule(str(data_text), str(other), batch_size=2, seq_length=16, cache_dir=str(tmp_path / "c"))
    assert dm.train_dataloader().text_chars == len(data_text.read_text())
    assert dm.val_dataloader().text_chars == len(other.read_text())


def test_shards_named_for_splits_go_to_their_side(tmp_path):
    (tmp_path / "fw").mkdir()
    np.save(tmp_path / "fw" / "fw_val_000000.npy", np.arange(500, dtype=np.uint16))
    np.save(tmp_path / "fw" / "fw_train_000001.npy", np.arange(1000, 2000, dtype=np.uint16))
    dm = TlamaDataModule(str(tmp_path / "fw"), batch_size=2, seq_length=16)
    assert all_ids(dm.train_dataloader()) == list(range(1000, 2000))
    assert all_ids(dm.val_dataloader()) == list(range(500))
    assert dm.tokenizer_path is None and dm.vocab_size == 2000


@pytest.mark.parametrize("kwargs,error,match", [
    ({"train_path": "/no/such/corpus.txt"}, FileNotFoundError, "/no/such/corpus.txt"),
    ({"tokenizer_path": "/no/such.model"}, FileNotFoundError, "/no/such.model"),
    ({"batch_size": 0}, ValueError, "batch_size=0"),
    ({"seq_length": 0}, ValueError, "seq_length=0"),
    ({"val_path": "/x.txt"}, ValueError, "train_path"),
])
def test_bad_arguments_fail_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        TlamaDataModule(**kwargs)


def test_hyperparameters_are_plain_values(tmp_path):
    dm = TlamaDataModule(train_path=builtin_corpus_path(), cache_dir=tmp_path)
    assert dm.hparams["train_path"] == str(builtin_corpus_path()) and dm.hparams["cache_dir"] == str(tmp_path)
    assert all(v is None or type(v) in (str, int, bool) for v in dm.hparams.values())


def test_lightning_keeps_the_loader_sampler_under_ddp(tmp_path):
    # Lightning replaces any sampler that is not a DistributedSampler when it runs distributed
    loader = TlamaDataModule(batch_size=4, seq_length=32, cache_dir=str(tmp_path)).train_dataloader()
    assert isinstance(loader.sampler, DistributedSampler)


# ---- inside Lightning -------------------------------------------------------------------------------------------

class Recorder(L.LightningModule):
    """Smallest trainable module; remembers which windows each training step saw."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(2000, 4)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append((x[:, 0] // 8).tolist())
        return self.emb(x).pow(2).mean() + 0 * y.sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(dm, steps, root, ckpt_path=None, callbacks=()) -> list[list[int]]:
    model = Recorder()
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, callbacks=list(callbacks),
                        enable_checkpointing=bool(callbacks), default_root_dir=root)
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    return model.seen


@pytest.mark.filterwarnings("ignore:.*no `validation_step`", "ignore:.*callbacks used to create the checkpoint")
def test_lightning_resume_reads_exactly_the_batches_an_uninterrupted_run_reads(tmp_path):
    ids = tmp_path / "ids.bin"
    np.arange(1600, dtype=np.uint16).tofile(ids)  # train: 1440 ids = 179 windows of 8 = 44 batches of 4
    make = lambda: TlamaDataModule(str(ids), batch_size=4, seq_length=8, seed=7)  # noqa: E731
    reference = fit(make(), 60, tmp_path / "a")
    every_25 = L.pytorch.callbacks.ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=25, save_top_k=-1)
    assert fit(make(), 50, tmp_path / "b", callbacks=[every_25]) == reference[:50]
    for step in (25, 50):  # mid first epoch; 6 batches into the second
        (ckpt,) = (tmp_path / "ckpt").glob(f"*step={step}.ckpt")
        assert fit(make(), 60, tmp_path / "c", ckpt_path=str(ckpt)) == reference[step:60]


def _rank_windows(rank: int, world: int, store_path: str, ids: str, out) -> None:
    import torch.distributed as dist

    store = torch.distributed.FileStore(store_path, world)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world)
    try:
        loader = create_dataloader(ids, None, 4, 8, shuffle=True)
        out.put((rank, len(loader), [w for x, _ in loader for w in (x[:, 0] // 8).tolist()]))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not built in")
def test_ranks_of_a_process_group_read_disjoint_shares(tmp_path):
    ids = tmp_path / "ids.bin"
    np.arange(1600, dtype=np.uint16).tofile(ids)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_rank_windows, args=(r, 2, str(tmp_path / "store"), str(ids), out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0]
    (_, n0, w0), (_, n1, w1) = results
    assert n0 == n1 == 199 // 2 // 4 and len(w0) == len(w1) == n0 * 4
    assert not set(w0) & set(w1)
    assert os.path.exists(ids)


def test_single_train_file_without_val_path_is_split_90_10(tmp_path):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "train.bin")  # named "train", but a file is read as given
    dm = TlamaDataModule(str(tmp_path / "train.bin"), batch_size=2, seq_length=16)
    assert all_ids(dm.train_dataloader()) == list(range(900))
    assert all_ids(dm.val_dataloader()) == list(range(900, 1000))


def test_train_shards_all_named_train_without_val_path_is_an_error_at_construction(tmp_path):
    (tmp_path / "fw").mkdir()
    for i in range(2):
        np.save(tmp_path / "fw" / f"fw_train_{i:06d}.npy", np.arange(1000, dtype=np.uint16))
    with pytest.raises(ValueError, match=r"train_path=.*named for split='train'.*pass val_path"):
        TlamaDataModule(str(tmp_path / "fw" / "*_train_*.npy"), batch_size=2, seq_length=16)


def test_numpy_integers_become_plain_ints_that_a_weights_only_checkpoint_can_hold(tmp_path):
    np.arange(1000, dtype=np.uint16).tofile(tmp_path / "ids.bin")
    dm = TlamaDataModule(str(tmp_path / "ids.bin"), batch_size=np.int64(2), seq_length=16, seed=np.int64(3))
    assert all(type(dm.hparams[k]) is int for k in ("batch_size", "seq_length", "num_workers", "seed"))
