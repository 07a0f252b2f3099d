"""Issue 20: the SecAgg+ consistency check's signing committee (:mod:`crypto.committee`).

Each client verifies ``q`` committee signatures instead of ``minimum_survivors`` of them.
These tests drive the real protocol classes (no network): the committee is the same for
every client and comes from the coin-tossed seed; the sizing meets its bounds, recomputed
here independently with exact integer binomials; a lying server that shows two survivor
lists, tops one up with forged, replayed or non-member signatures, or has too few
committee members, is refused by every honest client; dropouts of committee members up
to ``m - q`` still finish with the exact sum; complete graphs keep the full quorum.
"""

from __future__ import annotations

import hashlib
import math
import os
from functools import cache

import numpy as np
import pytest

from sealagg.crypto import Phase, SecAggClient, SecAggServer, coins
from sealagg.crypto import _transcript as tr
from sealagg.crypto import committee as cm
from sealagg.crypto.config import RoundConfig, default_minimum_survivors
from sealagg.crypto.errors import (
    BelowThresholdError,
    CoinRevealError,
    InconsistentSurvivorsError,
    OutOfPhaseError,
)
from sealagg.crypto.messages import (
    CoinDirectory,
    KeyDirectory,
    SurvivorList,
    UnmaskRequest,
    UnmaskShares,
)
from sealagg.crypto.params import choose_graph, find_parameters
from sealagg.crypto.testing import make_round

# n=30, k=19, t=5, Q=16: the finder's graph at zero dropout; committee 12, quorum 7.
N, K, T, Q = 30, 19, 5, 16


def sparse_kit(seed: int = 0, round_id: bytes | None = None):
    kit = make_round(
        N, threshold=T, degree=K, minimum_survivors=Q, dimension=7, seed=seed, round_id=round_id
    )
    sizing = kit.config.committee_sizing
    assert sizing is not None and (sizing.size, sizing.quorum) == (12, 7)
    return kit


class Round:
    """A round driven phase by phase up to the survivor lists; records the seed."""

    def __init__(self, kit, *, skip_masking=()):
        self.kit, cfg = kit, kit.config
        self.server = SecAggServer(cfg)
        self.clients = {u: SecAggClient(cfg, u, kit.identities[u]) for u in kit.identities}
        for u, c in self.clients.items():
            c.set_input(kit.inputs[u])
            self.server.receive(u, c.advertise_keys())
        inbox = self.server.close_phase()
        self.key_directory = next(iter(inbox.values()))
        assert isinstance(self.key_directory, KeyDirectory)
        self.coin_directory = None
        while self.server.phase != Phase.CONSISTENCY_CHECK:
            phase = self.server.phase
            for u, m in inbox.items():
                if isinstance(m, CoinDirectory):
                    self.coin_directory = m
                if phase == Phase.MASKED_INPUT and u in skip_masking:
                    continue
                self.server.receive(u, self.clients[u].handle(m))
            inbox = self.server.close_phase()
        self.survivor_inbox = inbox
        self.seed = None
        if self.coin_directory is not None:
            commitments = {u: k.coin_commitment for u, k in self.key_directory.keys.items()}
            self.seed = coins.graph_seed(
                cfg.round_id, self.server.transcript_hash, commitments, self.coin_directory.coins
            )

    @property
    def committee(self) -> frozenset[int]:
        committee = self.kit.config.committee_for(self.seed)
        assert committee is not None
        return committee

    def sign(self, u: int, survivors: tuple[int, ...]) -> bytes:
        """A corrupt client's signature on any list (it holds its own identity key)."""
        blob = tr.encode_ids(survivors)
        payload = tr.survivors_payload(
            self.kit.config.round_id, self.server.transcript_hash, u, blob
        )
        return self.kit.identities[u].sign(payload)

    def finish(self, skip_signing=()):
        """Honest consistency check and unmasking; returns the server's unmask requests."""
        for u, m in self.survivor_inbox.items():
            if u not in skip_signing:
                self.server.receive(u, self.clients[u].handle(m))
        inbox = self.server.close_phase()
        for u, m in inbox.items():
            self.server.receive(u, self.clients[u].handle(m))
        self.server.close_phase()
        return inbox


