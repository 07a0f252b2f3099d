"""A malicious appliance invents, revives or misrepresents the members of a round (issue 17).

The appliance is the CA, so it can issue certificates and identity keys for names of its own
choosing ("ghosts") and list them in a round beside one honest victim. With n=3 and two
ghosts whose inputs the appliance picks, the "sum" is the victim's input. Each test runs a
real appliance over mutual TLS and the real client shim; the ghosts are ordinary shim
participants driven by the appliance (it holds their keys).

- Development kits (the appliance made every key, no authority pinned) cannot stop this:
  the first test shows the victim's vector recovered exactly, which is why those kits are
  for development only.
- A kit that pins the federation authority verifies the authority's signed roster in every
  round and refuses, before anything of its update is sent: a member not on the roster, a
  roster signed by another key, an older roster version (older than the newest it learned
  from ``GetRoster`` at connect, or than the one on its durable record across a restart),
  and rosters shown differently to different members (the roster version is in the
  transcript every member signs). Each refusal is reported and audited
  (``round_refused_by_client``), and the round goes on without the refusing client.
- The honest appliance itself leaves clients the roster does not admit out of rounds and
  refuses their uploads (``client_not_on_roster``). The attacks above model a *malicious*
  appliance, so they switch that check off (:func:`_malicious`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import grpc
import numpy as np
import pytest
from sealagg_testkit.audit import audit_details
from sealagg_testkit.clients import (
    DIM,
    FAST,
    delta,
    expected_bias_and_weight,
    join,
    published_flat,
    run_clients,
    weight,
)
from sealagg_testkit.enrolled import authority_folder, make_enrolled_deployment

import sealagg.crypto.server as crypto_server
from sealagg.appliance import authority as auth
from sealagg.appliance import kit_issue
from sealagg.appliance.federation import (
    FederationFolder,
    add_client,
    add_enrolled_client,
    install_roster,
)
from sealagg.appliance.kit import load_kit
from sealagg.appliance.roster_gate import RosterGate
from sealagg.appliance.rounds import ActiveRound
from sealagg.appliance.service import AggregatorService, _who
from sealagg.appliance.testing import Deployment, base_model, make_deployment
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim import enrol
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.errors import RoundRefusedError
from sealagg.client_shim.session import Participant
from sealagg.crypto import IdentityKey, Phase
from sealagg.crypto.errors import (
    InconsistentSurvivorsError,
    RosterMembershipError,
    RosterRollbackError,
    RosterSignatureError,
)
from sealagg.crypto.policy import FederationPolicy
from sealagg.crypto.roster import IdentityKeySigner

pytestmark = [pytest.mark.timeout(90)]

VICTIM = "client0"
GHOSTS = ["client7", "client8"]  # names the appliance chose; it generated their keys
GHOST_WEIGHT = 1.0


def _add_ghosts(dep: Deployment) -> None:
    """The appliance (its operator) issues two kits of its own: it holds their keys."""
    federation = FederationFolder.load(dep.folder)
    for name in GHOSTS:
        dep.kits[name] = load_kit(add_client(federation, name))


def _puppet(conn) -> Participant:
    """A ghost: a shim participant that the appliance drives, so it checks nothing."""
    participant = Participant(conn, poll_seconds=0.5)
    participant.roster = None
    return participant


def _zeros(start, tensors):
    return np.zeros(DIM, dtype=np.float32), GHOST_WEIGHT, {}


def _malicious(monkeypatch) -> None:
    """The appliance skips its own roster check (it selects whoever it likes)."""
    monkeypatch.setattr(RosterGate, "refusal", lambda self, name, **kw: None)


def _serve_rosters(
    monkeypatch,
    *,
    at_connect: Callable[[str], bytes] | None = None,
    in_round: Callable[[str], bytes] | None = None,
) -> None:
    """The appliance hands each client the roster bytes of its choosing: from ``GetRoster``
    and in its RoundStart (by client name); validly signed ones included."""
    if at_connect is not None:

        async def get_roster(self, request, context):
            name = await _who(self._identify, context, self._metrics)
            return pb.RosterReply(roster=at_connect(name))

        monkeypatch.setattr(AggregatorService, "GetRoster", get_roster)
    if in_round is not None:
        original = ActiveRound.round_start_for

        def round_start_for(self, name, common):
            start = pb.RoundStart()
            start.CopyFrom(original(self, name, common))
            start.roster = in_round(name)
            return start

        monkeypatch.setattr(ActiveRound, "round_start_for", round_start_for)


def _ghost_round(dep: Deployment, running, make=None) -> tuple[object, dict, bool]:
    """One secagg round of the victim and the two ghosts; returns (outcome, victim errors,
    whether the victim's training ran)."""
    dep.configure(
        aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1},
        deadlines={**FAST, "advertise_keys": 4},
    )
    app = running(dep.folder)
    trained = []

    def victim_update(start, tensors):
        trained.append(True)
        return delta(0), weight(0), {}

    ghosts, _, ghost_errors = run_clients(dep, GHOSTS, make=_puppet, compute=_zeros)
    victim, _, errors = run_clients(dep, [VICTIM], make=make, compute=victim_update)
    app.wait(60)
    join(ghosts + victim)
    assert not ghost_errors, ghost_errors
    return app.app.orchestrator.history[-1], errors, bool(trained)


