"""Issue 17: colluding clients cannot steer the SecAgg+ graph (commit-then-reveal coins).

Before this change the graph seed was the hash of the advertised keys: the appliance shows
two colluders the honest advertisements, they re-draw their own keys until the graph they
compute puts both next to a victim, and that graph is the round's (run against the code
before the change, the grind below succeeds and ``server.graph`` equals the prediction).
Now the seed also hashes every client's coin, committed in the advertisement and revealed
only after the key directory fixed every commitment: whatever the colluders compute while
grinding is not the round's graph, a coin other than the committed one is refused, and a
withheld coin aborts the round for everyone (the appliance cannot choose among subsets).
"""

from __future__ import annotations

import dataclasses

import pytest

from sealagg.crypto import SecAggClient, SecAggServer
from sealagg.crypto import _transcript as tr
from sealagg.crypto.coins import coin_commitment, graph_seed
from sealagg.crypto.errors import CoinRevealError, OutOfPhaseError, RevealBudgetError
from sealagg.crypto.ledger import MAX_UNFINISHED_REVEALS, InMemoryTranscriptLedger
from sealagg.crypto.messages import CoinDirectory, RevealCoin
from sealagg.crypto.testing import make_round

VICTIM, COLLUDERS = 1, (29, 30)
#: The clients of a ten-client round other than client 5 (who regrinds or withholds).
HONEST = (1, 2, 3, 4, 6, 7, 8, 9, 10)


def _advertise(kit, members):
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in members}
    for u, c in clients.items():
        c.set_input(kit.inputs[u])
    return clients, {u: c.advertise_keys() for u, c in clients.items()}


def _advertised(n: int):
    """A sparse round of ``n`` clients whose advertisements the server has received:
    (kit, server, clients), the server ready to close the advertise phase. Degree n - 2:
    sparse (so the coins are revealed), yet dense enough that pruning leaves everyone in
    (a client with fewer than t = 2 neighbours at n = 10: about 2e-7)."""
    kit = make_round(n, threshold=2, degree=n - 2, dimension=3)
    server = SecAggServer(kit.config)
    clients, adverts = _advertise(kit, kit.identities)
    for u, a in adverts.items():
        server.receive(u, a)
    return kit, server, clients


def _grind(kit, honest_adverts, tries):
    """The colluders' best advertisements by the graph they can compute before any reveal."""
    honest_keys = {u: a.keys for u, a in honest_adverts.items()}
    best = None
    for _ in range(tries):
        clients, adverts = _advertise(kit, COLLUDERS)
        keys = {**honest_keys, **{u: a.keys for u, a in adverts.items()}}
        predicted = kit.config.graph_for(tr.transcript_hash(kit.config, keys))
        around = set(predicted.neighbours(VICTIM))
        score = (len(around & set(COLLUDERS)), -len(around))
        if best is None or score > best[0]:
            best = (score, clients, adverts, predicted)
    return best


def test_colluders_grinding_their_advertisements_do_not_fix_the_graph():
    kit = make_round(30, threshold=2, degree=4, dimension=3)
    server = SecAggServer(kit.config)
    honest = [u for u in kit.identities if u not in COLLUDERS]
    honest_clients, honest_adverts = _advertise(kit, honest)
    for u, a in honest_adverts.items():
        server.receive(u, a)
    score, colluders, adverts, predicted = _grind(kit, honest_adverts, 800)
    assert score[0] == 2  # the grind "succeeded": both colluders next to the victim
    for u, a in adverts.items():
        server.receive(u, a)
    clients = {**honest_clients, **colluders}
    for u, m in server.close_phase().items():
        server.receive(u, clients[u].handle(m))
    inbox = server.close_phase()  # every coin is in: the graph is drawn now
    graph = server.graph
    assert dict(graph.adjacency) != dict(predicted.adjacency)
    assert kit.config.graph_for(server.transcript_hash) == predicted  # what the old code used
    # The colluders, now seeing every honest coin, cannot re-pick theirs: the round's
    # graph is what every client computes from the committed coins. (Any active client:
    # with k = 4 the victim itself has fewer than t = 2 neighbours, and is pruned, ~8 %.)
    u = min(inbox)
    assert clients[u].handle(inbox[u]).TYPE == "share_keys"


def test_a_coin_other_than_the_committed_one_is_refused_by_the_server_and_every_client():
    kit, server, clients = _advertised(10)
    directories = server.close_phase()
    reveals = {u: clients[u].handle(m) for u, m in directories.items()}
    for u in HONEST:
        server.receive(u, reveals[u])
    regrind = RevealCoin(kit.config.round_id, bytes(32))  # 5 tries another coin
    with pytest.raises(CoinRevealError, match="client 5's coin"):
        server.receive(5, regrind)
    # A lying server that relays it anyway: every client refuses the coin directory.
    coins = {u: r.coin for u, r in reveals.items()} | {5: regrind.coin}
    with pytest.raises(CoinRevealError, match="client 5's revealed coin"):
        clients[1].receive_coin_directory(CoinDirectory(kit.config.round_id, coins))
    assert clients[1].state == "aborted"


