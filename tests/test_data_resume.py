"""Exact resume: a loader restored from a state reads exactly what an uninterrupted loader would have read."""

from __future__ import annotations

import io
import itertools

import numpy as np
import pytest
import torch

from tlama_core.data import TokenDataLoader, create_dataloader
from tlama_core.data.sampler import window_order

T, B = 8, 4


@pytest.fixture
def ids_path(tmp_path):
    """ids 0..1999 (uint16): 249 windows of 8, 62 batches of 4 per epoch; a window's x[0] // T is its index."""
    path = tmp_path / "ids.bin"
    np.arange(2000, dtype=np.uint16).tofile(path)
    return path


def make(path, shuffle, workers=0) -> TokenDataLoader:
    return create_dataloader(path, None, B, T, shuffle, seed=11, num_workers=workers)


def windows(batch) -> list[int]:
    return (batch[0][:, 0] // T).tolist()


def stream(loader: TokenDataLoader, epochs: int) -> list[list[int]]:
    """Batches of `epochs` whole epochs, driven like Lightning: set_epoch, then iterate."""
    out = []
    for epoch in range(epochs):
        loader.sampler.set_epoch(epoch)
        out += [windows(b) for b in loader]
    return out


def roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a Lightning checkpoint carries it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("consumed", [5, 62 + 7, 62], ids=["mid-epoch", "second-epoch", "epoch-boundary"])
def test_resumed_loader_continues_exactly(ids_path, shuffle, workers, consumed):
    reference = stream(make(ids_path, shuffle), epochs=3)

    first = make(ids_path, shuffle, workers)
    seen, epoch = [], 0
    while len(seen) < consumed:  # stop after `consumed` batches, wherever that falls
        first.sampler.set_epoch(epoch)
        for batch in itertools.islice(first, consumed - len(seen)):
            seen.append(windows(batch))
        epoch += 1
    state = roundtrip(first.state_dict())
    del first

    resumed = make(ids_path, shuffle, workers)
    resumed.load_state_dict(state)
    rest = []
    for epoch in range(state["epoch"], 3):
        resumed.sampler.set_epoch(epoch)  # Lightning sets the restored epoch again: the position must survive
        rest += [windows(b) for b in resumed]
    assert seen + rest == reference


def test_state_is_plain_ints(ids_path):
    loader = make(ids_path, True)
    next(iter(loader))
    state = loader.state_dict()
    assert state == {"epoch": 0, "batch": 1, "seed": 11, "batch_size": B, "order": 3, "world_size": 1}
    assert all(type(v) is int for v in state.values())


def test_neighbouring_seeds_do_not_share_epoch_orders():
    """Seeding each epoch with seed + epoch made seed 1338's first epoch seed 1337's second."""
    assert not torch.equal(window_order(500, 0, 1338, True), window_order(500, 1, 1337, True))
    assert torch.equal(window_order(500, 0, 1338, True, version=1), window_order(500, 1, 1337, True, version=1))


def test_a_state_saved_before_the_order_changed_resumes_in_the_old_order(ids_path):
    loader = make(ids_path, True)
    old_state = {"epoch": 1, "batch": 2, "seed": 11, "batch_size": B, "world_size": 1}  # no "order": version 1
    loader.load_state_dict(old_state)
    first = next(iter(loader))[0]
    order = window_order(len(loader.dataset), 1, 11, True, version=1)
    assert torch.equal(first, torch.stack([loader.dataset[int(i)][0] for i in order[2 * B:3 * B]]))


def test_position_counts_batches_handed_out_not_prefetched(ids_path):
    loader = make(ids_path, True, workers=2)  # workers prefetch several batches ahead
    it = iter(loader)
    for _ in range(3):
        next(it)
    assert loader.state_dict()["batch"] == 3


def test_last_batch_of_an_epoch_moves_the_position_to_the_next_epoch(ids_path):
    loader = make(ids_path, False)
    assert sum(1 for _ in loader) == len(loader) == 62
    assert (loader.state_dict()["epoch"], loader.state_dict()["batch"]) == (1, 0)


def test_only_the_first_pass_after_a_restore_starts_mid_epoch(ids_path):
    loader = make(ids_path, False)
    loader.load_state_dict({"epoch": 0, "batch": 10, "seed": 11, "order": 3})
    assert len(list(loader)) == 52
    loader.sampler.set_epoch(0)
    assert len(list(loader)) == 62


def test_a_pass_cut_short_is_followed_by_a_whole_pass_with_workers(ids_path):
    loader = make(ids_path, True, workers=2)
    partial = [windows(b) for b in itertools.islice(loader, 3)]
    whole = [windows(b) for b in loader]  # not finished: still epoch 0, from its first batch
    assert whole[:3] == partial and whole == [windows(b) for b in make(ids_path, True)]


def test_setting_another_epoch_drops_a_pending_position(ids_path):
    loader = make(ids_path, True)
    loader.load_state_dict({"epoch": 1, "batch": 10, "seed": 11, "order": 3})
    loader.sampler.set_epoch(2)
    reference = make(ids_path, True)
    reference.sampler.set_epoch(2)
    assert [windows(b) for b in loader] == [windows(b) for b in reference]


def test_state_with_another_seed_keeps_the_saved_order(ids_path):
    loader = create_dataloader(ids_path, None, B, T, True, seed=99)
    with pytest.warns(UserWarning, match="seed=11"):
        loader.load_state_dict({"epoch": 0, "batch": 3, "seed": 11, "order": 3})
    reference = make(ids_path, True)
    assert [windows(b) for b in loader] == [windows(b) for b in reference][3:]


def test_resume_under_ranks_continues_each_rank(ids_path):
    world = 2
    for rank in range(world):
        reference = [windows(b) for b in make(ids_path, True).shard(rank, world)]
        first = make(ids_path, True).shard(rank, world)
        seen = [windows(b) for b in itertools.islice(first, 4)]
        resumed = make(ids_path, True).shard(rank, world)
        resumed.load_state_dict(first.state_dict())
        assert seen + [windows(b) for b in resumed] == reference


def test_resume_with_more_processes_skips_exactly_the_windows_already_read(ids_path):
    # 2 processes read 4 batches each = the first 32 windows of the epoch's order; 4 processes continue from there
    before = make(ids_path, True).shard(0, 2)
    for _ in itertools.islice(before, 4):
        pass
    state = before.state_dict()
    order = window_order(249, 0, 11, True).tolist()
    after = []
    for rank in range(4):
        loader = make(ids_path, True).shard(rank, 4)
        loader.load_state_dict(state)
        after += [w for b in loader for w in windows(b)]
    assert not set(after) & set(order[:32])
    assert len(after) == 4 * (len(order) // 4 // B * B - 32 // 4)


def test_a_state_from_an_unknown_order_version_is_refused(ids_path):
    with pytest.raises(ValueError, match="order=4"):
        make(ids_path, True).load_state_dict({"epoch": 0, "batch": 1, "seed": 11, "order": 4})
