"""Two-party vendor-client fine-tuning (issue 8) over real loopback TLS.

The gate test runs in ``attested`` mode (software attester: the shim verifies the appliance
before sending anything) and in ``plaintext`` mode; the gate, the weights and the version
logic do not depend on the mode. The trust rule for masked modes is tested at the end.
"""

from __future__ import annotations

import asyncio
import json

import grpc
import numpy as np
import pytest
from sealagg_testkit.vendor_gate import BASE, DIM, FAST, HARMFUL, LAYOUT, benign, run_parties

from sealagg.appliance.attestation import setup_software_attestation
from sealagg.appliance.config import parse_config
from sealagg.appliance.errors import ConfigError
from sealagg.appliance.federation import FederationFolder, add_client, init_federation
from sealagg.appliance.kit import load_kit
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment, base_model, free_port
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import flatten
from sealagg.client_shim.connection import Connection


def _attested_deployment(root) -> Deployment:
    """Two kits that carry the software attester's policy (as tests/shim/test_attestation.py)."""
    port = free_port()
    folder = root / "federation"
    fed = init_federation(folder, name="testfed", hosts=["localhost", "127.0.0.1"], port=port)
    setup_software_attestation(folder)
    kits = {name: load_kit(add_client(fed, name)) for name in ("client0", "client1")}
    store = open_store(fed)
    store.add_model_version(base_model(), parent=None, status="accepted")
    store.close()
    return Deployment(folder, port, fed, kits)


def _gated(dep, rounds: int, *, tolerance: float = 0.02, mode: str = "plaintext") -> None:
    if mode == "attested":
        dep.configure(attestation={"provider": "software"})
    dep.configure(
        aggregation={"mode": mode, "min_clients": 2, "rounds": rounds},
        deadlines=FAST,
        gates={
            "vendor": "client0",
            "metric": "accuracy",
            "higher_is_better": True,
            "tolerance": tolerance,
            "evaluate_deadline": 8,
        },
        weights={"client0": 0.8, "client1": 0.2},
    )


@pytest.mark.parametrize("mode", ["attested", "plaintext"])
def test_gate_rejects_a_harmful_candidate_and_weights_are_exact(
    deployment, running, tmp_path, mode, monkeypatch
):
    monkeypatch.setenv("SEALAGG_ALLOW_INSECURE_ATTESTER", "1")  # the clients' own choice
    dep = _attested_deployment(tmp_path) if mode == "attested" else deployment(clients=2)
    _gated(dep, rounds=2, mode=mode)
    app = running(dep.folder)
    vendor, client = benign(1), benign(2)
    evaluated: list[float] = []
    threads, reports, errors = run_parties(
        dep, {"client0": [vendor, benign(3)], "client1": [client, HARMFUL]}, evaluated
    )
    app.wait(90)
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert [r.outcome for r in reports["client1"]] == ["published", "rejected"]
    assert [r.outcome for r in reports["client0"]] == ["published", "rejected"]
    assert (
        "accuracy" in reports["client1"][1].reason and "worse than" in reports["client1"][1].reason
    )
    # base (baseline, asked once), round 1's candidate, round 2's candidate
    assert evaluated[0] == 1.0 and evaluated[1] >= 0.98 and evaluated[2] < 0.1

    store = open_store(FederationFolder.load(dep.folder))
    try:
        current = store.current_model()
        assert current.version == 2  # the harmful candidate was never published
        versions = store.model_versions()
        assert [v.status for v in versions] == ["accepted", "accepted", "rejected"]
        assert versions[0].metrics["accuracy"] == 1.0  # metrics stored with each version
        assert versions[2].metrics["accuracy"] < 0.1  # kept for audit, with its evaluation
        published = store.load_model(2)
        gate = [e.details for e in store.audit.entries() if e.event == "gate_decision"]
        assert [g["accept"] for g in gate] == [True, False]
        participants = [e.details for e in store.audit.entries() if e.event == "participants"]
        assert participants[0]["contribution_weights"] == {"client0": 0.8, "client1": 0.2}
        if mode == "attested":  # both parties verified the appliance before sending
            events = [e.event for e in store.audit.entries()]
            assert events.count("attestation_result") >= 2
    finally:
        store.close()
    # weights applied exactly: base + (0.8·Δvendor + 0.2·Δclient) / (0.8 + 0.2)
    candidates = []
    for first, second in (((0.8, vendor), (0.2, client)), ((0.2, client), (0.8, vendor))):
        total = np.zeros(DIM) + first[0] * first[1].astype(np.float64)
        total += second[0] * second[1].astype(np.float64)
        mean = (total / (0.8 + 0.2)).astype(np.float32)
        candidates.append((flatten(BASE, LAYOUT).astype(np.float64) + mean).astype(np.float32))
    got = flatten(published, LAYOUT)
    assert any(np.array_equal(got, c) for c in candidates)
    unweighted = flatten(BASE, LAYOUT) + (vendor + client) / 2
    assert not np.allclose(got, unweighted, atol=1e-6)

    # the rejected candidate cannot be downloaded by anyone now; a stranger's report is refused
    conn = Connection(dep.kits["client1"], address=dep.address)
    vendor_conn = Connection(dep.kits["client0"], address=dep.address)
    restarted = running(dep.folder)
    try:
        with pytest.raises(grpc.RpcError) as refused:
            conn.download_model(3)
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        report = json.dumps({"model_version": 3, "metrics": {"accuracy": 1.0}}).encode()
        header = pb.UploadHeader(round_id=b"\0" * 32, kind="evaluation")
        with pytest.raises(grpc.RpcError) as stranger:
            conn.submit(header, report)
        assert stranger.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.RpcError) as unasked:
            vendor_conn.submit(pb.UploadHeader(round_id=b"\0" * 32, kind="evaluation"), report)
        assert unasked.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    finally:
        restarted.stop()
        conn.close()
        vendor_conn.close()


