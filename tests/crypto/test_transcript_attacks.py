"""Issue 17, items 3 and 6: attacks by a malicious appliance or corrupt clients, refused.

Each test performs the attack as the review did (against the protocol classes, no
network). Against the code before the fix (run from ``git archive`` of that commit):
item 3's replay recovered client 1's input exactly; item 6a published a wrong sum;
item 6b's low-order key aborted all four neighbours (MalformedMessageError); item 6c's
garbage shares aborted every recipient (DecryptionError) and the round, nobody blamed.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from sealagg.crypto import Phase, SecAggClient, SecAggServer
from sealagg.crypto import _transcript as tr
from sealagg.crypto._primitives.aead import seal
from sealagg.crypto._primitives.shamir import PRIME, lagrange_coefficients_at_zero
from sealagg.crypto.errors import (
    BadSignatureError,
    BelowThresholdError,
    BlameRefusedError,
    ExcludedSenderError,
    InconsistentSurvivorsError,
    InvalidPublicKeyError,
    TranscriptReusedError,
)
from sealagg.crypto.ledger import InMemoryTranscriptLedger
from sealagg.crypto.messages import (
    AdvertiseKeys,
    ShareKeys,
    SignedShare,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
)
from sealagg.crypto.simulation import run_round
from sealagg.crypto.testing import make_round

# --- item 3: round ids reused, consistency signatures replayed ---------------------------


def _round(kit, ledgers=None, skip_masking=()):
    """Advertise, reveal, share and mask; returns server, clients, adverts, survivor inbox."""
    server = SecAggServer(kit.config)
    clients = {
        u: SecAggClient(kit.config, u, kit.identities[u], ledger=(ledgers or {}).get(u))
        for u in kit.identities
    }
    adverts = {}
    for u, c in clients.items():
        c.set_input(kit.inputs[u])
        adverts[u] = c.advertise_keys()
        server.receive(u, adverts[u])
    inbox = server.close_phase()
    while server.phase != Phase.MASKED_INPUT:  # coins (sparse graphs only), then shares
        for u, m in inbox.items():
            server.receive(u, clients[u].handle(m))
        inbox = server.close_phase()
    for u, m in inbox.items():
        if u not in skip_masking:
            server.receive(u, clients[u].handle(m))
    return server, clients, adverts, server.close_phase()


def test_consistency_signatures_from_an_earlier_round_with_the_same_id_do_not_fill_the_quorum():
    """n=5, t=2, quorum 3. Round 1 (id R): client 1 vanishes before masking, so 2..5 sign
    [2,3,4,5]. Round 2 reuses R. The appliance shows clients 1, 4, 5 the full list and
    clients 2, 3 the list without 1, topping up the short list's quorum with client 4's
    signature from round 1: 4 and 5 would reveal 1's self-mask shares, 2 and 3 its mask-key
    shares, and 1's input would be unmasked (before the fix it was, exactly). Now the
    signature binds round 1's transcript hash, and clients 2 and 3 refuse."""
    rid = os.urandom(32)
    kit = make_round(5, threshold=2, dimension=9, round_id=rid)
    assert kit.config.minimum_survivors == 3
    _, clients, _, inbox = _round(kit, skip_masking=(1,))
    round_one = {u: clients[u].receive_survivor_list(inbox[u]).signature for u in inbox}

    _, clients, _, _ = _round(kit)  # round 2: same id, fresh keys
    full, short = (1, 2, 3, 4, 5), (2, 3, 4, 5)
    sig_full = {
        u: clients[u].receive_survivor_list(SurvivorList(rid, full)).signature for u in (1, 4, 5)
    }
    sig_short = {
        u: clients[u].receive_survivor_list(SurvivorList(rid, short)).signature for u in (2, 3)
    }
    sig_short[4] = round_one[4]  # replayed
    for u in (4, 5):  # their quorum is genuine: they answer, revealing 1's self-mask shares
        clients[u].receive_unmask_request(UnmaskRequest(rid, full, sig_full, ()))
    for u in (2, 3):
        with pytest.raises(InconsistentSurvivorsError, match=r"client 4 .*this transcript"):
            clients[u].receive_unmask_request(UnmaskRequest(rid, short, sig_short, (1,)))
        assert clients[u].state == "aborted"


