"""Complete graphs skip the coin reveal; sparse ones keep it, whatever the server says.

The coins only seed the SecAgg+ random graph; a complete graph never reads the seed, so
its rounds go from the key directory straight to the shares (one round trip less). The
decision comes from the signed round parameters on both sides: a server cannot make a
client of a sparse round skip its reveal (and so draw the graph without its coin).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sealagg.crypto import Phase, SecAggClient, SecAggServer
from sealagg.crypto import _transcript as tr
from sealagg.crypto.errors import OutOfPhaseError
from sealagg.crypto.messages import RevealCoin, ShareBundle, ShareKeys
from sealagg.crypto.simulation import RoundStats, run_round
from sealagg.crypto.testing import make_round


def _advertised(kit, server_config=None):
    server = SecAggServer(server_config or kit.config)
    clients = {u: SecAggClient(kit.config, u, kit.identities[u]) for u in kit.identities}
    for u, c in clients.items():
        c.set_input(kit.inputs[u])
        server.receive(u, c.advertise_keys())
    return server, clients


@pytest.mark.parametrize("degree", [None, 3, 9])  # secagg, and secagg+ with degree >= n - 1
def test_a_complete_graph_round_has_no_reveal_phase(degree):
    kit = make_round(4, threshold=2, dimension=7, degree=degree)
    assert kit.config.is_complete and not kit.config.reveals_coins
    server, clients = _advertised(kit)
    directories = server.close_phase()
    assert server.phase == Phase.SHARE_KEYS  # straight from the advertisements
    replies = {u: clients[u].receive_key_directory(m) for u, m in directories.items()}
    assert all(isinstance(r, ShareKeys) for r in replies.values())
    for u, r in replies.items():
        server.receive(u, r)
    assert server.graph is not None and server.graph.is_complete
    phases = [server.phase]
    inbox = server.close_phase()
    while server.phase is not None:
        phases.append(server.phase)
        for u, m in inbox.items():
            server.receive(u, clients[u].handle(m))
        inbox = server.close_phase()
    assert Phase.REVEAL_COINS not in phases
    np.testing.assert_array_equal(server.result.total, kit.expected_sum(kit.identities))


def test_the_simulation_of_a_complete_round_sends_no_coin():
    kit = make_round(5, threshold=3, dimension=4)
    stats = RoundStats()
    result = run_round(kit.config, kit.identities, kit.inputs, stats=stats)
    assert Phase.REVEAL_COINS not in stats.client_seconds
    np.testing.assert_array_equal(result.total, kit.expected_sum(result.survivors))


def test_a_sparse_graph_round_still_reveals_every_coin():
    kit = make_round(10, threshold=2, degree=8, dimension=4)
    assert kit.config.reveals_coins
    server, clients = _advertised(kit)
    directories = server.close_phase()
    assert server.phase == Phase.REVEAL_COINS
    replies = {u: clients[u].receive_key_directory(m) for u, m in directories.items()}
    assert all(isinstance(r, RevealCoin) for r in replies.values())
    stats = RoundStats()
    run_round(kit.config, kit.identities, kit.inputs, stats=stats)
    assert Phase.REVEAL_COINS in stats.client_seconds


def test_a_server_cannot_make_a_sparse_round_client_skip_its_reveal():
    """The server runs the round as if it were complete (its own config says degree n-1)
    and sends share bundles where the coin directory belongs. The sparse-round client still
    answers the key directory with its coin, refuses the share bundle out of phase (and
    stays waiting for the coins), and its transcript, which binds the degree, differs from
    the server's, so none of its later signatures could count in the server's round."""
    kit = make_round(10, threshold=2, degree=8, dimension=4)
    complete = dataclasses.replace(kit.config, degree=9)
    assert not complete.reveals_coins
    server, clients = _advertised(kit, server_config=complete)
    directories = server.close_phase()
    assert server.phase == Phase.SHARE_KEYS  # the lying server skips the reveal
    reveal = clients[1].receive_key_directory(directories[1])
    assert isinstance(reveal, RevealCoin)  # the client did not skip
    with pytest.raises(OutOfPhaseError, match="reveal_coin is not accepted in phase SHARE_KEYS"):
        server.receive(1, reveal)
    keys = dict(directories[1].keys)
    assert tr.transcript_hash(kit.config, keys) != tr.transcript_hash(complete, keys)
    # Shares from the others (their own sparse clients would not send them: forge a bundle
    # the way a server would have to, from nothing) are refused before the coins.
    bundle = ShareBundle(kit.config.round_id, {})
    with pytest.raises(OutOfPhaseError, match="share bundle is not accepted in state await_coins"):
        clients[1].receive_share_bundle(bundle)
    assert clients[1].state == "await_coins"