# --- the committee: one for everybody, from the coin -----------------------------------


def test_every_client_derives_the_servers_committee_and_the_round_sums_exactly():
    kit = sparse_kit()
    rnd = Round(kit)
    requests = rnd.finish()
    committee = rnd.committee
    assert len(committee) == 12 and committee <= set(kit.identities)
    # The server forwards only committee signatures, and every client accepted them: each
    # derived the same committee on its own (a client with another committee would have
    # found fewer than q members and refused).
    for request in requests.values():
        assert set(request.signatures) == committee
    assert all(c.state == "done" for c in rnd.clients.values())
    result = rnd.server.result
    assert result.survivors == tuple(range(1, N + 1))
    np.testing.assert_array_equal(result.total, kit.expected_sum(range(1, N + 1)))


def test_the_committee_depends_on_the_coin_and_on_nothing_the_server_chooses():
    cfg = sparse_kit().config
    seeds = [hashlib.sha256(b"seed %d" % i).digest() for i in range(2000)]
    committees = [cfg.committee_for(s) for s in seeds]
    assert all(cfg.committee_for(s) == c for s, c in zip(seeds[:20], committees, strict=False))
    assert len({c for c in committees}) > 1990  # a fresh subset per coin
    # Uniform: every participant is a member with probability m/n = 0.4 (sd 0.011 here).
    for u in cfg.participants:
        share = sum(u in c for c in committees) / len(committees)
        assert abs(share - 0.4) < 0.06, (u, share)
    # Domain-separated from the graph: the committee is not a function of the graph's
    # permutation (same seed, other label); and another round id gives another committee.
    assert cm.draw_committee(seeds[0], cfg.round_id, cfg.participants, 12) == committees[0]
    assert cm.draw_committee(seeds[0], os.urandom(32), cfg.participants, 12) != committees[0]


def test_two_rounds_of_the_same_parameters_draw_different_committees_from_their_coins():
    a, b = Round(sparse_kit(seed=1)), Round(sparse_kit(seed=1))
    assert a.seed != b.seed and a.committee != b.committee


