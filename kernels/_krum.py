"""Krum and Multi-Krum (Blanchard et al., NeurIPS 2017) over float32 client updates.

Score of client i = sum of squared L2 distances to its ``n - f - 2`` nearest
other clients. This is the paper's choice (not ``n - f - 1`` as some peers use):
its resilience proof (Proposition 1) needs ``n > 2f + 2``, which we require and
refuse otherwise. Krum picks the lowest score (lowest index on ties);
Multi-Krum averages the m lowest-scoring updates with scores computed once, as
in the paper (default m = n - f), not the iterated variant.

Distances use the Gram form ``|xi|^2 + |xj|^2 - 2 xi.xj``: n^2*d/2 multiply-adds
that tile in registers (8 dot products share 6 loads), unlike direct
differences. Done naively in float32 it fails
for the common case of near-identical full-weight vectors: |x|^2 is huge, the
distances are tiny, and they cancel away (Flower >= 1.22 picks the wrong client
there). We therefore (1) subtract the coordinate mean, taken in float64, before
forming the Gram matrix (distances are translation invariant, and the centred
vectors are small, so float32 keeps their relative precision), and (2) take
each dot product over blocks of 256 coordinates (float32, vectorised partial
sums of 8 terms) and add the blocks in float64. The Gram matrix is computed in
Numba rather than BLAS: OpenBLAS threads spin-wait and collapse (10-50x) when
they share cores with Numba's pool or other processes, which is the
appliance's normal situation.
"""

from __future__ import annotations

import numbers

import numba
import numpy as np
from numba import prange

from ._average import weighted_mean
from ._validate import raise_if_nonfinite, require_array

#: Coordinates per Gram block: a (100, 256) float32 block of centred values is 100 KiB.
_GRAM_BLOCK = 256
#: Coordinate ranges with their own partial Gram matrix (enough to balance 2-16 threads).
_GRAM_PARTS = 16
_BLOCK = 1 << 12


@numba.njit(cache=True, parallel=True)
def _column_mean(updates: np.ndarray, out: np.ndarray) -> int:
    """out = float64 column means of updates; returns the count of NaN/Inf seen."""
    n, d = updates.shape
    nblocks = (d + _BLOCK - 1) // _BLOCK
    bad = 0
    for b in prange(nblocks):
        start = b * _BLOCK
        stop = min(start + _BLOCK, d)
        for j in range(start, stop):
            out[j] = 0.0
        for r in range(n):
            for j in range(start, stop):
                out[j] += np.float64(updates[r, j])
        for j in range(start, stop):
            out[j] /= n
            if not np.isfinite(out[j]):
                bad += 1
    return bad


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _dot(x: np.ndarray, y: np.ndarray, width: int) -> float:
    acc = np.float32(0.0)  # <= 256 terms, vectorised 8-lane partial sums
    for k in range(width):
        acc += x[k] * y[k]
    return np.float64(acc)


@numba.njit(cache=True, fastmath={"reassoc", "contract"})
def _block_gram(buf: np.ndarray, width: int, g: np.ndarray) -> None:
    """g[i, j] += buf[i] . buf[j] for j <= i (entries above the diagonal may also change).

    Tiles of 2 rows x 4 columns: 8 dot products share 6 loads per coordinate
    (a dot at a time needs 2), which is what limits this loop.
    """
    n = buf.shape[0]
    i = 0
    while i + 2 <= n:
        x0 = buf[i]
        x1 = buf[i + 1]
        j = 0
        while j + 4 <= i + 2:
            r0, r1, r2, r3 = buf[j], buf[j + 1], buf[j + 2], buf[j + 3]
            a00 = a01 = a02 = a03 = np.float32(0.0)
            a10 = a11 = a12 = a13 = np.float32(0.0)
            for k in range(width):
                u = x0[k]
                v = x1[k]
                a00 += u * r0[k]
                a01 += u * r1[k]
                a02 += u * r2[k]
                a03 += u * r3[k]
                a10 += v * r0[k]
                a11 += v * r1[k]
                a12 += v * r2[k]
                a13 += v * r3[k]
            g[i, j] += np.float64(a00)
            g[i, j + 1] += np.float64(a01)
            g[i, j + 2] += np.float64(a02)
            g[i, j + 3] += np.float64(a03)
            g[i + 1, j] += np.float64(a10)
            g[i + 1, j + 1] += np.float64(a11)
            g[i + 1, j + 2] += np.float64(a12)
            g[i + 1, j + 3] += np.float64(a13)
            j += 4
        for ii in range(i, i + 2):
            for jj in range(j, ii + 1):
                g[ii, jj] += _dot(buf[ii], buf[jj], width)
        i += 2
    if i < n:
        for jj in range(i + 1):
            g[i, jj] += _dot(buf[i], buf[jj], width)


