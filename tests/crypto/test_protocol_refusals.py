"""Every illegal event is refused with a specific error, and honest parties carry on."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from sealagg.crypto import Phase, SecAggClient, SecAggServer
from sealagg.crypto.errors import (
    BadSignatureError,
    BelowThresholdError,
    BothSharesRequestedError,
    DuplicateMessageError,
    InconsistentSurvivorsError,
    MalformedMessageError,
    OutOfPhaseError,
    ReplayedMessageError,
    UnknownSenderError,
)
from sealagg.crypto.messages import (
    AdvertiseKeys,
    ConsistencySignature,
    MaskedInput,
    ShareBundle,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
)
from sealagg.crypto.testing import make_round


class Driver:
    """Steps a round phase by phase so tests can interfere between steps."""

    def __init__(self, kit):
        self.kit = kit
        self.server = SecAggServer(kit.config)
        self.clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
        for u, c in self.clients.items():
            c.set_input(kit.inputs[u])
        self.inbox: dict = {}

    def advertise(self, skip=()):
        """Advertise keys, then reveal coins (sparse graphs only): the inbox holds what
        clients answer with their shares (coin directories, or key directories when the
        graph is complete and there is no reveal)."""
        for u, c in self.clients.items():
            if u not in skip:
                self.server.receive(u, c.advertise_keys())
        self.inbox = self.server.close_phase()
        if self.kit.config.reveals_coins:
            self.step()

    def finish(self):
        """Every remaining phase, everybody honest, until the server has the result."""
        while self.server.phase is not None:
            self.step()

    def step(self, skip=()):
        for u, m in self.inbox.items():
            if u not in skip:
                self.server.receive(u, self.clients[u].handle(m))
        self.inbox = self.server.close_phase()


def test_both_shares_request_is_refused():
    kit = make_round(5, threshold=3)
    d = Driver(kit)
    d.advertise()
    d.step()  # share keys
    d.step()  # masked input
    d.step()  # consistency
    honest = d.inbox[1]
    greedy = dataclasses.replace(honest, dropped=(2,))  # 2 also listed as survivor
    with pytest.raises(BothSharesRequestedError):
        d.clients[1].receive_unmask_request(greedy)
    assert d.clients[1].state == "aborted"
    # The aborted client stays silent even for an honest request afterwards.
    with pytest.raises(OutOfPhaseError):
        d.clients[1].receive_unmask_request(honest)


def test_second_unmask_request_after_answering_is_refused():
    kit = make_round(5, threshold=3)
    d = Driver(kit)
    d.advertise()
    d.step()
    d.step(skip=(5,))  # client 5 vanishes before masking: its mask key will be asked for
    d.step()
    request = d.inbox[1]
    reply = d.clients[1].receive_unmask_request(request)
    assert 5 in reply.mask_key_shares and 5 not in reply.self_mask_shares
    # A later request treating 5 as a survivor (to get its self-mask share too) is refused.
    again = dataclasses.replace(request, survivors=(1, 2, 3, 4, 5), dropped=())
    with pytest.raises(OutOfPhaseError):
        d.clients[1].receive_unmask_request(again)


def test_unknown_sender_is_refused_and_round_goes_on():
    kit = make_round(4, threshold=2)
    d = Driver(kit)
    msg = d.clients[1].advertise_keys()
    with pytest.raises(UnknownSenderError):
        d.server.receive(99, msg)
    d.server.receive(1, msg)
    for u in (2, 3, 4):
        d.server.receive(u, d.clients[u].advertise_keys())
    d.inbox = d.server.close_phase()
    d.finish()
    np.testing.assert_array_equal(d.server.result.total, kit.expected_sum((1, 2, 3, 4)))


def test_message_from_another_round_is_refused():
    old = make_round(4, threshold=2)
    new = make_round(4, threshold=2)
    stale = SecAggClient(old.config, 1, old.identities[1]).advertise_keys()
    server = SecAggServer(new.config)
    with pytest.raises(ReplayedMessageError):
        server.receive(1, stale)
    client = SecAggClient(new.config, 1, new.identities[1])
    client.advertise_keys()
    with pytest.raises(ReplayedMessageError):
        client.receive_survivor_list(SurvivorList(old.config.round_id, (1, 2, 3)))


def test_message_from_another_phase_is_refused_without_side_effects():
    kit = make_round(4, threshold=2)
    d = Driver(kit)
    adv = d.clients[1].advertise_keys()
    d.server.receive(1, adv)
    with pytest.raises(DuplicateMessageError):
        d.server.receive(1, adv)
    for u in (2, 3, 4):
        d.server.receive(u, d.clients[u].advertise_keys())
    d.inbox = d.server.close_phase()
    # Replaying the advertise message in the share-keys phase is out of phase.
    with pytest.raises(OutOfPhaseError):
        d.server.receive(1, adv)
    # A client asked for a phase it is not in refuses and keeps its state.
    with pytest.raises(OutOfPhaseError):
        d.clients[1].receive_survivor_list(SurvivorList(kit.config.round_id, (1, 2, 3, 4)))
    assert d.clients[1].state == "await_key_directory"
    d.finish()
    np.testing.assert_array_equal(d.server.result.total, kit.expected_sum((1, 2, 3, 4)))


def test_forged_advertise_signature_is_refused_by_server_and_clients():
    kit = make_round(4, threshold=2)
    d = Driver(kit)
    adv = d.clients[1].advertise_keys()
    forged = AdvertiseKeys(
        adv.round_id,
        dataclasses.replace(adv.keys, mask_public=bytes(32 * [7])),  # swapped key
    )
    with pytest.raises(BadSignatureError):
        d.server.receive(1, forged)
    # A lying server that relays the forged key directly is caught by the client.
    d.server.receive(1, adv)
    for u in (2, 3, 4):
        d.server.receive(u, d.clients[u].advertise_keys())
    directories = d.server.close_phase()
    keys = dict(directories[2].keys)
    keys[1] = forged.keys  # same coin commitment, another mask key
    # A complete graph has no coin reveal: client 2 checks its neighbours' signatures as
    # soon as the key directory arrives, before it shares anything.
    with pytest.raises(BadSignatureError, match="client 1"):
        d.clients[2].receive_key_directory(dataclasses.replace(directories[2], keys=keys))
    assert d.clients[2].state == "aborted"


def test_inconsistent_survivor_lists_are_detected():
    kit = make_round(5, threshold=2, minimum_survivors=3)
    d = Driver(kit)
    d.advertise()
    d.step()
    d.step()  # everybody masked
    rid = kit.config.round_id
    # A lying server tells client 1 that 5 dropped, and tells the others that 5 survived.
    sig_1 = d.clients[1].receive_survivor_list(SurvivorList(rid, (1, 2, 3, 4)))
    sigs = {1: sig_1.signature}
    for u in (2, 3, 4, 5):
        sigs[u] = d.clients[u].receive_survivor_list(SurvivorList(rid, (1, 2, 3, 4, 5))).signature
    # To client 2 it presents the full list with client 1's signature (made over the short list).
    request = UnmaskRequest(rid, (1, 2, 3, 4, 5), sigs, ())
    with pytest.raises(InconsistentSurvivorsError):
        d.clients[2].receive_unmask_request(request)
    # And to client 1 a list that differs from the one it signed.
    with pytest.raises(InconsistentSurvivorsError):
        d.clients[1].receive_unmask_request(UnmaskRequest(rid, (1, 2, 3, 4, 5), sigs, ()))


def test_forged_consistency_signature_is_refused_by_server():
    kit = make_round(4, threshold=2)
    d = Driver(kit)
    d.advertise()
    d.step()
    d.step()
    with pytest.raises(BadSignatureError):
        d.server.receive(1, ConsistencySignature(kit.config.round_id, bytes(64)))


def test_share_altered_by_the_server_aborts_the_recipient_only():
    """Shares are signed by their sender and the server checks that signature at upload, so
    a share that does not open *and* whose signature fails was altered by the server: the
    recipient aborts (BadSignatureError). Before shares were signed this was a
    DecryptionError, which could not tell a lying server from a lying sender."""
    kit = make_round(5, threshold=2)
    d = Driver(kit)
    d.advertise()
    d.step()
    bundle = d.inbox[3]
    sealed = dict(bundle.sealed_shares)
    ct = bytearray(sealed[1].ciphertext)
    ct[-1] ^= 1
    sealed[1] = dataclasses.replace(sealed[1], ciphertext=bytes(ct))
    with pytest.raises(BadSignatureError, match="client 1"):
        d.clients[3].receive_share_bundle(ShareBundle(bundle.round_id, sealed))
    # Misrouting (a share for 3 delivered to 4 as if from 1) fails the signature as well.
    misrouted = dict(d.inbox[4].sealed_shares)
    misrouted[1] = bundle.sealed_shares[2]
    with pytest.raises(BadSignatureError):
        d.clients[4].receive_share_bundle(ShareBundle(bundle.round_id, misrouted))


def test_wrong_length_masked_input_is_refused_and_others_finish():
    kit = make_round(5, threshold=2)
    d = Driver(kit)
    d.advertise()
    d.step()
    for u, m in d.inbox.items():
        reply = d.clients[u].handle(m)
        if u == 5:
            with pytest.raises(MalformedMessageError, match="bytes"):
                d.server.receive(u, MaskedInput(reply.round_id, reply.vector[:-4]))
            continue
        d.server.receive(u, reply)
    d.inbox = d.server.close_phase()
    d.step()
    d.step()
    np.testing.assert_array_equal(d.server.result.total, kit.expected_sum((1, 2, 3, 4)))


def test_bad_unmask_shares_are_routed_around():
    """More than t shares of each self-mask seed arrive and holder 1 flips a byte of every
    one it sends: each fails its owner's signed share commitment, so holder 1 is named
    (proven) and left out, the honest shares rebuild the committed seeds, and the sum is
    exact (it used to abort the round)."""
    kit = make_round(6, threshold=2)
    d = Driver(kit)
    d.advertise()
    d.step()
    d.step(skip=(6,))  # 6 drops before masking: its mask key gets reconstructed
    d.step()
    replies = {u: d.clients[u].handle(m) for u, m in d.inbox.items()}
    bad = replies[1]
    flipped = {
        v: bytes(b ^ 0xFF if i == 0 else b for i, b in enumerate(s))
        for v, s in bad.self_mask_shares.items()
    }
    d.server.receive(1, UnmaskShares(bad.round_id, flipped, bad.mask_key_shares))
    for u in (2, 3, 4, 5):
        d.server.receive(u, replies[u])
    assert {(b.accused, b.accuser) for b in d.server.blames} == {(1, v) for v in flipped}
    d.server.close_phase()
    np.testing.assert_array_equal(d.server.result.total, kit.expected_sum((1, 2, 3, 4, 5)))


def test_wrong_mask_key_shares_are_caught_by_name_and_the_round_aborts_cleanly():
    kit = make_round(4, threshold=2)
    d = Driver(kit)
    d.advertise()
    d.step()
    d.step(skip=(4,))
    d.step()
    replies = {u: d.clients[u].handle(m) for u, m in d.inbox.items()}
    # Exactly t=2 shares of 4's mask key arrive, consistently forged by colluding holders
    # 1 and 2: they encode a valid secret (which 4's public key would also refuse), but
    # each already fails 4's signed commitment to the share it gave that holder.
    from sealagg.crypto._primitives.shamir import split_secret

    fake = split_secret(os.urandom(32), 2, [1, 2])
    for u, share in ((1, fake[0]), (2, fake[1])):
        r = replies[u]
        d.server.receive(u, UnmaskShares(r.round_id, r.self_mask_shares, {4: share}))
    r3 = replies[3]
    d.server.receive(3, UnmaskShares(r3.round_id, r3.self_mask_shares, {}))  # withholds
    assert {(b.accused, b.accuser) for b in d.server.blames} == {(1, 4), (2, 4)}
    assert all("client 4's mask key" in b.reason for b in d.server.blames)
    with pytest.raises(BelowThresholdError, match="shares for client 4"):
        d.server.close_phase()


def test_client_refuses_input_of_wrong_shape_or_dtype():
    kit = make_round(3, threshold=2, dimension=5)
    client = SecAggClient(kit.config, 1, kit.identities[1])
    with pytest.raises(MalformedMessageError):
        client.set_input(np.zeros(4, dtype=np.uint32))
    with pytest.raises(MalformedMessageError):
        client.set_input(np.zeros(5, dtype=np.float32))


def test_client_with_wrong_identity_key_is_refused():
    kit = make_round(3, threshold=2)
    with pytest.raises(UnknownSenderError):
        SecAggClient(kit.config, 1, kit.identities[2])


def test_unmask_shares_for_peers_the_sender_cannot_hold_are_refused():
    kit = make_round(12, threshold=2, degree=6)
    d = Driver(kit)
    d.advertise()
    d.step()
    d.step()
    d.step()
    # The graph is drawn from the clients' coins, so who is active (pruning drops a client
    # left with fewer than `threshold` neighbours) and who neighbours whom varies by run.
    u, non_neighbour = next(
        (u, v)
        for u in sorted(d.inbox)
        for v in kit.config.identities
        if v != u and v not in d.server.graph.neighbours(u)
    )
    with pytest.raises(MalformedMessageError):
        d.server.receive(u, UnmaskShares(kit.config.round_id, {non_neighbour: bytes(44)}, {}))
    assert d.server.phase == Phase.UNMASKING
