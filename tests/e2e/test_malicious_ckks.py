"""Issue 17, item 9: a malicious appliance against mode ckks, over real mutual TLS.

The appliance runs in process (the ``running`` fixture) and is made malicious by replacing
methods of its :class:`CkksRound`; the clients are the real shim (:class:`Participant`) with
kits and a roster signed by the test federation authority (client3 holds the key-holder role).

Each attack recovered an individual update (max error ~5e-9) against the code before this
change (the same attacks, driven through the protocol classes of that code):

(a) one client's ciphertext presented to the key holder as "the sum of 3"  -> recovered;
(b) a ghost key holder (a key the appliance holds) named in RoundStart       -> recovered;
(c) a ghost data owner to whom the honest key holder sealed the secret key   -> recovered;
(d) the default ``share_secret_key = true``: a data owner decrypted another's upload.

Now: (a) the key holder recomputes the sum from signed contributions and refuses, decrypting
nothing; (b) data owners refuse before sending anything; (c) the key holder seals nothing;
(d) no data owner receives the secret key, and a round that would share it is refused by the
clients' own defaults. Every refusal aborts the round with its reason in the audit log.
"""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from sealagg_testkit.rounds import poll_round_ends

from sealagg.appliance import ckks_round
from sealagg.appliance.ckks_round import CkksRound
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.rounds import ActiveRound
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import base_model
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout
from sealagg.client_shim import ckks as shim_ckks
from sealagg.client_shim.testing import start_participants
from sealagg.crypto import IdentityKey
from sealagg.crypto._primitives.ckks import PublicContext, SecretContext
from sealagg.crypto.ckks import MAX_CONTEXT_BYTES, CkksParameters, unpack_message
from sealagg.crypto.ckks_keys import CkksParty, read_advert, read_bundle, read_sealed
from sealagg.crypto.errors import CkksKeyError, RosterMembershipError
from sealagg.crypto.roster import Role

pytest.importorskip("tenseal")
pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

DIM = Layout.of(base_model()).dimension
FAST = {
    "advertise_keys": 4,
    "share_keys": 4,
    "masked_input": 4,
    "consistency_check": 4,
    "unmasking": 4,
}
OWNERS = ["client0", "client1", "client2"]
KEY_HOLDER = "client3"
VICTIM = "client1"


def _delta(i: int) -> np.ndarray:
    return np.random.default_rng(900 + i).normal(0, 0.05, DIM).astype(np.float32)


class Spy:
    """What crossed the wire and what the parties did with keys, for the assertions."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.uploads: list[tuple[str, int, bytes]] = []
        self.decryptions = 0
        self.sealed = 0
        accept, decrypt, seal = ActiveRound.accept, SecretContext.decrypt, CkksParty.seal_for

        def on_accept(round_, name, header, payload):
            self.uploads.append((name, header.phase, bytes(payload)))
            accept(round_, name, header, payload)

        def on_decrypt(ctx, data):
            self.decryptions += 1
            return decrypt(ctx, data)

        def on_seal(party, recipient, plaintext):
            self.sealed += 1
            return seal(party, recipient, plaintext)

        monkeypatch.setattr(ActiveRound, "accept", on_accept)
        monkeypatch.setattr(SecretContext, "decrypt", on_decrypt)
        monkeypatch.setattr(CkksParty, "seal_for", on_seal)

    def phase(self, phase: int) -> list[tuple[str, bytes]]:
        return [(name, data) for name, p, data in self.uploads if p == phase]


def _federation(deployment, clients=4, **ckks):
    dep = deployment(clients=clients)
    dep.configure(
        aggregation={"mode": "ckks", "min_clients": clients, "rounds": 1},
        deadlines=FAST,
        ckks={"key_holder": KEY_HOLDER, **ckks},
    )
    dep.sign_roster(roles={KEY_HOLDER: Role.KEY_HOLDER})  # the authority's designation
    return dep


def _run(dep, running, names=(*OWNERS, KEY_HOLDER)):
    app = running(dep.folder)

    def compute_for(name):
        i = int(name.removeprefix("client"))
        return lambda start, tensors: (_delta(i), 1.0, {})

    threads, reports, errors = start_participants(dep.kits, dep.address, list(names), compute_for)
    app.wait(90)
    for t in threads:
        t.join(30)
    store = open_store(FederationFolder.load(dep.folder))
    try:
        rounds = store.rounds()
        version = store.current_model().version
        audit = [e.details for e in store.audit.entries()]
    finally:
        store.close()
    return app.app.orchestrator.history[-1], reports, errors, rounds, version, audit


def _audited(audit: list[dict], text: str) -> bool:
    return any(text in str(details) for details in audit)


# ------------------------------------------------------ (a) one ciphertext as "a sum of 3"


def _victim_three_times(active: CkksRound) -> None:
    active.contributors = (VICTIM, VICTIM, VICTIM)


def _victim_alone(active: CkksRound) -> None:
    active.contributors = (VICTIM,)


def _victim_relabelled(active: CkksRound) -> None:
    """The victim's signed upload forwarded as if client0 and client2 had sent it too."""
    for name in OWNERS:
        active.uploads[name] = active.uploads[VICTIM]
    active.contributors = tuple(OWNERS)


