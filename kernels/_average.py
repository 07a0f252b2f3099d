"""Weighted mean of plaintext client updates (the non-secure aggregation path).

float32 updates are summed in float64 so that n=hundreds of clients lose no
precision; the loop is blocked over coordinates so each float64 partial sum
lives in cache while all rows stream past it, eight rows at a time (``np.average``
instead materialises an n x d float64 temporary). It runs at about the speed of
a read-only float32 gemv (``np.dot(w, updates)``), which reads the same bytes but
accumulates in float32.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._validate import raise_if_nonfinite, require_array

#: Coordinates per block: the 128 KiB float64 accumulator stays in L2 while the rows stream
#: past it, and each row is read in 64 KiB runs (16 pages) so the hardware prefetcher keeps
#: up. The first version used 4096 (a 32 KiB accumulator, all of L1, evicted by the rows it
#: met) and ran at 2x a read-only gemv; see benchmarks/bench_floors_issue20.py.
_BLOCK = 1 << 14
#: Smallest block: below it the per-block overhead shows.
_MIN_BLOCK = 1 << 10


@numba.njit(cache=True)
def _add_rows(acc: np.ndarray, weights: np.ndarray, updates: np.ndarray, start: int) -> None:
    """acc += sum_r weights[r] * updates[r, start:start+len(acc)], eight rows per pass.

    Eight rows per pass load and store the accumulator an eighth as often (four rows measured
    1.24x a read-only gemv, eight 0.9x); the products are summed in float64 before they reach
    it, so nothing is rounded to float32 on the way. Then groups of four, then single rows.
    """
    n = updates.shape[0]
    m = acc.shape[0]
    stop = start + m
    r = 0
    while r + 8 <= n:
        w0, w1, w2, w3 = weights[r], weights[r + 1], weights[r + 2], weights[r + 3]
        w4, w5, w6, w7 = weights[r + 4], weights[r + 5], weights[r + 6], weights[r + 7]
        x0 = updates[r, start:stop]
        x1 = updates[r + 1, start:stop]
        x2 = updates[r + 2, start:stop]
        x3 = updates[r + 3, start:stop]
        x4 = updates[r + 4, start:stop]
        x5 = updates[r + 5, start:stop]
        x6 = updates[r + 6, start:stop]
        x7 = updates[r + 7, start:stop]
        for j in range(m):
            low = (w0 * np.float64(x0[j]) + w1 * np.float64(x1[j])) + (
                w2 * np.float64(x2[j]) + w3 * np.float64(x3[j])
            )
            high = (w4 * np.float64(x4[j]) + w5 * np.float64(x5[j])) + (
                w6 * np.float64(x6[j]) + w7 * np.float64(x7[j])
            )
            acc[j] += low + high
        r += 8
    if r + 4 <= n:
        w0, w1, w2, w3 = weights[r], weights[r + 1], weights[r + 2], weights[r + 3]
        x0 = updates[r, start:stop]
        x1 = updates[r + 1, start:stop]
        x2 = updates[r + 2, start:stop]
        x3 = updates[r + 3, start:stop]
        for j in range(m):
            acc[j] += (w0 * np.float64(x0[j]) + w1 * np.float64(x1[j])) + (
                w2 * np.float64(x2[j]) + w3 * np.float64(x3[j])
            )
        r += 4
    while r < n:
        w0 = weights[r]
        x0 = updates[r, start:stop]
        for j in range(m):
            acc[j] += w0 * np.float64(x0[j])
        r += 1


@numba.njit(cache=True)
def _finish(acc: np.ndarray, out: np.ndarray) -> int:
    """Store acc as float32; count non-finite sums (only NaN/Inf input makes them)."""
    bad = 0
    for j in range(acc.shape[0]):
        if not np.isfinite(acc[j]):
            bad += 1
        out[j] = np.float32(acc[j])
    return bad


@numba.njit(cache=True, parallel=True)
def _weighted_mean_kernel(
    updates: np.ndarray, weights: np.ndarray, out: np.ndarray, block: int
) -> int:
    """out = sum_r weights[r] * updates[r] (weights already sum to 1); returns #non-finite.

    One read of every update (the floor a read-only gemv sets), float64 accumulation.
    """
    d = updates.shape[1]
    nblocks = (d + block - 1) // block
    bad = 0
    for b in prange(nblocks):
        start = b * block
        stop = min(start + block, d)
        acc = np.zeros(stop - start, dtype=np.float64)
        _add_rows(acc, weights, updates, start)
        bad += _finish(acc, out[start:stop])
    return bad


def _block_for(d: int) -> int:
    """_BLOCK, or smaller so that every thread gets at least two blocks of a small model."""
    per_thread = -(-d // (2 * numba.get_num_threads()))
    return max(_MIN_BLOCK, min(_BLOCK, per_thread))


def _normalised_weights(weights: object, n: int) -> np.ndarray:
    """Check weights (finite, >= 0, sum > 0) and return them as float64 summing to 1.

    Normalising first bounds every partial sum by max|update|, so huge weights
    cannot overflow the float64 accumulator.
    """
    if not isinstance(weights, np.ndarray):
        raise TypeError(f"weights must be a numpy.ndarray, got {type(weights).__name__}")
    if weights.dtype == np.bool_ or weights.dtype.kind not in "iuf":
        raise TypeError(f"weights must have a real numeric dtype, got {weights.dtype}")
    if weights.ndim != 1:
        raise ValueError(f"weights must be 1-D, got shape {weights.shape}")
    if weights.shape[0] != n:
        raise ValueError(f"weights has {weights.shape[0]} entries but updates has {n} rows")
    w = np.ascontiguousarray(weights, dtype=np.float64)
    raise_if_nonfinite(w, "weights")
    if np.any(w < 0):
        i = int(np.flatnonzero(w < 0)[0])
        raise ValueError(f"weights must be >= 0, got {w[i]} at index {i}")
    biggest = float(np.max(w)) if n else 0.0
    if biggest == 0.0:
        raise ValueError("weights must have a positive sum (all weights are zero or none given)")
    w = w / biggest  # so the sum below cannot overflow
    return w / float(np.sum(w))


def weighted_mean(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``sum_i (w_i / sum_j w_j) * updates[i]`` per coordinate, accumulated in float64.

    ``updates`` is (n, d) float32, ``weights`` (n,) finite, >= 0, positive sum.
    NaN/Inf anywhere in ``updates`` raises ``ValueError`` (detected for free from
    the result, then located).
    """
    updates = require_array(updates, "updates", (np.float32,), ndim=2)
    w = _normalised_weights(weights, updates.shape[0])
    updates = np.ascontiguousarray(updates)
    out = np.empty(updates.shape[1], dtype=np.float32)
    if _weighted_mean_kernel(updates, w, out, _block_for(updates.shape[1])):
        raise_if_nonfinite(updates, "updates")
    return out
