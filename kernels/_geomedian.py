"""Geometric median by the smoothed Weiszfeld iteration (Pillutla et al., RFA, 2022).

The geometric median minimises sum_i a_i |z - x_i|; its breakdown point is 1/2,
and unlike Krum it does not need f. Each Weiszfeld step is two memory-bound
passes over the (n, d) matrix: the n distances |z - x_i| (parallel over
coordinate blocks, float64 partial sums in a fixed block order so the result
does not depend on the thread count) and a weighted mean with weights
a_i / max(nu, |z - x_i|). The smoothing nu keeps a step finite when z lands on
an update.
"""

from __future__ import annotations

import math
import numbers

import numba
import numpy as np
from numba import prange

from ._average import _normalised_weights, weighted_mean
from ._validate import raise_if_nonfinite, require_array, require_positive_finite

_BLOCK = 1 << 13


@numba.njit(cache=True, parallel=True)
def _sq_distances(updates: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Squared distances from z to each row, float64, deterministic block order."""
    n, d = updates.shape
    nblocks = (d + _BLOCK - 1) // _BLOCK
    parts = np.zeros((nblocks, n), dtype=np.float64)
    for b in prange(nblocks):
        start = b * _BLOCK
        stop = min(start + _BLOCK, d)
        for r in range(n):
            acc = 0.0
            for j in range(start, stop):
                diff = np.float64(updates[r, j]) - np.float64(z[j])
                acc += diff * diff
            parts[b, r] = acc
    out = np.zeros(n, dtype=np.float64)
    for b in range(nblocks):
        for r in range(n):
            out[r] += parts[b, r]
    return out


def geometric_median(
    updates: np.ndarray,
    weights: np.ndarray | None = None,
    *,
    nu: float = 1e-6,
    max_iter: int = 100,
    ftol: float = 1e-6,
) -> tuple[np.ndarray, int]:
    """(float32 approximate geometric median, Weiszfeld steps taken).

    Starts at the weighted mean; stops when the objective improves by less
    than ``ftol`` relative, or after ``max_iter`` steps. ``weights`` default to
    equal (robust rules should not let a client pick its own weight).
    """
    updates = require_array(updates, "updates", (np.float32,), ndim=2)
    updates = np.ascontiguousarray(updates)
    n = updates.shape[0]
    if n == 0:
        raise ValueError("updates must have at least one row")
    alpha = np.ones(n) / n if weights is None else _normalised_weights(weights, n)
    nu = require_positive_finite(nu, "nu")
    ftol = require_positive_finite(ftol, "ftol")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
    z = weighted_mean(updates, alpha)  # refuses NaN/Inf
    dist = np.sqrt(_sq_distances(updates, z))
    objective = float(alpha @ dist)
    steps = 0
    for steps in range(1, int(max_iter) + 1):  # noqa: B007 - the count is returned
        beta = alpha / np.maximum(nu, dist)
        z_next = weighted_mean(updates, beta)
        dist_next = np.sqrt(_sq_distances(updates, z_next))
        obj_next = float(alpha @ dist_next)
        if not math.isfinite(obj_next):
            raise_if_nonfinite(z_next, "geometric median")
        improved = objective - obj_next
        if obj_next <= objective:  # Weiszfeld never increases it, bar rounding
            z, dist, objective = z_next, dist_next, obj_next
        if improved <= ftol * max(obj_next, np.finfo(np.float64).tiny):
            break
    return z, steps