@pytest.mark.parametrize(
    ("forge", "refusal"),
    [
        (_victim_three_times, "counted twice"),
        (_victim_alone, "sum of 1 contributions"),
        (_victim_relabelled, "the upload names member"),
    ],
    ids=["same-upload-3x", "alone-as-sum", "relabelled"],
)
def test_a_one_clients_ciphertext_as_the_sum_of_3_is_refused_undecrypted(
    deployment, running, monkeypatch, forge, refusal
):
    dep = _federation(deployment)
    spy = Spy(monkeypatch)

    def malicious_close_input(self):
        self.contributors = tuple(sorted(self.answered))
        forge(self)  # what the key holder is asked to decrypt: only the victim's update
        self._next({self.key_holder.name})
        return {self.key_holder.name: self._forward(0)}

    monkeypatch.setattr(CkksRound, "_close_input", malicious_close_input)
    outcome, _, errors, rounds, version, audit = _run(dep, running)
    assert not errors, errors
    assert outcome.outcome == "aborted" and "the key holder refused" in outcome.reason
    assert refusal in outcome.reason, outcome.reason
    assert spy.decryptions == 0  # refused before decrypting anything
    assert not spy.phase(3) or all(b"ckks_result" not in data for _, data in spy.phase(3))
    assert rounds[-1].status == "aborted" and version == 1  # nothing published
    assert _audited(audit, refusal)


# ---------------------------------------------------------------- (b) a ghost key holder


def _ghost_participant(start: pb.RoundStart) -> int:
    ghost = IdentityKey.generate()  # a key the appliance holds
    index = max(p.index for p in start.participants) + 1
    start.participants.append(
        pb.Participant(index=index, name="keyholder", identity_key=ghost.verify_key_bytes)
    )
    return index


@pytest.mark.parametrize("ghost", ["invented-party", "roster-data-owner"])
def test_b_data_owners_refuse_a_key_holder_the_roster_does_not_designate(
    deployment, running, monkeypatch, ghost
):
    dep = _federation(deployment, clients=5)  # client4: a fourth data owner
    spy = Spy(monkeypatch)
    describe = CkksRound.describe

    def malicious_describe(self, start):
        describe(self, start)
        # The real key holder is left out of the round; another takes its place.
        honest = [p for p in start.participants if p.name != KEY_HOLDER]
        del start.participants[:]
        start.participants.extend(honest)
        if ghost == "invented-party":  # not on the roster at all
            start.ckks.key_holder_index = _ghost_participant(start)
        else:  # a data owner (possibly colluding with the appliance) without the role
            start.ckks.key_holder_index = self.members["client2"].index

    monkeypatch.setattr(CkksRound, "describe", malicious_describe)
    names = (*OWNERS, "client4", KEY_HOLDER)
    outcome, _, errors, rounds, version, audit = _run(dep, running, names)
    assert set(errors) == set(names), errors  # every client refused the round
    for error in errors.values():
        if ghost == "invented-party":  # the roster check (the session) names the ghost
            assert isinstance(error, RosterMembershipError), error
            assert "'keyholder' is not on the federation roster" in str(error)
        else:
            assert "has role 'data_owner' on the roster" in str(error), error
            assert "needs role key_holder" in str(error)
    assert spy.uploads == []  # nothing was sent: no advert, no ciphertext
    assert outcome.outcome == "aborted" and rounds[-1].status == "aborted" and version == 1
    assert _audited(audit, "aborted") or _audited(audit, "gave no usable public context")


# ------------------------------------------------------- (c) a ghost owner to seal the key to