def test_a_server_that_changes_a_coin_to_steer_the_committee_is_refused():
    kit = sparse_kit()
    server = SecAggServer(kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    for u, c in clients.items():
        c.set_input(kit.inputs[u])
        server.receive(u, c.advertise_keys())
    inbox = server.close_phase()
    for u, m in inbox.items():
        server.receive(u, clients[u].handle(m))
    directory = next(iter(server.close_phase().values()))
    steered = dict(directory.coins)
    steered[3] = os.urandom(32)  # a coin of the server's choice for client 3
    for u in (1, 2):
        with pytest.raises(CoinRevealError, match="client 3"):
            clients[u].receive_coin_directory(CoinDirectory(kit.config.round_id, steered))


# --- sizing: the bounds, recomputed independently --------------------------------------


@cache
def _comb(a: int, b: int) -> int:
    return math.comb(a, b) if 0 <= b <= a else 0


def equivocation(n: int, c: int, m: int, q: int) -> float:
    """P[Hypergeometric(n, c, m) >= 2q - m], exact integers then one division."""
    j = max(0, 2 * q - m)
    hits = sum(_comb(c, x) * _comb(n - c, m - x) for x in range(j, min(m, c) + 1))
    return hits / _comb(n, m)


def failure(n: int, c: int, m: int, q: int, delta: float) -> float:
    """P[fewer than q committee members are honest and alive]."""
    total = 0.0
    for x in range(0, min(m, c) + 1):
        hyp = _comb(c, x) * _comb(n - c, m - x) / _comb(n, m)
        if hyp == 0.0:
            continue
        h = m - x
        below = sum(_comb(h, a) * (1 - delta) ** a * delta ** (h - a) for a in range(min(q, h + 1)))
        total += hyp * min(1.0, below)
    return total


CASES = [  # (n, k, t, Q) of real finder outputs, and two explicit ones
    (200, *choose_graph(200, "secagg+", 0.1, 0.0)[:2], None),
    (100, *choose_graph(100, "secagg+", 0.05, 0.0)[:2], None),
    (N, K, T, Q),
]


@pytest.mark.parametrize(("n", "k", "t", "quorum"), CASES)
def test_round_sizing_meets_both_bounds_and_is_the_smallest(n, k, t, quorum):
    quorum = quorum or default_minimum_survivors(n, t, 1)
    sizing = cm.committee_for_round(n, k, t, quorum)
    assert sizing is not None
    m, q, c, delta = sizing.size, sizing.quorum, sizing.colluders, sizing.dropout_rate
    # C: exactly the colluders today's quorum resists, 2(Q - C) > n - C, tight.
    assert 2 * (quorum - c) > n - c and 2 * (quorum - c - 1) <= n - c - 1
    # delta: the largest dropout at which the graph itself meets 2^-20.
    p = k / (n - 1)

    def graph_fails(d: float) -> float:
        live = p * (1 - d)
        return n * sum(_comb(n - 1, a) * live**a * (1 - live) ** (n - 1 - a) for a in range(t))

    assert (delta * 4096).is_integer()  # on a fixed grid: every platform finds the same
    assert graph_fails(delta) <= 2**-20 < graph_fails(delta + 1 / 4096)
    assert m < quorum
    assert equivocation(n, c, m, q) <= 2**-40
    assert failure(n, c, m, q, delta) <= 2**-20
    for smaller in range(1, m):  # no smaller committee meets both bounds with any q
        for qq in range(smaller // 2 + 1, smaller + 1):
            ok = equivocation(n, c, smaller, qq) <= 2**-40
            assert not (ok and failure(n, c, smaller, qq, delta) <= 2**-20), (smaller, qq)


@pytest.mark.parametrize(("n", "c", "delta"), [(500, 50, 0.1), (1000, 51, 0.1), (300, 3, 0.2)])
def test_explicit_sizing_meets_both_bounds(n, c, delta):
    sizing = cm.size_committee(n, c, delta)
    assert sizing is not None
    m, q = sizing.size, sizing.quorum
    assert equivocation(n, c, m, q) <= 2**-40
    assert failure(n, c, m, q, delta) <= 2**-20
    assert math.isclose(2**sizing.log2_failure, failure(n, c, m, q, delta), rel_tol=1e-6)
    smaller = cm.size_committee(n, c, delta, below=m)
    assert smaller is None


def test_the_exact_integer_checks_agree_with_the_independent_tails():
    """Near a boundary the sizing decides in integers (so every platform derives the same
    committee); those integer checks say what the tails above say."""
    n, c, delta = 200, 21, 0.11328125
    for m, q in [(98, 60), (97, 59), (98, 59), (60, 36), (120, 70)]:
        assert cm._exact_equivocation_ok(n, c, m, q, 40) == (equivocation(n, c, m, q) <= 2**-40)
        assert cm._exact_failure_ok(n, c, m, q, delta, 20) == (failure(n, c, m, q, delta) <= 2**-20)


def test_no_committee_where_none_beats_the_quorum_and_never_for_complete_graphs():
    # 30 % corrupt and 10 % dropout: no committee can be both secure and live.
    params = find_parameters(100, 0.1, 0.3)
    assert cm.committee_for_round(100, params.degree, params.threshold, 66) is None
    assert cm.size_committee(100, 30, 0.1) is None
    kit = make_round(12, threshold=5, dimension=5)
    assert kit.config.is_complete and kit.config.committee_sizing is None
    assert kit.config.committee_for(b"\x00" * 32) is None


def test_no_committee_for_a_graph_that_misses_the_target_even_without_dropouts():
    """n=10, k=8, t=2 (hand-picked; the finder would not choose it): the graph alone fails the
    2^-20 correctness target at zero dropouts, so no dropout rate is implied. A committee
    sized for none (it was m=4, q=3) aborted rounds that lost 2 of its 4 members to ordinary
    dropouts; the full quorum finishes them."""
    from sealagg.crypto.simulation import run_round

    assert cm.implied_dropout(10, 8, 2) is None
    assert cm.committee_for_round(10, 8, 2, 6) is None
    dropouts = {2: Phase.SHARE_KEYS, 5: Phase.MASKED_INPUT, 9: Phase.UNMASKING}
    for seed in range(12):  # every graph seed: the committee once drew 2 of the 3 dropped
        kit = make_round(10, threshold=2, degree=8, dimension=5, seed=seed)
        assert kit.config.committee_sizing is None
        result = run_round(kit.config, kit.identities, kit.inputs, dropouts)
        expected = [u for u in kit.identities if u not in (2, 5)]
        assert result.survivors == tuple(expected)
        np.testing.assert_array_equal(result.total, kit.expected_sum(expected))


# --- a lying server --------------------------------------------------------------------


def equivocation_setup(corrupt_members: int, per_list: int):
    """List A (everyone) to group A, list B (A minus victim 'v') to group B. The first
    ``corrupt_members`` committee members are corrupt and sign both; ``per_list`` honest
    members sign each list; the other honest members see no list (as if dropped)."""
    kit = sparse_kit(seed=3)
    rnd = Round(kit)
    members = sorted(rnd.committee)
    corrupt = set(members[:corrupt_members])
    honest_members = members[corrupt_members:]
    a_members = honest_members[:per_list]
    b_members = honest_members[per_list : 2 * per_list]
    spare = honest_members[2 * per_list :]
    others = [u for u in kit.identities if u not in rnd.committee]
    victim = others[0]
    group_a = {victim, *a_members, *others[1 : len(others) // 2]}
    group_b = {*b_members, *others[len(others) // 2 :]}
    full = tuple(range(1, N + 1))
    lists = {"A": full, "B": tuple(u for u in full if u != victim)}
    rid = kit.config.round_id
    signatures = {"A": {}, "B": {}}
    for name, group in (("A", group_a), ("B", group_b)):
        for u in sorted(group):
            reply = rnd.clients[u].receive_survivor_list(SurvivorList(rid, lists[name]))
            signatures[name][u] = reply.signature
        for u in corrupt:
            signatures[name][u] = rnd.sign(u, lists[name])
    groups = {"A": group_a, "B": group_b}
    return rnd, lists, signatures, groups, spare, victim


def answer(rnd, lists, name, signatures, group):
    """Hand the group its unmask request; who answered (revealed shares), who refused."""
    rid = rnd.kit.config.round_id
    dropped = tuple(sorted(set(rnd.kit.identities) - set(lists[name])))
    request = UnmaskRequest(rid, lists[name], signatures, dropped)
    answered, refused = {}, {}
    for u in sorted(group):
        try:
            reply = rnd.clients[u].receive_unmask_request(request)
        except InconsistentSurvivorsError as error:
            refused[u] = str(error)
            assert rnd.clients[u].state == "aborted"
            continue
        assert isinstance(reply, UnmaskShares)
        answered[u] = reply
    return answered, refused


def test_two_lists_below_the_committee_quorum_are_refused_by_every_honest_client():
    """One corrupt member (the sizing's C = 1, here placed in the committee on purpose:
    stronger than a random draw), five honest members per list: each list has 6 < 7
    committee signatures, plus every non-member's. Nobody reveals anything."""
    rnd, lists, sigs, groups, _, _ = equivocation_setup(corrupt_members=1, per_list=5)
    for name in ("A", "B"):
        assert len(sigs[name]) >= 2 * 7  # twice q signatures in all, 6 from members
        answered, refused = answer(rnd, lists, name, sigs[name], groups[name])
        assert not answered
        assert set(refused) == groups[name]
        assert all("6 of the round's 12 committee members" in e for e in refused.values())


@pytest.mark.parametrize("how", ["forged", "other list", "other round"])
def test_a_committee_signature_forged_or_replayed_to_reach_q_is_refused(how):
    rnd, lists, sigs, groups, spare, _ = equivocation_setup(corrupt_members=1, per_list=5)
    topped = dict(sigs["A"])
    if how == "forged":  # the spare honest member never signed anything
        topped[spare[0]] = os.urandom(64)
        extra = spare[0]
    elif how == "other list":  # a member of group B signed list B, not list A
        extra = min(set(sigs["B"]) & rnd.committee - set(sigs["A"]))
        topped[extra] = sigs["B"][extra]
    else:  # the spare member's genuine signature on list A, from another transcript
        extra = spare[0]
        payload = tr.survivors_payload(
            rnd.kit.config.round_id, os.urandom(32), extra, tr.encode_ids(lists["A"])
        )
        topped[extra] = rnd.kit.identities[extra].sign(payload)
    assert len(set(topped) & rnd.committee) == 7  # q signatures from members, on paper
    answered, refused = answer(rnd, lists, "A", topped, groups["A"])
    assert not answered
    assert all(f"committee member {extra} did not sign" in e for e in refused.values())


def test_a_missing_committee_signature_is_refused_even_with_all_others_present():
    kit = sparse_kit(seed=4)
    rnd = Round(kit)
    rid, full = kit.config.round_id, tuple(range(1, N + 1))
    sigs = {
        u: rnd.clients[u].receive_survivor_list(SurvivorList(rid, full)).signature for u in full
    }
    members = sorted(rnd.committee)
    short = {u: s for u, s in sigs.items() if u not in members[:6]}  # 6 of 12 members left
    with pytest.raises(InconsistentSurvivorsError, match="6 of the round's 12 committee"):
        rnd.clients[1].receive_unmask_request(UnmaskRequest(rid, full, short, ()))
    # With q = 7 members (and nothing else) the same client's peers answer.
    enough = {u: sigs[u] for u in members[5:]}
    reply = rnd.clients[2].receive_unmask_request(UnmaskRequest(rid, full, enough, ()))
    assert isinstance(reply, UnmaskShares)


def test_with_2q_minus_m_corrupt_members_both_lists_pass_the_bound_is_tight():
    """Beyond the sizing's assumption (it allows C = 1 colluder; here two committee members
    are corrupt): both lists gather q = 7, both groups answer, and the victim's self-mask
    and mask-key shares are both revealed. ``2q - m`` corrupt members is exactly what an
    equivocation needs, the event the hypergeometric bound keeps below 2^-40."""
    rnd, lists, sigs, groups, _, victim = equivocation_setup(corrupt_members=2, per_list=5)
    answered_a, _ = answer(rnd, lists, "A", sigs["A"], groups["A"])
    answered_b, _ = answer(rnd, lists, "B", sigs["B"], groups["B"])
    assert set(answered_a) == groups["A"] and set(answered_b) == groups["B"]
    assert any(victim in r.self_mask_shares for r in answered_a.values())
    assert any(victim in r.mask_key_shares for r in answered_b.values())


def test_signatures_from_outside_the_list_are_still_refused():
    kit = sparse_kit(seed=5)
    rnd = Round(kit, skip_masking=(30,))
    rid = kit.config.round_id
    survivors = tuple(range(1, N))
    sigs = {
        u: rnd.clients[u].receive_survivor_list(SurvivorList(rid, survivors)).signature
        for u in survivors
    }
    sigs[30] = os.urandom(64)
    with pytest.raises(InconsistentSurvivorsError, match="outside the survivor list"):
        rnd.clients[1].receive_unmask_request(UnmaskRequest(rid, survivors, sigs, (30,)))


def test_a_list_shorter_than_the_quorum_is_refused_before_signing():
    kit = sparse_kit(seed=6)
    rnd = Round(kit)
    short = tuple(range(1, Q))  # Q - 1 survivors
    with pytest.raises(BelowThresholdError, match=f"at least {Q} are required"):
        rnd.clients[1].receive_survivor_list(SurvivorList(kit.config.round_id, short))


# --- dropouts ---------------------------------------------------------------------------


def test_the_round_finishes_when_m_minus_q_committee_members_drop_before_signing():
    kit = sparse_kit(seed=7)
    rnd = Round(kit, skip_masking=(1,))
    members = sorted(rnd.committee)
    requests = rnd.finish(skip_signing=members[:5])  # 12 - 7 = 5 members silent
    assert all(set(r.signatures) == set(members[5:]) for r in requests.values())
    result = rnd.server.result
    assert result.survivors == tuple(range(2, N + 1))
    np.testing.assert_array_equal(result.total, kit.expected_sum(range(2, N + 1)))


def test_the_server_stops_when_fewer_than_q_committee_members_sign():
    kit = sparse_kit(seed=8)
    rnd = Round(kit)
    members = sorted(rnd.committee)
    with pytest.raises(BelowThresholdError, match="6 committee members signed, at least 7"):
        rnd.finish(skip_signing=members[:6])


def test_a_finder_round_at_n60_with_dropouts_in_every_phase_sums_exactly():
    from sealagg.crypto.simulation import run_round

    degree, threshold, _ = choose_graph(60, "secagg+", 0.1, 0.0)
    kit = make_round(60, threshold=threshold, degree=degree, dimension=5, seed=9)
    assert kit.config.committee_sizing is not None
    dropouts = {2: Phase.REVEAL_COINS, 3: Phase.SHARE_KEYS, 5: Phase.MASKED_INPUT}
    dropouts |= {u: Phase.CONSISTENCY_CHECK for u in range(10, 16)}
    dropouts |= {u: Phase.UNMASKING for u in range(20, 23)}
    dropouts.pop(2)  # a coin reveal missing aborts the round by design (crypto.coins)
    result = run_round(kit.config, kit.identities, kit.inputs, dropouts)
    expected = [u for u in kit.identities if u not in (3, 5)]
    assert result.survivors == tuple(expected)
    np.testing.assert_array_equal(result.total, kit.expected_sum(expected))


# --- complete graphs and exported state -------------------------------------------------


def test_a_complete_graph_round_keeps_the_full_quorum_and_every_signature():
    kit = make_round(12, threshold=7, dimension=9, seed=10)
    assert kit.config.is_complete and kit.config.committee_sizing is None
    rnd = Round(kit)
    requests = rnd.finish()
    assert all(set(r.signatures) == set(range(1, 13)) for r in requests.values())
    np.testing.assert_array_equal(rnd.server.result.total, kit.expected_sum(range(1, 13)))
    # And below the quorum the complete graph refuses as before, for lack of survivors.
    rnd = Round(make_round(12, threshold=7, dimension=9, seed=11))
    rid, full = rnd.kit.config.round_id, tuple(range(1, 13))
    sigs = {
        u: rnd.clients[u].receive_survivor_list(SurvivorList(rid, full)).signature for u in full
    }
    few = {u: sigs[u] for u in range(1, 7)}  # 6 < Q = 7
    with pytest.raises(BelowThresholdError, match="6 survivors confirmed the list; 7"):
        rnd.clients[1].receive_unmask_request(UnmaskRequest(rid, full, few, ()))


def test_the_committee_survives_export_and_import_of_the_client_state():
    kit = sparse_kit(seed=12)
    rnd = Round(kit)
    rid, full = kit.config.round_id, tuple(range(1, N + 1))
    sigs = {
        u: rnd.clients[u].receive_survivor_list(SurvivorList(rid, full)).signature for u in full
    }
    key = os.urandom(32)
    members = sorted(rnd.committee)
    restored = SecAggClient.import_state(
        rnd.clients[1].export_state(key=key), key=key, round_id=rid
    )
    six = {u: sigs[u] for u in members[:6]}
    with pytest.raises(InconsistentSurvivorsError, match="committee members"):
        restored.receive_unmask_request(UnmaskRequest(rid, full, six, ()))
    restored = SecAggClient.import_state(
        rnd.clients[2].export_state(key=key), key=key, round_id=rid
    )
    seven = {u: sigs[u] for u in members[:7]}
    assert isinstance(
        restored.receive_unmask_request(UnmaskRequest(rid, full, seven, ())), UnmaskShares
    )
    with pytest.raises(OutOfPhaseError):
        restored.receive_unmask_request(UnmaskRequest(rid, full, seven, ()))


def test_round_config_binds_the_sizing_inputs_into_the_transcript():
    """The sizing is a function of (n, k, t, Q); each is in the transcript hash, so a server
    showing clients other parameters (to shrink the committee) splits the transcript."""
    kit = sparse_kit(seed=13)
    cfg = kit.config
    other = RoundConfig.create(
        round_id=cfg.round_id,
        identities=cfg.identities,
        threshold=cfg.threshold,
        vector_length=cfg.vector_length,
        degree=cfg.degree,
        minimum_survivors=cfg.minimum_survivors + 3,
    )
    assert other.committee_sizing != cfg.committee_sizing
    assert tr.transcript_hash(other, {}) != tr.transcript_hash(cfg, {})
