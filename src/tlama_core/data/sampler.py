"""The order windows are read in, this process's share of them, and the position a resume starts from.

The order of an epoch depends only on (seed, epoch): a resumed run rebuilds it instead of storing it. Each of
W processes takes every W-th window of that order, truncated so all get the same number of whole batches; the
windows consumed after k batches on every rank are then exactly the first k * batch_size * W of the order. The
order is a bijection computed at the positions a process reads (permutation.py), block by block, so a process
holds a few blocks of indices whatever the corpus size; loader states saved with the older orders (1, 2: a
stored `torch.randperm`) resume in those.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from tlama_core.data.permutation import ROUNDS, SeededPermutation

# 1: torch.randperm seeded with seed + epoch (seeds s and s+1 shared orders, shifted); 2: torch.randperm seeded
# with (seed, epoch) mixed by NumPy's SeedSequence; 3: SeededPermutation keyed by that SeedSequence, never stored
ORDER_VERSION = 3
ORDER_VERSIONS = (1, 2, 3)
BLOCK = 1 << 16  # positions evaluated at a time

Order = Callable[[np.ndarray], np.ndarray]


def epoch_order(num_windows: int, epoch: int, seed: int, shuffle: bool, version: int = ORDER_VERSION) -> Order:
    """The order of `epoch` as a function from positions (an int64 array) to window indices: a permutation drawn
    from (seed, epoch), or the identity when not shuffled. Versions 1 and 2 hold their whole permutation."""
    if not shuffle:
        return lambda positions: positions
    entropy = np.random.SeedSequence([seed, epoch])
    if version == 3:
        return SeededPermutation(num_windows, entropy.generate_state(ROUNDS, np.uint64))
    mixed = seed + epoch if version == 1 else int(entropy.generate_state(1, np.uint64)[0])
    return torch.randperm(num_windows, generator=torch.Generator().manual_seed(mixed % 2**63)).numpy().__getitem__


def window_order(num_windows: int, epoch: int, seed: int, shuffle: bool, version: int = ORDER_VERSION) -> torch.Tensor:
    """All window indices in the order of `epoch`, held whole (for tests and inspection; the sampler never does)."""
    return torch.from_numpy(epoch_order(num_windows, epoch, seed, shuffle, version)(np.arange(num_windows)))


def order_slice(order: Order, first: int, stop: int, step: int) -> Iterator[int]:
    """`order` at positions first, first + step, ... below `stop`, evaluated BLOCK positions at a time."""
    for lo in range(first, stop, step * BLOCK):
        yield from order(np.arange(lo, min(stop, lo + step * BLOCK), step, dtype=np.int64)).tolist()


# A DistributedSampler subclass only so that Lightning under DDP keeps it: Lightning wraps any other sampler
# in its own distributed one, which would shard the windows a second time and lose the resume position.
class WindowSampler(DistributedSampler):
    """Window indices for one rank and one pass, starting at the position a `load_state_dict` restored.

    `epoch` and `batch` (batches consumed in the current pass) are the position; the loader's pass iterator
    advances it for every batch it hands out, and moves to (epoch + 1, 0) after the last one.
    """

    def __init__(self, num_windows: int, batch_size: int, *, shuffle: bool, seed: int) -> None:
        Sampler.__init__(self)  # not DistributedSampler's: it wants a process group at construction
        self.num_windows, self.batch_size, self.shuffle, self.seed = num_windows, batch_size, shuffle, seed
        self.drop_last = True
        self.epoch, self.batch = 0, 0
        self.order_version = ORDER_VERSION
        self._override: tuple[int, int] | None = None
        self._pass_world: int | None = None  # processes of the pass the position counts in
        self._resume_windows: int | None = None  # windows consumed over all ranks, set by load_state_dict
        self._plan: Iterator[int] | None = None

    # ---- which processes share the windows ----------------------------------------------------------------
    def shard(self, rank: int, world_size: int) -> None:
        """Read as process `rank` of `world_size`, whatever torch.distributed says (tests, custom launchers)."""
        if not (isinstance(world_size, int) and world_size >= 1 and isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"shard(rank={rank!r}, world_size={world_size!r}): need 0 <= rank < world_size.")
        self._override = (rank, world_size)

    def rank_and_world(self) -> tuple[int, int]:
        if self._override is not None:
            return self._override
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    @property
    def rank(self) -> int:  # type: ignore[override]  # DistributedSampler's attribute, resolved when read
        return self.rank_and_world()[0]

    @property
    def num_replicas(self) -> int:  # type: ignore[override]
        return self.rank_and_world()[1]

    def batches_per_epoch(self, world_size: int | None = None) -> int:
        world_size = self.num_replicas if world_size is None else world_size
        return self.num_windows // world_size // self.batch_size

    def __len__(self) -> int:
        return self.batches_per_epoch() * self.batch_size

    # ---- epochs and passes ----------------------------------------------------------------------------------
    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's order. Setting the epoch already set keeps a pending resume position."""
        if epoch != self.epoch:
            self.epoch, self.batch, self._resume_windows = epoch, 0, None

    def require_batches(self) -> int:
        """Batches per epoch for this process; ValueError if the processes cannot all get one."""
        world = self.num_replicas
        n = self.batches_per_epoch(world)
        if n == 0:
            raise ValueError(
                f"the corpus has {self.num_windows} windows of tokens: fewer than one batch of batch_size="
                f"{self.batch_size} for each of {world} process(es); use a smaller batch_size or seq_length, "
                "or more data."
            )
        return n

    def begin_pass(self) -> tuple[int, int, int]:
        """Fix the next pass's indices now (not when a worker first asks); return (epoch, start batch, batches)."""
        rank, world = self.rank_and_world()
        n = self.require_batches()
        start = 0
        if self._resume_windows is not None:
            start, extra = divmod(self._resume_windows, self.batch_size * world)
            if extra:
                warnings.warn(f"resuming with batch_size={self.batch_size} on {world} process(es) from a position "
                              "saved with another batch size or process count: rounded down, up to "
                              f"{extra} window(s) are read again.", stacklevel=3)
            self._resume_windows = None
            if start >= n:
                self.epoch, start = self.epoch + 1, 0
        self.batch, self._pass_world = start, world
        # rank's share of the first n * batch_size * world positions, from batch `start` on
        order = epoch_order(self.num_windows, self.epoch, self.seed, self.shuffle, self.order_version)
        self._plan = order_slice(order, rank + world * start * self.batch_size, n * self.batch_size * world, world)
        return self.epoch, start, n

    def __iter__(self) -> Iterator[int]:
        if self._plan is None:  # iterated directly rather than through the loader
            self.begin_pass()
        plan, self._plan = self._plan, None
        return plan

    def advance(self, epoch: int, consumed: int, num_batches: int) -> None:
        """Record that `consumed` batches of `epoch` have been handed out."""
        self.epoch, self.batch = (epoch + 1, 0) if consumed >= num_batches else (epoch, consumed)

    # ---- resume ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(self.epoch), "batch": int(self.batch), "seed": int(self.seed),
                "batch_size": int(self.batch_size), "order": self.order_version,
                "world_size": int(self._pass_world or self.num_replicas)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = {"epoch", "batch"} - set(state)
        if missing:
            raise KeyError(f"loader state {state!r} lacks {sorted(missing)}; was it saved by a TokenDataLoader?")
        seed = int(state.get("seed", self.seed))
        if seed != self.seed:
            warnings.warn(f"loader state was saved with seed={seed}, this loader has seed={self.seed}: using "
                          f"{seed} so the resumed run reads the same order.", stacklevel=3)
            self.seed = seed
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.order_version = int(state.get("order", 1))  # states without it were saved by version 1
        if self.order_version not in ORDER_VERSIONS:
            raise ValueError(f"loader state has order={self.order_version}, which this version of tlama-core does "
                             f"not know (it draws orders {', '.join(map(str, ORDER_VERSIONS))}); resume with the "
                             "version that saved it.")
        self._pass_world = int(state.get("world_size", 1))
        self._resume_windows = self.batch * int(state.get("batch_size", self.batch_size)) * self._pass_world