def test_c_the_key_holder_seals_nothing_when_a_ghost_owner_is_relayed(
    deployment, running, monkeypatch
):
    # The federation explicitly shares the secret key (the insecure option) and every client's
    # own configuration accepts it: the most a ghost owner could hope for.
    dep = _federation(deployment, share_secret_key=True)
    monkeypatch.setattr(shim_ckks, "own_share_setting", lambda participant: True)
    spy = Spy(monkeypatch)
    close_keys = CkksRound._close_keys
    ghost = IdentityKey.generate()

    def malicious_close_keys(self):
        tasks = close_keys(self)
        party = CkksParty(self.round_id, 99)
        self.adverts["ghost"] = read_advert(party.advert(ghost, None), self.round_id)
        roster = {self.members[n].index: self.adverts[n] for n in self.data_owners}
        roster[99] = self.adverts["ghost"]
        step = ckks_round.roster_message(self.round_id, roster)
        tasks[self.key_holder.name].step.payload = step
        return tasks

    monkeypatch.setattr(CkksRound, "_close_keys", malicious_close_keys)
    outcome, _, errors, rounds, version, audit = _run(dep, running)
    assert not errors, errors
    assert spy.sealed == 0  # not even the honest owners got a sealed key
    assert outcome.outcome == "aborted"
    assert "the key holder refused" in outcome.reason and "advert of 99" in outcome.reason
    assert rounds[-1].status == "aborted" and version == 1
    assert _audited(audit, "not a roster data owner")


# ------------------------------------ (d) with defaults, no data owner holds the secret key


def test_d_with_defaults_no_data_owner_can_decrypt_another_upload(deployment, running, monkeypatch):
    dep = _federation(deployment)  # share_secret_key left at its default
    spy = Spy(monkeypatch)
    bundles: dict[str, bytes] = {}
    close_context = CkksRound._close_context

    def recording_close_context(self):
        tasks = close_context(self)
        bundles.update({n: bytes(t.step.payload) for n, t in tasks.items()})
        return tasks

    monkeypatch.setattr(CkksRound, "_close_context", recording_close_context)
    outcome, _, errors, _, version, _ = _run(dep, running)
    assert not errors, errors
    assert outcome.outcome == "published" and version == 2
    rid = _round_id(spy)
    ((_, sealed),) = spy.phase(1)  # the key holder's answer in phase "context"
    assert read_sealed(sealed, rid, 4) == {} and spy.sealed == 0
    assert set(bundles) == set(OWNERS)
    for payload in bundles.values():
        advert, sealed_to_me = read_bundle(payload, rid)
        assert sealed_to_me is None  # what a data owner gets: the public context only
    # All a data owner holds is the public context: decrypting another's upload fails.
    public = PublicContext.from_bytes(advert.context, max_bytes=MAX_CONTEXT_BYTES)
    ((_, upload),) = [(n, d) for n, d in spy.phase(2) if n == VICTIM]
    body = unpack_message(upload, "ckks_input", rid, max_bytes=10**7)
    vector = public.load(body["c"][0], slots_used=min(CkksParameters().slots, DIM + 1))
    with pytest.raises(CkksKeyError, match="secret key"):
        public.try_decrypt(vector)


def _round_id(spy: Spy) -> bytes:
    """The round id, read back from the first advert the appliance accepted."""
    _, _, data = spy.uploads[0]
    return msgpack.unpackb(data, raw=False, strict_map_key=False)["r"]


def test_d_a_round_that_would_share_the_key_is_refused_by_the_clients_defaults(
    deployment, running, monkeypatch
):
    # The appliance claims share_secret_key = true (or an operator sets it): every client's
    # own default ([ckks] share_secret_key = false in its kit) refuses the round.
    dep = _federation(deployment)
    spy = Spy(monkeypatch)
    describe = CkksRound.describe

    def sharing_describe(self, start):
        describe(self, start)
        start.ckks.share_secret_key = True

    monkeypatch.setattr(CkksRound, "describe", sharing_describe)
    outcome, _, errors, rounds, version, _ = _run(dep, running)
    assert set(errors) == {*OWNERS, KEY_HOLDER}
    assert all("does not accept that" in str(e) for e in errors.values()), errors
    assert spy.uploads == [] and spy.sealed == 0
    assert outcome.outcome == "aborted" and rounds[-1].status == "aborted" and version == 1


def test_the_default_key_holder_is_unnamed_and_a_ckks_round_without_one_is_refused(
    deployment, running
):
    dep = deployment(clients=4)
    dep.configure(aggregation={"mode": "ckks", "min_clients": 4, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    threads, ends = poll_round_ends(dep, sorted(dep.kits))  # refused before it starts
    app.wait(60)
    for t in threads:
        t.join(30)
    assert {e.outcome for e in ends.values()} == {pb.RoundEnd.ABORTED}
    assert all("needs a designated key holder" in e.reason for e in ends.values())
    store = open_store(FederationFolder.load(dep.folder))
    try:
        assert store.rounds()[-1].status == "aborted" and store.current_model().version == 1
        assert _audited([e.details for e in store.audit.entries()], "designated key holder")
    finally:
        store.close()
