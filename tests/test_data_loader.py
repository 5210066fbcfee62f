"""create_dataloader: batches are windows of the token stream, each epoch covers it once, ranks share it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from tlama_core.data import TokenDataLoader, builtin_tokenizer_path, create_dataloader
from tlama_core.data.sampler import window_order

TOK = builtin_tokenizer_path()


def make(path, tmp_path, batch_size=4, seq_length=16, **kw) -> TokenDataLoader:
    return create_dataloader(path, TOK, batch_size, seq_length, cache_dir=tmp_path / "cache", **kw)


def tokens_of(loader: TokenDataLoader) -> np.ndarray:
    return loader.dataset.tokens.read(0, loader.num_tokens)


def test_batches_are_long_tensors_and_y_is_x_shifted(data_text, tmp_path):
    loader = make(data_text, tmp_path, batch_size=4, seq_length=16)
    assert isinstance(loader, DataLoader) and loader.batch_size == 4 and loader.seq_length == 16
    x, y = next(iter(loader))
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.long
    assert torch.equal(x[:, 1:], y[:, :-1])


def test_loader_reports_its_corpus(data_text, tmp_path, reference_ids):
    loader = make(data_text, tmp_path)
    text = data_text.read_text(encoding="utf-8")
    assert loader.num_tokens == len(reference_ids([text]))
    assert loader.text_chars == len(text)
    assert (loader.vocab_size, loader.eos_id, loader.bos_id) == (1024, 2, 1)


def test_in_order_batches_are_consecutive_windows_of_the_stream(data_text, tmp_path):
    loader = make(data_text, tmp_path, batch_size=3, seq_length=10, shuffle=False)
    tokens = torch.from_numpy(tokens_of(loader).astype(np.int64))
    for b, (x, y) in enumerate(loader):
        for r in range(3):
            start = (b * 3 + r) * 10
            assert torch.equal(x[r], tokens[start:start + 10]) and torch.equal(y[r], tokens[start + 1:start + 11])


def test_len_counts_whole_batches_and_the_last_partial_one_is_dropped(data_text, tmp_path):
    loader = make(data_text, tmp_path, batch_size=5, seq_length=16)
    windows = (loader.num_tokens - 1) // 16
    assert len(loader) == windows // 5 and windows % 5  # this corpus does leave a partial batch
    assert sum(1 for _ in loader) == len(loader)


def test_an_epoch_reads_each_window_at_most_once(data_text, tmp_path):
    loader = make(data_text, tmp_path, batch_size=4, seq_length=16, shuffle=True, seed=3)
    order = window_order(len(loader.dataset), 0, 3, True)[: len(loader) * 4].tolist()
    rows = [x for x, _ in loader]
    starts = torch.cat(rows)  # (windows, T)
    expected = torch.stack([loader.dataset[i][0] for i in order])
    assert torch.equal(starts, expected)
    assert len(set(order)) == len(order) == len(loader) * 4


def test_shuffled_order_depends_only_on_seed_and_epoch(data_text, tmp_path):
    def epoch_batches(seed, epoch):
        loader = make(data_text, tmp_path, shuffle=True, seed=seed)
        loader.sampler.set_epoch(epoch)
        return torch.cat([x for x, _ in loader])

    assert torch.equal(epoch_batches(1, 0), epoch_batches(1, 0))
    assert not torch.equal(epoch_batches(1, 0), epoch_batches(1, 1))
    assert not torch.equal(epoch_batches(1, 0), epoch_batches(2, 0))


def test_successive_passes_move_to_the_next_epoch(data_text, tmp_path):
    loader = make(data_text, tmp_path, shuffle=True, seed=5)
    first, second = torch.cat([x for x, _ in loader]), torch.cat([x for x, _ in loader])
    assert loader.state_dict()["epoch"] == 2
    fresh = make(data_text, tmp_path, shuffle=True, seed=5)
    fresh.sampler.set_epoch(1)
    assert torch.equal(second, torch.cat([x for x, _ in fresh])) and not torch.equal(first, second)


def test_unshuffled_loader_reads_the_same_order_every_epoch(data_text, tmp_path):
    loader = make(data_text, tmp_path, shuffle=False)
    assert torch.equal(torch.cat([x for x, _ in loader]), torch.cat([x for x, _ in loader]))


def arange_corpus(tmp_path, n: int = 2000):
    """Pre-tokenized ids 0..n-1: window i starts with id i * seq_length, so batches name their windows."""
    path = tmp_path / "ids.bin"
    np.arange(n, dtype=np.uint16).tofile(path)
    return path


@pytest.mark.parametrize("shuffle", [False, True])
def test_ranks_read_disjoint_equal_shares(tmp_path, shuffle):
    path, world, t = arange_corpus(tmp_path), 3, 16
    windows = (2000 - 1) // t
    shares = []
    for rank in range(world):
        loader = create_dataloader(path, None, 2, t, shuffle=shuffle).shard(rank, world)
        assert len(loader) == windows // world // 2
        shares.append([int(w) // t for x, _ in loader for w in x[:, 0]])
    assert len({len(s) for s in shares}) == 1 and len(shares[0]) == len(loader) * 2
    together = [w for s in shares for w in s]
    assert len(set(together)) == len(together) and set(together) <= set(range(windows))  # disjoint, real windows


def test_shard_rejects_a_rank_outside_the_world(data_text, tmp_path):
    with pytest.raises(ValueError, match="rank=3"):
        make(data_text, tmp_path).shard(3, 3)


def test_workers_yield_the_same_batches(data_text, tmp_path):
    plain = make(data_text, tmp_path, shuffle=True, seed=9)
    workers = make(data_text, tmp_path, shuffle=True, seed=9, num_workers=2)
    for (x0, y0), (x1, y1) in zip(plain, workers, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_pin_memory_none_pins_only_with_cuda(data_text, tmp_path):
    assert make(data_text, tmp_path).pin_memory == torch.cuda.is_available()
    assert make(data_text, tmp_path, pin_memory=False).pin_memory is False


@pytest.mark.parametrize("name,value", [("batch_size", 0), ("seq_length", -1), ("batch_size", 2.0)])
def test_non_positive_sizes_are_rejected(data_text, tmp_path, name, value):
    kwargs = {"batch_size": 2, "seq_length": 8, name: value}
    with pytest.raises(ValueError, match=f"{name}={value!r}"):
        create_dataloader(data_text, TOK, cache_dir=tmp_path, **kwargs)


def test_corpus_smaller_than_one_batch_says_what_it_has_and_needs(tmp_path, reference_ids):
    small = tmp_path / "small.txt"
    small.write_text("To be, or not to be, that is the question.\n", encoding="utf-8")
    have = len(reference_ids([small.read_text()]))
    with pytest.raises(ValueError, match=rf"has {have} tokens; one batch of batch_size=4 x seq_length=64 needs 257"):
        create_dataloader(small, TOK, 4, 64, cache_dir=tmp_path / "cache")


def test_too_few_windows_for_every_process_is_an_error(data_text, tmp_path):
    loader = make(data_text, tmp_path, batch_size=4, seq_length=256)
    loader.shard(0, len(loader.dataset))  # one window each: less than a batch
    with pytest.raises(ValueError, match="fewer than one batch"):
        iter(loader)


def test_missing_data_path_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.txt"):
        create_dataloader(tmp_path / "nowhere.txt", TOK, 2, 8, cache_dir=tmp_path)


def test_missing_tokenizer_is_named(data_text, tmp_path):
    with pytest.raises(FileNotFoundError, match="no-such.model"):
        create_dataloader(data_text, tmp_path / "no-such.model", 2, 8, cache_dir=tmp_path)


def test_text_without_tokenizer_is_an_error(data_text, tmp_path):
    with pytest.raises(ValueError, match="tokenizer_path"):
        create_dataloader(data_text, None, 2, 8, cache_dir=tmp_path)


def test_empty_file_is_an_error(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.touch()
    with pytest.raises(ValueError, match="empty.txt is empty"):
        create_dataloader(empty, TOK, 2, 8, cache_dir=tmp_path)


def test_ids_outside_the_tokenizers_vocabulary_are_an_error_naming_the_data(tmp_path):
    path = tmp_path / "ids.bin"
    np.array([5, 2000, 7] * 100, dtype=np.uint16).tofile(path)  # the built-in tokenizer has 1024 pieces
    loader = create_dataloader(path, builtin_tokenizer_path(), batch_size=2, seq_length=8, shuffle=False)
    with pytest.raises(ValueError, match=r"ids.bin.*token id 2000 is outside the tokenizer's vocabulary of 1024"):
        next(iter(loader))


def test_seed_must_be_an_integer_and_numpy_integers_are_accepted(tmp_path):
    path = tmp_path / "ids.bin"
    np.arange(300, dtype=np.uint16).tofile(path)
    with pytest.raises(ValueError, match="seed=None"):
        create_dataloader(path, None, batch_size=2, seq_length=8, seed=None)
    loader = create_dataloader(path, None, batch_size=np.int64(2), seq_length=8, seed=np.int64(3))
    assert next(iter(loader))[0].shape == (2, 8)
