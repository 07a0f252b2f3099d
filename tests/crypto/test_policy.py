"""Item 4 of issue 17: t and the quorum against a malicious server with c colluders.

For every n in 3..15 and n = 20, 50, 100, the appliance's choice for the policy's c
passes the clients' check, and an equivocation (two survivor lists, the colluders signing
both) fails through the real protocol classes. With c + 1 colluders the check's verdict is
exactly the inequality's: it refuses the same parameters iff ``2(Q - c - 1) <= n - c - 1``
(or ``t <= c + 1`` on the complete graph), and where it refuses for the quorum, the
equivocation with c + 1 colluders indeed succeeds: the inequality is tight.
"""

from __future__ import annotations

import pytest

from sealagg.crypto import Phase, SecAggClient, SecAggServer
from sealagg.crypto import _transcript as tr
from sealagg.crypto.config import default_minimum_survivors
from sealagg.crypto.errors import (
    BelowThresholdError,
    ModeNotAllowedError,
    OutOfPhaseError,
    PolicyRefusedError,
)
from sealagg.crypto.messages import SurvivorList, UnmaskRequest
from sealagg.crypto.params import choose_graph
from sealagg.crypto.policy import MODES, FederationPolicy, check_round_against_policy
from sealagg.crypto.testing import make_round

SIZES = [*range(3, 16), 20, 50, 100]