def test_a_client_with_a_ledger_refuses_a_second_round_under_a_used_round_id():
    rid = os.urandom(32)
    kit = make_round(4, threshold=2, dimension=5, round_id=rid)
    ledgers = {u: InMemoryTranscriptLedger() for u in kit.identities}
    _round(kit, ledgers)
    client = SecAggClient(kit.config, 1, kit.identities[1], ledger=ledgers[1])
    others = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in (2, 3, 4)}
    server = SecAggServer(kit.config)
    server.receive(1, client.advertise_keys())
    for u, c in others.items():
        server.receive(u, c.advertise_keys())
    directory = server.close_phase()[1]
    with pytest.raises(TranscriptReusedError, match="round id"):
        client.receive_key_directory(directory)


def test_ledger_refuses_the_same_transcript_twice():
    ledger = InMemoryTranscriptLedger()
    ledger.claim(b"r" * 32, b"h" * 32)
    with pytest.raises(TranscriptReusedError, match="transcript"):
        ledger.claim(b"s" * 32, b"h" * 32)
    with pytest.raises(TranscriptReusedError, match="round id"):
        ledger.claim(b"r" * 32, b"g" * 32)


def test_transcript_hash_covers_every_parameter_and_every_key():
    kit = make_round(5, threshold=2, dimension=9)
    server, _, adverts, _ = _round(kit)
    keys = {u: a.keys for u, a in adverts.items()}
    base = tr.transcript_hash(kit.config, keys)
    assert base == server.transcript_hash
    cfg = kit.config
    variants = [
        dataclasses.replace(cfg, roster_version=1),
        dataclasses.replace(cfg, degree=3),
        dataclasses.replace(cfg, threshold=3),
        dataclasses.replace(cfg, vector_length=10),
        dataclasses.replace(cfg, minimum_survivors=4),
        dataclasses.replace(cfg, round_id=os.urandom(32)),
        dataclasses.replace(cfg, identities={**cfg.identities, 5: bytes(32)}),
    ]
    for other in variants:
        assert tr.transcript_hash(other, keys) != base
    changed = dict(keys)
    changed[3] = dataclasses.replace(keys[3], seed_commitment=bytes(32))
    assert tr.transcript_hash(cfg, changed) != base
    changed[3] = dataclasses.replace(keys[3], coin_commitment=bytes(32))
    assert tr.transcript_hash(cfg, changed) != base
    assert tr.transcript_hash(cfg, {u: k for u, k in keys.items() if u != 2}) != base


def test_the_sparse_graph_follows_the_transcript_not_the_round_id():
    """Two rounds with one round id and different keys draw different graphs (the round id
    alone no longer fixes the graph, so trying round ids places no client)."""
    rid = os.urandom(32)
    kit = make_round(40, threshold=2, dimension=3, degree=4, round_id=rid)
    first, second = _round(kit)[0].graph, _round(kit)[0].graph
    assert dict(first.adjacency) != dict(second.adjacency)


# --- item 6a: a bad share among exactly t -------------------------------------------------


def _shift_first_element(share: bytes, holders: list[int], holder: int) -> bytes:
    """Alter ``holder``'s share so the t shares of ``holders`` rebuild a secret whose first
    field element is one larger: still a valid encoding, so Shamir alone cannot notice."""
    lam = lagrange_coefficients_at_zero(holders)
    delta = pow(int(lam[holders.index(holder)]), PRIME - 2, PRIME)
    first = (int.from_bytes(share[:4], "big") + delta) % PRIME
    return first.to_bytes(4, "big") + share[4:]


def _bad_holder(holder: int, owner: int, holders: list[int]):
    def tamper(u, msg):
        if u == holder and isinstance(msg, UnmaskShares):
            shares = dict(msg.self_mask_shares)
            shares[owner] = _shift_first_element(shares[owner], holders, holder)
            return dataclasses.replace(msg, self_mask_shares=shares)
        return msg

    return tamper


