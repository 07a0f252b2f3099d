"""L2 norm and L2 clipping of a client update.

Clipping bounds each client's contribution (the DP sensitivity), so the
returned vector must *really* have norm <= max_norm after rounding to float32;
we shrink by a margin of 2^-23 that covers every rounding step.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import prange

from ._validate import raise_if_nonfinite, require_array, require_positive_finite

#: Elements per partial sum. Fixed (not per-thread) so the result does not depend
#: on the thread count; small enough to stay in L2.
_BLOCK = 1 << 14
#: Safety factor against float32 rounding (2^-24 relative) plus float64 noise.
_SHRINK = 1.0 - 2.0**-23
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_FLOAT64_TINY = float(np.finfo(np.float64).tiny)
_FLOAT_DTYPES = (np.float32, np.float64)


@numba.njit(cache=True, fastmath={"reassoc"})
def _sum_squares_block(x: np.ndarray) -> float:
    """Sum of squares in float64; ``reassoc`` lets LLVM vectorise the reduction."""
    s = 0.0
    for i in range(x.shape[0]):
        v = np.float64(x[i])
        s += v * v
    return s


@numba.njit(cache=True, parallel=True)
def _sum_squares(x: np.ndarray) -> float:
    """Blocked, parallel float64 sum of squares with a deterministic block order."""
    n = x.shape[0]
    nblocks = (n + _BLOCK - 1) // _BLOCK
    parts = np.empty(nblocks, dtype=np.float64)
    for b in prange(nblocks):
        start = b * _BLOCK
        parts[b] = _sum_squares_block(x[start : min(start + _BLOCK, n)])
    total = 0.0
    for b in range(nblocks):
        total += parts[b]
    return total


@numba.njit(cache=True)
def _scale_block(x: np.ndarray, factor: float, out: np.ndarray) -> None:
    for i in range(x.shape[0]):
        out[i] = np.float32(np.float64(x[i]) * factor)


@numba.njit(cache=True, parallel=True)
def _scale_to_float32(x: np.ndarray, factor: float, out: np.ndarray) -> None:
    """out = float32(x * factor), product taken in float64 (one rounding)."""
    n = x.shape[0]
    nblocks = (n + _BLOCK - 1) // _BLOCK
    for b in prange(nblocks):
        start = b * _BLOCK
        stop = min(start + _BLOCK, n)
        _scale_block(x[start:stop], factor, out[start:stop])


def _checked_vector(x: object) -> np.ndarray:
    x = require_array(x, "x", _FLOAT_DTYPES, ndim=1)
    return np.ascontiguousarray(x)


def _norm(x: np.ndarray) -> float:
    """Norm of a validated vector; rejects NaN/Inf and survives float64 over/underflow."""
    total = _sum_squares(x)
    if _FLOAT64_TINY <= total < np.inf:
        return float(np.sqrt(total))
    # Rare path: all zeros, non-finite input, or squares that over/underflow float64.
    raise_if_nonfinite(x, "x")
    biggest = float(np.max(np.abs(x))) if x.size else 0.0
    if biggest == 0.0:
        return 0.0
    return biggest * float(np.sqrt(_sum_squares(x.astype(np.float64) / biggest)))


def l2_norm(x: np.ndarray) -> float:
    """Euclidean norm of a float32/float64 vector, accumulated in float64.

    Raises ``ValueError`` on NaN/Inf rather than returning NaN, because a NaN
    norm would silently disable clipping downstream.
    """
    return _norm(_checked_vector(x))


def clip_l2(x: np.ndarray, max_norm: float) -> tuple[np.ndarray, float]:
    """Return ``(float32 copy of x with L2 norm <= max_norm, original float64 norm)``.

    Vectors already inside the ball are copied unchanged (float32 input) or just
    cast; longer ones are scaled by ``max_norm / norm`` (times ``1 - 2^-23`` so
    float32 rounding can never push the result over the bound).
    """
    x = _checked_vector(x)
    max_norm = require_positive_finite(max_norm, "max_norm")
    norm = _norm(x)
    # A float32 input inside the ball is copied bit-exactly; any cast may round up.
    limit = max_norm if x.dtype == np.float32 else max_norm * _SHRINK
    if norm <= limit:
        if x.dtype != np.float32 and norm > _FLOAT32_MAX:
            _require_fits_float32(x, 1.0)
        return x.astype(np.float32, copy=True), norm
    factor = (max_norm / norm) * _SHRINK
    if max_norm > _FLOAT32_MAX:
        _require_fits_float32(x, factor)
    out = np.empty(x.shape[0], dtype=np.float32)
    _scale_to_float32(x, factor, out)
    return out, norm


def _require_fits_float32(x: np.ndarray, factor: float) -> None:
    """Only reachable with float64 input and a bound beyond float32's range."""
    if float(np.max(np.abs(x))) * factor > _FLOAT32_MAX:
        raise ValueError("clipped values do not fit in float32; choose a smaller max_norm")
