"""Cost of one aggregation round against n and d for each mode, with its per-phase breakdown.

Everything runs in this process (clients one after the other, then the server), so a round is the
*sum* of all work; the phases say where it went: client quantize / keys / mask, server keys /
accumulate / unmask, and bytes per client. ``plaintext`` is FedAvg on the same float inputs (the
weighted mean the appliance computes when it may see updates), the baseline of each sweep point.

Sizes follow ``SEALAGG_BENCH_PROFILE`` (smoke | quick | full; default quick), set by
``./run bench``. Any benchmark that records ``extra_info["sweep"] = {"mode", "n", "d"}`` (and
optionally ``extra_info["phases"]``) is plotted by the bench report, so other modes (ckks, ...)
can join these plots from their own files.

    SEALAGG_BENCH_PROFILE=quick .venv/bin/pytest --benchmark-only \
        benchmarks/test_bench_modes.py
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from sealagg import kernels
from sealagg.crypto import Phase
from sealagg.crypto.errors import InfeasibleParametersError
from sealagg.crypto.params import find_parameters
from sealagg.crypto.simulation import RoundStats, run_round
from sealagg.crypto.testing import make_round

PROFILE = os.environ.get("SEALAGG_BENCH_PROFILE", "quick")
_SIZES = {
    # (n values at the reference d, reference d, d values at the reference n, reference n, rounds)
    "smoke": ([4, 6], 1_000, [1_000, 4_000], 4, 1),
    "quick": ([10, 25, 50], 100_000, [10_000, 100_000, 1_000_000], 10, 2),
    "full": ([10, 25, 50, 100], 100_000, [10_000, 100_000, 1_000_000, 4_000_000], 10, 3),
}
N_VALUES, D_REF, D_VALUES, N_REF, ROUNDS = _SIZES[PROFILE]
MODES = ("plaintext", "secagg", "secagg+")
CLIP = 1.0

POINTS = sorted(
    {(mode, n, D_REF) for mode in MODES for n in N_VALUES}
    | {(mode, N_REF, d) for mode in MODES for d in D_VALUES},
    key=lambda p: (MODES.index(p[0]), p[1], p[2]),
)


def _graph(mode: str, n: int) -> tuple[int | None, int]:
    """(degree, threshold): complete graph for secagg, the parameter finder's k, t for secagg+."""
    if mode == "secagg":
        return None, n // 2 + 1
    try:
        p = find_parameters(n, 0.1, 0.1)
    except InfeasibleParametersError:  # too few clients for the targets: complete graph
        return None, n // 2 + 1
    return (None if p.complete else p.degree), p.threshold


def _quantize_seconds(d: int, n: int) -> float:
    """One client's clip + scale + stochastic rounding of its float update (best of 3)."""
    rng = np.random.default_rng(d)
    x = rng.standard_normal(d, dtype=np.float32) * 0.01
    noise = rng.integers(0, 1 << 16, d, dtype=np.uint16)
    scale = kernels.quantization_scale(CLIP, n)
    kernels.quantize(x, scale, CLIP, noise)  # compile outside the measurement
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        kernels.quantize(x, scale, CLIP, noise)
        best = min(best, time.perf_counter() - t0)
    return best


def _label(point: tuple[str, int, int]) -> str:
    mode, n, d = point
    return f"{mode}-n{n}-d{d}"


@pytest.mark.parametrize("point", POINTS, ids=[_label(p) for p in POINTS])
def test_round_cost(benchmark, point: tuple[str, int, int]) -> None:
    mode, n, d = point
    benchmark.group = f"modes {PROFILE}"
    info: dict[str, object] = {"sweep": {"mode": mode, "n": n, "d": d}}
    if mode == "plaintext":
        rng = np.random.default_rng(1)
        updates = rng.standard_normal((n, d), dtype=np.float32)
        weights = rng.uniform(0.1, 1.0, n)
        kernels.weighted_mean(updates, weights)  # compile outside the measurement
        benchmark.pedantic(kernels.weighted_mean, (updates, weights), rounds=ROUNDS + 2)
        info["phases"] = {"server accumulate": benchmark.stats.stats.min}
        info["bytes_up_per_client"] = 4 * d
        info["bytes_down_per_client"] = 4 * d
        benchmark.extra_info.update(info)
        return
    degree, threshold = _graph(mode, n)
    kit = make_round(n, threshold=threshold, dimension=d, degree=degree, seed=1)
    runs: list[RoundStats] = []

    def one_round():
        stats = RoundStats()
        result = run_round(kit.config, kit.identities, kit.inputs, None, stats)
        runs.append(stats)
        return result

    result = benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    np.testing.assert_array_equal(result.total, kit.expected_sum(result.survivors))
    best = min(runs, key=lambda s: s.client_total + s.server_total)
    c, s = best.client_seconds, best.server_seconds
    info["phases"] = {
        "client quantize": _quantize_seconds(d, n) * n,
        "client keys": c.get(Phase.ADVERTISE_KEYS, 0.0) + c.get(Phase.SHARE_KEYS, 0.0),
        "client mask": c.get(Phase.MASKED_INPUT, 0.0),
        "client check+unmask": c.get(Phase.CONSISTENCY_CHECK, 0.0) + c.get(Phase.UNMASKING, 0.0),
        "server keys": s.get(Phase.ADVERTISE_KEYS, 0.0) + s.get(Phase.SHARE_KEYS, 0.0),
        "server accumulate": s.get(Phase.MASKED_INPUT, 0.0),
        "server unmask": s.get(Phase.CONSISTENCY_CHECK, 0.0) + s.get(Phase.UNMASKING, 0.0),
        "wire encode+decode": best.wire_seconds,
    }
    info["degree"] = kit.config.degree
    info["threshold"] = threshold
    info["bytes_up_per_client"] = best.bytes_up // n
    info["bytes_down_per_client"] = best.bytes_down // n
    benchmark.extra_info.update(info)
