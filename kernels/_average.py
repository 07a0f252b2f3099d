"""Weighted mean of plaintext client updates (the non-secure aggregation path).

float32 updates are summed in float64 so that n=hundreds of clients lose no
precision; the loop is blocked over coordinates so each float64 partial sum
lives in cache while all rows stream past it (``np.average`` instead
materialises an n x d float64 temporary).
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._validate import raise_if_nonfinite, require_array

#: Coordinates per block: a 32 KiB float64 accumulator stays in L1/L2.
_BLOCK = 1 << 12


@numba.njit(cache=True)
def _axpy(acc: np.ndarray, weight: float, row: np.ndarray) -> None:
    for j in range(acc.shape[0]):
        acc[j] += weight * np.float64(row[j])


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
def _weighted_mean_kernel(updates: np.ndarray, weights: np.ndarray, out: np.ndarray) -> int:
    """out = sum_r weights[r] * updates[r] (weights already sum to 1); returns #non-finite."""
    n, d = updates.shape
    nblocks = (d + _BLOCK - 1) // _BLOCK
    bad = 0
    for b in prange(nblocks):
        start = b * _BLOCK
        stop = min(start + _BLOCK, d)
        acc = np.zeros(stop - start, dtype=np.float64)
        for r in range(n):
            _axpy(acc, weights[r], updates[r, start:stop])
        bad += _finish(acc, out[start:stop])
    return bad


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
    if _weighted_mean_kernel(updates, w, out):
        raise_if_nonfinite(updates, "updates")
    return out