def _total_weight(dep: Deployment) -> float:
    return audit_details(dep, "aggregate")[-1]["total_weight"]


def test_ghosts_recover_the_victim_with_a_development_kit(tmp_path: Path, running):
    """Without an authority (development kits), the victim takes part with two ghosts and the
    appliance reads its update from the published "mean": exact up to quantization."""
    dep = make_deployment(tmp_path, clients=1, authority=False)
    _add_ghosts(dep)
    outcome, errors, trained = _ghost_round(dep, running)
    assert not errors and trained
    assert outcome.outcome == "published" and set(outcome.contributors) == {VICTIM, *GHOSTS}
    _, flat, _ = published_flat(dep)
    base = base_model()
    mean = flat - flatten(base, Layout.of(base))
    total = _total_weight(dep)  # unmasked with the sum: the weight rides in the vector
    victim_weight = total - len(GHOSTS) * GHOST_WEIGHT
    recovered = mean * total / victim_weight
    np.testing.assert_allclose(victim_weight, weight(0), atol=1e-6)
    np.testing.assert_allclose(recovered, delta(0), atol=5e-5)


def _refused_before_sending(
    dep: Deployment, running, accepted, error_type, match: str, code: str, make=None
):
    outcome, errors, trained = _ghost_round(dep, running, make)
    error = errors.get(VICTIM)
    assert isinstance(error, error_type), errors
    assert match in str(error)
    assert not trained, "the victim trained (and could have sent) before checking the roster"
    assert not [a for a in accepted if a[1] == VICTIM], "something of the victim's was accepted"
    assert outcome.outcome == "aborted"
    (refusal,) = audit_details(dep, "round_refused_by_client")
    assert (refusal["client"], refusal["code"], refusal["round"]) == (VICTIM, code, 1)
    assert match in refusal["detail"]


def test_victim_refuses_ghosts_not_on_the_signed_roster(deployment, running, accepted, monkeypatch):
    """The roster (signed by the authority, off the appliance) lists client0..client2; the
    appliance puts its own two ghosts in the round. The victim refuses before it trains or
    sends anything: RosterMembershipError naming the ghost, reported and audited."""
    _malicious(monkeypatch)
    dep = deployment(clients=3)
    _add_ghosts(dep)
    _refused_before_sending(
        dep,
        running,
        accepted,
        RosterMembershipError,
        "'client7' is not on the federation roster",
        "roster_membership",
    )


