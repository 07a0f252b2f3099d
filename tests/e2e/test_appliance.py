"""The appliance end to end over real gRPC on loopback with real certificates."""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from sealagg_testkit.rounds import (
    DIM,
    FAST,
    delta,
    expected_model,
    published,
    run_clients,
    weight,
)

from sealagg.appliance.federation import (
    FederationFolder,
    add_client,
    init_federation,
    revoke_client,
)
from sealagg.appliance.kit import load_kit
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant


@pytest.mark.parametrize("mode", ["secagg+", "secagg", "plaintext"])
def test_round_publishes_the_exact_weighted_mean(deployment, running, mode):
    dep = deployment(clients=5)
    dep.configure(aggregation={"mode": mode, "min_clients": 5, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    threads, reports, errors = run_clients(dep, sorted(dep.kits))
    app.wait(60)
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert all(r[0].outcome == "published" for r in reports.values()), reports
    model, tensors, audit, rounds = published(dep)
    assert model.version == 2 and rounds[-1].status == "accepted"
    expected = expected_model(list(range(5)))
    for name, value in expected.items():
        np.testing.assert_allclose(tensors[name], value, atol=2e-6)
    assert audit.count > 10


class _VanishAfter(Participant):
    """A client that stops answering after a number of uploads (it crashes mid-round)."""

    budget = 3

    def _send(self, start, phase, payload, *rest):
        if self.budget <= 0:
            raise ConnectionAbortedError("client vanished")
        self.budget -= 1
        return super()._send(start, phase, payload, *rest)


def test_dropouts_are_recovered_and_late_clients_dropped(deployment, running):
    dep = deployment(clients=6)
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 6, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    # client4 vanishes after its masked input (it stays in the sum); client5 after advertising
    # keys and sharing them (six clients: a complete graph, no coin reveal), so its pairwise
    # masks must be removed with its reconstructed mask key.
    steady = [f"client{i}" for i in range(4)]
    threads, _, errors = run_clients(dep, steady)
    vanish_late = type("Late", (_VanishAfter,), {"budget": 4})
    vanish_early = type("Early", (_VanishAfter,), {"budget": 2})
    t4, _, err4 = run_clients(dep, ["client4"], participant_cls=vanish_late)
    t5, _, err5 = run_clients(dep, ["client5"], participant_cls=vanish_early)
    app.wait(90)
    for t in threads + t4 + t5:
        t.join(30)
    assert not errors, errors
    assert isinstance(err4.get("client4"), ConnectionAbortedError)
    assert isinstance(err5.get("client5"), ConnectionAbortedError)
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published", outcome
    assert outcome.contributors == ("client0", "client1", "client2", "client3", "client4")
    _, tensors, _, _ = published(dep)
    for name, value in expected_model([0, 1, 2, 3, 4]).items():
        np.testing.assert_allclose(tensors[name], value, atol=2e-6)


def _code(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code()


def test_bad_uploads_are_refused_and_the_round_goes_on(deployment, running, tmp_path):
    dep = deployment(clients=4)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 4, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    honest, _, errors = run_clients(dep, ["client1", "client2"])
    slow, _, slow_errors = run_clients(dep, ["client3"], delay=3.0)  # keeps the round open
    conn = Connection(dep.kits["client0"], address=dep.address)
    attacker = Participant(conn, poll_seconds=1.0)
    start = attacker.wait_for_round(max_polls=20)
    good = delta(0)

    def upload(payload, **fields):
        header = pb.UploadHeader(round_id=start.round_id, kind="plaintext_update", weight=weight(0))
        for key, value in fields.items():
            setattr(header, key, value)
        return lambda: conn.submit(header, payload)

    nan = good.copy()
    nan[3] = np.nan
    assert _code(upload(memoryview(nan).cast("B"))) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(upload(good.tobytes()[:-4])) == grpc.StatusCode.INVALID_ARGUMENT
    assert (
        _code(upload(good.tobytes(), round_id=b"\x01" * 32)) == grpc.StatusCode.FAILED_PRECONDITION
    )
    assert _code(upload(good.tobytes(), phase=3)) == grpc.StatusCode.FAILED_PRECONDITION
    assert _code(upload(good.tobytes(), weight=7.0)) == grpc.StatusCode.INVALID_ARGUMENT
    assert _code(upload(good.tobytes(), kind="protocol")) == grpc.StatusCode.INVALID_ARGUMENT

    oversized = pb.UploadHeader(round_id=start.round_id, kind="plaintext_update", weight=0.5)
    oversized.total_bytes = 10**12

    def declared_only():
        return conn.stub.Submit(iter([pb.UploadChunk(header=oversized)]), timeout=10)

    assert _code(declared_only) == grpc.StatusCode.RESOURCE_EXHAUSTED
    conn.submit(
        pb.UploadHeader(round_id=start.round_id, kind="plaintext_update", weight=weight(0)),
        good.tobytes(),
    )
    again = upload(good.tobytes())
    assert _code(again) == grpc.StatusCode.ALREADY_EXISTS

    # Another federation's client (another CA) cannot even complete the handshake.
    other = init_federation(tmp_path / "other", name="other", hosts=["localhost"], port=dep.port)
    stranger = Connection(
        load_kit(add_client(other, "client0")), address=dep.address, timeout=5, retry_seconds=0
    )
    assert _code(lambda: stranger.get_task(0.1)) in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
    )
    app.wait(60)
    for t in honest + slow:
        t.join(30)
    assert not errors and not slow_errors, (errors, slow_errors)
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published"
    assert outcome.contributors == ("client0", "client1", "client2", "client3")
    _, tensors, _, _ = published(dep)
    for name, value in expected_model([0, 1, 2, 3]).items():
        np.testing.assert_allclose(tensors[name], value, atol=1e-6)


def test_revoked_client_is_refused_by_name(deployment, running):
    """A revoked certificate is refused per call, on an old connection and on a new one alike:
    PERMISSION_DENIED naming the client and the reason, counted (server.py's handshake trusts
    the CA; appliance/interceptors.py PeerCheckInterceptor decides)."""
    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 3, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    conn = Connection(dep.kits["client2"], address=dep.address)
    assert conn.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
    revoke_client(FederationFolder.load(dep.folder), "client2")
    # A connection opened before the revocation: refused at its next call.
    assert _code(lambda: conn.stub.GetTask(pb.TaskRequest(), timeout=5)) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert app.app.metrics.total("sealagg_refused_calls_total") == 1
    conn.close()
    # A new connection: the same refusal, named and counted.
    fresh = Connection(dep.kits["client2"], address=dep.address, timeout=5, retry_seconds=0)
    with pytest.raises(grpc.RpcError) as refused:
        fresh.stub.GetTask(pb.TaskRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "client 'client2' refused (revoked)" in refused.value.details()
    assert app.app.metrics.total("sealagg_refused_calls_total") == 2
    fresh.close()
    # The others keep being served.
    other = Connection(dep.kits["client1"], address=dep.address, timeout=5)
    assert other.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
    other.close()


def test_certificate_from_the_ca_but_never_current_is_refused(deployment, running):
    """A certificate the CA issued for a registered name but not the one on record (a forged
    or superseded one) is refused per call as ``superseded``, by name."""
    from sealagg.appliance import pki
    from sealagg.appliance.kit import ClientKit

    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 3, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    fed = FederationFolder.load(dep.folder)
    key = pki.generate_tls_key()
    forged = pki.issue_client_certificate(
        fed.ca_certificate, fed.ca_private_key(), key.public_key(), name="client1", now=None
    )
    genuine = dep.kits["client1"]
    kit = ClientKit(
        **{
            **{f: getattr(genuine, f) for f in genuine.__dataclass_fields__},
            "client_cert_pem": pki.certificate_pem(forged),
            "client_key_pem": pki.private_key_pem(key, None),
        }
    )
    conn = Connection(kit, address=dep.address, timeout=5, retry_seconds=0)
    with pytest.raises(grpc.RpcError) as refused:
        conn.stub.GetTask(pb.TaskRequest(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "client 'client1' refused (superseded)" in refused.value.details()
    conn.close()
    value = app.app.metrics.registry.get_sample_value(
        "sealagg_refused_calls_total", {"reason": "superseded"}
    )
    assert value == 1


CLIENT_PROCESS = """
import sys
import numpy as np
from sealagg.appliance.kit import load_kit
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

kit_path, address, index, dim = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
delta = np.random.default_rng(100 + index).normal(0, 0.05, dim).astype(np.float32)
conn = Connection(load_kit(kit_path), address=address)
report = Participant(conn, poll_seconds=1.0).run_round(
    lambda start, tensors: (delta, 0.2 + 0.15 * index, {})
)
print(report.outcome)
"""


def test_secure_round_with_client_processes(deployment, running):
    import subprocess
    import sys

    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CLIENT_PROCESS, str(kit.source), dep.address, str(i), str(DIM)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i, kit in enumerate(dep.kits[f"client{i}"] for i in range(3))
    ]
    outputs = [p.communicate(timeout=120)[0].strip() for p in procs]
    app.wait(60)
    assert outputs == ["published"] * 3
    _, tensors, _, _ = published(dep)
    for name, value in expected_model([0, 1, 2]).items():
        np.testing.assert_allclose(tensors[name], value, atol=2e-6)


def test_contribution_weights_from_the_config_scale_each_party(deployment, running):
    dep = deployment(clients=3)
    dep.configure(
        aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1},
        deadlines=FAST,
        weights={"client0": 0.8, "client1": 0.2},
    )
    app = running(dep.folder)
    threads, _, errors = run_clients(dep, sorted(dep.kits))
    app.wait(60)
    for t in threads:
        t.join(30)
    assert not errors, errors
    _, tensors, _, _ = published(dep)
    for name, value in expected_model([0, 1, 2], {0: 0.8, 1: 0.2}).items():
        np.testing.assert_allclose(tensors[name], value, atol=2e-6)
