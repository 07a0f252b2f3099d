"""Asynchronous runs (issue 21) end to end over mutual TLS on loopback, in plaintext mode.

The run is created through the Admin gRPC service (an administrator kit over mTLS); raw
clients speak the wire protocol so the test decides who trains on which version:

- exactness: each published version is the version before it plus the staleness-weighted
  mean of its buffer's members, computed here independently, with members on base versions
  0, 1 and 2 versions behind; the audit names every member's base version and weight;
- refusals, each with the error the client sees, while the appliance keeps serving the others:
  an update past the maximum staleness, a base version that does not exist, a base version
  never leased to the client, an unknown lease, a second update into one buffer;
- creation refusals: K below the minimum, an unknown staleness kind.
"""

from __future__ import annotations

import json

import grpc
import numpy as np
import pytest
from sealagg_testkit.async_runs import current_version as _current
from sealagg_testkit.async_runs import lease
from sealagg_testkit.async_runs import read_state as _state
from sealagg_testkit.async_runs import wait_until as _wait_for
from sealagg_testkit.raw_clients import RawClient

from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import add_client
from sealagg.appliance.kit import load_kit
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.crypto.staleness import StalenessPolicy

PLAIN = {"mode": "plaintext", "min_clients": 2, "rounds": 0, "ready_window": 30.0}
ASYNC = {"buffer_size": 2, "max_staleness": 2, "staleness": "polynomial", "a": 0.5}


class Admin:
    """Admin.CreateRun/ListRuns over the administrator kit's mutual TLS."""

    def __init__(self, dep) -> None:
        kit = load_kit(dep.folder / ADMIN_KIT_DIRNAME)
        ca, key, cert = kit.channel_credentials_material()
        self.channel = grpc.secure_channel(
            dep.address,
            grpc.ssl_channel_credentials(ca, key, cert),
            options=[("grpc.ssl_target_name_override", kit.server_name)],
        )
        self.stub = pb_grpc.AdminStub(self.channel)

    def create(self, **spec) -> pb.RunReply:
        spec.setdefault("name", "async")
        if "async_json" in spec and not isinstance(spec["async_json"], str):
            spec["async_json"] = json.dumps(spec["async_json"])
        return self.stub.CreateRun(pb.RunSpec(**spec), timeout=15)

    def runs(self) -> list[dict]:
        return json.loads(self.stub.ListRuns(pb.ListRunsRequest(), timeout=15).json)


def _setup(deployment, running, **sections):
    dep = deployment(clients=4)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(aggregation=PLAIN, **sections)
    running(dep.folder)
    return dep, Admin(dep), {n: RawClient(dep.kits[n], dep.address) for n in sorted(dep.kits)}


def _close(admin, clients) -> None:
    for c in clients.values():
        c.close()
    admin.channel.close()


@pytest.fixture
def plain(deployment, running):
    dep, admin, clients = _setup(deployment, running)
    yield dep, admin, clients
    _close(admin, clients)


@pytest.fixture
def approved(deployment, running):
    dep, admin, clients = _setup(deployment, running, gates={"require_approval": True})
    yield dep, admin, clients
    _close(admin, clients)


def _flat(dep, version: int) -> np.ndarray:
    def read(store):
        tensors = store.load_model(version)
        return flatten(tensors, Layout.of(tensors)).astype(np.float64)

    return _state(dep, read)


def submit(
    client: RawClient, start: pb.RoundStart, update: np.ndarray, weight: float, base: int = -1
) -> pb.SubmitAck:
    header = pb.UploadHeader(
        round_id=start.round_id,
        phase=0,
        kind="plaintext_update",
        weight=weight,
        base_version=start.model_version if base < 0 else base,
        metadata_json=json.dumps({"num_examples": 10}),
    )
    return client.submit(header, update.astype("<f4").tobytes())


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _start(admin: Admin, rounds: int, params: dict = ASYNC) -> str:
    reply = admin.create(rounds=rounds, schedule="async", async_json=params, start=True)
    assert reply.ok, reply.detail
    run = json.loads(reply.run_json)
    assert (run["schedule"], run["async"]["buffer_size"]) == ("async", params["buffer_size"])
    return run["id"]


