"""Rounds that do not wait for the dead (issue 25), over real mutual TLS on loopback.

Every phase deadline here is configured LONG (120 s, longer than each test's own timeout):
a test that finishes proves the appliance did not wait out a deadline, and the audit says
why each client was dropped (``connection_closed`` / ``silent`` / ``deadline``). No
assertion is on wall-clock time; waits are on conditions, generous for a loaded machine.

- A client process SIGKILLed before its upload of each phase: the round publishes the exact
  weighted mean of the clients the protocol counts (a client killed after its masked input
  stays in the sum), and the audit names the phase and ``connection_closed``.
- Too many killed: the round aborts cleanly (every survivor told, the model unchanged) and
  the appliance goes on to publish the next round. A client that died while idle is not
  chosen for a round.
- A member whose stream breaks and reopens naming the current round is taken back and
  waited for; one reopening with no round (a restarted process) is not, and is told so.
  The real shim behind a proxy comes back by itself after a reset or a silent partition.
- A slow but live member is waited for; an old poll-only client works beside presence
  clients and is bound by the deadline when it dies; a silent stream counts as ``silent``.
- Presence refusals: a third stream, a non-participant, a revoked client, hostile bytes.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator

import grpc
import numpy as np
import pytest
from sealagg_testkit.audit import audit_details
from sealagg_testkit.clients import DIM, expected_bias_and_weight, published_flat
from sealagg_testkit.presence_clients import (
    COMPLETE_GRAPH_PHASES,
    PresenceStream,
    expect_death,
    live_audit,
    on_loop,
    round_status,
    spawn_client,
    start_clients,
    wait_for,
)
from sealagg_testkit.proxy import PartitionProxy

from sealagg.appliance import admin_api
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import FederationFolder, add_client, revoke_client
from sealagg.appliance.kit import load_kit
from sealagg.appliance.testing import TcpProxy

#: Longer than any test's own timeout: finishing proves no deadline was waited out.
LONG = dict.fromkeys(
    ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking"), 120
)
#: Quick beats, so silence is noticed within a test; still 6 beats per silence period (a
#: loaded machine must not make a live client look silent).
QUICK_PRESENCE = {"beat_seconds": 0.5, "silence_seconds": 3.0}


def _masked(dep, clients: int, rounds: int = 1, **sections) -> None:
    dep.configure(
        aggregation={
            "mode": "secagg+",
            "min_clients": clients,
            "max_clients": clients,
            "rounds": rounds,
        },
        deadlines={**LONG, **sections.pop("deadlines", {})},
        **sections,
    )


@pytest.fixture
def spawn() -> Iterator[Callable[..., subprocess.Popen]]:
    """``spawn_client`` whose processes are killed at teardown if a test failed early."""
    started: list[subprocess.Popen] = []

    def start(*args, **kwargs) -> subprocess.Popen:
        process = spawn_client(*args, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.communicate(timeout=30)


@pytest.fixture
def streams() -> Iterator[Callable[..., PresenceStream]]:
    """Raw presence streams, closed (with their channels) at teardown."""
    opened: list[PresenceStream] = []

    def open_stream(*args, **kwargs) -> PresenceStream:
        stream = PresenceStream(*args, **kwargs)
        opened.append(stream)
        return stream

    yield open_stream
    for stream in opened:
        stream.close()


def _vanished_total(app, reason: str) -> float:
    value = app.app.metrics.registry.get_sample_value("sealagg_vanished_total", {"reason": reason})
    return value or 0.0


def _check_published(dep, app, members: list[int]) -> None:
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published", outcome
    assert outcome.contributors == tuple(f"client{i}" for i in members), outcome
    version, flat, _ = published_flat(dep)
    assert version == 2  # the base model is version 1; each test publishes once
    np.testing.assert_allclose(flat, expected_bias_and_weight(members), atol=2e-6)


# ---- 1. a client process killed in each phase -------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(110)
@pytest.mark.parametrize("phase", COMPLETE_GRAPH_PHASES)
def test_client_killed_in_each_phase_is_dropped_at_once(deployment, running, spawn, phase):
    """client4's process is SIGKILLed just before its upload of ``phase``. The appliance sees
    its presence stream close and stops waiting for it (a 120 s deadline is never reached):
    the round publishes the exact weighted mean of the clients the protocol counts (after
    its masked input a killed client stays in the sum: its self-mask is reconstructed), and
    the audit says ``connection_closed`` in exactly that phase."""
    dep = deployment(clients=5)
    _masked(dep, 5)
    app = running(dep.folder)
    doomed = spawn(dep, "client4", dimension=DIM, die_at=phase)
    clients = start_clients(dep, ["client0", "client1", "client2", "client3"])
    app.wait(100)
    for c in clients.values():
        c.join()
    expect_death(doomed)
    assert all(c.error is None for c in clients.values()), {n: c.error for n, c in clients.items()}
    assert all(c.outcomes() == ["published"] for c in clients.values())
    in_sum = COMPLETE_GRAPH_PHASES.index(phase) > COMPLETE_GRAPH_PHASES.index("masked_input")
    _check_published(dep, app, [0, 1, 2, 3, 4] if in_sum else [0, 1, 2, 3])
    assert audit_details(dep, "clients_dropped") == [
        {"round": 1, "phase": phase, "clients": {"client4": "connection_closed"}}
    ]
    assert _vanished_total(app, "connection_closed") >= 1


# ---- 2. too many killed: a clean abort, and the appliance keeps serving --------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_too_many_killed_aborts_cleanly_and_the_next_round_publishes(deployment, running, spawn):
    """Two of five clients die before their masked input (one SIGKILLed, one by os._exit):
    three survivors are below the quorum of four, so the round aborts as soon as both
    streams closed (not at the 120 s deadline), every survivor is told, the model is
    unchanged; the appliance then publishes the next round with two fresh clients."""
    dep = deployment(clients=7)
    _masked(dep, 5, rounds=2)
    app = running(dep.folder)
    doomed = [
        spawn(dep, "client3", dimension=DIM, die_at="masked_input", how="sigkill"),
        spawn(dep, "client4", dimension=DIM, die_at="masked_input", how="exit"),
    ]
    survivors = start_clients(dep, ["client0", "client1", "client2"], rounds=2)
    history = app.app.orchestrator.history
    wait_for(lambda: len(history) >= 1, "the first round's end", timeout=100)
    first = history[0]
    assert first.outcome == "aborted", first
    assert first.reason.startswith("phase masked_input: masked input: 3 clients, at least 4")
    assert published_version(app) == 1  # the model did not move
    fresh = start_clients(dep, ["client5", "client6"])
    app.wait(100)
    expect_death(doomed[0], "sigkill")
    expect_death(doomed[1], "exit")
    for c in [*survivors.values(), *fresh.values()]:
        c.join()
        assert c.error is None, (c.name, c.error)
    assert [c.outcomes() for c in survivors.values()] == [["aborted", "published"]] * 3
    _check_published(dep, app, [0, 1, 2, 5, 6])
    assert audit_details(dep, "clients_dropped") == [
        {
            "round": 1,
            "phase": "masked_input",
            "clients": {"client3": "connection_closed", "client4": "connection_closed"},
        }
    ]


def published_version(app) -> int:
    store = app.app.orchestrator.store
    return on_loop(app, lambda: store.current_model().version)


@pytest.mark.timeout(150)
def test_a_client_that_died_while_idle_is_not_chosen(deployment, running, spawn):
    """client0's process waits for a round (polling, presence on) and is SIGKILLed before
    one opens. Its last poll is recent, so by polling alone it would count as ready (and,
    first by name, be chosen); its closed stream says it is gone: the round waits for
    client5 instead and publishes with client1..client5, nobody dropped."""
    dep = deployment(clients=6)
    _masked(dep, 5)
    app = running(dep.folder)
    orch = app.app.orchestrator
    idle = spawn(dep, "client0", dimension=DIM)
    wait_for(
        lambda: on_loop(
            app, lambda: "client0" in orch.ready_clients() and orch.presence.is_live("client0")
        ),
        "client0 polling with presence",
    )
    idle.kill()
    expect_death(idle)
    wait_for(lambda: on_loop(app, lambda: orch.presence.is_gone("client0")), "client0 gone")
    assert "client0" not in on_loop(app, orch.ready_clients)
    clients = start_clients(dep, ["client1", "client2", "client3", "client4", "client5"])
    app.wait(100)
    for c in clients.values():
        c.join()
        assert c.error is None and c.outcomes() == ["published"], (c.name, c.error)
    _check_published(dep, app, [1, 2, 3, 4, 5])
    assert audit_details(dep, "clients_dropped") == []


# ---- 3. a member that reconnects within the phase ---------------------------------------


@pytest.mark.timeout(150)
@pytest.mark.parametrize("how", ["same_process", "restarted", "silent_then_beats", "flapping"])
def test_reconnect_within_the_phase(deployment, running, streams, how):
    """client4 runs the real shim without its own keeper and holds its presence on a raw
    stream; it stops before its masked input, while client3, slow, keeps the phase open.

    ``same_process``: its stream is reset (status: vanished, ``connection_closed``) and a new
    one opens naming the current round: client4 is taken back (``client_reconnected`` audited;
    ``flapping`` cycles its stream several times: audited once per phase, so a client cannot
    flood the audit log); once client3 answered, the phase still waits for client4, which then
    answers and is in the sum. ``silent_then_beats``: the same, but the stream only fell silent
    (``silent``) and beats again on the same stream. ``restarted``: the new stream names no
    round (a restarted process holds no protocol state): client4 is not taken back, the phase
    closes when client3 answers, client4 is dropped with ``connection_closed`` and its new
    stream is told so."""
    dep = deployment(clients=5)
    _masked(dep, 5, presence=QUICK_PRESENCE)
    app = running(dep.folder)
    stream = streams(dep.kits["client4"], dep.address)
    stream.wait_notices(1)
    stream.beat_every(0.3)
    normal = start_clients(dep, ["client0", "client1", "client2"])
    slow = start_clients(dep, ["client3"], gate_phase="masked_input")["client3"]
    target = start_clients(dep, ["client4"], presence=False, gate_phase="masked_input")["client4"]
    gated = [slow.participant, target.participant]
    wait_for(lambda: all(p.reached.is_set() for p in gated), "both held before masked input")
    wait_for(
        lambda: (round_status(app) or {}).get("waiting_for") == ["client3", "client4"],
        "the others' masked inputs",
    )
    round_id = target.participant.round_id
    was = "silent" if how == "silent_then_beats" else "connection_closed"
    if how == "silent_then_beats":
        stream.silence()
    else:
        stream.cancel()
    wait_for(lambda: round_status(app)["vanished"] == {"client4": was}, "client4 vanished")
    if how == "silent_then_beats":
        again = stream
    else:
        again = streams(dep.kits["client4"], dep.address)
        again.wait_notices(1)
    taken_back = how != "restarted"
    again.beat_every(0.3, round_id if taken_back else b"")
    if taken_back:
        wait_for(lambda: live_audit(app, "client_reconnected"), "client_reconnected")
        assert round_status(app)["vanished"] == {}
    for _ in range(6 if how == "flapping" else 0):
        again.cancel()
        wait_for(lambda: round_status(app)["vanished"] == {"client4": was}, "client4 vanished")
        again = streams(dep.kits["client4"], dep.address)
        again.wait_notices(1)
        again.beat_every(0.3, round_id)
        wait_for(lambda: round_status(app)["vanished"] == {}, "client4 back")
    slow.participant.go.set()
    if taken_back:
        wait_for(lambda: round_status(app)["waiting_for"] == ["client4"], "client3's masked input")
        time.sleep(1.0)  # a phase that wrongly closed now would have moved on by then
        status = round_status(app)
        assert status["phase"] == "masked_input" and status["waiting_for"] == ["client4"]
        assert live_audit(app, "clients_dropped") == []
    else:
        drops = wait_for(again.drops, "the drop notice on the new stream")
        assert [(d.dropped_round_id, d.dropped_phase, d.dropped_reason) for d in drops] == [
            (round_id, "masked_input", "connection_closed")
        ]
    target.participant.go.set()
    app.wait(100)
    for c in [*normal.values(), slow, target]:
        c.join()
    if taken_back:
        assert target.error is None and target.outcomes() == ["published"]
        _check_published(dep, app, [0, 1, 2, 3, 4])
        assert audit_details(dep, "client_reconnected") == [
            {"round": 1, "client": "client4", "phase": "masked_input", "was": was}
        ]
        assert audit_details(dep, "clients_dropped") == []
    else:
        _check_published(dep, app, [0, 1, 2, 3])
        assert audit_details(dep, "client_reconnected") == []
        assert audit_details(dep, "clients_dropped") == [
            {"round": 1, "phase": "masked_input", "clients": {"client4": "connection_closed"}}
        ]


@pytest.mark.timeout(150)
@pytest.mark.parametrize("cut", ["reset", "partition"])
def test_real_client_reconnects_within_the_phase(deployment, running, cut):
    """The real shim end to end: client4 (presence on) reaches the appliance through a
    proxy and holds its masked input while client3, slow, keeps the phase open. Its
    network breaks: ``reset`` closes every connection (the appliance sees the stream close:
    ``connection_closed``), ``partition`` goes silent without a reset (``silent``). When
    the network comes back, the shim's presence keeper reconnects naming the round it holds
    state for: the appliance takes it back (``client_reconnected``, ``was`` the reason),
    the phase waits for it after client3 answered, and its masked input is in the sum."""
    dep = deployment(clients=5)
    _masked(dep, 5, presence=QUICK_PRESENCE)
    app = running(dep.folder)
    target = ("127.0.0.1", dep.port)
    proxy = TcpProxy(target) if cut == "reset" else PartitionProxy(target)
    normal = start_clients(dep, ["client0", "client1", "client2"])
    slow = start_clients(dep, ["client3"], gate_phase="masked_input")["client3"]
    behind = start_clients(dep, ["client4"], gate_phase="masked_input", address=proxy.address)
    mover = behind["client4"]
    gated = [slow.participant, mover.participant]
    wait_for(lambda: all(p.reached.is_set() for p in gated), "both held before masked input")
    wait_for(
        lambda: (round_status(app) or {}).get("waiting_for") == ["client3", "client4"],
        "the others' masked inputs",
    )
    reason = "connection_closed" if cut == "reset" else "silent"
    if isinstance(proxy, TcpProxy):
        proxy.block()
    else:
        proxy.partition()
    wait_for(lambda: round_status(app)["vanished"] == {"client4": reason}, "client4 vanished")
    if isinstance(proxy, TcpProxy):
        proxy.unblock()
    else:
        proxy.heal()
    wait_for(lambda: live_audit(app, "client_reconnected"), "client_reconnected")
    assert round_status(app)["vanished"] == {}
    slow.participant.go.set()
    wait_for(lambda: round_status(app)["waiting_for"] == ["client4"], "client3's masked input")
    time.sleep(1.0)  # a phase that wrongly closed now would have moved on by then
    status = round_status(app)
    assert status["phase"] == "masked_input" and status["waiting_for"] == ["client4"]
    mover.participant.go.set()
    app.wait(100)
    for c in [*normal.values(), slow, mover]:
        c.join()
        assert c.error is None and c.outcomes() == ["published"], (c.name, c.error)
    proxy.close()
    _check_published(dep, app, [0, 1, 2, 3, 4])
    assert audit_details(dep, "client_reconnected") == [
        {"round": 1, "client": "client4", "phase": "masked_input", "was": reason}
    ]
    assert audit_details(dep, "clients_dropped") == []


# ---- 4. slow but alive -------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_slow_but_alive_client_is_waited_for(deployment, running):
    """client4 (real shim, presence on) holds its masked input for two silence periods
    after every other member answered. Its heartbeats keep it live, so the phase waits
    for it (never closed early, never ``silent``) and it is in the published sum."""
    dep = deployment(clients=5)
    _masked(dep, 5, presence=QUICK_PRESENCE)
    app = running(dep.folder)
    others = start_clients(dep, ["client0", "client1", "client2", "client3"])
    slow = start_clients(dep, ["client4"], gate_phase="masked_input")["client4"]
    wait_for(slow.participant.reached.is_set, "client4 held before its masked input")
    wait_for(
        lambda: (round_status(app) or {}).get("waiting_for") == ["client4"],
        "the others' masked inputs",
    )
    time.sleep(2 * QUICK_PRESENCE["silence_seconds"])  # far longer than the others took
    status = round_status(app)
    assert status["phase"] == "masked_input" and status["waiting_for"] == ["client4"]
    assert status["vanished"] == {}
    assert live_audit(app, "clients_dropped") == []
    slow.participant.go.set()
    app.wait(100)
    for c in [*others.values(), slow]:
        c.join()
        assert c.error is None and c.outcomes() == ["published"], (c.name, c.error)
    _check_published(dep, app, [0, 1, 2, 3, 4])
    assert audit_details(dep, "clients_dropped") == []
    assert _vanished_total(app, "silent") == 0


# ---- 5. old poll-only clients (version skew) ---------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_poll_only_clients_work_and_a_dead_one_is_bound_by_the_deadline(deployment, running, spawn):
    """Six members: four with presence, client5 an older poll-only client (presence off)
    that contributes, client4 a poll-only client process SIGKILLed before its masked input.
    Without a stream nobody can tell that client4 died, so the phase waits for it until the
    (here short) masked-input deadline: it is dropped with reason ``deadline`` and the audit
    describes that deadline; the round publishes the others' exact mean."""
    dep = deployment(clients=6)
    _masked(dep, 6, deadlines={"masked_input": 6})
    app = running(dep.folder)
    doomed = spawn(dep, "client4", dimension=DIM, die_at="masked_input", presence=False)
    clients = start_clients(dep, ["client0", "client1", "client2", "client3"])
    old = start_clients(dep, ["client5"], presence=False)["client5"]
    assert old.participant.presence is None
    app.wait(120)
    expect_death(doomed)
    for c in [*clients.values(), old]:
        c.join()
        assert c.error is None and c.outcomes() == ["published"], (c.name, c.error)
    _check_published(dep, app, [0, 1, 2, 3, 5])
    dropped = audit_details(dep, "clients_dropped")
    assert len(dropped) == 1, dropped
    deadline = dropped[0].pop("deadline")
    assert dropped == [{"round": 1, "phase": "masked_input", "clients": {"client4": "deadline"}}]
    assert deadline["phase"] == "masked_input" and deadline["configured"] == 6.0
    assert deadline["chosen"] == 6.0 and deadline["adaptive"] is False


