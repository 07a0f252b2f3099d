"""Asynchronous runs in secagg+ mode (issue 21): each buffer is one secure-aggregation round.

Real appliance, mutual TLS on loopback, real shim ``Participant`` objects (presence on); the
test decides who trains on which version by when each client takes its lease:

- exactness: each published version is its parent plus the staleness-weighted mean of its
  buffer's members (tau = 0, 1 and 2 within one buffer), computed here independently, within
  the quantization bound and far from the unweighted mean; one buffer has a member that
  vanishes right after its masked input (recovered as in a round: its input counts);
- a buffer whose members fall below the round's minimum (two of four vanish after advertising
  keys) is aborted, nothing is published, the others are told why, and the next buffer
  publishes; members that were fresh when they registered but are past the maximum
  staleness when their buffer's round starts are left out, told why, and the buffer aborts;
- refusals hold in masked mode: past the maximum staleness, a base version never leased, a
  second registration into one buffer; and a client refuses a buffer's round that lists
  another base version for it (the RoundStart tampered on its way in): audited, and the
  buffer goes on without it;
- members of a buffer that never fills learn that the run was stopped.
"""

from __future__ import annotations

import threading

import grpc
import numpy as np
import pytest
from sealagg_testkit.async_runs import (
    SeededUpdates,
    audit_entries,
    client3_refuses_its_base,
    flat_version,
    run_rounds_in_threads,
    start_async_run,
    two_buffers_then_lease,
    wait_until,
)
from sealagg_testkit.async_runs import current_version as _current
from sealagg_testkit.async_runs import read_state as _state
from sealagg_testkit.raw_clients import RawClient

from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import add_client
from sealagg.appliance.kit import load_kit
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant
from sealagg.crypto import Phase, QuantizationSpec

K = 4
ASYNC = {"buffer_size": K, "max_staleness": 2, "staleness": "polynomial", "a": 0.5}
#: Generous deadlines: presence ends a vanished member's wait; these only bound a hang.
DEADLINES = dict.fromkeys(
    ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking"), 60
)
CLIP = 1.0


class VanishedError(Exception):
    """A test client's process 'dies' (its connection and presence stream close)."""


class VanishAfter(Participant):
    """Closes its connection right after sending its message of ``phase``."""

    vanish_phase: int = -1

    def _send(self, start, phase, message, meta, deadline_unix):
        sent = super()._send(start, phase, message, meta, deadline_unix)
        if start.async_buffer and phase == self.vanish_phase:
            self.connection.close()
            raise VanishedError(f"vanished after phase {phase}")
        return sent


class LiesAboutItself(Participant):
    """Shown a buffer round that lists a base version one older than its real one for it (as
    a malicious appliance deflating its weight would): the shim must refuse it."""

    def _task(self) -> pb.Task:
        task = super()._task()
        if task.WhichOneof("kind") == "round_start" and task.round_start.async_buffer:
            start = task.round_start
            for p in start.participants:
                if p.index == start.client_index:
                    p.base_version -= 1
        return task


def _admin_stop(dep, run_id: str) -> None:
    kit = load_kit(dep.folder / ADMIN_KIT_DIRNAME)
    ca, key, cert = kit.channel_credentials_material()
    options = [("grpc.ssl_target_name_override", kit.server_name)]
    with grpc.secure_channel(
        dep.address, grpc.ssl_channel_credentials(ca, key, cert), options
    ) as ch:
        control = pb.RunControl(run_id=run_id, action="stop", reason="test over")
        reply = pb_grpc.AdminStub(ch).ControlRun(control, timeout=15)
    assert reply.ok, reply.detail


def _admin_create(dep, params: dict, rounds: int) -> str:
    return start_async_run(dep, params, rounds=rounds, name="masked")["id"]


@pytest.fixture
def masked(deployment, running):
    dep = deployment(clients=6)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(
        aggregation={
            "mode": "secagg+",
            "min_clients": 3,
            "rounds": 0,
            "ready_window": 30.0,
            "clip": CLIP,
        },
        deadlines=DEADLINES,
    )
    app = running(dep.folder)
    connections: list[Connection] = []

    def participant(name: str, cls: type[Participant] = Participant, **attrs) -> Participant:
        conn = Connection(dep.kits[name], address=dep.address)
        connections.append(conn)
        p = cls(conn, poll_seconds=0.5)
        for key, value in attrs.items():
            setattr(p, key, value)
        return p

    yield dep, app, participant
    for conn in connections:
        if not conn.closed:
            conn.close()


def _wait_for(condition, timeout: float = 60.0) -> None:
    wait_until(condition, timeout)