def test_each_version_is_the_base_plus_the_staleness_weighted_mean(plain):
    dep, admin, clients = plain
    run_id = _start(admin, rounds=3)
    a, b, c, d = (clients[f"client{i}"] for i in range(4))
    rng = np.random.default_rng(7)
    dim = lease(a).vector_length  # a's first lease is abandoned below (it polls again)
    u = {k: rng.normal(0, 0.01, dim) for k in ("a1", "b1", "c1", "d1", "a2", "b2")}
    s = StalenessPolicy("polynomial", max_staleness=2, a=0.5).weight
    # Everyone leases version 1.
    la, lb, lc, ld = lease(a), lease(b), lease(c), lease(d)
    assert {x.model_version for x in (la, lb, lc, ld)} == {1}
    assert (la.buffer_number, la.run_id, la.async_params.buffer_size) == (1, run_id, 2)
    assert la.async_params.max_staleness == 2 and la.async_params.staleness == "polynomial"
    # Buffer 1: a and b, both fresh.
    first = submit(a, la, u["a1"], 1.0)
    assert (first.receipt.buffered, first.receipt.staleness, first.receipt.buffer_number) == (
        1,
        0,
        1,
    )
    assert "staleness 0" in first.detail
    submit(b, lb, u["b1"], 0.5)
    _wait_for(lambda: _current(dep) == 2)
    v1, v2 = _flat(dep, 1), _flat(dep, 2)
    expected = v1 + (1.0 * u["a1"] + 0.5 * u["b1"]) / 1.5
    np.testing.assert_allclose(v2, expected, atol=1e-6)
    # Buffer 2: c trained on version 1 (tau = 1), a on version 2 (tau = 0).
    la2 = lease(a)
    assert (la2.model_version, la2.buffer_number) == (2, 2)
    ack = submit(c, lc, u["c1"], 0.8)
    assert (ack.receipt.base_version, ack.receipt.current_version) == (1, 2)
    assert ack.receipt.staleness == 1
    assert ack.receipt.staleness_weight == pytest.approx(s(1))
    assert ack.receipt.weight == pytest.approx(0.8 * s(1))
    submit(a, la2, u["a2"], 1.0)
    _wait_for(lambda: _current(dep) == 3)
    v3 = _flat(dep, 3)
    w_c = 0.8 * s(1)
    np.testing.assert_allclose(v3, v2 + (w_c * u["c1"] + u["a2"]) / (w_c + 1.0), atol=1e-6)
    # Buffer 3: d trained on version 1 (tau = 2), b on version 3 (tau = 0).
    lb3 = lease(b)
    ack = submit(d, ld, u["d1"], 1.0)
    assert (ack.receipt.staleness, ack.receipt.staleness_weight) == (2, pytest.approx(s(2)))
    submit(b, lb3, u["b2"], 0.25)
    _wait_for(lambda: _current(dep) == 4)
    v4 = _flat(dep, 4)
    w_d, w_b = s(2), 0.25
    np.testing.assert_allclose(v4, v3 + (w_d * u["d1"] + w_b * u["b2"]) / (w_d + w_b), atol=1e-6)
    # The budget (3 buffers) is spent: the run finished and clients are told.
    _wait_for(lambda: [r["status"] for r in admin.runs() if r["id"] == run_id] == ["finished"])
    assert c.poll(2.0).WhichOneof("kind") == "run_end"
    # The audit names, per publication, each member's base version and staleness weight.
    entries = _state(dep, lambda st: [e.details for e in st.audit.entries()])
    buffers = [e for e in entries if "buffer_size" in e and "members" in e]
    assert [x["buffer"] for x in buffers] == [1, 2, 3]
    assert buffers[1]["members"]["client2"]["base_version"] == 1
    assert buffers[1]["members"]["client2"]["staleness"] == 1
    assert buffers[1]["members"]["client2"]["staleness_weight"] == pytest.approx(s(1))
    assert buffers[2]["members"]["client3"]["staleness"] == 2
    rounds = _state(dep, lambda st: st.rounds())
    assert [r.status for r in rounds if r.id in {x["round"] for x in buffers}] == ["accepted"] * 3