def test_a_roster_signed_by_another_key_is_refused(deployment, running, accepted, monkeypatch):
    """The appliance signs its own roster that lists the ghosts and sends it in the round:
    the victim verifies it against the authority key pinned in its kit and refuses."""
    _malicious(monkeypatch)
    dep = deployment(clients=1)
    _add_ghosts(dep)
    impostor = IdentityKeySigner(IdentityKey.generate())
    forged = dep.sign_roster(signer=impostor, install=False)
    _serve_rosters(monkeypatch, in_round=lambda name: forged)
    _refused_before_sending(
        dep, running, accepted, RosterSignatureError, "not signed by", "roster_signature"
    )


def test_an_older_roster_than_the_one_learned_at_connect_is_refused(
    deployment, running, accepted, monkeypatch
):
    """Version 2 listed the ghosts; version 3 (installed) removed them. The victim learns
    version 3 from GetRoster when it connects; the appliance then sends version 2 in the
    round. Before GetRoster, a client that had not yet seen version 3 accepted version 2."""
    _malicious(monkeypatch)
    dep = deployment(clients=1)
    _add_ghosts(dep)
    old = dep.sign_roster(install=False)  # version 2: victim and ghosts
    dep.sign_roster([VICTIM])  # version 3, installed: the ghosts are gone
    _serve_rosters(monkeypatch, in_round=lambda name: old)
    _refused_before_sending(
        dep, running, accepted, RosterRollbackError, "older than version 3", "roster_rollback"
    )


def test_a_restarted_client_still_refuses_an_older_roster(deployment, running, monkeypatch):
    """The victim accepted version 3 in an earlier run. After its restart the appliance
    serves the old, validly signed version 2 (it still lists the removed ghosts) both at
    connect and in rounds: the record beside the kit makes the new process refuse it."""
    dep = deployment(clients=1)
    _add_ghosts(dep)
    old = dep.sign_roster(install=False)  # version 2: victim and ghosts
    current = dep.sign_roster([VICTIM])  # version 3: the ghosts are gone
    running(dep.folder)
    first = Participant(Connection(dep.kits[VICTIM], address=dep.address), poll_seconds=0.5)
    assert first.sync_roster().version == 3  # the earlier run, honest appliance
    first.connection.close()
    dep.federation.paths.roster.write_bytes(old)  # the appliance writes its own file
    restarted = Participant(Connection(dep.kits[VICTIM], address=dep.address), poll_seconds=0.5)
    try:
        with pytest.raises(RosterRollbackError, match="older than version 3"):
            restarted.sync_roster()
        with pytest.raises(RosterRollbackError, match="older than version 3"):
            restarted.roster.accept(old)  # and in any round's RoundStart
        assert restarted.roster.accept(current).version == 3
    finally:
        restarted.connection.close()
    (refusal,) = audit_details(dep, "round_refused_by_client")
    assert refusal["client"] == VICTIM and refusal["code"] == "roster_rollback"
    assert refusal["round"] is None  # refused at connect, before any round


@pytest.mark.parametrize("served", ["unsigned", "foreign"])
def test_get_roster_refuses_unsigned_and_foreign_rosters(deployment, running, monkeypatch, served):
    """At connect, an appliance that serves no roster, or one another key signed, gets no
    round from the client: RosterSignatureError, reported and audited."""
    dep = deployment(clients=1)
    impostor = IdentityKeySigner(IdentityKey.generate())
    forged = dep.sign_roster(signer=impostor, install=False)
    _serve_rosters(monkeypatch, at_connect=lambda name: b"" if served == "unsigned" else forged)
    running(dep.folder)
    participant = Participant(Connection(dep.kits[VICTIM], address=dep.address))
    try:
        with pytest.raises(RosterSignatureError) as raised:
            participant.wait_for_round(max_polls=1)
    finally:
        participant.connection.close()
    expected = "serves no roster" if served == "unsigned" else "not signed by"
    assert expected in str(raised.value)
    (refusal,) = audit_details(dep, "round_refused_by_client")
    assert (refusal["client"], refusal["code"]) == (VICTIM, "roster_signature")
    assert expected in refusal["detail"]


