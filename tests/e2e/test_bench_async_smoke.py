"""The asynchronous benchmark's harness (benchmarks/bench_async.py, issue 21) at toy size.

Three digits clients in one process against a real appliance over mutual TLS, a 4-second async
run with K = 2: the harness must produce a time-to-accuracy row from versions the run really
published, each accuracy measured outside the appliance. No timing is asserted (the machine is
shared); the numbers in benchmarks/RESULTS.md come from the full-size run.
"""

from __future__ import annotations

import dataclasses

import async_clients
import bench_async
import pytest

from sealagg.client_shim.demo.model import accuracy, make_model

TOY = bench_async.Bench(
    clients=3,
    fastest=0.01,
    slowest=0.05,
    steps=3,
    seconds=4.0,
    per_process=3,
    max_staleness=100,
    startup_timeout=60.0,
)


def test_an_async_run_yields_a_time_to_accuracy_row_from_published_versions(tmp_path) -> None:
    row = bench_async.run_setting(TOY, "async-K2-plaintext-slr0.5", repeat=1)
    assert row["available"], row
    assert row["server_lr"] == 0.5
    assert not row["client_failures"], row["client_failures"]
    versions = row["versions"]
    assert row["versions_published"] >= 2  # async published while the clients kept submitting
    assert row["buffers"] >= row["versions_published"]  # one audited buffer per version
    assert len(row["member_staleness"]) >= 2 * row["versions_published"]  # K = 2 members each
    # the base model first, at t = 0, scored independently of the harness
    split, _ = async_clients.shards(TOY.clients, TOY.alpha, TOY.data_seed)
    base = make_model(TOY.model_seed)
    assert versions[0] == {
        "version": 1,
        "seconds": 0.0,
        "accuracy": accuracy(base, split.x_test, split.y_test),
    }
    published = versions[1:]
    assert [v["version"] for v in published] == list(range(2, len(versions) + 1))
    times = [v["seconds"] for v in published]
    assert times == sorted(times) and times[0] > 0  # nothing before the run was started
    assert all(0.0 <= v["accuracy"] <= 1.0 for v in versions)
    assert any(v["accuracy"] != versions[0]["accuracy"] for v in published)  # it trained
    within = [v for v in versions if v["seconds"] <= TOY.seconds]
    assert row["final_accuracy"] == within[-1]["accuracy"]
    assert row["outcomes"].get("accepted", 0) >= 2 * row["versions_published"]
    assert sum(row["submitted_by_client"]) == sum(row["outcomes"].values())
    table = bench_async.markdown([row], TOY)
    assert "| async-K2-plaintext-slr0.5 | 1 |" in table
    bench_async.plot([row], TOY, tmp_path / "plot.png")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_setting_the_appliance_refuses_is_reported_not_available() -> None:
    """K above the registered clients can never fill: refused at creation, never faked."""
    row = bench_async.run_setting(TOY, "async-K9-plaintext", repeat=1)
    assert row["available"] is False
    assert "exceeds the 3 registered clients" in row["detail"]
    assert "not available yet" in bench_async.markdown([row], TOY)


@pytest.mark.parametrize(
    ("accuracies", "expected"),
    [
        ([0.1, 0.5, 0.91, 0.85, 0.95], 2.0),  # the first version at or above the target
        ([0.1, 0.5, 0.6, 0.7, 0.89], None),  # never reached
    ],
)
def test_time_to_target_is_the_first_version_at_the_target(accuracies, expected) -> None:
    bench = dataclasses.replace(TOY, seconds=3.5, target=0.9)
    versions = [
        {"version": i + 1, "seconds": float(i), "accuracy": a} for i, a in enumerate(accuracies)
    ]
    versions.append({"version": 99, "seconds": 3.9, "accuracy": 0.99})  # after the budget
    summary = bench_async.summarize(versions, bench)
    assert summary["time_to_target"] == expected
    assert summary["versions_published"] == 3  # base excluded, the late one too
    assert summary["final_accuracy"] == accuracies[3]
    assert summary["best_accuracy"] == max(accuracies[:4])


def test_settings_parse_as_the_issue_names_them() -> None:
    assert bench_async.parse_setting("async-K10-secagg+") == ("secagg+", "async", 10, 1.0)
    assert bench_async.parse_setting("sync-plaintext") == ("plaintext", "sync", 0, 1.0)
    assert bench_async.parse_setting("async-K5-plaintext-slr0.5") == ("plaintext", "async", 5, 0.5)
    for bad in ("async-5-plaintext", "sync", "async-K5", "fast-plaintext", "sync-slr0.5"):
        with pytest.raises(ValueError, match="sync-MODE or async-K<K>-MODE"):
            bench_async.parse_setting(bad)
    for bad in ("async-K5-plaintext-slr0", "async-K5-plaintext-slrfast"):
        with pytest.raises(ValueError, match="server learning rate"):
            bench_async.parse_setting(bad)
