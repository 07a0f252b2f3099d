"""Coordinate-wise robust statistics of client updates: median and trimmed mean.

Both are order statistics per coordinate. Selecting per coordinate with
quickselect is branchy (one mispredicted branch per comparison); instead the
kernel runs a comparator network (Batcher's odd-even merge sort) on whole
rows of a coordinate block, so every compare-exchange is a branch-free
``min``/``max`` over 256 coordinates at once that LLVM turns into SIMD
instructions (on order-preserving int32 keys: integer min/max vectorise, Numba's
float min/max do not). The network is pruned to the output positions the statistic
needs (the middle one or two for the median; the untrimmed middle for the
trimmed mean), and comparators that only touch the padding up to a power of
two are dropped. The block lives in cache; the matrix is read once and never
transposed or copied to float64 (``np.median`` does both). Networks sort ties
correctly by construction. NaN/Inf (exponent all ones) is detected per lane
during the load and refused by the wrapper.
"""

from __future__ import annotations

import functools
import math
import numbers

import numba
import numpy as np
from numba import prange

from ._validate import raise_if_nonfinite, require_array

#: Coordinates per block (SIMD lanes of the network): a (100, 256) float32 block is 100 KiB.
_BLOCK = 256


@functools.lru_cache(maxsize=64)
def sorting_network(n: int, lo: int, hi: int) -> np.ndarray:
    """(m, 2) int32 comparators (i < j: min to i, max to j) that put sorted positions lo..hi-1
    of n values in place; Batcher's odd-even merge sort, pruned to those outputs."""
    size = 1 << max(0, (n - 1).bit_length())
    pairs: list[tuple[int, int]] = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    if (i + j) // (2 * p) == (i + j + k) // (2 * p):
                        a, b = i + j, i + j + k
                        if b < n:  # wires >= n hold +inf forever: such comparators are no-ops
                            pairs.append((a, b))
            k //= 2
        p *= 2
    needed = set(range(lo, hi))
    kept: list[tuple[int, int]] = []
    for a, b in reversed(pairs):  # keep a comparator iff one of its outputs is still needed
        if a in needed or b in needed:
            kept.append((a, b))
            needed.update((a, b))
    kept.reverse()
    return np.array(kept, dtype=np.int32).reshape(-1, 2)


@numba.njit(cache=True, parallel=True)
def _middle_mean_kernel(
    bits: np.ndarray, network: np.ndarray, lo: int, hi: int, out: np.ndarray
) -> int:
    """out[c] = float32(mean of sorted positions lo..hi-1 of column c), summed in float64.

    ``bits`` is the float32 matrix viewed as int32. Each value becomes an integer
    key with the same order (negative floats get their magnitude bits flipped),
    because integer min/max vectorise while Numba's float min/max carry NaN
    branches (about 20x slower here). Returns the number of blocks with NaN/Inf.
    """
    n, d = bits.shape
    nblocks = (d + _BLOCK - 1) // _BLOCK
    bad = 0
    for b in prange(nblocks):
        start = b * _BLOCK
        width = min(_BLOCK, d - start)
        buf = np.empty((n, width), dtype=np.int32)
        check = np.zeros(width, dtype=np.int32)
        for r in range(n):
            for lane in range(width):
                v = bits[r, start + lane]
                check[lane] |= (((v >> 23) & 0xFF) + 1) >> 8  # 1 iff exponent is all ones
                buf[r, lane] = v ^ ((v >> 31) & 0x7FFFFFFF)
        for c in range(network.shape[0]):
            low = buf[network[c, 0]]
            high = buf[network[c, 1]]
            for lane in range(width):
                x = low[lane]
                y = high[lane]
                low[lane] = np.minimum(x, y)
                high[lane] = np.maximum(x, y)
        for lane in range(width):
            if check[lane]:
                bad += 1
                break
        for r in range(lo, hi):  # keys back to float32 bit patterns (the map is an involution)
            row = buf[r]
            for lane in range(width):
                k = row[lane]
                row[lane] = k ^ ((k >> 31) & 0x7FFFFFFF)
        values = buf.view(np.float32)
        acc = np.zeros(width, dtype=np.float64)
        for r in range(lo, hi):  # rows in order: each lane sums positions lo..hi-1 in order
            row32 = values[r]
            for lane in range(width):
                acc[lane] += np.float64(row32[lane])
        for lane in range(width):
            out[start + lane] = np.float32(acc[lane] / (hi - lo))
    return bad


def _checked_updates(updates: object) -> np.ndarray:
    updates = require_array(updates, "updates", (np.float32,), ndim=2)
    if updates.shape[0] < 1:
        raise ValueError("updates must have at least one row")
    return np.ascontiguousarray(updates)


def _middle_mean(updates: np.ndarray, lo: int, hi: int) -> np.ndarray:
    out = np.empty(updates.shape[1], dtype=np.float32)
    network = sorting_network(updates.shape[0], lo, hi)
    if _middle_mean_kernel(updates.view(np.int32), network, lo, hi, out):
        raise_if_nonfinite(updates, "updates")
    return out


def coordinate_median(updates: np.ndarray) -> np.ndarray:
    """Per-coordinate median of (n, d) float32 updates, as float32.

    For even n it is the midpoint of the two middle values (summed in float64,
    rounded once). NaN/Inf anywhere raises ``ValueError``: an attacker's NaN
    must not be able to poison the order statistics.
    """
    updates = _checked_updates(updates)
    n = updates.shape[0]
    lo = (n - 1) // 2
    return _middle_mean(updates, lo, n // 2 + 1)


def trim_count(n: int, beta: object) -> int:
    """Values trimmed per side: ``floor(beta * n)``; at least one value must remain.

    ``beta`` is a fraction in [0, 0.5); ``beta = f / n`` tolerates f Byzantine
    values per coordinate.
    """
    if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
        raise TypeError(f"beta must be a real number, got {type(beta).__name__}")
    beta = float(beta)
    if not (math.isfinite(beta) and 0.0 <= beta < 0.5):
        raise ValueError(f"beta must lie in [0, 0.5), got {beta!r}")
    # A tiny tolerance so beta = f / n trims exactly f despite binary rounding.
    trim = math.floor(beta * n + 1e-9)
    if n - 2 * trim < 1:
        raise ValueError(f"beta={beta} trims all {n} values")
    return trim


def trimmed_mean(updates: np.ndarray, beta: float) -> np.ndarray:
    """Per-coordinate mean after dropping the ``floor(beta * n)`` lowest and highest values.

    Summed in float64, returned as float32. ``beta = 0`` is the plain mean.
    """
    updates = _checked_updates(updates)
    n = updates.shape[0]
    trim = trim_count(n, beta)
    return _middle_mean(updates, trim, n - trim)
