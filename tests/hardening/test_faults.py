"""Fault injection over real gRPC on loopback: clients killed, stalled or cut off.

Each test states the outcome it asserts: the round completes with the survivors (exact
weighted mean of exactly those clients) when enough survive, aborts cleanly otherwise (every
client told, the model unchanged), and the audit chain still verifies. The appliance's own
crashes (SIGKILL at each phase) and its storage failing are in test_hardening_crash.py.
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from sealagg_testkit.clients import (
    DIM,
    FAST,
    delta,
    expected_bias_and_weight,
    join,
    published_flat,
    run_clients,
    spawn_doomed,
)
from sealagg_testkit.proxy import PartitionProxy

from sealagg.appliance import service
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.demo.client import PHASES
from sealagg.client_shim.session import Participant


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("budget", range(len(PHASES)), ids=PHASES)
def test_client_killed_at_each_phase(deployment, running, budget):
    """A client process SIGKILLed before its upload of phase ``budget``: the round completes
    with the three survivors; a client that already sent its masked input stays in the sum
    (its self-mask is reconstructed from the others' shares). Four clients run the
    complete graph, which has no coin reveal: killed "at" reveal_coins, the client dies
    before sharing keys (a withheld coin in a sparse round aborts it: test_coin_tossing)."""
    dep = deployment(clients=4)
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 4, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    doomed = spawn_doomed(dep, "client3", budget)
    threads, reports, errors = run_clients(dep, ["client0", "client1", "client2"])
    app.wait(60)
    join(threads)
    _, err = doomed.communicate(timeout=30)
    assert doomed.returncode == -9, err  # really killed, by SIGKILL
    assert not errors, errors
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published", outcome
    masked = budget > PHASES.index("masked_input")
    members = [0, 1, 2, 3] if masked else [0, 1, 2]
    assert outcome.contributors == tuple(f"client{i}" for i in members)
    assert outcome.dropped == (() if masked else ("client3",))
    version, flat, audited = published_flat(dep)
    assert version == 2 and audited > 10
    np.testing.assert_allclose(flat, expected_bias_and_weight(members), atol=2e-6)
    assert all(r[0].outcome == "published" for r in reports.values())


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_too_many_killed_aborts_cleanly(deployment, running):
    """Two of four clients killed before their masked input: 2 survivors are below the
    minimum of 3, so the round aborts, every survivor is told, and the model is unchanged."""
    dep = deployment(clients=4)
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 4, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    before_masked_input = PHASES.index("masked_input")
    doomed = [spawn_doomed(dep, n, before_masked_input) for n in ("client2", "client3")]
    threads, reports, errors = run_clients(dep, ["client0", "client1"])
    app.wait(60)
    join(threads)
    outs = [p.communicate(timeout=30) for p in doomed]
    assert [p.returncode for p in doomed] == [-9, -9], outs
    assert not errors, errors
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "aborted", outcome
    assert outcome.reason == "phase masked_input: masked input: 2 clients, at least 3 required"
    assert [r[0].outcome for r in reports.values()] == ["aborted", "aborted"]
    version, _, audited = published_flat(dep)
    assert version == 1 and audited > 5


def _slow_upload(conn: Connection, header: pb.UploadHeader, first: bytes, stall: threading.Event):
    """Send the header and a few bytes, then hold the stream open without sending more."""

    def chunks():
        yield pb.UploadChunk(header=header)
        yield pb.UploadChunk(data=first)
        stall.wait(30)

    return conn.stub.Submit(chunks(), timeout=30)


@pytest.mark.timeout(90)
def test_slowloris_upload_is_dropped_and_others_unaffected(deployment, running, monkeypatch):
    """client3 declares a full update, sends 8 bytes and stalls. The chunk idle timeout
    (shortened to 1.5 s here; 30 s in production) refuses it with DEADLINE_EXCEEDED, the
    three honest uploads are accepted meanwhile, and the round publishes their exact mean."""
    monkeypatch.setattr(service, "CHUNK_IDLE_SECONDS", 1.5)
    dep = deployment(clients=4)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 4, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    conn = Connection(dep.kits["client3"], address=dep.address, timeout=10)
    stall, result = threading.Event(), {}

    def slowloris():
        start = Participant(conn, poll_seconds=0.5).wait_for_round(max_polls=40)
        header = pb.UploadHeader(
            round_id=start.round_id, kind="plaintext_update", weight=0.5, total_bytes=4 * DIM
        )
        began = time.monotonic()
        try:
            _slow_upload(conn, header, b"\x00" * 8, stall)
        except grpc.RpcError as error:
            result["code"], result["detail"] = error.code(), error.details()
        result["held"] = time.monotonic() - began

    attacker = threading.Thread(target=slowloris)
    attacker.start()
    threads, _, errors = run_clients(dep, ["client0", "client1", "client2"])
    join(threads)
    attacker.join(30)
    stall.set()
    app.wait(60)
    conn.close()
    assert not errors, errors
    assert result["code"] == grpc.StatusCode.DEADLINE_EXCEEDED, result
    assert "stalled" in result["detail"] and result["held"] < 10
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published"
    assert outcome.contributors == ("client0", "client1", "client2")
    assert outcome.dropped == ("client3",)
    _, flat, _ = published_flat(dep)
    np.testing.assert_allclose(flat, expected_bias_and_weight([0, 1, 2]), atol=1e-6)


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_partition_of_half_the_clients_aborts_then_heals(deployment, running):
    """Six clients, three behind a TCP proxy that stops forwarding once the round opened.
    Three survivors are below the majority quorum (4 of 6): the round aborts cleanly (every
    client told, the model unchanged). After the partition heals, the cut-off clients learn
    the abort and come back; the first round published afterwards holds the exact mean of its
    contributors, among them cut-off clients."""
    dep = deployment(clients=6)
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 6}, deadlines=FAST)
    app = running(dep.folder)
    proxy = PartitionProxy(("127.0.0.1", dep.port))
    trained = threading.Semaphore(0)
    cut, stop = threading.Event(), threading.Event()
    reports: dict[str, list] = {}
    errors: dict[str, BaseException] = {}

    def client(name: str, address: str) -> None:
        i = int(name.removeprefix("client"))

        def compute(start, tensors):
            if start.round_number == 1 and address == proxy.address:
                trained.release()
                cut.wait(30)  # upload only once the partition is in place
            return delta(i), 0.25 + 0.1 * (i % 7), {}

        conn = Connection(dep.kits[name], address=address, timeout=8, retry_seconds=30)
        p = Participant(conn, poll_seconds=0.5)
        out = reports.setdefault(name, [])
        try:
            while not stop.is_set() and not (out and out[-1].outcome == "published"):
                out.append(p.run_round(compute))
        except Exception as error:
            errors[name] = error
        finally:
            conn.close()

    threads = [
        threading.Thread(
            target=client, args=(f"client{i}", dep.address if i < 3 else proxy.address)
        )
        for i in range(6)
    ]
    for t in threads:
        t.start()
    for _ in range(3):
        assert trained.acquire(timeout=30)
    proxy.partition()
    cut.set()
    history = app.app.orchestrator.history
    deadline = time.monotonic() + 30
    while not history and time.monotonic() < deadline:
        time.sleep(0.1)
    assert history[0].outcome == "aborted", history
    assert "3 clients, at least 4 required" in history[0].reason
    proxy.heal()
    deadline = time.monotonic() + 90
    while not any(o.outcome == "published" for o in history) and time.monotonic() < deadline:
        time.sleep(0.2)
    stop.set()
    join(threads, 60)
    proxy.close()
    assert not errors, errors
    published = next(o for o in history if o.outcome == "published")
    assert all(o.outcome == "aborted" for o in history[: history.index(published)])
    assert {"client3", "client4", "client5"} & set(published.contributors), published
    for name in ("client3", "client4", "client5"):
        assert reports[name][0].outcome == "aborted", reports[name]
    version, flat, audited = published_flat(dep)
    assert version == 2 and audited > 10
    members = [int(n.removeprefix("client")) for n in published.contributors]
    np.testing.assert_allclose(flat, expected_bias_and_weight(members), atol=2e-6)
