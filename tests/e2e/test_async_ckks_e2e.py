"""Asynchronous runs in ckks mode (issue 21): each buffer is one CKKS round.

Real appliance, mutual TLS on loopback, real TenSEAL keys, real shim ``Participant`` objects
(presence on) for the data owners and for the key holder (client6, roster role
``key_holder``, which takes no lease and answers every buffer's round); the test decides who
trains on which version by when each client takes its lease:

- exactness: each published version is its parent plus the staleness-weighted mean of its
  buffer's members (tau = 0, 1 and 2 within one buffer), computed here independently, within
  the CKKS error bound and far from the unweighted mean; in one buffer a member vanishes after
  its key advert and the buffer publishes the weighted mean of the others;
- members fresh when they registered but past the maximum staleness when their buffer's round
  starts are left out and told why, and the buffer aborts;
- refusals: a registration past the maximum staleness; a member whose contribution claims
  another base version than the buffer lists for it (refused on arrival, the buffer goes on
  without it); a key holder shown another base version for a member than the members saw
  refuses the buffer, and nothing is published; a data owner refuses a buffer listing another
  base version for it.
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

from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import add_client
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant, RoundReport
from sealagg.crypto import IdentityKey
from sealagg.crypto.buffer_context import BufferContext
from sealagg.crypto.ckks import CkksEncryptor, CkksParameters
from sealagg.crypto.ckks_keys import CkksParty, read_bundle
from sealagg.crypto.roster import Role
from sealagg.crypto.staleness import StalenessPolicy

pytest.importorskip("tenseal")

K = 4
ASYNC = {"buffer_size": K, "max_staleness": 2, "staleness": "polynomial", "a": 0.5}
KEY_HOLDER = "client6"
#: Generous deadlines: presence ends a vanished member's wait; these only bound a hang.
DEADLINES = dict.fromkeys(
    ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking"), 60
)
CLIP = 1.0
PARAMS = CkksParameters()


class VanishedError(Exception):
    """A test client's process 'dies' (its connection and presence stream close)."""


class VanishingConnection(Connection):
    """Closes right after sending its ckks message of ``vanish_phase``."""

    vanish_phase = -1

    def submit(self, header, payload, **kwargs):
        ack = super().submit(header, payload, **kwargs)
        if header.kind == "ckks" and header.phase == self.vanish_phase:
            self.close()
            raise VanishedError(f"vanished after phase {header.phase}")
        return ack


class KeyHolderShownAnotherBase(Participant):
    """A key holder to whom the appliance shows, for the member of index 1, another base
    version than the members saw (one version older): it must refuse the buffer."""

    def _task(self) -> pb.Task:
        task = super()._task()
        if task.WhichOneof("kind") == "round_start" and task.round_start.async_buffer:
            for p in task.round_start.participants:
                if p.index == 1:
                    p.base_version -= 1
        return task


@pytest.fixture
def ckks_async(deployment, running):
    dep = deployment(clients=7)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(
        aggregation={
            "mode": "ckks",
            "min_clients": 3,
            "rounds": 0,
            "ready_window": 30.0,
            "clip": CLIP,
        },
        deadlines=DEADLINES,
        ckks={"key_holder": KEY_HOLDER},
    )
    dep.sign_roster(roles={KEY_HOLDER: Role.KEY_HOLDER})  # the authority designates it
    app = running(dep.folder)
    connections: list[Connection] = []
    stop = threading.Event()
    threads: list[threading.Thread] = []

    def participant(name: str, cls: type[Participant] = Participant, conn_cls=Connection):
        conn = conn_cls(dep.kits[name], address=dep.address)
        connections.append(conn)
        return cls(conn, poll_seconds=0.5)

    def key_holder(cls: type[Participant] = Participant) -> list:
        """The key holder's loop, as its operator runs it: every buffer round it is sent."""
        kh = participant(KEY_HOLDER, cls)
        outcomes: list = []

        def never(start, tensors):
            raise AssertionError("the key holder trains nothing")

        def work() -> None:
            while not stop.is_set():
                try:
                    start = kh.wait_for_round(max_polls=2)
                except TimeoutError:
                    continue
                except Exception as error:  # e.g. the run ended: recorded, the loop goes on
                    outcomes.append(error)
                    continue
                try:
                    outcomes.append(kh.run_round(never, start=start))
                except Exception as error:  # a refusal: recorded for the assertions
                    outcomes.append(error)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        threads.append(thread)
        return outcomes

    yield dep, app, participant, key_holder
    stop.set()
    for thread in threads:
        thread.join(15)
    for conn in connections:
        if not conn.closed:
            conn.close()