def test_refusals_are_clear_and_the_appliance_keeps_serving(plain):
    dep, admin, clients = plain
    _start(admin, rounds=0, params={**ASYNC, "buffer_size": 3, "max_staleness": 1})
    a, b, c, d = (clients[f"client{i}"] for i in range(4))
    dim = lease(a).vector_length
    zero = np.zeros(dim)
    # A second update into one buffer (a holds two leases of version 1).
    la1, la2 = lease(a), lease(a)
    lb, lc, ld = lease(b), lease(c), lease(d)
    assert submit(a, la1, zero + 0.01, 1.0).receipt.buffered == 1
    error = refused(lambda: submit(a, la2, zero + 0.02, 1.0))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already contributed to buffer 1" in error.details()
    # Sending the spent lease again is told it landed.
    error = refused(lambda: submit(a, la1, zero, 1.0))
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "already used" in error.details()
    # A base version that does not exist; one never leased to b; a lease of another client.
    error = refused(lambda: submit(b, lb, zero, 1.0, base=99))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "base version 99 does not exist" in error.details()
    error = refused(lambda: submit(c, la2, zero, 1.0))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "issued no open lease with this id to client2" in error.details()
    forged = pb.RoundStart(round_id=b"\x01" * 32, model_version=1)
    error = refused(lambda: submit(c, forged, zero, 1.0))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    # The others go on: buffer 1 fills (a, b, c) and version 2 is published.
    submit(b, lb, zero + 0.03, 1.0)
    submit(c, lc, zero + 0.06, 1.0)
    _wait_for(lambda: _current(dep) == 2)
    # b now claims version 1 under a lease of version 2: never leased to it.
    lb2 = lease(b)
    assert lb2.model_version == 2
    error = refused(lambda: submit(b, lb2, zero, 1.0, base=1))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "base version 1 was never leased to client1" in error.details()
    # Buffer 2 (a, b, c on version 2) publishes version 3: d's lease of version 1 is 2 old.
    la3, lc3 = lease(a), lease(c)
    for client, start in ((a, la3), (b, lb2), (c, lc3)):
        submit(client, start, zero + 0.01, 1.0)
    _wait_for(lambda: _current(dep) == 3)
    error = refused(lambda: submit(d, ld, zero, 1.0))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "the update is 2 versions old; this run accepts at most 1" in error.details()
    # d leases the current version and is accepted.
    ld4 = lease(d)
    assert ld4.model_version == 3
    ack = submit(d, ld4, zero, 1.0)
    assert ack.accepted and ack.receipt.staleness == 0 and ack.receipt.buffer_number == 3


@pytest.mark.parametrize(
    ("params", "mode", "needle"),
    [
        ({"buffer_size": 1}, "", "below the run's minimum of 2 clients"),
        ({"buffer_size": 9}, "", "exceeds the"),
        ({"buffer_size": 2, "staleness": "cubic"}, "", "staleness must be one of"),
        ({"buffer_size": 2, "alpha": 2.0}, "", "alpha must lie in (0, 1]"),
        ({"buffer_size": 2, "K": 3}, "", "unknown async parameter"),
        ({"max_staleness": 2}, "", "needs buffer_size"),
        ({"buffer_size": 0}, "", "buffer_size is a whole number from 1"),
    ],
)
def test_async_parameters_are_checked_at_creation(plain, params, mode, needle):
    _dep, admin, _clients = plain
    reply = admin.create(rounds=2, schedule="async", async_json=params, mode=mode)
    assert not reply.ok
    assert needle in reply.detail
    bad = admin.create(rounds=2, schedule="fifo")
    assert not bad.ok and "schedule is one of sync, async" in bad.detail


def test_pause_stops_leasing_and_stop_ends_the_run_and_aborts_its_open_buffer(plain):
    dep, admin, clients = plain
    run_id = _start(admin, rounds=0, params={**ASYNC, "buffer_size": 3})
    a, b = clients["client0"], clients["client1"]
    la = lease(a)
    assert submit(a, la, np.zeros(la.vector_length), 1.0).receipt.buffered == 1
    control = admin.stub.ControlRun
    reply = control(pb.RunControl(run_id=run_id, action="pause"), timeout=15)
    assert reply.ok, reply.detail
    for _ in range(3):  # paused: no lease
        assert b.poll(0.5).WhichOneof("kind") == "idle"
    reply = control(pb.RunControl(run_id=run_id, action="resume"), timeout=15)
    assert reply.ok, reply.detail
    lease(b)  # leasing again
    reply = control(pb.RunControl(run_id=run_id, action="stop", reason="enough"), timeout=15)
    assert reply.ok, reply.detail
    ends = [t for t in (b.poll(2.0), b.poll(0.5)) if t.WhichOneof("kind") == "run_end"]
    assert [(e.run_end.run_id, e.run_end.status) for e in ends] == [(run_id, "stopped")]
    _wait_for(lambda: _state(dep, lambda st: st.rounds())[-1].status == "aborted")
    # The spent budget of a stopped run publishes nothing: still version 1.
    assert _current(dep) == 1