def _expected(parent: np.ndarray, members: dict[str, tuple[int, int]], updates: SeededUpdates):
    """parent + sum(w s(tau) u) / sum(w s(tau)), tau = parent version - base (here)."""
    num = np.zeros_like(parent)
    den = 0.0
    plain = np.zeros_like(parent)
    for name, (base, parent_version) in members.items():
        update, w = updates.given[(name, base)]
        s = (1.0 + parent_version - base) ** -0.5
        num += w * s * update
        den += w * s
        plain += update
    return parent + num / den, parent + plain / len(members), den


def _check_version(dep, version: int, members: dict[str, tuple[int, int]], updates: SeededUpdates):
    parent = flat_version(dep, version - 1)
    expected, unweighted, den = _expected(parent, members, updates)
    got = flat_version(dep, version)
    # Quantization: each of the K summed codes errs by at most 1/scale, divided by sum(w s).
    spec = QuantizationSpec(clip=CLIP, max_clients=K)
    bound = (spec.error_bound(len(members)) + 1e-7) / den + 1e-6
    assert np.abs(got - expected).max() <= bound
    assert np.abs(got - unweighted).max() > 20 * bound  # the weights matter: it can fail


def test_each_buffer_publishes_the_staleness_weighted_mean_with_a_dropout(masked):
    dep, app, participant = masked
    _admin_create(dep, ASYNC, rounds=3)
    names = [f"client{i}" for i in range(6)]
    p = {n: participant(n) for n in names[:3]}
    p["client3"] = participant("client3", VanishAfter, vanish_phase=-1)
    p.update({n: participant(n) for n in names[4:]})
    updates = SeededUpdates(11)
    weights = {"client0": 1.0, "client1": 0.5, "client2": 0.8, "client3": 0.9}
    weights.update({"client4": 0.7, "client5": 1.0})
    leases = {n: p[n].wait_for_round(max_polls=40) for n in names}
    assert {lease.model_version for lease in leases.values()} == {1}
    assert all(lease.asynchronous and not lease.async_buffer for lease in leases.values())

    def job(name: str):
        return p[name], leases[name], updates.compute(name, weights[name])

    # Buffers 1 and 2 (parents 1 and 2), then client0 and client1 lease version 3.
    two_buffers_then_lease(
        dep, p, leases, job, lambda v, members: _check_version(dep, v, members, updates)
    )
    # Buffer 3 (parent 3): client5 on 1 (tau 2), client3 on 2 (tau 1), client0 and client1
    # on 3; client3 vanishes right after its masked input: its input still counts.
    p["client3"].vanish_phase = int(Phase.MASKED_INPUT)
    reports, errors = run_rounds_in_threads({n: job(n) for n in ("client5", "client3", *names[:2])})
    assert set(errors) == {"client3"} and isinstance(errors["client3"], VanishedError), errors
    assert reports["client5"].staleness == 2
    assert {r.outcome for r in reports.values()} == {"published"}
    members = {"client5": (1, 3), "client3": (2, 3), "client0": (3, 3), "client1": (3, 3)}
    _check_version(dep, 4, members, updates)
    # The audit: every member's base version, staleness and weight per buffer; the run ends.
    entries = audit_entries(dep)
    buffers = [e.details for e in entries if e.event == "async_buffer"]
    assert [b["buffer"] for b in buffers] == [1, 2, 3]
    assert all(b["masked"] for b in buffers)
    assert buffers[2]["members"]["client5"] == {
        "base_version": 1,
        "staleness": 2,
        "staleness_weight": pytest.approx(3**-0.5),
        "client_weight": "inside the masked vector",
    }
    assert buffers[2]["members"]["client3"]["staleness"] == 1
    parts = [e.details for e in entries if e.event == "participants"]
    assert parts[-1]["base_versions"] == {"client0": 3, "client1": 3, "client3": 2, "client5": 1}
    dropped = [e.details for e in entries if e.event == "clients_dropped"]
    assert dropped and dropped[-1]["clients"] == {"client3": "connection_closed"}
    _wait_for(lambda: app.app.orchestrator.runs.running() is None)