# ---- 6. a silent stream ------------------------------------------------------------------


@pytest.mark.timeout(150)
def test_silent_stream_is_dropped_as_silent_and_told(deployment, running, streams):
    """client4 holds its presence on a raw stream that stops beating but stays open (a
    network gone without a reset) while client4 holds its masked input: after the silence
    limit it is absent, the phase closes without it (reason ``silent``), its still-open
    stream is told it was dropped, and the round publishes the others' exact mean."""
    dep = deployment(clients=5)
    _masked(dep, 5, presence=QUICK_PRESENCE)
    app = running(dep.folder)
    stream = streams(dep.kits["client4"], dep.address)
    first = stream.wait_notices(1)[0]
    assert (first.beat_seconds, first.silence_seconds) == (0.5, 3.0)
    stream.beat_every(0.3)
    others = start_clients(dep, ["client0", "client1", "client2", "client3"])
    quiet = start_clients(dep, ["client4"], presence=False, gate_phase="masked_input")["client4"]
    wait_for(quiet.participant.reached.is_set, "client4 held before its masked input")
    wait_for(
        lambda: (round_status(app) or {}).get("waiting_for") == ["client4"],
        "the others' masked inputs",
    )
    round_id = quiet.participant.round_id
    stream.silence()
    drops = wait_for(stream.drops, "the drop notice on the silent stream")
    assert [(d.dropped_round_id, d.dropped_phase, d.dropped_reason) for d in drops] == [
        (round_id, "masked_input", "silent")
    ]
    assert not stream.ended.is_set()  # silence never closes the stream
    quiet.participant.go.set()
    app.wait(100)
    for c in others.values():
        c.join()
        assert c.error is None and c.outcomes() == ["published"], (c.name, c.error)
    quiet.join()
    stream.close()
    _check_published(dep, app, [0, 1, 2, 3])
    assert audit_details(dep, "clients_dropped") == [
        {"round": 1, "phase": "masked_input", "clients": {"client4": "silent"}}
    ]
    assert _vanished_total(app, "silent") >= 1