def test_clients_receive_exactly_the_owner_hyperparameters_and_the_async_parameters(plain):
    _dep, admin, clients = plain
    reply = admin.create(
        rounds=2,
        schedule="async",
        async_json={"buffer_size": 2, "staleness": "constant", "max_staleness": 5},
        hyperparameters_json=json.dumps({"lr": 0.1, "local_steps": 2}),
        start=True,
    )
    assert reply.ok, reply.detail
    start = lease(clients["client0"])
    assert json.loads(start.hyperparameters_json) == {"lr": 0.1, "local_steps": 2}
    assert (start.async_params.staleness, start.async_params.max_staleness) == ("constant", 5)
    assert (start.run_round, start.run_rounds, start.buffer_number) == (1, 2, 1)
    assert [p.name for p in start.participants] == ["client0"]
    (listed,) = [r for r in admin.runs() if r["schedule"] == "async"]
    assert listed["hyperparameters"] == {"lr": 0.1, "local_steps": 2}
    assert listed["async"]["buffer_size"] == 2 and listed["async"]["staleness"] == "constant"
    assert all(r["schedule"] == "sync" and r["async"] is None for r in admin.runs() if r != listed)
    reply = admin.create(
        rounds=2,
        schedule="async",
        async_json={"buffer_size": 2},
        hyperparameters_json=json.dumps({"evaluate_every": 1}),
    )
    assert not reply.ok and "evaluate_every is not available in async runs" in reply.detail


def test_a_buffer_awaiting_approval_holds_the_run_until_an_administrator_decides(approved):
    dep, admin, clients = approved
    _start(admin, rounds=2)
    a, b, c = (clients[f"client{i}"] for i in range(3))
    la, lb = lease(a), lease(b)
    submit(a, la, np.full(la.vector_length, 0.01), 1.0)
    ack = submit(b, lb, np.full(lb.vector_length, 0.03), 1.0)
    number = ack.receipt.round_number
    _wait_for(lambda: _state(dep, lambda st: st.round(number).status) == "pending_approval")
    # While its candidate waits, no client is handed a lease (it would train on a version
    # the decision may make obsolete) and nothing more is published.
    for _ in range(3):
        assert c.poll(0.5).WhichOneof("kind") == "idle"
    reply = admin.stub.Decide(
        pb.DecisionRequest(round_number=number, approve=True, reason="fine"), timeout=15
    )
    assert reply.ok, reply.detail
    assert _current(dep) == 2
    np.testing.assert_allclose(_flat(dep, 2), _flat(dep, 1) + 0.02, atol=1e-6)
    assert lease(c).model_version == 2  # leasing resumed, on the approved version


def test_a_restart_into_a_masked_mode_stops_the_async_run_with_the_reason(deployment, running):
    dep = deployment(clients=4)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(aggregation=PLAIN)
    app = running(dep.folder)
    admin = Admin(dep)
    run_id = _start(admin, rounds=0)
    admin.channel.close()
    app.stop()
    dep.configure(aggregation={"mode": "secagg", "min_clients": 3})
    running(dep.folder)
    admin = Admin(dep)
    try:
        _wait_for(lambda: [r["status"] for r in admin.runs() if r["id"] == run_id] == ["stopped"])
        (run,) = [r for r in admin.runs() if r["id"] == run_id]
        assert run["reason"] == "the federation's mode is now 'secagg', the run's is 'plaintext'"
        client = RawClient(dep.kits["client0"], dep.address)
        assert client.poll(2.0).WhichOneof("kind") == "run_end"  # its clients are told
        client.close()
    finally:
        admin.channel.close()