def test_gate_fails_closed_without_a_vendor_report(deployment, running):
    dep = deployment(clients=2)
    _gated(dep, rounds=1)
    dep.configure(gates={"evaluate_deadline": 1.5})
    app = running(dep.folder)
    # client0 is the gate party but runs no evaluate= callback: nothing is reported
    threads, reports, errors = run_parties(
        dep, {"client0": [benign(1)], "client1": [benign(2)]}, None
    )
    app.wait(60)
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert reports["client1"][0].outcome == "rejected"
    assert "sent no evaluation" in reports["client1"][0].reason
    store = open_store(FederationFolder.load(dep.folder))
    try:
        assert store.current_model().version == 1
    finally:
        store.close()


def test_human_approval_on_top_of_the_vendor_gate(deployment, running):
    dep = deployment(clients=2)
    _gated(dep, rounds=1)
    dep.configure(gates={"require_approval": True})
    app = running(dep.folder)
    evaluated: list[float] = []
    threads, reports, errors = run_parties(
        dep, {"client0": [benign(1)], "client1": [benign(2)]}, evaluated
    )
    app.wait(60)
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert reports["client1"][0].outcome == "pending_approval"  # the gate passed; a human decides
    assert len(evaluated) == 2
    store = open_store(FederationFolder.load(dep.folder))
    try:
        assert store.current_model().version == 1
        app.app.orchestrator.store = store
        assert "published" in app.app.orchestrator.decide(1, True, "ok", "admin")
        assert store.current_model().version == 2 and store.current_model().metrics is not None
    finally:
        store.close()


def test_two_party_masking_is_refused_in_config_and_at_round_start(deployment, running):
    with pytest.raises(ConfigError, match="hides nothing"):
        parse_config(
            {"federation": {"name": "x"}, "aggregation": {"mode": "secagg+", "min_clients": 2}}
        )
    dep = deployment(clients=2)
    dep.configure(aggregation={"mode": "secagg", "min_clients": 3}, deadlines=FAST)
    app = running(dep.folder)
    conns = [Connection(dep.kits[n], address=dep.address) for n in ("client0", "client1")]
    try:
        for c in conns:  # both are ready: the scheduler alone would wait for a third party
            assert c.get_task(0.1).WhichOneof("kind") == "idle"
        orchestrator = app.app.orchestrator
        outcome = asyncio.run_coroutine_threadsafe(
            orchestrator.run_round(["client0", "client1"]), app.loop
        ).result(30)
        assert outcome.outcome == "aborted"
        assert "2 parties refused" in outcome.reason
        assert "subtract its own input" in outcome.reason and "attested" in outcome.reason
        for c in conns:  # each party is told why, over the wire
            task = c.get_task(1.0)
            assert task.WhichOneof("kind") == "round_end"
            assert task.round_end.outcome == pb.RoundEnd.ABORTED
            assert "hides nothing" in task.round_end.reason
    finally:
        for c in conns:
            c.close()


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b'{"model_version": 2}', "model_version"),
        (b'{"model_version": 0, "metrics": {"eer": 0.1}}', "positive integer"),
        (b'{"model_version": 2, "metrics": {}}', "1 to 64 numbers"),
        (b'{"model_version": 2, "metrics": {"eer": NaN}}', "finite numbers"),
        (b'{"model_version": 2, "metrics": {"eer": "low"}}', "finite numbers"),
        (b'{"model_version": 2, "metrics": {"eer": true}}', "finite numbers"),
    ],
)
def test_malformed_reports_are_refused_with_a_reason(body, message):
    from sealagg.appliance.rounds import UploadRefusedError
    from sealagg.appliance.vendor_gate import parse_report

    with pytest.raises(UploadRefusedError, match=message) as refused:
        parse_report(body)
    assert refused.value.code == "INVALID_ARGUMENT"
    assert parse_report(b'{"model_version": 2, "metrics": {"eer": 1}}') == (2, {"eer": 1.0})


def test_comparison_rule_and_tolerance():
    from sealagg.appliance.config import GatesSection
    from sealagg.appliance.vendor_gate import VendorGate
    from sealagg.client_shim.metrics import no_worse

    lower = VendorGate(GatesSection(vendor="v", metric="eer", tolerance=0.01), None, print)
    assert lower.compare({"eer": 0.05}, {"eer": 0.04}, 1)[0]  # within the tolerance
    ok, why = lower.compare({"eer": 0.0501}, {"eer": 0.04}, 1)
    assert not ok and "worse than version 1's" in why
    higher = VendorGate(
        GatesSection(vendor="v", metric="accuracy", higher_is_better=True), None, print
    )
    assert higher.compare({"accuracy": 0.9}, {"accuracy": 0.9}, 1)[0]
    assert not higher.compare({"accuracy": 0.899}, {"accuracy": 0.9}, 1)[0]
    # the study's local copy of the rule agrees
    assert no_worse({"eer": 0.05}, {"eer": 0.04}, "eer", higher_is_better=False, tolerance=0.01)
    assert not no_worse({"a": 0.899}, {"a": 0.9}, "a", higher_is_better=True)
