"""Kernel throughput at d = 1M coordinates, each group with its numpy baseline.

Every group includes ``np.copy`` of the main input as the memory floor (it
includes allocating the copy; ``np.copyto`` into an existing buffer is the
pure-bandwidth floor, shown once). JIT compilation is triggered once per module
before any timing (the ``warm_jit`` fixture), so numbers are steady-state.

Run: ``.venv/bin/pytest benchmarks/test_bench_kernels.py --benchmark-only``
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from sealagg import kernels
from sealagg.kernels import reference as ref

D = 1_000_000
N_CLIENTS = 20
CLIP = 1.0
BITS_SMALL = 20


@dataclass
class Data:
    x: np.ndarray  # float32 update
    noise: np.ndarray  # uint16 rounding noise
    scale: float
    q: np.ndarray  # uint32 quantized update
    acc: np.ndarray  # uint32 running sum (mutated by the in-place benchmarks)
    keystream: bytes  # 4 bytes per coordinate
    rows: np.ndarray  # (N_CLIENTS, D) uint32
    updates: np.ndarray  # (N_CLIENTS, D) float32
    weights: np.ndarray  # (N_CLIENTS,) float64


@pytest.fixture(scope="module")
def data() -> Data:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(D).astype(np.float32) * 0.01
    noise = rng.integers(0, 1 << 16, D, dtype=np.uint16)
    scale = kernels.quantization_scale(CLIP, N_CLIENTS)
    return Data(
        x=x,
        noise=noise,
        scale=scale,
        q=kernels.quantize(x, scale, CLIP, noise),
        acc=rng.integers(0, 2**32, D, dtype=np.uint32),
        keystream=rng.bytes(4 * D),
        rows=rng.integers(0, 2**32, (N_CLIENTS, D), dtype=np.uint32),
        updates=rng.standard_normal((N_CLIENTS, D)).astype(np.float32),
        weights=rng.uniform(1.0, 100.0, N_CLIENTS),
    )


@pytest.fixture(scope="module", autouse=True)
def warm_jit(data: Data) -> None:
    """Compile (or load from cache) every kernel for the exact argument types used."""
    for cases in CASES.values():
        for run in cases.values():
            run(data)


def _np_add(d: Data) -> None:
    np.add(d.acc, d.q, out=d.acc)


CASES: dict[str, dict[str, Callable[[Data], object]]] = {
    "mod-add d=1M": {
        "np.copy floor": lambda d: np.copy(d.acc),
        "np.copyto floor (preallocated)": lambda d: np.copyto(d.acc, d.q),
        "np.add out=acc": _np_add,
        "mod_add_into bits=32": lambda d: kernels.mod_add_into(d.acc, d.q),
        f"mod_add_into bits={BITS_SMALL}": lambda d: kernels.mod_add_into(d.acc, d.q, BITS_SMALL),
        "mod_sub_into bits=32": lambda d: kernels.mod_sub_into(d.acc, d.q),
        "mod_add_bytes_into bytes": lambda d: kernels.mod_add_bytes_into(d.acc, d.keystream, 1),
    },
    "mod-sum n=20 d=1M": {
        "np.copy floor (all rows)": lambda d: np.copy(d.rows),
        "numpy rows.sum(axis=0)": lambda d: d.rows.sum(axis=0, dtype=np.uint32),
        "mod_sum": lambda d: kernels.mod_sum(d.rows),
    },
    "quantize d=1M": {
        "np.copy floor": lambda d: np.copy(d.x),
        "numpy reference": lambda d: ref.quantize(d.x, d.scale, CLIP, d.noise),
        "quantize": lambda d: kernels.quantize(d.x, d.scale, CLIP, d.noise),
    },
    "dequantize d=1M": {
        "np.copy floor": lambda d: np.copy(d.q),
        "numpy reference": lambda d: ref.dequantize(d.q, d.scale),
        "dequantize": lambda d: kernels.dequantize(d.q, d.scale),
    },
    "clip d=1M": {
        "np.copy floor": lambda d: np.copy(d.x),
        "numpy reference clip": lambda d: ref.clip_l2(d.x, 0.5),
        "clip_l2 (clipping)": lambda d: kernels.clip_l2(d.x, 0.5),
        "clip_l2 (inside ball)": lambda d: kernels.clip_l2(d.x, 1e6),
        "np.linalg.norm float32": lambda d: np.linalg.norm(d.x),
        "l2_norm": lambda d: kernels.l2_norm(d.x),
    },
    "weighted-mean n=20 d=1M": {
        "np.copy floor (all rows)": lambda d: np.copy(d.updates),
        "np.average": lambda d: np.average(d.updates, axis=0, weights=d.weights),
        "weighted_mean": lambda d: kernels.weighted_mean(d.updates, d.weights),
    },
}


@pytest.mark.parametrize(
    ("group", "name"), [(group, name) for group, cases in CASES.items() for name in cases]
)
def test_kernel(benchmark, data: Data, group: str, name: str) -> None:
    benchmark.group = group
    benchmark.name = name
    benchmark(CASES[group][name], data)