@numba.njit(cache=True, parallel=True)
def _centred_gram(updates: np.ndarray, centre: np.ndarray, nparts: int) -> np.ndarray:
    """Lower triangle of (X - centre)(X - centre)^T, float64 across blocks.

    Each part owns a coordinate range and its own n x n partial; partials are
    added in a fixed order, so the result does not depend on the thread count.
    """
    n, d = updates.shape
    per = (d + nparts - 1) // nparts
    partial = np.zeros((nparts, n, n), dtype=np.float64)
    for p in prange(nparts):
        lo = p * per
        hi = min(d, lo + per)
        buf = np.empty((n, _GRAM_BLOCK), dtype=np.float32)
        g = partial[p]
        for start in range(lo, hi, _GRAM_BLOCK):
            width = min(_GRAM_BLOCK, hi - start)
            for r in range(n):
                for k in range(width):
                    buf[r, k] = np.float32(np.float64(updates[r, start + k]) - centre[start + k])
            _block_gram(buf, width, g)
    gram = np.zeros((n, n), dtype=np.float64)
    for p in range(nparts):
        gram += partial[p]
    return gram


def pairwise_sq_distances(updates: np.ndarray) -> np.ndarray:
    """(n, n) float64 squared L2 distances between rows of (n, d) float32 updates.

    Rows are centred on the float64 coordinate mean before the Gram form, and
    block dot products are added in float64 (see the module docstring);
    NaN/Inf input raises ``ValueError``.
    """
    updates = require_array(updates, "updates", (np.float32,), ndim=2)
    updates = np.ascontiguousarray(updates)
    n, d = updates.shape
    if n == 0:
        return np.zeros((0, 0), dtype=np.float64)
    centre = np.empty(d, dtype=np.float64)
    if _column_mean(updates, centre):
        raise_if_nonfinite(updates, "updates")
    # A fixed number of parts (not one per thread) keeps the result thread-count independent.
    nparts = max(1, min(_GRAM_PARTS, (d + _GRAM_BLOCK - 1) // _GRAM_BLOCK))
    gram = _centred_gram(updates, centre, nparts)
    gram = np.tril(gram) + np.tril(gram, -1).T
    sq = np.diag(gram).copy()
    dist = sq[:, None] + sq[None, :] - 2.0 * gram
    np.maximum(dist, 0.0, out=dist)  # rounding may leave tiny negatives
    np.fill_diagonal(dist, 0.0)
    return dist


def require_byzantine_bound(n: int, f: object) -> int:
    """Krum's guarantee needs ``n > 2f + 2``; anything else is refused, not clamped."""
    if isinstance(f, bool) or not isinstance(f, numbers.Integral):
        raise TypeError(f"f must be an int, got {type(f).__name__}")
    f = int(f)
    if f < 0:
        raise ValueError(f"f must be >= 0, got {f}")
    if n <= 2 * f + 2:
        raise ValueError(f"Krum needs n > 2f + 2: n={n}, f={f} (at most f={(n - 3) // 2})")
    return f


def krum_scores_from_distances(dist: np.ndarray, f: int) -> np.ndarray:
    """Sum of each row's ``n - f - 2`` smallest off-diagonal entries."""
    n = dist.shape[0]
    neighbours = n - f - 2
    off = dist[~np.eye(n, dtype=bool)].reshape(n, n - 1)
    nearest = np.partition(off, neighbours - 1, axis=1)[:, :neighbours]
    return np.sort(nearest, axis=1).sum(axis=1)  # sorted: order-independent sum


def krum_scores(updates: np.ndarray, f: int) -> np.ndarray:
    """Krum score of every client (lower is more central); requires ``n > 2f + 2``."""
    updates = require_array(updates, "updates", (np.float32,), ndim=2)
    f = require_byzantine_bound(updates.shape[0], f)
    return krum_scores_from_distances(pairwise_sq_distances(updates), f)


def krum(updates: np.ndarray, f: int) -> int:
    """Index of the update Krum selects (lowest score; lowest index on ties)."""
    return int(np.argmin(krum_scores(updates, f)))


def multi_krum(updates: np.ndarray, f: int, m: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(float32 mean of the m best-scoring updates, their indices best first).

    ``m`` defaults to ``n - f``; ``m = 1`` is Krum. Ties keep the lower index.
    """
    updates = require_array(updates, "updates", (np.float32,), ndim=2)
    n = updates.shape[0]
    scores = krum_scores(updates, f)
    m = n - int(f) if m is None else m
    if isinstance(m, bool) or not isinstance(m, numbers.Integral):
        raise TypeError(f"m must be an int, got {type(m).__name__}")
    if not 1 <= m <= n:
        raise ValueError(f"m must lie in 1..n={n}, got {m}")
    chosen = np.argsort(scores, kind="stable")[: int(m)]
    mask = np.zeros(n, dtype=np.float64)
    mask[chosen] = 1.0  # a 0/1-weighted mean: one pass, no copy of the chosen rows
    return weighted_mean(updates, mask), chosen