def test_a_buffer_below_the_minimum_aborts_and_the_next_one_publishes(masked):
    dep, _app, participant = masked
    _admin_create(dep, ASYNC, rounds=0)
    names = [f"client{i}" for i in range(6)]
    p = {n: participant(n) for n in names[:2]}
    p.update({n: participant(n, VanishAfter, vanish_phase=0) for n in names[2:4]})
    p.update({n: participant(n) for n in names[4:]})
    updates = SeededUpdates(11)
    leases = {n: p[n].wait_for_round(max_polls=40) for n in names}
    weights = dict(zip(names, (1.0, 0.5, 0.9, 0.9, 0.8, 0.3), strict=True))

    def job(name: str):
        return p[name], leases[name], updates.compute(name, weights[name])

    # Two of four vanish after advertising keys: 2 left, the round needs 3.
    reports, errors = run_rounds_in_threads({n: job(n) for n in names[:4]})
    assert set(errors) == {"client2", "client3"}, errors
    for n in names[:2]:
        assert reports[n].outcome == "aborted"
        assert "at least 3 required" in reports[n].reason, reports[n].reason
    dropped = [e.details for e in audit_entries(dep) if e.event == "clients_dropped"]
    assert dropped[0]["clients"] == {"client2": "connection_closed", "client3": "connection_closed"}
    assert _current(dep) == 1  # nothing published, nothing revealed
    aborted = _state(dep, lambda s: [r for r in s.rounds() if r.status == "aborted"])
    assert len(aborted) == 1
    # The run goes on: the next buffer (two new members, two re-leased) publishes.
    for n in names[:2]:
        leases[n] = p[n].wait_for_round(max_polls=40)
    reports, errors = run_rounds_in_threads({n: job(n) for n in (*names[:2], *names[4:])})
    assert not errors, errors
    assert {r.outcome for r in reports.values()} == {"published"}
    assert _current(dep) == 2
    _check_version(dep, 2, {n: (1, 1) for n in (*names[:2], *names[4:])}, updates)


def _lease_raw(client: RawClient) -> pb.RoundStart:
    for _ in range(40):
        task = client.poll(1.0)
        if task.WhichOneof("kind") == "round_start":
            return task.round_start
    raise AssertionError(f"{client.name} got no lease")


def _register(client: RawClient, start: pb.RoundStart, base: int = 0) -> pb.SubmitAck:
    header = pb.UploadHeader(
        round_id=start.round_id,
        kind="async_registration",
        base_version=base or start.model_version,
    )
    return client.submit(header, b"")


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def test_registration_refusals_hold_in_masked_mode(masked):
    dep, _app, participant = masked
    _admin_create(dep, {**ASYNC, "max_staleness": 0}, rounds=0)
    a, b = RawClient(dep.kits["client0"], dep.address), RawClient(dep.kits["client5"], dep.address)
    try:
        old = _lease_raw(a)
        assert old.mode == "secagg+" and old.asynchronous and not old.async_buffer
        # Buffer 1 (four shim clients) publishes version 2 while client0 holds its lease.
        updates = SeededUpdates(11)
        p = {f"client{i}": participant(f"client{i}") for i in range(1, 5)}
        jobs = {
            n: (x, x.wait_for_round(max_polls=40), updates.compute(n, 1.0)) for n, x in p.items()
        }
        reports, errors = run_rounds_in_threads(jobs)
        assert not errors and {r.outcome for r in reports.values()} == {"published"}, errors
        # Past the maximum staleness (0): refused with the reason, the lease spent.
        error = _refused(lambda: _register(a, old))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "1 versions old; this run accepts at most 0" in error.details()
        # A fresh lease registers; a second registration into the same buffer is refused.
        la1, la2, lb = _lease_raw(a), _lease_raw(a), _lease_raw(b)
        assert la1.model_version == 2
        ack = _register(a, la1)
        assert ack.receipt.buffered == 1 and len(ack.receipt.buffer_round_id) == 32
        assert ack.receipt.buffer_number == 2 and ack.receipt.staleness == 0
        assert "registered for buffer 2 (1 of 4)" in ack.detail
        error = _refused(lambda: _register(a, la2))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS
        assert "already registered for buffer 2" in error.details()
        error = _refused(lambda: _register(a, la1))
        assert error.code() == grpc.StatusCode.ALREADY_EXISTS and "already used" in error.details()
        # A base version that does not exist; one never leased to this client.
        error = _refused(lambda: _register(b, lb, base=99))
        assert error.code() == grpc.StatusCode.NOT_FOUND
        error = _refused(lambda: _register(b, lb, base=1))
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "never leased to client5" in error.details()
        # An update in the clear is never taken in a masked run.
        header = pb.UploadHeader(round_id=lb.round_id, kind="plaintext_update", weight=1.0)
        error = _refused(lambda: b.submit(header, b"\0" * 4 * lb.vector_length))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert _register(b, lb).receipt.buffered == 2  # b's lease was not spent by refusals
    finally:
        a.close()
        b.close()


