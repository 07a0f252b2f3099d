"""Input checks shared by the public wrappers.

Numba kernels trust their inputs (a wrong dtype silently compiles a new, wrong
specialisation; a bad length reads out of bounds), so every public wrapper
funnels its arguments through these helpers first and fails with a clear
``TypeError``/``ValueError`` instead.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

MIN_BITS = 2
MAX_BITS = 32


def require_array(value: object, name: str, dtypes: tuple[type, ...], ndim: int) -> np.ndarray:
    """Return ``value`` if it is an ndarray of one of ``dtypes`` with ``ndim`` dimensions."""
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(value).__name__}")
    allowed = tuple(np.dtype(d) for d in dtypes)
    if value.dtype not in allowed:
        names = " or ".join(str(d) for d in allowed)
        raise TypeError(f"{name} must have dtype {names} (native byte order), got {value.dtype}")
    if value.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {value.shape}")
    return value


def require_writeable(value: np.ndarray, name: str) -> None:
    """In-place kernels need a destination they may write."""
    if not value.flags.writeable:
        raise ValueError(f"{name} must be writeable (it is updated in place)")


def require_same_length(a: np.ndarray, a_name: str, b: np.ndarray, b_name: str) -> None:
    """Kernels index both arrays with one loop counter, so lengths must match."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{a_name} and {b_name} must have the same length, got {a.shape[0]} and {b.shape[0]}"
        )


def require_bits(bits: object) -> int:
    """``bits`` selects the ring Z_(2^bits); uint32 storage caps it at 32."""
    if isinstance(bits, bool) or not isinstance(bits, numbers.Integral):
        raise TypeError(f"bits must be an int, got {type(bits).__name__}")
    bits = int(bits)
    if not MIN_BITS <= bits <= MAX_BITS:
        raise ValueError(f"bits must be in {MIN_BITS}..{MAX_BITS}, got {bits}")
    return bits


def require_positive_finite(value: object, name: str) -> float:
    """Scales, clips and norms are finite, strictly positive reals."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    result = float(value)
    if not math.isfinite(result) or result <= 0.0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return result


def raise_if_nonfinite(x: np.ndarray, name: str) -> None:
    """Slow path, only run after a kernel flagged trouble: name the first bad index."""
    bad = np.flatnonzero(~np.isfinite(x.reshape(-1)))
    if bad.size:
        flat = int(bad[0])
        index = tuple(int(k) for k in np.unravel_index(flat, x.shape)) if x.ndim > 1 else flat
        raise ValueError(
            f"{name} contains NaN or Inf ({bad.size} value(s); first at index {index}: "
            f"{x.reshape(-1)[flat]})"
        )
