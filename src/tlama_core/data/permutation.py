"""A seeded bijection of [0, n), evaluated at any positions without storing it: the shuffled order of an epoch.

A Feistel network over the k bits of [0, 2^k), the smallest k >= 2 with n <= 2^k, is a bijection whatever its
round function; cycle-walking (applying it again while a value is >= n) restricts it to a bijection of [0, n),
and since 2^k < 2n that takes under two evaluations per position on average. The halves are k // 2 and
k - k // 2 bits and alternate (an even number of rounds brings them back); the round function is SplitMix64's
finalizer of (half, round key). Memory is that of the positions asked for, whatever n. Written by hand: neither
torch nor NumPy has a permutation that is computed position by position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ROUNDS = 8  # four make a pseudorandom permutation of random round functions (Luby-Rackoff); eight leave margin
_GOLDEN, _M1, _M2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


class SeededPermutation:
    """`perm(positions)` is the value at each position of a permutation of [0, n) drawn from `keys`.

    `keys` are ROUNDS unsigned 64-bit round keys (e.g. from `numpy.random.SeedSequence.generate_state`).
    """

    def __init__(self, n: int, keys: Sequence[int] | np.ndarray) -> None:
        if not (isinstance(n, int) and 1 <= n <= 1 << 62):
            raise ValueError(f"SeededPermutation: n={n!r} must be an integer in [1, 2**62].")
        keys = np.asarray(keys, dtype=np.uint64)
        if keys.shape != (ROUNDS,):
            raise ValueError(f"SeededPermutation: need {ROUNDS} round keys, got {keys.shape}.")
        self.n, self._keys = n, keys
        bits = max(2, (n - 1).bit_length())
        self._high, self._low = bits - bits // 2, bits // 2  # bits of the left and right halves

    def __call__(self, positions: np.ndarray) -> np.ndarray:
        """The permuted values (int64) at `positions` (integers in [0, n))."""
        x = self._network(np.asarray(positions, dtype=np.uint64))
        outside = np.flatnonzero(x >= self.n)
        while outside.size:  # cycle-walk the few that landed in [n, 2^k)
            x[outside] = self._network(x[outside])
            outside = outside[x[outside] >= self.n]
        return x.astype(np.int64)

    def _network(self, x: np.ndarray) -> np.ndarray:
        left_bits, right_bits = self._high, self._low
        left, right = x >> np.uint64(right_bits), x & np.uint64((1 << right_bits) - 1)
        for key in self._keys:  # (L, R) -> (R, L ^ F(R)): the halves trade places and sizes
            z = right * _GOLDEN + key  # uint64 arrays wrap on overflow, as the mixer needs
            z = (z ^ (z >> np.uint64(30))) * _M1
            z = (z ^ (z >> np.uint64(27))) * _M2
            z ^= z >> np.uint64(31)
            left, right = right, left ^ (z >> np.uint64(64 - left_bits))
            left_bits, right_bits = right_bits, left_bits
        return (left << np.uint64(right_bits)) | right