def test_a_client_refuses_a_buffer_listing_another_base_version_for_it(masked):
    dep, _app, participant = masked
    _admin_create(dep, ASYNC, rounds=0)
    updates = SeededUpdates(11)
    weights = {"client0": 1.0, "client1": 0.5, "client2": 0.8, "client3": 1.0}
    p = {n: participant(n) for n in ("client0", "client1", "client2")}
    p["client3"] = participant("client3", LiesAboutItself)
    client3_refuses_its_base(p, updates, weights)
    refusals = [e.details for e in audit_entries(dep) if e.event == "round_refused_by_client"]
    assert [(r["client"], r["code"]) for r in refusals] == [("client3", "parameters")]
    # The buffer went on without it: the weighted mean of the three that took part.
    _check_version(dep, 2, {n: (1, 1) for n in ("client0", "client1", "client2")}, updates)


class SlowToAdvertise(Participant):
    """Takes a while before its first message of a buffer's round (a slow device)."""

    def _send(self, start, phase, message, meta, deadline_unix):
        if start.async_buffer and phase == 0:
            threading.Event().wait(3.0)
        return super()._send(start, phase, message, meta, deadline_unix)


def test_members_stale_by_the_time_their_buffer_runs_are_left_out_and_told(masked):
    """max_staleness 0, K 3: three raw clients register on version 1 while buffer 1's round
    (on version 1) is still running; it publishes version 2, so by the time buffer 2 runs
    they are one version behind: each is told why, and the buffer aborts with nothing."""
    dep, app, participant = masked
    _admin_create(dep, {**ASYNC, "buffer_size": 3, "max_staleness": 0}, rounds=0)
    raw = {n: RawClient(dep.kits[n], dep.address) for n in ("client3", "client4", "client5")}
    try:
        late = {n: _lease_raw(c) for n, c in raw.items()}
        updates = SeededUpdates(11)
        p = {n: participant(n) for n in ("client0", "client1")}
        p["client2"] = participant("client2", SlowToAdvertise)
        jobs = {
            n: (x, x.wait_for_round(max_polls=40), updates.compute(n, 1.0)) for n, x in p.items()
        }
        scheduler = app.app.orchestrator.async_runs
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(run_rounds_in_threads(jobs)[0]))
        thread.start()
        _wait_for(lambda: bool(scheduler.full))  # buffer 1 full: its round runs
        assert _current(dep) == 1
        acks = {n: _register(raw[n], late[n]) for n in raw}  # accepted: version 1 is current
        assert {a.receipt.buffer_number for a in acks.values()} == {2}
        assert {a.receipt.staleness for a in acks.values()} == {0}
        thread.join(120)
        assert {r.outcome for r in outcome.values()} == {"published"}
        assert _current(dep) == 2
        round_id = acks["client3"].receipt.buffer_round_id
        for c in raw.values():
            ends = []
            for _ in range(60):
                task = c.poll(0.5)
                if task.WhichOneof("kind") == "round_end" and task.round_end.round_id == round_id:
                    ends.append(task.round_end)
                    break
            assert ends and ends[0].outcome == pb.RoundEnd.ABORTED
            assert "stale by the time buffer 2 ran" in ends[0].reason
        stale = [e.details for e in audit_entries(dep) if e.event == "async_members_stale"]
        assert stale == [{"round": stale[0]["round"], "buffer": 2, "clients": sorted(raw)}]
        rounds = _state(dep, lambda s: {r.id: r.status for r in s.rounds()})
        assert rounds[stale[0]["round"]] == "aborted"
        assert _current(dep) == 2
    finally:
        for c in raw.values():
            c.close()


def test_members_of_an_unfinished_buffer_learn_the_run_stopped(masked):
    """Two shim clients registered for a buffer of four when an administrator stops the
    run: nothing is revealed, and each loop learns how its update ended."""
    dep, app, participant = masked
    run_id = _admin_create(dep, ASYNC, rounds=0)
    updates = SeededUpdates(11)
    p = {n: participant(n) for n in ("client0", "client1")}
    jobs = {n: (x, x.wait_for_round(max_polls=40), updates.compute(n, 1.0)) for n, x in p.items()}
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(run_rounds_in_threads(jobs)[0]))
    thread.start()
    scheduler = app.app.orchestrator.async_runs
    _wait_for(lambda: scheduler.filling is not None and len(scheduler.filling.members) == 2)
    _admin_stop(dep, run_id)
    thread.join(120)
    assert set(outcome) == {"client0", "client1"}
    for report in outcome.values():
        assert report.outcome == "aborted" and "stopped" in report.reason, report
    assert _current(dep) == 1
