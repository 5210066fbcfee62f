"""The order windows are read in, this process's share of them, and the position a resume starts from.

The order of an epoch depends only on (seed, epoch): a resumed run rebuilds it instead of storing it. Each of
W processes takes every W-th window of that order, truncated so all get the same number of whole batches; the
windows consumed after k batches on every rank are then exactly the first k * batch_size * W of the order.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

ORDER_VERSION = 2  # 1 seeded each epoch's permutation with seed + epoch: seeds s and s+1 shared orders, shifted


def window_order(num_windows: int, epoch: int, seed: int, shuffle: bool, version: int = ORDER_VERSION) -> torch.Tensor:
    """All window indices in the order of `epoch`: a permutation drawn from (seed, epoch), or 0..n-1.

    The pair is mixed by NumPy's SeedSequence, so no two (seed, epoch) pairs share an order; `version` 1 is the
    older seed + epoch, which a loader state saved before the change still resumes with.
    """
    if not shuffle:
        return torch.arange(num_windows)
    mixed = seed + epoch if version == 1 else int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])
    return torch.randperm(num_windows, generator=torch.Generator().manual_seed(mixed % 2**63))


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
        self._plan: torch.Tensor | None = None

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
        order = window_order(self.num_windows, self.epoch, self.seed, self.shuffle, self.order_version)
        self._plan = order[: n * self.batch_size * world][rank::world][start * self.batch_size:]
        return self.epoch, start, n

    def __iter__(self) -> Iterator[int]:
        if self._plan is None:  # iterated directly rather than through the loader
            self.begin_pass()
        plan, self._plan = self._plan, None
        return _ints(plan)

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
        if self.order_version not in (1, ORDER_VERSION):
            raise ValueError(f"loader state has order={self.order_version}, which this version of tlama-core does "
                             f"not know (it draws orders 1 and {ORDER_VERSION}); resume with the version that saved "
                             "it.")
        self._pass_world = int(state.get("world_size", 1))
        self._resume_windows = self.batch * int(state.get("batch_size", self.batch_size)) * self._pass_world


def _ints(indices: torch.Tensor) -> Iterator[int]:
    for block in indices.split(1 << 16):
        yield from block.tolist()