def _check_version(dep, version: int, members: dict[str, tuple[int, int]], updates: SeededUpdates):
    """Version ``version`` = its parent + sum(w s(tau) u) / sum(w s(tau)) over ``members``
    (name -> (base, parent)), within the CKKS bound; and far from the unweighted mean."""
    parent = flat_version(dep, version - 1)
    num, den, plain = np.zeros_like(parent), 0.0, np.zeros_like(parent)
    for name, (base, parent_version) in members.items():
        update, w = updates.given[(name, base)]
        s = (1.0 + parent_version - base) ** -0.5
        num += w * s * np.clip(update, -CLIP, CLIP)
        den += w * s
        plain += update
    got = flat_version(dep, version)
    bound = PARAMS.error_bound(len(members)) / den + 2e-7  # + float32 storage of the model
    assert np.abs(got - (parent + num / den)).max() <= bound
    assert np.abs(got - (parent + plain / len(members))).max() > 20 * bound  # weights matter


def test_each_ckks_buffer_publishes_the_staleness_weighted_mean(ckks_async):
    dep, app, participant, key_holder = ckks_async
    start_async_run(dep, ASYNC, rounds=3, name="ckks")
    held = key_holder()
    names = [f"client{i}" for i in range(6)]
    p = {n: participant(n, conn_cls=VanishingConnection) for n in names}
    updates = SeededUpdates(17)
    weights = dict(zip(names, (1.0, 0.5, 0.8, 0.9, 0.7, 1.0), strict=True))
    leases = {n: p[n].wait_for_round(max_polls=40) for n in names}
    assert {lease.model_version for lease in leases.values()} == {1}
    assert all(lease.asynchronous and not lease.async_buffer for lease in leases.values())
    assert {lease.mode for lease in leases.values()} == {"ckks"}

    def job(name: str):
        return p[name], leases[name], updates.compute(name, weights[name])

    # Buffers 1 and 2 (parents 1 and 2), then client0 and client1 lease version 3.
    two_buffers_then_lease(
        dep, p, leases, job, lambda v, members: _check_version(dep, v, members, updates)
    )
    # Buffer 3 (parent 3): client5 on 1 (tau 2), client3 on 2 (tau 1), client0 and client1
    # on 3; client3 vanishes right after its key advert: the buffer publishes without it.
    p["client3"].connection.vanish_phase = 0
    reports, errors = run_rounds_in_threads({n: job(n) for n in ("client5", "client3", *names[:2])})
    assert set(errors) == {"client3"} and isinstance(errors["client3"], VanishedError), errors
    assert reports["client5"].staleness == 2
    assert reports["client5"].staleness_weight == pytest.approx(3**-0.5)
    assert {r.outcome for r in reports.values()} == {"published"}
    _check_version(dep, 4, {"client5": (1, 3), "client0": (3, 3), "client1": (3, 3)}, updates)
    # The audit: per buffer, each contributor's base version, staleness and weight.
    entries = audit_entries(dep)
    buffers = [e.details for e in entries if e.event == "async_buffer"]
    assert [b["buffer"] for b in buffers] == [1, 2, 3]
    assert all(b["encrypted"] for b in buffers)
    assert [b["parent_version"] for b in buffers] == [1, 2, 3]
    assert set(buffers[2]["members"]) == {"client0", "client1", "client5"}
    assert buffers[2]["members"]["client5"] == {
        "base_version": 1,
        "staleness": 2,
        "staleness_weight": pytest.approx(3**-0.5),
        "client_weight": "inside the ciphertext",
    }
    parts = [e.details for e in entries if e.event == "participants"]
    assert parts[-1]["clients"] == ["client0", "client1", "client3", "client5", KEY_HOLDER]
    assert parts[-1]["base_versions"] == {"client0": 3, "client1": 3, "client3": 2, "client5": 1}
    aggregate = [e.details for e in entries if e.event == "aggregate"][-1]
    assert aggregate["dropped"] == ["client3"]
    dropped = [e.details for e in entries if e.event == "clients_dropped"]
    assert dropped and dropped[-1]["clients"] == {"client3": "connection_closed"}

    # The key holder answered each buffer's round and never took a lease. Its own loop reads
    # the third result on its next poll, which may come after the members': wait for it.
    def key_holder_reports() -> list:
        return [r.outcome for r in held if isinstance(r, RoundReport)]

    wait_until(lambda: len(key_holder_reports()) >= 3, 30)
    assert key_holder_reports() == ["published"] * 3
    wait_until(lambda: app.app.orchestrator.runs.running() is None, 60)  # 3 buffers: done