def test_members_shown_different_roster_versions_refuse_each_other(
    deployment, running, accepted, monkeypatch
):
    """The appliance shows client0 the older (validly signed) version 2 and the others
    version 3, both listing all three, and does not check signatures itself. The roster
    version is in the transcript each member signs, so the members' consistency signatures
    do not verify for one another: everyone refuses the unmask request and nothing is
    unmasked (before: the round published, the members disagreeing on the roster)."""
    _malicious(monkeypatch)
    monkeypatch.setattr(crypto_server, "verify_signature", lambda *args, **kwargs: None)
    dep = deployment(clients=3)
    names = ["client0", "client1", "client2"]
    older = dep.sign_roster()  # version 2, installed first
    newer = dep.sign_roster()  # version 3, installed
    assert older != newer
    shown = {VICTIM: older}
    _serve_rosters(
        monkeypatch,
        at_connect=lambda name: shown.get(name, newer),
        in_round=lambda name: shown.get(name, newer),
    )
    dep.configure(aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    threads, reports, errors = run_clients(dep, names)
    app.wait(60)
    join(threads)
    assert set(errors) == set(names), (errors, reports)
    for error in errors.values():
        assert isinstance(error, InconsistentSurvivorsError), errors
        assert "did not sign the survivor list" in str(error)
    assert app.app.orchestrator.history[-1].outcome == "aborted"
    refusals = audit_details(dep, "round_refused_by_client")
    assert sorted(r["client"] for r in refusals) == names
    assert {(r["code"], r["phase"]) for r in refusals} == {("transcript", "unmasking")}
    assert not [a for a in accepted if a[2] == Phase.UNMASKING], "an unmask share was accepted"


def test_the_appliance_leaves_clients_off_the_roster_out(deployment, running):
    """The honest appliance: the ghosts poll like any client but are not on the roster.
    They are audited once each and never selected; their uploads are refused; the three
    roster clients publish their exact mean."""
    dep = deployment(clients=3)
    _add_ghosts(dep)  # issued by the CA, but the authority never admitted them
    dep.configure(aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    ghost_conns = [Connection(dep.kits[g], address=dep.address, timeout=5) for g in GHOSTS]
    try:
        for conn in ghost_conns:  # they ask for work first, so the appliance considers them
            assert conn.get_task(0.1).WhichOneof("kind") == "idle"
        header = pb.UploadHeader(round_id=b"\0" * 32, phase=0, kind="protocol")
        with pytest.raises(grpc.RpcError) as refused:
            ghost_conns[0].submit(header, b"x")
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "'client7' is not on the federation roster" in refused.value.details()
        threads, _, errors = run_clients(dep, ["client0", "client1", "client2"])
        app.wait(60)
        join(threads)
        assert not errors, errors
    finally:
        for conn in ghost_conns:
            conn.close()
    _, flat, _ = published_flat(dep)
    np.testing.assert_allclose(flat, expected_bias_and_weight([0, 1, 2]), atol=2e-6)
    excluded = audit_details(dep, "client_not_on_roster")
    assert sorted(e["client"] for e in excluded) == GHOSTS
    assert all("is not on the federation roster" in e["reason"] for e in excluded)
    assert all(set(p["clients"]) == {"client0", "client1", "client2"}
               for p in audit_details(dep, "participants"))  # fmt: skip


def test_a_refusing_client_is_reported_and_the_others_finish(
    deployment, running, accepted, monkeypatch
):
    """client3's own kit policy asks for sums over at least 5 clients; the round has 4. It
    refuses before sending anything and reports why; the appliance audits it, stops
    waiting for it (it is not counted late) and the other three publish their exact mean."""
    original = kit_issue.build_kit

    def build_kit(**kwargs):
        if kwargs["name"] == "client3":
            kwargs["policy"] = FederationPolicy(minimum_sum=5)
        return original(**kwargs)

    monkeypatch.setattr(kit_issue, "build_kit", build_kit)
    dep = deployment(clients=4)  # the roster carries no policy: each kit's own governs
    dep.configure(aggregation={"mode": "secagg", "min_clients": 4, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    names = [f"client{i}" for i in range(4)]
    threads, reports, errors = run_clients(dep, names)
    app.wait(60)
    join(threads)
    assert set(errors) == {"client3"} and isinstance(errors["client3"], RoundRefusedError)
    assert "fewer than m=5 clients" in str(errors["client3"])
    assert not [a for a in accepted if a[1] == "client3"]
    assert all(reports[n][0].outcome == "published" for n in names[:3]), reports
    _, flat, _ = published_flat(dep)
    np.testing.assert_allclose(flat, expected_bias_and_weight([0, 1, 2]), atol=2e-6)
    (refusal,) = audit_details(dep, "round_refused_by_client")
    assert (refusal["client"], refusal["code"], refusal["phase"]) == (
        "client3",
        "parameters",
        "advertise_keys",
    )
    phases = [p for p in audit_details(dep, "phase_recorded") if p["phase"] == "advertise_keys"]
    assert phases[0]["dropped"] == [], "the appliance still waited for the client that refused"


def _enrol_after_the_ghosts_left(tmp_path: Path) -> tuple[Deployment, bytes, bytes]:
    """The ghosts were enrolled (version 2), the victim joined (version 3, ghosts still on
    it), the authority removed the ghosts (version 4) and only then countersigned the
    victim's kit. Returns (deployment, version 3, version 4), both validly signed."""
    dep = make_enrolled_deployment(tmp_path, GHOSTS)
    authority = authority_folder(dep)
    request = enrol.request(
        name=VICTIM,
        federation=dep.federation.name,
        authority_key=dep.authority.public_key(),
        folder=tmp_path / "clients" / VICTIM,
        request_out=tmp_path / "requests" / f"{VICTIM}.json",
    ).read_bytes()
    _, with_ghosts = auth.approve(authority, dep.authority, request)
    install_roster(dep.federation, with_ghosts)
    roster = auth.current_roster(authority, dep.authority)
    without = dataclasses.replace(
        roster,
        version=roster.version + 1,
        entries=tuple(e for e in roster.entries if e.name not in GHOSTS),
    )
    current = auth.publish(authority, without, dep.authority)
    install_roster(dep.federation, current)
    issued = add_enrolled_client(dep.federation, request, out=tmp_path / "issued" / VICTIM)
    auth.sign_kit(authority, dep.authority, issued)
    enrol.install(issued, tmp_path / "clients" / VICTIM)
    dep.kits[VICTIM] = load_kit(tmp_path / "clients" / VICTIM)
    return dep, with_ghosts, current


def test_a_freshly_enrolled_client_refuses_an_older_roster_from_its_first_contact(
    tmp_path: Path, running, monkeypatch
):
    """The victim has never verified a roster from the appliance. The appliance replays
    version 3 (validly signed, still listing the removed ghosts) at connect and in rounds.
    Before: with no record yet, the victim accepted it as its first roster. Now its kit
    carries version 4, verified under the pinned key and recorded before any contact."""
    dep, with_ghosts, current = _enrol_after_the_ghosts_left(tmp_path)
    kit = dep.kits[VICTIM]
    assert kit.authority_roster == current
    _serve_rosters(monkeypatch, at_connect=lambda name: with_ghosts, in_round=lambda n: with_ghosts)
    running(dep.folder)
    victim = Participant(Connection(kit, address=dep.address), poll_seconds=0.5)
    try:
        assert victim.roster is not None and victim.roster.version == 4
        with pytest.raises(RosterRollbackError, match="older than version 4"):
            victim.roster.accept(with_ghosts)  # a RoundStart carrying it
        with pytest.raises(RosterRollbackError, match="older than version 4"):
            victim.wait_for_round(max_polls=1)  # GetRoster at connect
        assert victim.roster.accept(current).version == 4
    finally:
        victim.connection.close()
    record = kit.source.with_name(kit.source.name + ".roster").read_text().split()
    assert int(record[0]) == 4
    (refusal,) = audit_details(dep, "round_refused_by_client")
    assert (refusal["client"], refusal["code"], refusal["round"]) == (
        VICTIM,
        "roster_rollback",
        None,
    )
    assert "older than version 4" in refusal["detail"]