def test_a_withheld_coin_aborts_the_round_for_everyone():
    """Client 5 committed, then withholds its coin (it saw the others' and disliked the
    graph). The server cannot go on without it (it would choose among graphs by choosing
    whom to leave out): closing the phase aborts the round; and a server that sends the
    others a coin directory without 5's is refused by each of them."""
    kit, server, clients = _advertised(10)
    reveals = {u: clients[u].handle(m) for u, m in server.close_phase().items()}
    for u in HONEST:
        server.receive(u, reveals[u])
    with pytest.raises(CoinRevealError, match=r"clients \[5\] committed"):
        server.close_phase()
    assert server.phase is None and isinstance(server.abort_error, CoinRevealError)
    with pytest.raises(OutOfPhaseError):
        server.close_phase()
    partial = CoinDirectory(kit.config.round_id, {u: reveals[u].coin for u in HONEST})
    for u in HONEST:
        with pytest.raises(CoinRevealError, match=r"clients \[5\] committed"):
            clients[u].receive_coin_directory(partial)


def test_the_seed_needs_every_commitment_and_binds_each_coin():
    rid, transcript = b"r" * 32, b"t" * 32
    coins = {1: b"a" * 32, 2: b"b" * 32, 3: b"c" * 32}
    commitments = {u: coin_commitment(rid, u, c) for u, c in coins.items()}
    seed = graph_seed(rid, transcript, commitments, coins)
    assert seed == graph_seed(rid, transcript, commitments, dict(reversed(coins.items())))
    assert seed != graph_seed(rid, b"u" * 32, commitments, coins)
    with pytest.raises(CoinRevealError, match="committed to none"):
        graph_seed(rid, transcript, commitments, {**coins, 4: b"d" * 32})
    with pytest.raises(CoinRevealError, match="does not open"):
        graph_seed(rid, transcript, commitments, {**coins, 2: b"x" * 32})
    other_id = {**commitments, 3: coin_commitment(rid, 4, coins[3])}  # bound to its client
    with pytest.raises(CoinRevealError, match="client 3"):
        graph_seed(rid, transcript, other_id, coins)


def test_a_client_reveals_only_after_claiming_the_transcript_and_counts_unfinished_rounds():
    """The ledger claim comes before the coin leaves: a replayed directory gets no coin,
    and after MAX_UNFINISHED_REVEALS revealed rounds that never finished the client stops
    revealing (each would be one more graph draw for an appliance that aborts at will)."""
    ledger = InMemoryTranscriptLedger(clock=lambda: 0.0)
    for _ in range(MAX_UNFINISHED_REVEALS):
        kit = make_round(4, threshold=2, degree=2, dimension=3)  # sparse: coins revealed
        server = SecAggServer(kit.config)
        client = SecAggClient(kit.config, 1, kit.identities[1], ledger=ledger)
        server.receive(1, client.advertise_keys())
        others = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in (2, 3, 4)}
        for u, c in others.items():
            server.receive(u, c.advertise_keys())
        directory = server.close_phase()[1]
        assert isinstance(client.receive_key_directory(directory), RevealCoin)
        # ... and the appliance aborts the round here, after the coins.
    kit = make_round(4, threshold=2, degree=2, dimension=3)
    server = SecAggServer(kit.config)
    client = SecAggClient(kit.config, 1, kit.identities[1], ledger=ledger)
    server.receive(1, client.advertise_keys())
    for u in (2, 3, 4):
        server.receive(u, SecAggClient(kit.config, u, kit.identities[u]).advertise_keys())
    with pytest.raises(RevealBudgetError, match="never finished"):
        client.receive_key_directory(server.close_phase()[1])
    assert client.state == "aborted"


def test_a_finished_round_resets_the_count():
    ledger = InMemoryTranscriptLedger(clock=lambda: 0.0)
    for i in range(MAX_UNFINISHED_REVEALS):
        ledger.claim(bytes([i]) * 32, bytes([i + 50]) * 32)
    with pytest.raises(RevealBudgetError):
        ledger.claim(b"x" * 32, b"y" * 32)
    ledger.finish(bytes([0]) * 32)
    ledger.claim(b"x" * 32, b"y" * 32)


def test_a_forged_directory_entry_cannot_move_a_committed_coin():
    """The server replaces client 4's coin commitment in client 1's directory (it cannot
    sign it): 1's transcript then differs from everyone's, and 4's genuine coin does not
    open the forged commitment, so 1 refuses the coin directory."""
    _, server, clients = _advertised(10)
    directories = server.close_phase()
    keys = dict(directories[1].keys)
    keys[4] = dataclasses.replace(keys[4], coin_commitment=bytes(32))
    forged = dataclasses.replace(directories[1], keys=keys)
    reveals = {1: clients[1].receive_key_directory(forged)}
    for u in range(2, 11):
        reveals[u] = clients[u].receive_key_directory(directories[u])
    for u, r in reveals.items():
        server.receive(u, r)
    with pytest.raises(CoinRevealError, match="client 4"):
        clients[1].receive_coin_directory(server.close_phase()[1])
