"""The epoch order of windows: a seeded permutation computed at the positions a process reads, never stored."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tlama_core.data import sampler
from tlama_core.data.sampler import WindowSampler, epoch_order, order_slice, window_order

SIZES = [1, 2, 3, 4, 5, 7, 8, 9, 31, 32, 33, 97, 255, 256, 257, 1023, 1024, 1025, 4099, 65_537]


@pytest.mark.parametrize("n", SIZES)
def test_every_window_is_in_an_epoch_order_once(n):
    for seed, epoch in [(0, 0), (1337, 0), (1337, 1), (2**40 + 3, 7)]:
        order = window_order(n, epoch, seed, True)
        assert torch.equal(order.sort().values, torch.arange(n)), (seed, epoch)


def test_unshuffled_order_is_the_windows_in_order():
    assert torch.equal(window_order(1000, 3, 5, False), torch.arange(1000))


def test_the_order_at_any_positions_is_the_whole_order_at_them():
    whole = window_order(10_007, 2, 11, True).numpy()
    positions = np.array([10_006, 0, 5, 5, 9_999, 4_096, 1], dtype=np.int64)
    assert np.array_equal(epoch_order(10_007, 2, 11, True)(positions), whole[positions])


def feistel_by_hand(n: int, seed: int, epoch: int, position: int) -> int:
    """Order 3 at one position, in plain Python integers: the construction permutation.py documents (states
    saved with order 3 resume only while this stays what the sampler computes)."""
    mask = (1 << 64) - 1
    keys = [int(k) for k in np.random.SeedSequence([seed, epoch]).generate_state(8, np.uint64)]
    bits = max(2, (n - 1).bit_length())
    x = position
    while True:
        left_bits, right_bits = bits - bits // 2, bits // 2
        left, right = x >> right_bits, x & ((1 << right_bits) - 1)
        for key in keys:
            z = (right * 0x9E3779B97F4A7C15 + key) & mask
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
            z ^= z >> 31
            left, right = right, left ^ (z >> (64 - left_bits))
            left_bits, right_bits = right_bits, left_bits
        x = (left << right_bits) | right
        if x < n:
            return x


@pytest.mark.parametrize("n", [2, 97, 1025, 10**12 // 2048])
def test_order_3_is_the_documented_feistel_network(n):
    positions = np.array(sorted({0, 1, n // 2, n - 1}), dtype=np.int64)
    expected = [feistel_by_hand(n, 1337, 4, int(p)) for p in positions]
    assert epoch_order(n, 4, 1337, True, version=3)(positions).tolist() == expected


def correlation(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(np.corrcoef(a.numpy(), b.numpy())[0, 1])


def test_neighbouring_seeds_and_epochs_give_unrelated_orders():
    """Two independent permutations of n: correlation ~ N(0, 1/n), about one position in common."""
    n = 20_000
    base = window_order(n, 0, 1337, True)
    others = [window_order(n, 1, 1337, True), window_order(n, 0, 1338, True), window_order(n, 1, 1336, True),
              torch.arange(n)]
    for other in others:
        assert abs(correlation(base, other)) < 0.04  # 1/sqrt(n) = 0.007
        assert int((base == other).sum()) < 10
    displacement = (base - torch.arange(n)).abs().double().mean()  # a random permutation moves a window n/3
    assert abs(displacement / n - 1 / 3) < 0.02


def test_each_window_is_equally_likely_first():
    n, draws = 12, 6000
    first = [int(window_order(n, 0, seed, True)[0]) for seed in range(draws)]
    counts = np.bincount(first, minlength=n)
    chi2 = float(((counts - draws / n) ** 2 / (draws / n)).sum())
    assert chi2 < 40, counts  # 11 degrees of freedom: P(chi2 > 40) ~ 3e-5


@pytest.mark.parametrize("world,rank,start", [(1, 0, 0), (3, 2, 5), (4, 1, 0), (2, 0, 17)])
def test_a_rank_reads_the_slice_of_the_stored_order(monkeypatch, world, rank, start):
    """The plan of (rank, world) from batch `start` is what slicing the whole order gave: order[:n*B*W][rank::W]
    [start*B:], with blocks far smaller than the plan so it crosses many block boundaries."""
    monkeypatch.setattr(sampler, "BLOCK", 7)
    num_windows, batch = 1009, 4
    s = WindowSampler(num_windows, batch, shuffle=True, seed=3)
    s.shard(rank, world)
    s.load_state_dict({"epoch": 1, "batch": start, "seed": 3, "batch_size": batch, "order": 3, "world_size": world})
    n = num_windows // world // batch
    expected = window_order(num_windows, 1, 3, True)[: n * batch * world][rank::world][start * batch:].tolist()
    assert list(s) == expected


def test_order_slice_stops_before_stop():
    order = epoch_order(100, 0, 1, True)
    assert list(order_slice(order, 3, 50, 4)) == window_order(100, 0, 1, True)[3:50:4].tolist()


def test_a_state_saved_with_order_2_keeps_its_randperm_order():
    """Order 2 was torch.randperm seeded with SeedSequence([seed, epoch]); a state that says so resumes in it."""
    num_windows, batch, seed, epoch = 500, 4, 11, 1
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]) % 2**63
    old = torch.randperm(num_windows, generator=torch.Generator().manual_seed(mixed))
    s = WindowSampler(num_windows, batch, shuffle=True, seed=seed)
    s.load_state_dict({"epoch": epoch, "batch": 3, "seed": seed, "batch_size": batch, "order": 2, "world_size": 1})
    assert list(s) == old[: num_windows // batch * batch][3 * batch:].tolist()
    assert s.state_dict()["order"] == 2


TRILLION_TOKENS = textwrap.dedent("""
    import itertools, json
    from pathlib import Path
    from tlama_core.data.sampler import WindowSampler

    def rss(field):
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field))
        return int(line.split()[1]) / 1024

    sampler = WindowSampler(10**12 // 2048, 8, shuffle=True, seed=1337)
    sampler.shard(5, 64)
    before = rss("VmRSS")
    first = list(itertools.islice(iter(sampler), 8 * 100))
    print(json.dumps({"grew_mb": rss("VmHWM") - before, "distinct": len(set(first)), "max": max(first)}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_a_trillion_token_corpus_costs_a_process_under_64_mb():
    """1e12 tokens in windows of 2048: 488M windows, 3.9 GB as a stored int64 permutation."""
    done = subprocess.run([sys.executable, "-c", TRILLION_TOKENS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["grew_mb"] < 64
    assert result["distinct"] == 800 and result["max"] < 10**12 // 2048