def policy_colluders(n: int) -> int:
    return max(1, n // 10)


def chosen(n: int, c: int) -> tuple[int | None, int, int]:
    degree, threshold, _ = choose_graph(n, "secagg+", 0.1, 0.05, colluders=c)
    return degree, threshold, max(default_minimum_survivors(n, threshold, c), 3)


def equivocate(n: int, degree: int | None, threshold: int, quorum: int, colluders: int):
    """Show list A (everyone) to half the honest clients and list B (A minus a victim) to
    the others; the colluders sign both. Returns which honest groups answered unmasking."""
    kit = make_round(n, threshold=threshold, dimension=3, degree=degree, minimum_survivors=quorum)
    server = SecAggServer(kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    for u, c in clients.items():
        c.set_input(kit.inputs[u])
        server.receive(u, c.advertise_keys())
    inbox = server.close_phase()
    # (coins: sparse graphs only), share keys, masked input: everybody honest so far
    while server.phase != Phase.CONSISTENCY_CHECK:
        for u, m in inbox.items():
            server.receive(u, clients[u].handle(m))
        inbox = server.close_phase()
    rid = kit.config.round_id
    corrupt = set(range(n - colluders + 1, n + 1))
    honest = [u for u in sorted(kit.identities) if u not in corrupt]
    group_a, group_b = set(honest[: (len(honest) + 1) // 2]), set(honest[(len(honest) + 1) // 2 :])
    victim = min(group_a)
    lists = {"A": tuple(sorted(kit.identities)), "B": tuple(sorted(set(kit.identities) - {victim}))}
    signatures: dict[str, dict[int, bytes]] = {"A": {}, "B": {}}
    for name, group in (("A", group_a), ("B", group_b)):
        for u in group:
            try:  # a list below the quorum is refused before signing
                reply = clients[u].receive_survivor_list(SurvivorList(rid, lists[name]))
            except BelowThresholdError:
                continue
            signatures[name][u] = reply.signature
        for u in corrupt:  # colluders sign whatever the server asks
            blob = tr.encode_ids(lists[name])
            payload = tr.survivors_payload(rid, server.transcript_hash, u, blob)
            signatures[name][u] = kit.identities[u].sign(payload)
    answered = {}
    for name, group in (("A", group_a), ("B", group_b)):
        dropped = tuple(sorted(set(kit.identities) - set(lists[name])))
        request = UnmaskRequest(rid, lists[name], signatures[name], dropped)
        ok = True
        for u in group:
            try:
                clients[u].receive_unmask_request(request)
            except (BelowThresholdError, OutOfPhaseError):
                ok = False
        answered[name] = ok and bool(group)
    return answered


@pytest.mark.parametrize("n", SIZES)
def test_chosen_parameters_are_safe_at_c_and_equivocation_fails(n):
    c = policy_colluders(n)
    degree, threshold, quorum = chosen(n, c)
    policy = FederationPolicy(colluders=c, minimum_sum=max(3, c + 2))
    check_round_against_policy(policy, "secagg+", n, degree, threshold, quorum)
    answered = equivocate(n, degree, threshold, quorum, c)
    assert not (answered["A"] and answered["B"]), "both survivor lists gathered a quorum"


@pytest.mark.parametrize("n", SIZES)
def test_with_one_more_colluder_the_check_says_exactly_what_the_inequality_says(n):
    c = policy_colluders(n)
    degree, threshold, quorum = chosen(n, c)
    stronger = FederationPolicy(colluders=c + 1, minimum_sum=max(3, c + 3))
    complete = degree is None
    quorum_breaks = 2 * (quorum - (c + 1)) <= n - (c + 1)
    threshold_breaks = complete and threshold <= c + 1
    if quorum_breaks or threshold_breaks or quorum < stronger.minimum_sum:
        with pytest.raises(PolicyRefusedError):
            check_round_against_policy(stronger, "secagg+", n, degree, threshold, quorum)
    if quorum_breaks and n >= 4:
        # Tight: c + 1 colluders do make two lists gather the quorum.
        answered = equivocate(n, degree, threshold, quorum, c + 1)
        assert answered["A"] and answered["B"]
    # What c + 1 needs is what the appliance chooses for c + 1, and that passes.
    if n >= 2 * (c + 1) + 1:
        d2, t2, q2 = chosen(n, c + 1)
        check_round_against_policy(stronger, "secagg+", n, d2, t2, max(q2, c + 3))


def test_the_old_small_n_choice_t2_majority_quorum_is_refused():
    """Before: n=5, 7, 11 with t=2 and a majority quorum (one colluder sufficed)."""
    policy = FederationPolicy(colluders=1)
    for n in (5, 7, 11):
        with pytest.raises(PolicyRefusedError, match="equivocation"):
            check_round_against_policy(policy, "secagg", n, None, 2, n // 2 + 1)
        answered = equivocate(n, None, 2, n // 2 + 1, 1)
        assert answered["A"] and answered["B"]  # the attack itself, on those parameters


def test_weak_sparse_parameters_are_refused():
    policy = FederationPolicy(colluders=1)
    with pytest.raises(PolicyRefusedError, match="cut off"):
        check_round_against_policy(policy, "secagg+", 100, 2, 2, 51)
    with pytest.raises(PolicyRefusedError, match="cut off"):
        check_round_against_policy(policy, "secagg+", 100, 16, 4, 51)  # 2^4.1
    # The old finder's k=20, t=8 was unsafe on the Harary ring (a deterministic cut); on
    # the random graph the exact malicious-dropper bound gives 2^-73.9 for c=1: allowed.
    check_round_against_policy(policy, "secagg+", 100, 20, 8, 51)


def test_modes_outside_the_policy_are_refused_and_plaintext_is_opt_in():
    with pytest.raises(ModeNotAllowedError, match="plaintext"):
        check_round_against_policy(FederationPolicy(), "plaintext", 5, None, 2, 4)
    check_round_against_policy(FederationPolicy(allowed_modes=MODES), "plaintext", 5, None, 0, 0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"colluders": -1},
        {"colluders": 2, "minimum_sum": 3},  # a sum would hold only one honest input
        {"minimum_sum": 2},
        {"allowed_modes": frozenset()},
        {"allowed_modes": frozenset({"magic"})},
        {"security_bits": 8},
    ],
)
def test_invalid_policies_are_refused(kwargs):
    with pytest.raises(ValueError):
        FederationPolicy(**kwargs)
