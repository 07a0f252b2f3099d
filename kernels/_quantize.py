"""Fixed-point encoding of float updates into the ring Z_(2^bits) and back.

Secure aggregation sums masked integers, so each client maps its clipped float
update to integers with *stochastic* rounding (unbiased, so the aggregate is
unbiased too) and the scale is chosen so the sum of all clients never wraps.
Randomness comes from the caller (a cryptographic PRG): the kernel never draws
it, which keeps it deterministic and testable.
"""

from __future__ import annotations

import math
import numbers

import numba
import numpy as np
from numba import prange

from ._validate import (
    raise_if_nonfinite,
    require_array,
    require_bits,
    require_positive_finite,
    require_same_length,
)

#: noise / 65536 is exact in float64, so the rounding threshold is exact too.
_NOISE_STEP = 1.0 / 65536.0
_NOISE_MAX = 65535.0 * _NOISE_STEP
#: Rounding error in the closed-form scale is a few ulps; this bounds the search.
_MAX_NUDGES = 64


def _signed_limit(bits: int) -> int:
    """Largest positive value of a ``bits``-bit two's-complement integer."""
    return (1 << (bits - 1)) - 1


def _extreme_codes(clip: float, scale: float) -> tuple[int, int]:
    """The largest and smallest q the kernel can emit, evaluated exactly as it does."""
    top = clip * scale
    return math.floor(top + _NOISE_MAX), math.floor(-top)


def quantization_scale(clip: float, num_clients: int, bits: int = 32) -> float:
    """Largest scale s with ``num_clients * (clip*s + 1) <= 2^(bits-1) - 1``.

    Each quantized value satisfies ``|q| < clip*s + 1``, so a sum over
    ``num_clients`` clients then stays inside the signed range and decodes
    without wrap-around. The float result is nudged down until the bound also
    holds for the kernel's own float64 arithmetic.
    """
    clip = require_positive_finite(clip, "clip")
    if isinstance(num_clients, bool) or not isinstance(num_clients, numbers.Integral):
        raise TypeError(f"num_clients must be an int, got {type(num_clients).__name__}")
    num_clients = int(num_clients)
    if num_clients < 1:
        raise ValueError(f"num_clients must be >= 1, got {num_clients}")
    bits = require_bits(bits)
    limit = _signed_limit(bits)
    scale = (limit / num_clients - 1.0) / clip
    for _ in range(_MAX_NUDGES):
        if not (math.isfinite(scale) and scale > 0.0):
            break
        high, low = _extreme_codes(clip, scale)
        fits = num_clients * (clip * scale + 1.0) <= limit
        if fits and num_clients * high <= limit and num_clients * -low <= limit:
            return scale
        scale = math.nextafter(scale, 0.0)
    raise ValueError(
        f"no positive quantization scale: {num_clients} clients with clip={clip} "
        f"cannot be summed in {bits} bits without wrap-around "
        f"(need num_clients < 2^(bits-1) - 1 = {limit} and a finite scale)"
    )


@numba.njit(cache=True, parallel=True)
def _quantize_kernel(
    x: np.ndarray, noise: np.ndarray, scale: float, clip: float, mask: np.uint32, out: np.ndarray
) -> int:
    """out = floor(clamp(x)*scale + noise/65536) mod 2^bits; returns #non-finite x.

    The wrapper guarantees |q| <= 2^31 - 1, so q goes through int32: AVX2 can
    vectorise float64 -> int32 but not float64 -> int64 (about 4x faster here).
    """
    bad = 0
    for i in prange(x.shape[0]):
        v = np.float64(x[i])
        if not np.isfinite(v):
            bad += 1
            v = 0.0
        v = min(max(v, -clip), clip)
        y = v * scale
        q = np.int32(np.floor(y + np.float64(noise[i]) * _NOISE_STEP))
        out[i] = np.uint32(q) & mask
    return bad


@numba.njit(cache=True, parallel=True)
def _dequantize_kernel(q: np.ndarray, scale: float, shift: np.uint32, out: np.ndarray) -> None:
    """Sign-extend the low ``32 - shift`` bits (shift left, arithmetic shift right), / scale."""
    for i in prange(q.shape[0]):
        v = np.int32(q[i] << shift) >> shift
        out[i] = np.float64(v) / scale


def quantize(
    x: np.ndarray,
    scale: float,
    clip: float,
    noise: np.ndarray,
    bits: int = 32,
    *,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Encode ``x`` as ``floor(clamp(x, -clip, clip)*scale + noise/65536) mod 2^bits``.

    ``noise`` (uint16, one per coordinate, from the caller's cryptographic PRG)
    makes the rounding unbiased: E[q] = clamp(x)*scale up to 2^-16. Negative
    values are stored in two's complement within ``bits`` bits. ``out`` (contiguous
    uint32, same length) receives the codes instead of a new array: a slice of a larger
    buffer is filled without a copy.
    """
    x = np.ascontiguousarray(require_array(x, "x", (np.float32, np.float64), ndim=1))
    noise = np.ascontiguousarray(require_array(noise, "noise", (np.uint16,), ndim=1))
    require_same_length(x, "x", noise, "noise")
    scale = require_positive_finite(scale, "scale")
    clip = require_positive_finite(clip, "clip")
    bits = require_bits(bits)
    if clip * scale > _signed_limit(bits):
        raise ValueError(
            f"clip*scale = {clip * scale} exceeds 2^(bits-1) - 1 = {_signed_limit(bits)}: "
            "a single value would wrap; use quantization_scale()"
        )
    if out is None:
        out = np.empty(x.shape[0], dtype=np.uint32)
    else:
        require_array(out, "out", (np.uint32,), ndim=1)
        require_same_length(x, "x", out, "out")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be a contiguous, writeable uint32 array")
    if _quantize_kernel(x, noise, scale, clip, np.uint32((1 << bits) - 1), out):
        raise_if_nonfinite(x, "x")
    return out


def dequantize(q: np.ndarray, scale: float, bits: int = 32) -> np.ndarray:
    """Decode a (summed) ring vector: signed two's complement in ``bits`` bits / scale."""
    q = np.ascontiguousarray(require_array(q, "q", (np.uint32,), ndim=1))
    scale = require_positive_finite(scale, "scale")
    bits = require_bits(bits)
    out = np.empty(q.shape[0], dtype=np.float64)
    _dequantize_kernel(q, scale, np.uint32(32 - bits), out)
    return out
