"""Client-level DP in asynchronous runs (issue 21) end to end over mutual TLS on loopback.

Plaintext mode, raw clients that decide who contributes when (per-client accounting,
appliance/async_privacy.py): every lease carries the DP parameters the shim applies; a fast
client contributes to two buffers, is then refused (its next update with the reason, its next
poll with a RunEnd) while the others keep publishing; each buffer's audit entry carries every
member's ε, equal to an independent dp-accounting composition of its participations; the
ledger on disk reloads to the same ε; a weight other than 1 is refused; when no K clients
have budget left the run stops with the reason, and after a restart a new run does too.

Attested mode, real shim participants: each adds its Gaussian share before the update
leaves; a published version differs from its parent by the staleness-weighted mean of the
shares (their spread checked), and a buffer with a stale member is accounted with the lower
noise multiplier the appliance's down-weighting leaves.
"""

from __future__ import annotations

import json

import dp_accounting
import grpc
import numpy as np
import pytest
from dp_accounting import rdp
from sealagg_testkit.async_runs import current_version as _current
from sealagg_testkit.async_runs import lease
from sealagg_testkit.async_runs import read_state as _state
from sealagg_testkit.async_runs import wait_until as _wait_for
from sealagg_testkit.raw_clients import RawClient

from sealagg.appliance.accounting import RoundPrivacy, epsilon
from sealagg.appliance.attestation import setup_software_attestation
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.config import PrivacySection
from sealagg.appliance.federation import add_client, init_federation
from sealagg.appliance.kit import load_kit
from sealagg.appliance.privacy import PrivacyController
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment, base_model, free_port
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant
from sealagg.crypto.staleness import StalenessPolicy

DELTA = 1e-5
PLAIN = {"mode": "plaintext", "min_clients": 2, "rounds": 0, "ready_window": 30.0}
ASYNC = {"buffer_size": 2, "max_staleness": 2, "staleness": "constant"}
#: Room for two contributions at z = 1 (constant staleness: every buffer carries z = 1),
#: not three.
TWO = epsilon([RoundPrivacy(0, 1.0, 2**-0.5)], DELTA)
THREE = epsilon([RoundPrivacy(0, 1.0, 3**-0.5)], DELTA)
TARGET = round((TWO + THREE) / 2, 3)
PRIVACY = {"mode": "client", "noise_multiplier": 1.0, "clip": 1.0, "target_epsilon": TARGET}


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
        spec.setdefault("name", "async-dp")
        spec["async_json"] = json.dumps(spec.get("async_json", ASYNC))
        return self.stub.CreateRun(pb.RunSpec(**spec), timeout=15)

    def run(self, run_id: str) -> dict:
        runs = json.loads(self.stub.ListRuns(pb.ListRunsRequest(), timeout=15).json)
        return next(r for r in runs if r["id"] == run_id)


@pytest.fixture
def dp_run(deployment, running):
    dep = deployment(clients=4)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(aggregation=PLAIN, privacy=PRIVACY)
    app = running(dep.folder)
    admin = Admin(dep)
    clients = {n: RawClient(dep.kits[n], dep.address) for n in sorted(dep.kits)}
    yield dep, admin, clients, (app, lambda: running(dep.folder))
    for c in clients.values():
        c.close()
    admin.channel.close()


def submit(client: RawClient, start: pb.RoundStart, weight: float = 1.0) -> pb.SubmitAck:
    update = np.full(start.vector_length, 0.001, dtype="<f4")
    header = pb.UploadHeader(
        round_id=start.round_id,
        phase=0,
        kind="plaintext_update",
        weight=weight,
        base_version=start.model_version,
    )
    return client.submit(header, update.tobytes())


def refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _library_epsilon(count: int) -> float:
    """dp-accounting directly: ``count`` Gaussian releases of multiplier 1, composed."""
    acc = rdp.RdpAccountant()
    acc.compose(dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(1.0), count))
    return float(acc.get_epsilon(DELTA))