def _lease(conn: Connection) -> pb.RoundStart:
    for _ in range(40):
        task = conn.get_task(1.0)
        if task.WhichOneof("kind") == "round_start":
            return task.round_start
    raise AssertionError("no lease")


def _register(conn: Connection, lease: pb.RoundStart) -> pb.SubmitAck:
    header = pb.UploadHeader(
        round_id=lease.round_id, kind="async_registration", base_version=lease.model_version
    )
    return conn.submit(header, b"")


def _claims_another_base(dep, name: str, lease: pb.RoundStart, out: dict) -> threading.Thread:
    """A hand-driven data owner: registers honestly, then encrypts under a buffer context
    listing one version older for itself (and a laxer staleness limit, so its own context
    admits the lie): its contribution claims another base version than the buffer's."""
    conn = Connection(dep.kits[name], address=dep.address)
    identity = IdentityKey.from_seed(dep.kits[name].identity_seed)

    def work() -> None:
        try:
            receipt = _register(conn, lease).receipt
            while True:
                task = conn.get_task(1.0)
                kind = task.WhichOneof("kind")
                if kind == "round_start" and task.round_start.round_id == receipt.buffer_round_id:
                    break
            start = task.round_start
            rid, me = bytes(start.round_id), start.client_index
            party = CkksParty(rid, me)
            conn.submit(
                pb.UploadHeader(round_id=rid, phase=0, kind="ckks"), party.advert(identity, None)
            )
            while True:
                task = conn.get_task(1.0)
                if task.WhichOneof("kind") == "step" and task.step.phase == 2:
                    break
            advert, _ = read_bundle(task.step.payload, rid)
            a = start.async_params
            bases = {p.index: p.base_version for p in start.participants if p.name != KEY_HOLDER}
            bases[me] -= 1  # the lie
            lying = BufferContext(
                start.model_version,
                bases,
                StalenessPolicy(kind=a.staleness, max_staleness=a.max_staleness + 1, a=a.a),
            )
            upload = CkksEncryptor(PARAMS, advert.context, rid, buffer=lying).encrypt(
                np.full(start.vector_length, 0.01, np.float32),
                lying.fold_weight(me, 1.0),
                identity=identity,
                index=me,
                name=name,
                model_version=start.model_version,
            )
            try:
                conn.submit(pb.UploadHeader(round_id=rid, phase=2, kind="ckks"), upload)
            except grpc.RpcError as error:
                out["code"], out["detail"] = error.code(), error.details()
            while True:
                task = conn.get_task(1.0)
                if task.WhichOneof("kind") == "round_end" and task.round_end.round_id == rid:
                    out["outcome"] = task.round_end.outcome
                    return
        finally:
            conn.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_refusals_hold_in_ckks_buffers(ckks_async):
    dep, _app, participant, key_holder = ckks_async
    start_async_run(dep, {**ASYNC, "max_staleness": 0}, rounds=0, name="ckks")
    key_holder()
    stale = Connection(dep.kits["client5"], address=dep.address)
    try:
        old = _lease(stale)
        updates = SeededUpdates(17)
        weights = {"client0": 1.0, "client1": 0.5, "client2": 0.8}
        p = {n: participant(n) for n in weights}
        leases = {n: p[n].wait_for_round(max_polls=40) for n in weights}
        liar = Connection(dep.kits["client3"], address=dep.address)
        out: dict = {}
        thread = _claims_another_base(dep, "client3", _lease(liar), out)
        liar.close()
        jobs = {n: (p[n], leases[n], updates.compute(n, weights[n])) for n in weights}
        reports, errors = run_rounds_in_threads(jobs)
        thread.join(120)
        assert not errors, errors
        # The lie is refused on arrival with the reason; the buffer goes on without it.
        assert out["code"] == grpc.StatusCode.INVALID_ARGUMENT
        assert "claims base version 0; the buffer lists 1 for it" in out["detail"]
        assert {r.outcome for r in reports.values()} == {"published"}
        assert _current(dep) == 2
        _check_version(dep, 2, {n: (1, 1) for n in weights}, updates)
        buffers = [e.details for e in audit_entries(dep) if e.event == "async_buffer"]
        assert set(buffers[-1]["members"]) == set(weights)
        # Past the maximum staleness (0): the registration is refused with the reason.
        with pytest.raises(grpc.RpcError) as caught:
            _register(stale, old)
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "1 versions old; this run accepts at most 0" in caught.value.details()
    finally:
        stale.close()


class ShownAnotherBaseForItself(Participant):
    """A data owner shown, for itself, a base version one older than its lease's."""

    def _task(self) -> pb.Task:
        task = super()._task()
        if task.WhichOneof("kind") == "round_start" and task.round_start.async_buffer:
            start = task.round_start
            for p in start.participants:
                if p.index == start.client_index:
                    p.base_version -= 1
        return task


