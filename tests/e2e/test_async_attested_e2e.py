"""An asynchronous run in attested mode (software attester), end to end over mutual TLS.

Real shim participants (client_shim.session.Participant) verify the appliance's evidence
before their first upload, take leases and submit; the test holds leases back so members of
one buffer trained on versions 0, 1 and 2 versions behind. Each published version must be
its parent plus the staleness-weighted mean of the buffer (computed here independently), and
each participant learns its staleness and weight from its report.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sealagg_testkit.async_runs import start_async_run

from sealagg.appliance.attestation import setup_software_attestation
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import FederationFolder, add_client, init_federation
from sealagg.appliance.kit import load_kit
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment, base_model, free_port
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant
from sealagg.crypto.staleness import StalenessPolicy

ASYNC = {"buffer_size": 2, "max_staleness": 3, "staleness": "exponential", "alpha": 0.5}


@pytest.fixture
def attested(tmp_path, running, monkeypatch):
    monkeypatch.setenv("SEALAGG_ALLOW_INSECURE_ATTESTER", "1")  # the clients' own choice
    port = free_port()
    folder = tmp_path / "federation"
    fed = init_federation(folder, name="testfed", hosts=["localhost", "127.0.0.1"], port=port)
    setup_software_attestation(folder)
    kits = {f"client{i}": load_kit(add_client(fed, f"client{i}")) for i in range(4)}
    add_client(fed, ADMIN_NAME, out=folder / ADMIN_KIT_DIRNAME)
    store = open_store(fed)
    store.add_model_version(base_model(), parent=None, status="accepted")
    store.close()
    dep = Deployment(folder, port, fed, kits)
    dep.configure(
        attestation={"provider": "software"},
        aggregation={"mode": "attested", "min_clients": 2, "rounds": 0},
    )
    running(dep.folder)
    connections = [Connection(kits[n], address=dep.address) for n in sorted(kits)]
    participants = [Participant(c, poll_seconds=1.0, presence=False) for c in connections]
    yield dep, participants
    for c in connections:
        c.close()


def _create_run(dep, rounds: int) -> dict:
    return start_async_run(dep, ASYNC, rounds=rounds, name="async-attested")


def _flat(dep, version: int) -> np.ndarray:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        tensors = store.load_model(version)
    finally:
        store.close()
    return flatten(tensors, Layout.of(tensors)).astype(np.float64)


def _current(dep) -> int:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        return store.current_model().version
    finally:
        store.close()


def _wait_for_version(dep, version: int, timeout: float = 30.0) -> None:
    event = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if _current(dep) == version:
            return
        event.wait(0.05)
    raise AssertionError(f"version {version} was never published")


def test_attested_versions_are_the_parent_plus_the_staleness_weighted_mean(attested):
    dep, (a, b, c, d) = attested
    run = _create_run(dep, rounds=3)
    s = StalenessPolicy("exponential", max_staleness=3, alpha=0.5).weight
    dim = Layout.of(base_model()).dimension
    rng = np.random.default_rng(3)
    u = {k: rng.normal(0, 0.01, dim).astype(np.float32) for k in ("a", "b", "c", "d", "a2", "b2")}

    def submit(p: Participant, start: pb.RoundStart, update: np.ndarray, weight: float):
        return p.run_round(lambda _s, _t: (update, weight, {"num_examples": 5}), start=start)

    la, lb, lc, ld = (p.wait_for_round(max_polls=30) for p in (a, b, c, d))
    assert all(x.asynchronous and x.model_version == 1 for x in (la, lb, lc, ld))
    assert la.run_id == run["id"] and la.mode == "attested"
    first = submit(a, la, u["a"], 1.0)
    assert (first.outcome, first.staleness, first.buffer_number) == ("accepted", 0, 1)
    submit(b, lb, u["b"], 0.6)
    _wait_for_version(dep, 2)
    v1, v2 = _flat(dep, 1), _flat(dep, 2)
    np.testing.assert_allclose(v2, v1 + (u["a"] + 0.6 * u["b"]) / 1.6, atol=1e-6)
    # Buffer 2: c on version 1 (tau 1) and a on version 2 (tau 0).
    la2 = a.wait_for_round(max_polls=30)
    assert la2.model_version == 2
    report = submit(c, lc, u["c"], 1.0)
    assert (report.outcome, report.staleness) == ("accepted", 1)
    assert report.staleness_weight == pytest.approx(s(1))
    submit(a, la2, u["a2"], 1.0)
    _wait_for_version(dep, 3)
    v3 = _flat(dep, 3)
    np.testing.assert_allclose(v3, v2 + (s(1) * u["c"] + u["a2"]) / (s(1) + 1.0), atol=1e-6)
    # Buffer 3: d on version 1 (tau 2) and b on the lease it took with its last
    # acknowledgement (version 2 or 3, whichever was current then).
    lb3 = b.wait_for_round(max_polls=30)
    report = submit(d, ld, u["d"], 0.9)
    assert (report.outcome, report.staleness) == ("accepted", 2)
    assert report.staleness_weight == pytest.approx(s(2)) == 0.25
    report = submit(b, lb3, u["b2"], 0.5)
    tau_b = 3 - lb3.model_version
    assert (report.outcome, report.staleness) == ("accepted", tau_b)
    _wait_for_version(dep, 4)
    v4 = _flat(dep, 4)
    w_d, w_b = 0.9 * s(2), 0.5 * s(tau_b)
    np.testing.assert_allclose(v4, v3 + (w_d * u["d"] + w_b * u["b2"]) / (w_d + w_b), atol=1e-6)