def test_a_fast_client_is_refused_when_its_budget_is_spent_and_the_others_go_on(dp_run):
    dep, admin, clients, (app, restart) = dp_run
    reply = admin.create(rounds=0, schedule="async", start=True)
    assert reply.ok, reply.detail
    run_id = json.loads(reply.run_json)["id"]
    fast, b, c, d = (clients[f"client{i}"] for i in range(4))
    # Every lease carries the DP the shim applies: noise for a sum over K = 2.
    first = lease(fast)
    assert first.privacy.mode == "client" and first.privacy.mechanism == "gaussian"
    assert first.privacy.noise_std == pytest.approx(1.0 * 1.0 / 2**0.5)
    assert first.privacy.min_survivors == 2
    # A weight other than 1 would change the sum's sensitivity: refused.
    error = refused(lambda: submit(b, lease(b), weight=0.5))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and "weight 1" in error.details()
    # Buffer 1: fast and b.
    submit(fast, first)
    submit(b, lease(b))
    _wait_for(lambda: _current(dep) == 2)
    # fast holds two leases of version 2; the first goes into buffer 2 with c.
    f2, f3 = lease(fast), lease(fast)
    submit(fast, f2)
    submit(c, lease(c))
    _wait_for(lambda: _current(dep) == 3)
    # fast's third update would pass its budget: refused with the reason, nothing added.
    error = refused(lambda: submit(fast, f3))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "privacy budget of client0 spent" in error.details()
    # Its next poll ends the run for it, with the reason.
    ends = [fast.poll(1.0) for _ in range(5)]
    run_end = next(t.run_end for t in ends if t.WhichOneof("kind") == "run_end")
    assert run_end.run_id == run_id and "privacy budget" in run_end.reason
    # The others go on: buffer 3 (b, d) publishes version 4.
    submit(b, lease(b))
    submit(d, lease(d))
    _wait_for(lambda: _current(dep) == 4)
    # Each buffer's audit entry carries every member's ε: a composition per client.
    entries = _state(dep, lambda s: s.audit.entries())
    records = [e.details for e in entries if e.event == "privacy"]
    assert [r["buffer"] for r in records] == [1, 2, 3]
    assert all(r["schedule"] == "async" and r["sampling_rate"] == 1.0 for r in records)
    assert records[1]["epsilon_per_client"]["client0"] == pytest.approx(
        _library_epsilon(2), rel=2e-3
    )
    assert records[2]["epsilon_per_client"]["client1"] == pytest.approx(
        _library_epsilon(2), rel=2e-3
    )
    assert records[2]["epsilon_per_client"]["client3"] == pytest.approx(
        _library_epsilon(1), rel=2e-3
    )
    exhausted = [e.details["client"] for e in entries if e.event == "privacy_budget_exhausted"]
    assert exhausted[0] == "client0" and set(exhausted) <= {"client0", "client1"}  # b: 2 too
    assert len(exhausted) == len(set(exhausted))  # audited once per client
    # c and d contribute their second update; then no two clients have budget left: the run
    # stops with the reason instead of waiting for a buffer that can never fill.
    submit(c, lease(c))
    submit(d, lease(d))
    _wait_for(lambda: _current(dep) == 5)
    _wait_for(lambda: admin.run(run_id)["status"] == "stopped")
    assert "privacy budget: only 0 client(s) can still contribute" in admin.run(run_id)["reason"]

    # The ledger on disk is what a restarted appliance reads.
    def reload(store) -> tuple[float, dict]:
        ledger = PrivacyController(PrivacySection(**PRIVACY), store.folder, store.audit).clients
        return ledger.epsilon("client0"), ledger.status()["participations_per_client"]

    eps, participations = _state(dep, reload)
    assert eps == pytest.approx(_library_epsilon(2), rel=2e-3)
    assert participations == {"client0": 2, "client1": 2, "client2": 2, "client3": 2}
    # A restarted appliance remembers (the budget is the federation's, across runs): a new
    # async run stops at once, and a client polling is told why.
    app.stop()
    restart()
    admin2 = Admin(dep)
    try:
        reply = admin2.create(rounds=0, schedule="async", start=True)
        assert reply.ok, reply.detail
        second = json.loads(reply.run_json)["id"]
        _wait_for(lambda: admin2.run(second)["status"] == "stopped")
        assert "only 0 client(s) can still contribute" in admin2.run(second)["reason"]
        told = [fast.poll(1.0) for _ in range(3)]
        ended = [t.run_end for t in told if t.WhichOneof("kind") == "run_end"]
        assert ended and "privacy budget" in ended[0].reason
    finally:
        admin2.channel.close()


