"""Robust aggregation end to end over real gRPC on loopback, plus the round building blocks.

Plaintext mode applies the rule to individual updates; masked modes split clients into
SecAgg buckets and apply the rule to the bucket means. One client is Byzantine.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sealagg.appliance.config import parse_config
from sealagg.appliance.errors import ConfigError
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.masked_stream import MaskedInputSink
from sealagg.appliance.robust import assign_buckets, build_robust_round, check_feasible
from sealagg.appliance.rounds import Member
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import base_model
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim import connection as shim_connection
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant
from sealagg.client_shim.testing import start_participants
from sealagg.kernels import reference as ref

DIM = Layout.of(base_model()).dimension
SLOW_OK = {
    "advertise_keys": 30,
    "share_keys": 30,
    "masked_input": 30,
    "consistency_check": 30,
    "unmasking": 30,
}
BYZANTINE = "client0"


def _delta(i: int) -> np.ndarray:
    return np.random.default_rng(300 + i).normal(0, 0.05, DIM).astype(np.float32)


def _weight(i: int) -> float:
    """The Byzantine client claims the largest weight allowed."""
    return 1.0 if i == 0 else 0.2 + 0.06 * i


def _update(name: str) -> np.ndarray:
    """Honest clients send a small delta; the Byzantine one a huge constant update."""
    i = int(name.removeprefix("client"))
    return np.full(DIM, 50.0, np.float32) if name == BYZANTINE else _delta(i)


def _run(dep, names):
    def compute_for(name):
        i = int(name.removeprefix("client"))
        return lambda start, tensors: (_update(name), _weight(i), {})

    return start_participants(dep.kits, dep.address, names, compute_for)


def _finish(dep, app, threads, reports, errors):
    app.wait(120)
    for t in threads:
        t.join(30)
    assert not errors, errors
    store = open_store(FederationFolder.load(dep.folder))
    try:
        model = store.current_model()
        tensors = store.load_model(model.version)
        last = store.rounds()[-1]
        audit = [e for e in store.audit.entries() if e.event == "robust_aggregation"]
    finally:
        store.close()
    base = base_model()
    delta = flatten(tensors, Layout.of(base)) - flatten(base, Layout.of(base))
    return reports, last, delta, audit


@pytest.mark.parametrize(
    ("rule", "extra"),
    [
        ("median", {}),
        ("trimmed_mean", {"beta": 0.2}),
        ("krum", {"f": 1}),
        ("multi_krum", {"f": 1}),
        ("geometric_median", {}),
    ],
)
def test_plaintext_robust_rule_ignores_the_byzantine_client(deployment, running, rule, extra):
    dep = deployment(clients=5)
    dep.configure(
        aggregation={"mode": "plaintext", "min_clients": 5, "rounds": 1, "rule": rule, **extra},
        deadlines=SLOW_OK,
    )
    app = running(dep.folder)
    names = sorted(dep.kits)
    reports, last, delta, audit = _finish(dep, app, *_run(dep, names))
    assert all(r.outcome == "published" for r in reports.values()), reports
    assert last.status == "accepted"
    updates = np.stack([_update(n) for n in names])  # sorted by name, as the appliance does
    want = {
        "median": lambda: ref.coordinate_median(updates),
        "trimmed_mean": lambda: ref.trimmed_mean(updates, 0.2),
        "krum": lambda: updates[ref.krum(updates, 1)],
        "multi_krum": lambda: ref.multi_krum(updates, 1, 4)[0],
        "geometric_median": lambda: ref.geometric_median(updates),
    }[rule]()
    tol = 1e-4 if rule == "geometric_median" else 2e-6
    np.testing.assert_allclose(delta, want, atol=tol)
    assert np.abs(delta).max() < 0.5  # the mean would be ~10 everywhere
    assert audit and audit[-1].details["rule"] == rule
    if rule in ("krum", "multi_krum"):
        assert BYZANTINE not in audit[-1].details["selected"]


def test_secagg_buckets_median_of_bucket_means_keeps_the_model_sane(
    deployment, running, monkeypatch
):
    streamed: list[MaskedInputSink] = []  # every bucket's masked inputs stream into its sum
    original = MaskedInputSink.__init__

    def observe(self, *args, **kwargs):
        original(self, *args, **kwargs)
        streamed.append(self)

    monkeypatch.setattr(MaskedInputSink, "__init__", observe)
    monkeypatch.setattr(shim_connection, "CHUNK_BYTES", 64)  # uploads stream in many chunks
    dep = deployment(clients=9)
    dep.configure(
        aggregation={
            "mode": "secagg+",
            "min_clients": 9,
            "rounds": 1,
            "rule": "median",
            "bucket_size": 3,
        },
        deadlines=SLOW_OK,
    )
    app = running(dep.folder)
    names = sorted(dep.kits)
    reports, last, delta, audit = _finish(dep, app, *_run(dep, names))
    assert all(r.outcome == "published" for r in reports.values()), reports
    buckets = assign_buckets(last.round_id, names, 3)
    assert audit[-1].details["buckets"] == buckets and len(buckets) == 3
    assert all(len(b) == 3 for b in buckets)
    # Masked inputs are clipped to [-clip, clip] = [-1, 1] before quantization.
    means = []
    for bucket in buckets:
        x = np.clip(np.stack([_update(n) for n in bucket]), -1, 1)
        w = [_weight(int(n.removeprefix("client"))) for n in bucket]
        means.append(np.average(x.astype(np.float64), axis=0, weights=w))
    want = np.median(np.stack(means), axis=0)
    np.testing.assert_allclose(delta, want, atol=2e-5)
    poisoned = next(i for i, b in enumerate(buckets) if BYZANTINE in b)
    assert means[poisoned].mean() > 0.35  # the Byzantine bucket is pushed up everywhere
    assert np.mean(means, axis=0).mean() > 0.1  # so is the mean of the bucket means
    assert abs(delta.mean()) < 0.03  # ... but not the median of bucket means (max of 2 honest)
    assert sorted(sink.member.name for sink in streamed) == names
    assert all(sink.outcome == "complete" for sink in streamed)


class _VanishAfterKeys(Participant):
    """Advertises its keys, then crashes: its bucket cannot reach its SecAgg quorum."""

    def _send(self, start, phase, *rest):
        if phase > 0:
            raise ConnectionAbortedError("client vanished")
        return super()._send(start, phase, *rest)


def test_a_failed_bucket_is_dropped_and_the_round_goes_on(deployment, running):
    dep = deployment(clients=12)
    fast = dict.fromkeys(SLOW_OK, 8)
    dep.configure(
        aggregation={"mode": "secagg", "min_clients": 12, "rounds": 1, "rule": "median"},
        deadlines=fast,
    )
    app = running(dep.folder)
    names = sorted(dep.kits)
    steady = [n for n in names if n != "client11"]
    threads, reports, errors = _run(dep, steady)
    conn = Connection(dep.kits["client11"], address=dep.address)
    vanished: list[BaseException] = []

    def crash() -> None:
        try:
            _VanishAfterKeys(conn, poll_seconds=1.0).run_round(
                lambda start, tensors: (_update("client11"), _weight(11), {})
            )
        except ConnectionAbortedError as error:
            vanished.append(error)
        finally:
            conn.close()

    crasher = threading.Thread(target=crash)
    crasher.start()
    reports, last, delta, audit = _finish(dep, app, threads, reports, errors)
    crasher.join(30)
    assert vanished, "client11 should have crashed after advertising its keys"
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published", outcome
    buckets = assign_buckets(last.round_id, names, 3)
    lost = next(b for b in buckets if "client11" in b)
    assert set(outcome.dropped) == set(lost)  # the whole bucket, not just the crashed client
    details = audit[-1].details
    assert list(details["failed_buckets"]) == [str(buckets.index(lost))]
    means = []
    for bucket in buckets:
        if bucket == lost:
            continue
        x = np.clip(np.stack([_update(n) for n in bucket]), -1, 1)
        w = [_weight(int(n.removeprefix("client"))) for n in bucket]
        means.append(np.average(x.astype(np.float64), axis=0, weights=w))
    np.testing.assert_allclose(delta, np.median(np.stack(means), axis=0), atol=2e-5)


# --------------------------------------------------------------------------- building blocks


def _members(n: int) -> list[Member]:
    return [Member(i + 1, f"client{i}", bytes([i]) * 32) for i in range(n)]


def test_buckets_are_a_public_deterministic_partition():
    names = [f"client{i}" for i in range(11)]
    a = assign_buckets(b"\x01" * 32, names, 3)
    assert a == assign_buckets(b"\x01" * 32, list(reversed(names)), 3)
    assert sorted(n for b in a for n in b) == sorted(names)
    assert [len(b) for b in a] == [4, 4, 3]
    assert a != assign_buckets(b"\x02" * 32, names, 3)  # another round, another assignment
    with pytest.raises(ValueError, match="at least 3"):
        assign_buckets(b"\x01" * 32, names, 2)
    with pytest.raises(ValueError, match="cannot fill one bucket"):
        assign_buckets(b"\x01" * 32, names[:2], 3)


def test_each_client_round_start_lists_only_its_bucket():
    from sealagg.appliance.wire import sealagg_pb2 as pb
    from sealagg.crypto.params import choose_graph

    agg = parse_config(
        {
            "federation": {"name": "x"},
            "aggregation": {"mode": "secagg", "rule": "median", "min_clients": 3},
        }
    ).aggregation
    active, audit = build_robust_round(agg, 1, b"\x07" * 32, _members(10), 100, choose_graph)
    assert [len(b) for b in audit["buckets"]] == [4, 3, 3]
    common = pb.RoundStart(round_id=b"\x07" * 32, mode="secagg")
    for bucket in audit["buckets"]:
        for name in bucket:
            start = active.round_start_for(name, common)
            assert sorted(p.name for p in start.participants) == bucket
            assert sorted(p.index for p in start.participants) == list(range(1, len(bucket) + 1))
            mine = next(p for p in start.participants if p.name == name)
            assert start.client_index == mine.index and start.max_clients == len(bucket)
            assert start.minimum_survivors >= 3


@pytest.mark.parametrize(
    ("rule", "k", "f", "beta", "match"),
    [
        ("krum", 4, 1, 0.1, "n > 2f \\+ 2"),
        ("multi_krum", 2, 0, 0.1, "n > 2f \\+ 2"),
        ("median", 2, 0, 0.1, "at least 3"),
        ("geometric_median", 2, 0, 0.1, "at least 3"),
        ("trimmed_mean", 5, 0, 0.1, "trims nothing"),
        ("bogus", 5, 0, 0.1, "unknown aggregation rule"),
    ],
)
def test_rules_without_robustness_are_refused(rule, k, f, beta, match):
    with pytest.raises(ValueError, match=match):
        check_feasible(rule, k, f, beta)


def test_two_buckets_are_refused_for_krum_at_round_setup():
    from sealagg.crypto.params import choose_graph

    agg = parse_config(
        {
            "federation": {"name": "x"},
            "aggregation": {"mode": "secagg+", "rule": "krum", "f": 1, "min_clients": 3},
        }
    ).aggregation
    with pytest.raises(ValueError, match="Krum needs n > 2f \\+ 2"):
        build_robust_round(agg, 1, b"\x07" * 32, _members(6), 100, choose_graph)


@pytest.mark.parametrize(
    "aggregation",
    [
        {"rule": "average"},
        {"rule": "median", "bucket_size": 2},
        {"rule": "trimmed_mean", "beta": 0.5},
        {"rule": "krum", "f": -1},
    ],
)
def test_bad_robust_config_is_refused_with_its_key(aggregation):
    with pytest.raises(ConfigError, match="aggregation"):
        parse_config({"federation": {"name": "x"}, "aggregation": aggregation})