# ---- 7. presence refusals ----------------------------------------------------------------


def _code(stream: PresenceStream) -> tuple[grpc.StatusCode | None, str]:
    error = stream.wait_end()
    return (None, "") if error is None else (error.code(), error.details() or "")


@pytest.mark.timeout(120)
def test_presence_refusals_and_hostile_streams(deployment, running, streams):
    """A third concurrent stream of one client is refused (RESOURCE_EXHAUSTED, counted); a
    certificate holder that takes no part in rounds and a revoked client are refused
    (PERMISSION_DENIED); bytes that are no Heartbeat end only their own stream
    (INVALID_ARGUMENT) and an oversized round id ends nothing; a stream the client
    half-closes ends cleanly and counts it gone. The two honest streams stay live
    throughout, and a plaintext round with three clients then publishes (the clients whose
    streams were refused or broken hold a working stream again)."""
    dep = deployment(clients=4)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 3, "rounds": 1}, deadlines=LONG)
    admin = load_kit(add_client(FederationFolder.load(dep.folder), "admin"))
    app = running(dep.folder)
    board = app.app.orchestrator.presence

    held = [streams(dep.kits["client0"], dep.address) for _ in range(2)]
    for s in held:
        s.wait_notices(1)
        s.beat_every(0.3)
    third = streams(dep.kits["client0"], dep.address)
    code, detail = _code(third)
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "client0 already holds 2 presence streams (at most 2)" in detail
    assert third.notices == []
    refused = app.app.metrics.registry.get_sample_value(
        "sealagg_refused_calls_total", {"reason": "presence_streams"}
    )
    assert refused == 1
    live = on_loop(app, lambda: app.app.orchestrator.status()["presence_streams"])
    assert live == 1  # clients with a live stream: client0's two count once

    outsider = streams(admin, dep.address)
    code, detail = _code(outsider)
    assert code == grpc.StatusCode.PERMISSION_DENIED and outsider.notices == []
    assert detail == "admin does not take part in rounds"
    revoke_client(FederationFolder.load(dep.folder), "client3")
    revoked = streams(dep.kits["client3"], dep.address)
    code, detail = _code(revoked)
    assert code == grpc.StatusCode.PERMISSION_DENIED, detail
    assert "revoked" in detail and revoked.notices == []

    garbage = streams(dep.kits["client1"], dep.address, request_serializer=lambda raw: raw)
    garbage.wait_notices(1)
    garbage.send_raw(b"\x0a\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01")  # a broken varint
    code, detail = _code(garbage)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid /sealagg.v1.Aggregator/Presence message" in detail
    wait_for(lambda: not on_loop_live(app, board, "client1"), "the hostile stream closed")

    oversized = streams(dep.kits["client2"], dep.address)
    oversized.wait_notices(1)
    oversized.beat(b"r" * 100_000)
    oversized.beat(b"r" * 100_000)
    assert not oversized.ended.wait(1.0), oversized.error  # a long round id ends nothing
    oversized.half_close()  # the client says goodbye: the call ends cleanly, client2 is gone
    assert oversized.wait_end() is None
    wait_for(lambda: on_loop(app, lambda: board.is_gone("client2")), "client2 gone")

    assert all(not s.ended.is_set() for s in held)
    assert on_loop_live(app, board, "client0")
    for s in held:
        s.close()
    clients = start_clients(dep, ["client0", "client1", "client2"])
    app.wait(100)
    for c in clients.values():
        c.join()
        assert c.error is None and c.outcomes() == ["published"], (c.name, c.error)
        assert c.participant.presence.supported  # a refused stream earlier sticks to nobody
    assert app.app.orchestrator.history[-1].contributors == ("client0", "client1", "client2")


