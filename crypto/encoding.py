"""Turn a float update and its weight into one vector of Z_(2^32), and back.

The weight rides in the vector: a client sends w·x and w (w in (0, 1], e.g. its
example count over the federation's maximum), so the server learns only Σw·x
and Σw and divides after unmasking. Scales are chosen so the sum of
``max_clients`` vectors never wraps, and with 32 bits a small weight still
keeps ~2^-24 relative resolution (Flower scales by num_examples/max_weight in a
smaller range and loses up to ~3% of small clients' values).
Rounding is stochastic (unbiased) with noise from a cryptographic PRG.
"""

from __future__ import annotations

import dataclasses
import os
import time

import numpy as np

from sealagg.crypto._primitives.prg import SEED_BYTES, uniform_uint16
from sealagg.crypto.config import RING_BITS
from sealagg.kernels import dequantize, mod_add_bytes_into, quantization_scale, quantize


@dataclasses.dataclass(frozen=True)
class QuantizationSpec:
    """Per-coordinate clipping range and the number of clients the ring must hold."""

    clip: float
    max_clients: int
    bits: int = RING_BITS

    def __post_init__(self) -> None:
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ValueError("clip must be a positive finite number")
        if self.max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        if self.bits != RING_BITS:
            raise ValueError(f"masked aggregation works in Z_(2^{RING_BITS})")

    @property
    def scale(self) -> float:
        return quantization_scale(self.clip, self.max_clients, self.bits)

    @property
    def weight_scale(self) -> float:
        return quantization_scale(1.0, self.max_clients, self.bits)

    def error_bound(self, num_clients: int) -> float:
        """Largest absolute error of a dequantized *sum* of w·x over ``num_clients``."""
        return num_clients / self.scale


def encoded_length(dimension: int) -> int:
    """Coordinates in the ring: the update plus one for the weight."""
    return dimension + 1


def encode_update(update: np.ndarray, weight: float, spec: QuantizationSpec) -> np.ndarray:
    """Clip, weight and quantize ``update``; the weight goes in the last coordinate."""
    if not (np.isfinite(weight) and 0.0 < weight <= 1.0):
        raise ValueError(f"weight must lie in (0, 1], got {weight}")
    x = np.asarray(update)
    if x.ndim != 1 or x.dtype not in (np.float32, np.float64):
        raise TypeError(f"update must be a 1-D float32/float64 array, got {x.dtype} {x.shape}")
    noise = uniform_uint16(os.urandom(SEED_BYTES), x.shape[0] + 1)
    out = np.empty(encoded_length(x.shape[0]), dtype=np.uint32)
    # clamp(x)·(weight·scale) in one pass straight into the output: the kernel clips, refuses
    # NaN/Inf (naming the first), and weight <= 1 keeps every code within the scale's bound.
    quantize(x, spec.scale * weight, spec.clip, noise[:-1], spec.bits, out=out[:-1])
    quantize(np.array([weight]), spec.weight_scale, 1.0, noise[-1:], spec.bits, out=out[-1:])
    return out


def decode_sum(total: np.ndarray, spec: QuantizationSpec) -> tuple[np.ndarray, float]:
    """From the unmasked sum, the weighted mean update (float64) and the total weight."""
    if total.dtype != np.uint32 or total.ndim != 1 or total.shape[0] < 2:
        raise TypeError("an encoded sum is a 1-D uint32 array with the weight last")
    total_weight = float(dequantize(total[-1:], spec.weight_scale, spec.bits)[0])
    if total_weight <= 0:
        raise ValueError("the aggregated weight is not positive: nothing to average")
    weighted_sum = dequantize(total[:-1], spec.scale, spec.bits)
    return weighted_sum / total_weight, total_weight


def warm_up() -> float:
    """Load every Numba kernel a masked round runs (quantize for float32 and float64 updates,
    the modular sum of masked inputs, dequantize), on a few coordinates; returns the seconds
    it took. Numba loads a cached kernel (and starts its thread pool) on the first call, about
    0.4 s a process: called at start, that cost is not paid inside the first round, where ten
    clients paying it at once on two cores made the first round five times the others."""
    started = time.perf_counter()
    spec = QuantizationSpec(clip=1.0, max_clients=2)
    total = np.zeros(encoded_length(8), dtype=np.uint32)
    for dtype in (np.float32, np.float64):
        encoded = encode_update(np.zeros(8, dtype=dtype), 1.0, spec)
        mod_add_bytes_into(total, encoded.tobytes(), 1)  # as masked inputs arrive: bytes
    decode_sum(total, spec)
    return time.perf_counter() - started