def test_one_bad_self_mask_share_among_exactly_t_names_the_liar_and_aborts_cleanly():
    """n=6, t=3; clients 5 and 6 vanish before unmasking, so client 1's seed has exactly
    the three shares of 2, 3, 4, and 4 shifts its share (still a valid encoding). Before
    issue 17 the server rebuilt a wrong seed and published a wrong sum; the seed
    commitment then turned that into an abort nobody could be blamed for. Now 1 signed a
    commitment to each share it handed out: 4's share fails it, 4 is named (proven) and
    its share dropped, and the two shares left abort the round: no wrong sum."""
    kit = make_round(6, threshold=3, dimension=9)
    dropouts = {5: Phase.UNMASKING, 6: Phase.UNMASKING}
    server = {}
    with pytest.raises(BelowThresholdError, match="2 shares for client 1"):
        run_round(
            kit.config,
            kit.identities,
            kit.inputs,
            dropouts,
            tamper=_bad_holder(4, 1, [2, 3, 4]),
            on_server=server.setdefault("s", []).append,
        )
    (blame,) = server["s"][0].blames
    assert (blame.accused, blame.accuser) == (4, 1)
    assert "client 1's self-mask seed" in blame.reason


def test_one_bad_self_mask_share_among_more_than_t_is_routed_around():
    kit = make_round(6, threshold=3, dimension=9)
    dropouts = {6: Phase.UNMASKING}  # client 1's seed: four shares (2, 3, 4, 5)
    result = run_round(
        kit.config, kit.identities, kit.inputs, dropouts, tamper=_bad_holder(4, 1, [2, 3, 4])
    )
    np.testing.assert_array_equal(result.total, kit.expected_sum(range(1, 7)))


# --- item 6b: low-order X25519 keys ---------------------------------------------------------

