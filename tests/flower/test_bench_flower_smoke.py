"""Smoke test of benchmarks/bench_flower_interop.py (issue 23's side-by-side figure).

Runs the benchmark at a tiny size (n=4, d=1000, one measured pair after a warm-up round per
side) through Flower's simulation engine in .venv-flower, and checks that both sides ran and
aggregated every round, that the aggregates are the mean of the clients' updates (each side
within its own quantization), and that every measured quantity is a positive number.
"""

from __future__ import annotations

import pytest
from sealagg_testkit.flower_env import REPO, run_flower_script_printing

SCRIPT = REPO / "benchmarks" / "bench_flower_interop.py"
POSITIVE = (
    "wall_seconds",
    "wait_seconds",
    "serverapp_thread_cpu_seconds",
    "workflow_cpu_seconds",
    "driver_process_cpu_seconds",
    "bytes_sent_per_client_mean",
    "bytes_received_per_client_mean",
)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    data, printed = run_flower_script_printing(
        SCRIPT,
        tmp_path_factory.mktemp("bench_flower"),
        *("--setting", "4,1000", "--rounds", "1", "--setting-timeout", "150"),
        timeout=200,
        out_flag="--json",
    )
    assert "| 4 | 1,000 | 4 / 2 | **ratio** (1 pairs) |" in printed, printed
    return data


def test_both_sides_ran_and_aggregated_every_round(report: dict) -> None:
    (setting,) = report["settings"]
    assert setting["status"] == "done", setting.get("error")
    assert (setting["n"], setting["d"], setting["num_shares"]) == (4, 1000, 4)
    rounds = setting["rounds"]
    assert [(r["side"], r["warm_up"]) for r in rounds] == [
        ("sealagg", True),
        ("flower", True),
        ("sealagg", False),
        ("flower", False),
    ]
    for r in rounds:
        assert r["outcome"] == "aggregated", r
        assert r["clients_replied"] == 4, r
        # Flower quantizes to 2^22 levels of [-8, 8], sealagg to 2^32/n: both far below this.
        assert r["max_abs_error"] is not None and r["max_abs_error"] < 1e-4, r
    # The clients' fixed updates are made once per client actor, in the first round only.
    assert [r["updates_generated"] for r in rounds] == [4, 0, 0, 0]


def test_every_measured_quantity_is_positive(report: dict) -> None:
    (setting,) = report["settings"]
    summary = setting["summary"]
    for side in ("sealagg", "flower"):
        assert summary[side]["rounds"] == 1 and summary[side]["aggregated"] == 1
        for metric in POSITIVE:
            assert summary[side][metric]["median"] > 0, (side, metric)
        stages = [r["stages"] for r in setting["rounds"] if r["side"] == side]
        assert all(s["errors"] == 0 and s["replies"] == 4 for st in stages for s in st)
    assert summary["pairs"] == 1
    assert summary["ratio_flower_over_sealagg"]["wall_seconds"]["median"] > 0
    # A masked Z_(2^32) vector: sealagg sends d 4-byte words, Flower d int64 words (.npy).
    sent = {side: summary[side]["bytes_sent_per_client_mean"]["median"] for side in ("sealagg",
            "flower")}  # fmt: skip
    assert 4 * 1000 < sent["sealagg"] < 8 * 1000 < sent["flower"]
