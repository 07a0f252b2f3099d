"""Our secagg+ in one process on exactly the workloads Flower's SecAgg+ runs (issue 9).

Shapes come from ``benchmarks/peers/workloads.toml``, the same file
``benchmarks/peers/flower_secagg.py`` reads; ``./run bench`` merges both into one table.
Flower's ``num_shares`` k counts the client itself, so our Harary degree is k - 1 (k >= n: the
complete graph). Dropping clients go silent after sharing keys, as in the Flower script. A
round that cannot finish (a neighbourhood with fewer than t survivors) is recorded as
``outcome = "halted"`` with the time it took to find out, not as a failed benchmark.

    SEALAGG_BENCH_PROFILE=quick .venv/bin/pytest --benchmark-only \
        benchmarks/test_bench_peer_workloads.py
"""

from __future__ import annotations

import os
import random
import tomllib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sealagg.crypto import Phase
from sealagg.crypto.errors import SecAggError
from sealagg.crypto.simulation import RoundStats, run_round
from sealagg.crypto.testing import make_round

PROFILE = os.environ.get("SEALAGG_BENCH_PROFILE", "quick")
WORKLOADS = [
    w
    for w in tomllib.loads((Path(__file__).parent / "peers" / "workloads.toml").read_text())[
        "workload"
    ]
    if PROFILE in w["profiles"]
]
ROUNDS = {"smoke": 1, "quick": 2, "full": 3}[PROFILE]


def dropouts(n: int, fraction: float) -> dict[int, Phase]:
    """The same count as the Flower script (round(fraction * n)), leaving before masked input."""
    count = round(fraction * n)
    return {u: Phase.MASKED_INPUT for u in random.Random(n).sample(range(1, n + 1), count)}


@pytest.mark.parametrize("w", WORKLOADS, ids=[w["name"] for w in WORKLOADS])
def test_ours_one_process(benchmark, w: dict[str, Any]) -> None:
    n, d, k, t = int(w["n"]), int(w["d"]), int(w["k"]), int(w["t"])
    benchmark.group = "peer workloads, ours in one process"
    degree = None if k >= n else k - 1
    kit = make_round(n, threshold=t, dimension=d, degree=degree, seed=1)
    drop = dropouts(n, float(w["dropout"]))
    runs: list[tuple[RoundStats, bool]] = []

    def one_round() -> None:
        stats = RoundStats()
        try:
            result = run_round(kit.config, kit.identities, kit.inputs, drop, stats)
        except SecAggError:
            runs.append((stats, False))
            return
        np.testing.assert_array_equal(result.total, kit.expected_sum(result.survivors))
        runs.append((stats, True))

    benchmark.pedantic(one_round, rounds=ROUNDS, iterations=1)
    best, _ = min(runs, key=lambda r: r[0].client_total + r[0].server_total)
    benchmark.extra_info.update(
        {
            "workload": w["name"],
            "n": n,
            "d": d,
            "k": k,
            "t": t,
            "dropout": float(w["dropout"]),
            "dropped": len(drop),
            "outcome": "completed" if all(ok for _, ok in runs) else "halted",
            "client_seconds_per_client": best.client_total / n,
            "server_seconds": best.server_total,
            "wire_seconds": best.wire_seconds,
            "bytes_up_per_client": best.bytes_up / n,
            "bytes_down_per_client": best.bytes_down / n,
        }
    )