LOW_ORDER = [
    bytes(32),
    b"\x01" + bytes(31),
    bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
    bytes.fromhex("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
    b"\xec" + b"\xff" * 30 + b"\x7f",  # p - 1
    b"\xed" + b"\xff" * 30 + b"\x7f",  # p (= 0)
]


def _signed_low_order(kit, u, advert, key, which):
    keys = dataclasses.replace(advert.keys, **{which: key})
    payload = tr.advertise_payload(
        kit.config.round_id,
        u,
        keys.cipher_public,
        keys.mask_public,
        keys.seed_commitment,
        keys.coin_commitment,
    )
    return AdvertiseKeys(
        advert.round_id, dataclasses.replace(keys, signature=kit.identities[u].sign(payload))
    )


@pytest.mark.parametrize("key", LOW_ORDER, ids=lambda k: k.hex()[:8])
@pytest.mark.parametrize("which", ["cipher_public", "mask_public"])
def test_a_signed_low_order_key_is_refused_at_advertisement_and_the_round_goes_on(key, which):
    """Before the fix the server relayed it and every neighbour aborted."""
    kit = make_round(5, threshold=2, dimension=9)
    server = SecAggServer(kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    for u, c in clients.items():
        c.set_input(kit.inputs[u])
        advert = c.advertise_keys()
        if u == 5:
            with pytest.raises(InvalidPublicKeyError, match=r"client 5 .*low-order"):
                server.receive(5, _signed_low_order(kit, 5, advert, key, which))
            continue
        server.receive(u, advert)
    inbox = server.close_phase()
    while server.phase is not None:
        for u, m in inbox.items():
            server.receive(u, clients[u].handle(m))
        inbox = server.close_phase()
    np.testing.assert_array_equal(server.result.total, kit.expected_sum((1, 2, 3, 4)))


def test_a_client_refuses_a_low_order_key_a_lying_server_relays():
    """The lying server relays a signed low-order key to client 1 (same coin commitment):
    client 1 refuses it at its first key agreement, right after the key directory (a
    complete graph has no coin reveal)."""
    kit = make_round(4, threshold=2, dimension=5)
    server = SecAggServer(kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    adverts = {u: c.advertise_keys() for u, c in clients.items()}
    for u, a in adverts.items():
        server.receive(u, a)
    directories = server.close_phase()
    keys = dict(directories[1].keys)
    keys[4] = _signed_low_order(kit, 4, adverts[4], bytes(32), "mask_public").keys
    with pytest.raises(InvalidPublicKeyError, match="client 4"):
        clients[1].receive_key_directory(dataclasses.replace(directories[1], keys=keys))
    assert clients[1].state == "aborted"


# --- item 6c: garbage sealed shares ----------------------------------------------------------


class _Garbage:
    """A corrupt client 5 that signs bad sealed shares.

    ``kind="undecryptable"``: sealed under a random key. ``kind="mismatched"``: the true
    shares, sealed properly, but with commitments to other values (signed). Either way the
    recipient blames it with proofs of the pair's keys and the server judges it alone.
    """

    def __init__(self, kit, clients, culprit=5, kind="undecryptable", victims=None):
        self.kit, self.clients, self.culprit = kit, clients, culprit
        self.kind, self.victims = kind, victims

    def __call__(self, u, msg):
        if u != self.culprit or not isinstance(msg, ShareKeys):
            return msg
        state = self.clients[u]._state  # the culprit's own secrets: it is corrupt
        rid, transcript = self.kit.config.round_id, state._round.transcript
        shares = dict(msg.sealed_shares)
        for v in self.victims or msg.sealed_shares:
            honest = msg.sealed_shares[v]
            if self.kind == "undecryptable":
                ciphertext = seal(os.urandom(32), b"\x00" * 96, b"")
                commits = honest.key_share_commitment, honest.self_share_commitment
            else:
                ciphertext = honest.ciphertext
                commits = os.urandom(32), honest.self_share_commitment
            payload = tr.share_signature_payload(rid, transcript, u, v, ciphertext, *commits)
            shares[v] = SignedShare(ciphertext, *commits, self.kit.identities[u].sign(payload))
        return ShareKeys(msg.round_id, shares)


def _drive(kit, tamper, order=None):
    server = SecAggServer(kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    hook = tamper(kit, clients)
    for u, c in clients.items():
        c.set_input(kit.inputs[u])
        server.receive(u, c.advertise_keys())
    inbox = server.close_phase()
    while server.phase is not None:
        for u in order or sorted(inbox):
            if u not in inbox:
                continue
            reply = hook(u, clients[u].handle(inbox[u]))
            if u in server.waiting_for:
                server.receive(u, reply)
            else:  # excluded after a proven blame: refused by name
                with pytest.raises(ExcludedSenderError):
                    server.receive(u, reply)
        inbox = server.close_phase()
    return server, clients


@pytest.mark.parametrize(
    ("kind", "reason"),
    [("undecryptable", "does not decrypt"), ("mismatched", "does not match the commitments")],
)
def test_bad_shares_are_blamed_proven_the_sender_excluded_and_the_round_finishes(kind, reason):
    kit = make_round(5, threshold=2, dimension=9)
    server, clients = _drive(kit, lambda k, c: _Garbage(k, c, kind=kind))
    assert {(b.accused, b.accuser) for b in server.blames} == {(5, u) for u in (1, 2, 3, 4)}
    assert all(reason in b.reason for b in server.blames)
    assert server.result.survivors == (1, 2, 3, 4)
    np.testing.assert_array_equal(server.result.total, kit.expected_sum((1, 2, 3, 4)))
    assert all(clients[u].state == "done" for u in (1, 2, 3, 4))


def test_a_blamed_sender_whose_masked_input_came_first_stays_in_an_exact_sum():
    """Client 5 (garbage to 1 and 2 only) uploads its masked input before the blames
    arrive: it cannot be taken out of the running sum, so it stays a survivor and the
    proven pair keys of the blames remove its masks with 1 and 2."""
    kit = make_round(5, threshold=2, dimension=9)
    server, _ = _drive(kit, lambda k, c: _Garbage(k, c, victims=(1, 2)), order=[5, 4, 3, 2, 1])
    assert {b.accuser for b in server.blames} == {1, 2}
    np.testing.assert_array_equal(server.result.total, kit.expected_sum(range(1, 6)))


def _to_bundles(kit):
    server = SecAggServer(kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    for u, c in clients.items():
        c.set_input(kit.inputs[u])
        server.receive(u, c.advertise_keys())
    inbox = server.close_phase()
    while server.phase != Phase.MASKED_INPUT:  # (coins), shares
        for u, m in inbox.items():
            server.receive(u, clients[u].handle(m))
        inbox = server.close_phase()
    return server, clients, inbox


def test_a_false_blame_is_refused():
    """Client 1 blames 2 for a good share, with true proofs: the server opens the share
    under the proven key, finds it good, and refuses 1's masked input."""
    kit = make_round(4, threshold=2, dimension=5)
    server, clients, bundles = _to_bundles(kit)
    honest_share = bundles[1].sealed_shares[2]  # 2's good share to 1
    state = clients[1]._state
    lie = state._blame(2, honest_share)
    reply = clients[1].handle(bundles[1])
    with pytest.raises(BlameRefusedError, match="false blame"):
        server.receive(1, dataclasses.replace(reply, blames={2: lie}))


@pytest.mark.parametrize("which", ["cipher_proof", "mask_proof"])
def test_a_blame_whose_key_claim_is_not_proven_is_refused(which):
    """The case the server used to record as unresolved (the accuser states a key that does
    not match the accused's commitment: one of them lies) no longer exists: an accuser
    must prove the pair's keys, and a proof for another key, peer or round does not verify."""
    kit = make_round(4, threshold=2, dimension=5)
    server, clients, bundles = _to_bundles(kit)
    culprit_share = bundles[1].sealed_shares[2]
    state = clients[1]._state
    blame = state._blame(2, culprit_share)
    other = state._blame(3, bundles[1].sealed_shares[3])  # a valid proof, for pair (1, 3)
    forged = dataclasses.replace(blame, **{which: getattr(other, which)})
    reply = clients[1].handle(bundles[1])
    with pytest.raises(BlameRefusedError, match="does not verify"):
        server.receive(1, dataclasses.replace(reply, blames={2: forged}))
    flipped = bytearray(getattr(blame, which))
    flipped[100] ^= 1
    with pytest.raises(BlameRefusedError, match="does not verify"):
        server.receive(
            1,
            dataclasses.replace(
                reply, blames={2: dataclasses.replace(blame, **{which: bytes(flipped)})}
            ),
        )


def test_a_peer_keys_entry_with_another_commitment_fails_its_signature():
    kit = make_round(3, threshold=2, dimension=3)
    client = SecAggClient(kit.config, 1, kit.identities[1])
    advert = client.advertise_keys()
    for field in ("seed_commitment", "coin_commitment"):
        altered = AdvertiseKeys(
            advert.round_id, dataclasses.replace(advert.keys, **{field: os.urandom(32)})
        )
        with pytest.raises(BadSignatureError):
            SecAggServer(kit.config).receive(1, altered)


def test_garbage_without_a_valid_signature_is_refused_at_upload():
    """Client 5 uploads garbage it does not sign properly: the server refuses its shares
    (BadSignatureError), 5 never becomes a sharer, and the others finish exactly."""
    kit = make_round(5, threshold=2, dimension=9)
    server = SecAggServer(kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    for u, c in clients.items():
        c.set_input(kit.inputs[u])
        server.receive(u, c.advertise_keys())
    inbox = server.close_phase()
    while server.phase != Phase.SHARE_KEYS:  # coins (sparse graphs only)
        for u, m in inbox.items():
            server.receive(u, clients[u].handle(m))
        inbox = server.close_phase()
    for u, m in inbox.items():
        reply = clients[u].handle(m)
        if u == 5:
            unsigned = {
                v: dataclasses.replace(
                    x, ciphertext=os.urandom(len(x.ciphertext)), signature=bytes(64)
                )
                for v, x in reply.sealed_shares.items()
            }
            with pytest.raises(BadSignatureError, match="client 5"):
                server.receive(5, ShareKeys(reply.round_id, unsigned))
            continue
        server.receive(u, reply)
    inbox = server.close_phase()
    while server.phase is not None:
        for u, m in inbox.items():
            server.receive(u, clients[u].handle(m))
        inbox = server.close_phase()
    np.testing.assert_array_equal(server.result.total, kit.expected_sum((1, 2, 3, 4)))


def test_a_server_that_spoils_every_share_to_a_victim_learns_nothing():
    """Blames must not become a way to strip a victim's masks: if a recipient left out the
    mask of every sender whose share it could not open, a server could spoil all shares to
    a victim, which would then mask with nobody, and unmask it with its self-mask shares.
    A share may cost its sender the mask only if that sender signed it; the server cannot
    forge that, so the victim aborts (BadSignatureError) and sends no masked input."""
    kit = make_round(5, threshold=2, dimension=9)
    server = SecAggServer(kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    for u, c in clients.items():
        c.set_input(kit.inputs[u])
        server.receive(u, c.advertise_keys())
    inbox = server.close_phase()
    while server.phase != Phase.MASKED_INPUT:  # (coins), shares
        for u, m in inbox.items():
            server.receive(u, clients[u].handle(m))
        inbox = server.close_phase()
    victim = inbox[1]
    spoiled = {
        v: dataclasses.replace(x, ciphertext=os.urandom(len(x.ciphertext)))
        for v, x in victim.sealed_shares.items()
    }
    with pytest.raises(BadSignatureError):
        clients[1].receive_share_bundle(dataclasses.replace(victim, sealed_shares=spoiled))
    assert clients[1].state == "aborted"