@pytest.fixture
def attested_dp(tmp_path, running, monkeypatch):
    monkeypatch.setenv("SEALAGG_ALLOW_INSECURE_ATTESTER", "1")  # the clients' own choice
    port = free_port()
    folder = tmp_path / "federation"
    fed = init_federation(folder, name="testfed", hosts=["localhost", "127.0.0.1"], port=port)
    setup_software_attestation(folder)
    kits = {f"client{i}": load_kit(add_client(fed, f"client{i}")) for i in range(3)}
    add_client(fed, ADMIN_NAME, out=folder / ADMIN_KIT_DIRNAME)
    store = open_store(fed)
    store.add_model_version(base_model(), parent=None, status="accepted")
    store.close()
    dep = Deployment(folder, port, fed, kits)
    dep.configure(
        attestation={"provider": "software"},
        aggregation={"mode": "attested", "min_clients": 2, "rounds": 0},
        privacy={"mode": "client", "noise_multiplier": 1.0, "clip": 0.5},
    )
    running(dep.folder)
    admin = Admin(dep)
    connections = [Connection(kits[n], address=dep.address) for n in sorted(kits)]
    participants = [Participant(c, poll_seconds=1.0, presence=False) for c in connections]
    yield dep, admin, participants
    for c in connections:
        c.close()
    admin.channel.close()


def _flat(dep, version: int) -> np.ndarray:
    def read(store) -> np.ndarray:
        tensors = store.load_model(version)
        return flatten(tensors, Layout.of(tensors)).astype(np.float64)

    return _state(dep, read)


def test_attested_shares_are_noised_on_the_client_and_staleness_lowers_the_multiplier(
    attested_dp,
):
    dep, admin, (a, b, c) = attested_dp
    params = {"buffer_size": 2, "max_staleness": 2, "staleness": "exponential", "alpha": 0.5}
    reply = admin.create(rounds=2, schedule="async", async_json=params, start=True)
    assert reply.ok, reply.detail
    s = StalenessPolicy("exponential", max_staleness=2, alpha=0.5).weight
    dim = Layout.of(base_model()).dimension
    zero = np.zeros(dim, dtype=np.float32)  # only the clients' noise moves the model

    def submit(p: Participant, start: pb.RoundStart):
        return p.run_round(lambda _s, _t: (zero, 0.3, {"num_examples": 5}), start=start)

    la, lb, lc = (p.wait_for_round(max_polls=30) for p in (a, b, c))
    sigma_c = 1.0 * 0.5 / 2**0.5
    assert la.privacy.noise_std == pytest.approx(sigma_c) and la.privacy.clip == 0.5
    # Buffer 1: a and b, fresh; the shim sends weight 1 whatever the training code said.
    assert submit(a, la).outcome == "accepted"
    assert submit(b, lb).outcome == "accepted"
    _wait_for(lambda: _current(dep) == 2)
    delta = _flat(dep, 2) - _flat(dep, 1)
    assert 0.65 < delta.std() / (sigma_c / 2**0.5) < 1.35  # the mean of two shares
    # Buffer 2: c on version 1 (tau 1, weight 1/2) and a on version 2.
    la2 = a.wait_for_round(max_polls=30)
    report = submit(c, lc)
    assert (report.outcome, report.staleness, report.staleness_weight) == ("accepted", 1, 0.5)
    submit(a, la2)
    _wait_for(lambda: _current(dep) == 3)
    delta = _flat(dep, 3) - _flat(dep, 2)
    expected = sigma_c * (0.5**2 + 1) ** 0.5 / 1.5
    assert 0.65 < delta.std() / expected < 1.35
    records = [
        e.details for e in _state(dep, lambda st: st.audit.entries()) if e.event == "privacy"
    ]
    assert [r["buffer"] for r in records] == [1, 2]
    assert records[0]["effective_noise_multiplier"] == pytest.approx(1.0, rel=1e-3)
    # The stale member's noise was scaled down with its update: z_b = z·√((s² + 1)/2).
    z_b = (s(1) ** 2 + 1) ** 0.5 / 2**0.5
    assert records[1]["effective_noise_multiplier"] == pytest.approx(z_b, rel=1e-3)
    assert records[1]["effective_noise_multiplier"] < 1.0
    acc = rdp.RdpAccountant()
    acc.compose(
        dp_accounting.ComposedDpEvent(
            [dp_accounting.GaussianDpEvent(1.0), dp_accounting.GaussianDpEvent(z_b)]
        )
    )
    assert records[1]["epsilon_per_client"]["client0"] == pytest.approx(
        acc.get_epsilon(DELTA), rel=2e-3
    )
