"""Robust aggregation kernels at d = 1M float32, n = 20 and n = 100, against the memory floor.

The floor is ``np.copy`` of the same (n, d) bytes, measured in the same run; numpy's
``np.median(axis=0)`` is the baseline for the median. Targets (issue 7): median and
trimmed mean <= 5x the floor, Krum <= 300 ms at n = 100. Krum uses f = n // 5,
trimmed mean beta = 0.1. Inputs: ``default_rng(0).standard_normal((n, d), dtype=float32)``,
the same as benchmarks/peers/robust_peers.py generates for Flower and ByzFL.

Run: ``.venv/bin/pytest benchmarks/test_bench_robust.py --benchmark-only``, or
``python benchmarks/test_bench_robust.py`` for a Markdown table with ratios to the floor.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import pytest

from sealagg import kernels

D = 1_000_000
SIZES = (20, 100)


def inputs(n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, D), dtype=np.float32)


def cases(n: int) -> dict[str, Callable[[np.ndarray], object]]:
    f = n // 5
    return {
        "np.copy floor": np.copy,
        "np.median(axis=0)": lambda x: np.median(x, axis=0),
        "coordinate_median": kernels.coordinate_median,
        "trimmed_mean beta=0.1": lambda x: kernels.trimmed_mean(x, 0.1),
        "krum f=n/5": lambda x: kernels.krum(x, f),
        "multi_krum f=n/5": lambda x: kernels.multi_krum(x, f),
        "geometric_median (Weiszfeld)": lambda x: kernels.geometric_median(x),
    }


@pytest.fixture(scope="module", params=SIZES, ids=lambda n: f"n={n}")
def matrix(request) -> np.ndarray:
    x = inputs(request.param)
    for run in cases(request.param).values():  # compile (or load) every kernel first
        run(x[:, :4096].copy())
    return x


@pytest.mark.parametrize("name", list(cases(20)))
def test_robust_kernel(benchmark, matrix: np.ndarray, name: str) -> None:
    n = matrix.shape[0]
    benchmark.group = f"robust n={n} d=1M"
    benchmark.name = name
    benchmark.pedantic(cases(n)[name], args=(matrix,), rounds=3, iterations=1)


def table(repeat: int = 3) -> str:
    """Best-of-``repeat`` milliseconds per case and the ratio to the floor, one row per case."""
    rows: dict[str, dict[int, float]] = {}
    for n in SIZES:
        x = inputs(n)
        for name, run in cases(n).items():
            run(x[:, :4096].copy())
            best = min(_seconds(run, x) for _ in range(repeat))
            rows.setdefault(name, {})[n] = best
    floor = rows["np.copy floor"]
    lines = ["| d=1M fp32 | n=20 ms | x floor | n=100 ms | x floor |", "|---|---|---|---|---|"]
    for name, by_n in rows.items():
        cells = [f"{1000 * by_n[n]:.0f} | {by_n[n] / floor[n]:.1f}" for n in SIZES]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _seconds(run: Callable[[np.ndarray], object], x: np.ndarray) -> float:
    t = time.perf_counter()
    run(x)
    return time.perf_counter() - t


if __name__ == "__main__":
    print(table())
