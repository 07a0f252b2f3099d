"""Whole secure-aggregation rounds in one process, beside a plain weighted mean.

Every client and the server run in this process, one after the other, so the
round time is the *sum* of all clients' and the server's work (on real
deployments clients run in parallel). Client, server and wire (msgpack encode
+ decode) seconds are reported separately in ``extra_info``. The baseline in
each group is the plaintext weighted mean of the same clients' float inputs.

    .venv/bin/pytest benchmarks/test_bench_rounds.py --benchmark-only
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from sealagg.crypto import Phase
from sealagg.crypto.simulation import RoundStats, run_round
from sealagg.crypto.testing import make_round
from sealagg.kernels import weighted_mean

SHAPES = [
    # (label, n, d, degree or None for complete, threshold, dropout fraction)
    ("n10_d1M_k10", 10, 1_000_000, 10, 6, 0.0),
    ("n50_d1M_k10", 50, 1_000_000, 10, 6, 0.0),
    ("n50_d100k_complete", 50, 100_000, None, 26, 0.0),
    ("n50_d100k_complete_drop30", 50, 100_000, None, 26, 0.3),
    ("n50_d100k_finder_drop30", 50, 100_000, 40, 6, 0.3),
]


def _dropouts(n: int, fraction: float) -> dict[int, Phase]:
    """Clients that vanish after sharing keys: the costliest case for unmasking."""
    rnd = random.Random(n)
    return {u: Phase.MASKED_INPUT for u in rnd.sample(range(1, n + 1), int(fraction * n))}


@pytest.mark.parametrize(
    ("label", "n", "d", "degree", "t", "drop"), SHAPES, ids=[s[0] for s in SHAPES]
)
def test_secure_round(benchmark, label, n, d, degree, t, drop):
    benchmark.group = f"round {label}"
    kit = make_round(n, threshold=t, dimension=d, degree=degree, seed=1)
    dropouts = _dropouts(n, drop)
    runs: list[RoundStats] = []

    def one_round():
        stats = RoundStats()
        result = run_round(kit.config, kit.identities, kit.inputs, dropouts, stats)
        runs.append(stats)
        return result

    run_round(kit.config, kit.identities, kit.inputs, dropouts)  # warm caches and imports
    result = benchmark.pedantic(one_round, rounds=3, iterations=1)
    np.testing.assert_array_equal(result.total, kit.expected_sum(result.survivors))
    best = min(runs, key=lambda s: s.client_total + s.server_total)
    members = len(result.survivors)
    benchmark.extra_info.update(
        {
            "client_seconds_total": round(best.client_total, 4),
            "client_seconds_per_client": round(best.client_total / n, 5),
            "server_seconds": round(best.server_total, 4),
            "wire_seconds": round(best.wire_seconds, 4),
            "compute_seconds": round(best.client_total + best.server_total, 4),
            "client_phases": {p.name: round(v, 4) for p, v in best.client_seconds.items()},
            "server_phases": {p.name: round(v, 4) for p, v in best.server_seconds.items()},
            "bytes_up_per_client": best.bytes_up // n,
            "survivors": members,
        }
    )


@pytest.mark.parametrize(
    ("label", "n", "d", "degree", "t", "drop"), SHAPES, ids=[s[0] for s in SHAPES]
)
def test_plain_weighted_mean(benchmark, label, n, d, degree, t, drop):
    benchmark.group = f"round {label}"
    rng = np.random.default_rng(1)
    updates = rng.standard_normal((n, d), dtype=np.float32)
    weights = rng.uniform(0.1, 1.0, n)
    weighted_mean(updates, weights)  # compile outside the measurement
    benchmark(weighted_mean, updates, weights)