def on_loop_live(app, board, name: str) -> bool:
    return bool(on_loop(app, lambda: board.is_live(name)))


# ---- 8. a member that vanishes before revealing its graph coin ----------------------------

#: A SecAgg+ round over 16 clients draws a sparse graph (degree 14 with the default
#: dropout and corruption rates), so it has a coin reveal phase.
SPARSE_N = 16


def _ready(app) -> list[str]:
    return on_loop(app, app.app.orchestrator.ready_clients)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_member_vanishing_before_its_coin_reveal_is_replaced_at_once(deployment, running, spawn):
    """client15's process advertises its keys and is SIGKILLed before revealing its graph
    coin. Every committed coin must be revealed (crypto/coins.py), so that round aborts; the
    run (one round) replaces it at once with a fresh round among the 15 others, uncounted and
    audited as ``round_restarted``, which publishes their exact mean: the run ends with one
    published version, not with an aborted round (a 120 s deadline is never reached)."""
    doomed_name = f"client{SPARSE_N - 1}"
    dep = deployment(clients=SPARSE_N)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    _masked(dep, SPARSE_N - 1, rounds=0)
    dep.configure(aggregation={"max_clients": SPARSE_N, "ready_window": 60.0})
    app = running(dep.folder)
    with admin_api.connect(dep.folder, address=dep.address, timeout=15) as admin:
        run_id = admin.create_run(name="one", rounds=1, start=True)["id"]
        admin.pause_run(run_id)  # until all 16 wait, so the round holds the doomed client
        doomed = spawn(dep, doomed_name, dimension=DIM, die_at="reveal_coins")
        names = [f"client{i}" for i in range(SPARSE_N - 1)]
        clients = start_clients(dep, names, rounds=2)
        wait_for(lambda: len(_ready(app)) == SPARSE_N, "all 16 clients ready", timeout=120)
        admin.resume_run(run_id)
        expect_death(doomed, timeout=120)
        for c in clients.values():
            c.join(120)
            assert c.error is None, (c.name, c.error)
            assert c.outcomes() == ["aborted", "published"], (c.name, c.outcomes())
        (run,) = [r for r in admin.runs() if r["id"] == run_id]
    first, _ = app.app.orchestrator.history
    assert first.outcome == "aborted" and "coin" in first.reason, first
    assert first.vanished_before_reveal == (doomed_name,)
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published" and set(outcome.contributors) == set(names), outcome
    version, flat, _ = published_flat(dep)
    assert version == 2  # the base model is version 1: one version, from the fresh round
    np.testing.assert_allclose(flat, expected_bias_and_weight(range(SPARSE_N - 1)), atol=2e-6)
    assert (run["status"], run["rounds_done"]) == ("finished", 1), run
    assert audit_details(dep, "clients_dropped")[0] == {
        "round": 1,
        "phase": "reveal_coins",
        "clients": {doomed_name: "connection_closed"},
    }
    restarted = audit_details(dep, "round_restarted")
    assert [(r["round"], r["restart"], r["vanished_before_reveal"]) for r in restarted] == [
        (1, 1, [doomed_name])
    ]


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_a_reveal_missed_by_a_poll_only_client_is_not_restarted(deployment, running, spawn):
    """The same death by an old poll-only client: nobody can tell it vanished, so the reveal
    phase waits its (short) deadline and the round aborts as before, counted against the run,
    with no ``round_restarted``: only a vanishing seen by presence replaces a round."""
    doomed_name = f"client{SPARSE_N - 1}"
    dep = deployment(clients=SPARSE_N)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    _masked(dep, SPARSE_N - 1, rounds=0, deadlines={"share_keys": 5})
    dep.configure(aggregation={"max_clients": SPARSE_N, "ready_window": 60.0})
    app = running(dep.folder)
    with admin_api.connect(dep.folder, address=dep.address, timeout=15) as admin:
        run_id = admin.create_run(name="one", rounds=1, start=True)["id"]
        admin.pause_run(run_id)
        doomed = spawn(dep, doomed_name, dimension=DIM, die_at="reveal_coins", presence=False)
        names = [f"client{i}" for i in range(SPARSE_N - 1)]
        clients = start_clients(dep, names, rounds=1)
        wait_for(lambda: len(_ready(app)) == SPARSE_N, "all 16 clients ready", timeout=120)
        admin.resume_run(run_id)
        expect_death(doomed, timeout=120)
        for c in clients.values():
            c.join(120)
            assert c.outcomes() == ["aborted"], (c.name, c.outcomes(), c.error)

        def run_now() -> dict:
            return next(r for r in admin.runs() if r["id"] == run_id)

        wait_for(lambda: run_now()["status"] == "finished", "the run's end")
        run = run_now()
    (only,) = app.app.orchestrator.history
    assert only.outcome == "aborted" and only.vanished_before_reveal == (), only
    assert run["rounds_done"] == 1, run
    assert audit_details(dep, "round_restarted") == []
    dropped = audit_details(dep, "clients_dropped")[0]
    assert dropped["phase"] == "reveal_coins" and dropped["clients"] == {doomed_name: "deadline"}
    assert published_flat(dep)[0] == 1  # nothing was published
