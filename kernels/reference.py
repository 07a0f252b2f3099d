"""Plain-numpy reference implementations: the executable specification.

Each function mirrors a Numba kernel in this package with the same float64
operations in the same order, so tests can demand exact equality on integer
paths. They skip input validation and favour clarity over speed (and
allocate freely); benchmarks use them as the baseline. In-place kernels are
mirrored by pure functions that return the new array.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "clip_l2",
    "coordinate_median",
    "dequantize",
    "geometric_median",
    "krum",
    "krum_scores",
    "l2_norm",
    "mod_add",
    "mod_add_bytes",
    "mod_sub",
    "mod_sum",
    "multi_krum",
    "pairwise_sq_distances",
    "quantize",
    "trimmed_mean",
    "weighted_mean",
]


def l2_norm(x: np.ndarray) -> float:
    """Euclidean norm accumulated in float64."""
    x64 = x.astype(np.float64)
    return float(np.sqrt(np.dot(x64, x64)))


def clip_l2(x: np.ndarray, max_norm: float) -> tuple[np.ndarray, float]:
    """Scale x by ``max_norm / norm`` when it is longer than ``max_norm`` (no safety margin)."""
    norm = l2_norm(x)
    factor = min(1.0, max_norm / norm) if norm > 0 else 1.0
    return (x.astype(np.float64) * factor).astype(np.float32), norm


def quantize(
    x: np.ndarray, scale: float, clip: float, noise: np.ndarray, bits: int = 32
) -> np.ndarray:
    """``floor(clamp(x, -clip, clip) * scale + noise / 65536) mod 2^bits`` as uint32."""
    y = np.clip(x.astype(np.float64), -clip, clip) * scale
    q = np.floor(y + noise.astype(np.float64) / 65536.0).astype(np.int64)
    return (q & ((1 << bits) - 1)).astype(np.uint32)


def dequantize(q: np.ndarray, scale: float, bits: int = 32) -> np.ndarray:
    """Read ``q mod 2^bits`` as a ``bits``-bit two's-complement integer, divide by scale."""
    v = q.astype(np.int64) & ((1 << bits) - 1)
    v = np.where(v >= 1 << (bits - 1), v - (1 << bits), v)
    return v / scale


def mod_add(acc: np.ndarray, x: np.ndarray, bits: int = 32) -> np.ndarray:
    """``(acc + x) mod 2^bits``, computed in int64 so nothing wraps before the reduction."""
    return ((acc.astype(np.int64) + x.astype(np.int64)) % (1 << bits)).astype(np.uint32)


def mod_sub(acc: np.ndarray, x: np.ndarray, bits: int = 32) -> np.ndarray:
    """``(acc - x) mod 2^bits`` (Python-style modulo is never negative)."""
    return ((acc.astype(np.int64) - x.astype(np.int64)) % (1 << bits)).astype(np.uint32)


def mod_sum(rows: np.ndarray, bits: int = 32) -> np.ndarray:
    """Column sums mod 2^bits, computed exactly with Python ints (object dtype)."""
    exact = rows.astype(object).sum(axis=0) if rows.shape[0] else np.zeros(rows.shape[1], object)
    return np.array([int(v) % (1 << bits) for v in exact], dtype=np.uint32)


def mod_add_bytes(acc: np.ndarray, keystream: bytes, sign: int, bits: int = 32) -> np.ndarray:
    """Add or subtract the keystream read as little-endian uint32 words."""
    words = np.array(
        [int.from_bytes(keystream[i : i + 4], "little") for i in range(0, len(keystream), 4)],
        dtype=np.int64,
    )
    total = acc.astype(np.int64) + sign * words
    return (total % (1 << bits)).astype(np.uint32)


def weighted_mean(updates: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """``np.average`` in float64, cast to float32.

    Weights are first divided by their maximum: plain ``np.average`` overflows
    for weights near 1e308 and loses all precision for subnormal ones.
    """
    w = weights.astype(np.float64)
    avg = np.average(updates.astype(np.float64), axis=0, weights=w / w.max())
    return avg.astype(np.float32)


def coordinate_median(updates: np.ndarray) -> np.ndarray:
    """``np.median`` per coordinate in float64 (even n: midpoint of the middle two), as float32."""
    return np.median(updates.astype(np.float64), axis=0).astype(np.float32)


def trimmed_mean(updates: np.ndarray, beta: float) -> np.ndarray:
    """Sort each coordinate, drop ``floor(beta * n)`` values per side, average the rest."""
    n = updates.shape[0]
    k = int(np.floor(beta * n + 1e-9))
    ordered = np.sort(updates.astype(np.float64), axis=0)
    return ordered[k : n - k].mean(axis=0).astype(np.float32)


def pairwise_sq_distances(updates: np.ndarray) -> np.ndarray:
    """Direct ``sum((x_i - x_j)^2)`` in float64 for every pair (no Gram shortcut)."""
    x = updates.astype(np.float64)
    n = x.shape[0]
    out = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            diff = x[i] - x[j]
            out[i, j] = out[j, i] = float(diff @ diff)
    return out


def krum_scores(updates: np.ndarray, f: int) -> np.ndarray:
    """Sum of squared distances to the ``n - f - 2`` nearest other updates (Blanchard et al.)."""
    dist = pairwise_sq_distances(updates)
    n = dist.shape[0]
    return np.array(
        [np.sort(np.delete(dist[i], i))[: n - f - 2].sum() for i in range(n)], dtype=np.float64
    )


def krum(updates: np.ndarray, f: int) -> int:
    """Index of the lowest Krum score (first on ties)."""
    return int(np.argmin(krum_scores(updates, f)))


def multi_krum(updates: np.ndarray, f: int, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of the ``m`` lowest-scoring updates (stable order on ties), and their indices."""
    chosen = np.argsort(krum_scores(updates, f), kind="stable")[:m]
    return updates[chosen].astype(np.float64).mean(axis=0).astype(np.float32), chosen


def geometric_median(
    updates: np.ndarray, nu: float = 1e-6, max_iter: int = 100, ftol: float = 1e-6
) -> np.ndarray:
    """Smoothed Weiszfeld in float64 from the mean, equal weights, same stopping rule."""
    x = updates.astype(np.float64)
    z = x.mean(axis=0)
    dist = np.linalg.norm(x - z, axis=1)
    objective = dist.mean()
    for _ in range(max_iter):
        beta = 1.0 / np.maximum(nu, dist)
        z_next = (beta[:, None] * x).sum(axis=0) / beta.sum()
        dist_next = np.linalg.norm(x - z_next, axis=1)
        obj_next = dist_next.mean()
        improved = objective - obj_next
        if obj_next <= objective:
            z, dist, objective = z_next, dist_next, obj_next
        if improved <= ftol * obj_next:
            break
    return z.astype(np.float32)