def test_a_data_owner_refuses_a_buffer_listing_another_base_version_for_it(ckks_async):
    dep, _app, participant, key_holder = ckks_async
    start_async_run(dep, ASYNC, rounds=0, name="ckks")
    key_holder()
    updates = SeededUpdates(17)
    weights = {"client0": 1.0, "client1": 0.5, "client2": 0.8, "client3": 1.0}
    p = {n: participant(n) for n in ("client0", "client1", "client2")}
    p["client3"] = participant("client3", ShownAnotherBaseForItself)
    client3_refuses_its_base(p, updates, weights)
    refusals = [e.details for e in audit_entries(dep) if e.event == "round_refused_by_client"]
    assert [r["client"] for r in refusals] == ["client3"]
    _check_version(dep, 2, {n: (1, 1) for n in ("client0", "client1", "client2")}, updates)


def test_a_key_holder_shown_another_base_version_refuses_the_buffer(ckks_async):
    dep, _app, participant, key_holder = ckks_async
    start_async_run(dep, ASYNC, rounds=0, name="ckks")
    held = key_holder(KeyHolderShownAnotherBase)
    updates = SeededUpdates(17)
    names = [f"client{i}" for i in range(K)]
    p = {n: participant(n) for n in names}
    jobs = {n: (p[n], p[n].wait_for_round(max_polls=40), updates.compute(n, 1.0)) for n in names}
    reports, errors = run_rounds_in_threads(jobs)
    assert not errors, errors
    for report in reports.values():
        assert report.outcome == "aborted"
        assert "the key holder refused" in report.reason, report.reason
        assert "claims base version 1; the buffer lists 0" in report.reason, report.reason
    assert _current(dep) == 1  # nothing decrypted, nothing published
    rounds = _state(dep, lambda s: [r.status for r in s.rounds()])
    assert rounds.count("aborted") == 1
    assert not [e for e in audit_entries(dep) if e.event == "async_buffer"]
    assert not [r for r in held if isinstance(r, RoundReport) and r.outcome == "published"]


class SlowConnection(Connection):
    """Takes a while before its key advert in a buffer's round (a slow device)."""

    def submit(self, header, payload, **kwargs):
        if header.kind == "ckks" and header.phase == 0:
            threading.Event().wait(3.0)
        return super().submit(header, payload, **kwargs)


def test_members_stale_by_the_time_their_buffer_runs_are_left_out_and_told(ckks_async):
    """max_staleness 0, K 3: three raw data owners register on version 1 while buffer 1's
    round (on version 1) is still running; it publishes version 2, so by the time buffer 2
    runs they are one version behind: each is told why, and the buffer aborts with nothing."""
    dep, app, participant, key_holder = ckks_async
    start_async_run(dep, {**ASYNC, "buffer_size": 3, "max_staleness": 0}, rounds=0, name="ckks")
    key_holder()
    raw = {
        n: Connection(dep.kits[n], address=dep.address) for n in ("client3", "client4", "client5")
    }
    try:
        late = {n: _lease(c) for n, c in raw.items()}
        updates = SeededUpdates(17)
        p = {n: participant(n) for n in ("client0", "client1")}
        p["client2"] = participant("client2", conn_cls=SlowConnection)
        jobs = {
            n: (x, x.wait_for_round(max_polls=40), updates.compute(n, 1.0)) for n, x in p.items()
        }
        scheduler = app.app.orchestrator.async_runs
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(run_rounds_in_threads(jobs)[0]))
        thread.start()
        wait_until(lambda: bool(scheduler.full), 60)  # buffer 1 full: its round runs
        assert _current(dep) == 1
        acks = {n: _register(raw[n], late[n]) for n in raw}  # accepted: version 1 is current
        assert {a.receipt.buffer_number for a in acks.values()} == {2}
        thread.join(120)
        assert {r.outcome for r in outcome.values()} == {"published"}
        assert _current(dep) == 2
        round_id = acks["client3"].receipt.buffer_round_id
        for conn in raw.values():
            for _ in range(60):
                task = conn.get_task(0.5)
                if task.WhichOneof("kind") == "round_end" and task.round_end.round_id == round_id:
                    break
            assert task.round_end.outcome == pb.RoundEnd.ABORTED
            assert "stale by the time buffer 2 ran" in task.round_end.reason
        stale = [e.details for e in audit_entries(dep) if e.event == "async_members_stale"]
        assert stale == [{"round": stale[0]["round"], "buffer": 2, "clients": sorted(raw)}]
        assert _current(dep) == 2
    finally:
        for conn in raw.values():
            conn.close()
