"""The SecAgg+ graph seed by commit-then-reveal coin tossing (issue 17, item 3).

Why: the random graph's privacy bound (:func:`crypto.params.log2_partition_bound`)
holds for a graph drawn independently of who colludes. Seeding it with the hash of the
advertised keys alone let colluding clients, shown the honest keys by the appliance
first, re-draw their own keys until the graph placed them around a victim.

Protocol (two messages folded around the existing key directory):

1. *Commit* (advertisement, phase 0): each client draws a fresh coin
   ``r_u = os.urandom(32)`` and puts ``C_u = H(label ‖ round id ‖ u ‖ r_u)`` into its
   signed advertisement. The key directory relays every advertisement; its hash (the
   transcript) covers every ``C_u``.
2. *Reveal* (phase 1): a client sends ``r_u`` only after it received the key directory,
   i.e. after every commitment of its transcript is fixed, and after claiming that
   transcript in its ledger (one transcript per round id, so one reveal per round id).
3. *Seed*: ``H(label ‖ transcript ‖ r_u for every u of the directory, by id)``. Every
   committed client must reveal: one missing or wrong coin aborts the round for everyone
   (the server's close of the phase and every client refuse), never a subset.

Why nobody can bias the seed beyond aborting. Take any transcript T on which an honest
client acts after the reveal (shares, masked input, signature). That client received T's
directory before revealing, and revealed only there (its ledger refuses a second
transcript under the round id), so its ``r_u``, 256 fresh bits hidden by ``C_u`` (SHA-256
in the random-oracle model), was unknown to everyone when T's other commitments were
fixed. The colluders' coins in T are bound by their commitments in T (SHA-256 collision
resistance): after the honest reveals they can only reveal the committed value or
nothing. Forged directory entries for clients that never saw T change nothing: the
entry's coin is the adversary's, like a colluder's. So the seed is the random oracle on
an input holding a fresh uniform value chosen after everything else was fixed: uniform
and independent of the colluders' keys, positions and commitments. The adversary's one
lever is to withhold (or stall the round) after seeing the seed, then start a new round:
each such restart is a fresh, independent draw. Clients count them
(:mod:`crypto.ledger`: at most :data:`crypto.ledger.MAX_UNFINISHED_REVEALS` revealed
rounds in a row that never finish, then one per cooldown), so over a client's life the
adversary gets at most ``(finished rounds + 1) · MAX_UNFINISHED_REVEALS`` + one per
cooldown draws, and the per-draw bound ``2^-security_bits`` is multiplied by that count.

Complete graphs: no reveal. When the round's graph is complete (SecAgg, or SecAgg+ with
degree ``n - 1``: :attr:`crypto.config.RoundConfig.reveals_coins` is false) the server goes
from the key directory straight to the shares and clients reveal nothing. Why that is safe:

* The seed has nothing to steer. :meth:`crypto.config.RoundConfig.graph_for` returns the
  complete graph on the participants without reading the seed, so every seed, however
  chosen, gives the same graph; what the coins protect (a graph drawn independently of
  the colluders) holds trivially. Who is pruned for too few advertising neighbours
  depends only on who advertised, exactly as in SecAgg.
* Nobody decides to skip after seeing keys. Both sides derive it from the degree and the
  participants of the :class:`~crypto.config.RoundConfig`, fixed before any key exists,
  checked by each client against its policy, and hashed into the transcript that share
  and consistency signatures bind. A server that shows one client a complete round and
  another a sparse one gives them different transcripts: their signatures do not verify
  for each other, and no quorum signs one survivor list. A client whose round is sparse
  always reveals and then waits for the coin directory; anything else (a share bundle
  sent to skip the reveal) is refused out of phase, so a server cannot make it skip.
* The advertisement keeps its coin commitment (one format, one signed payload and one
  transcript hash in both cases); the coin behind it is fresh, hidden by the commitment
  and never sent, so the unused commitment reveals nothing. The client still claims the
  transcript in its ledger before sharing (no replay), and the claim counts towards the
  reveal budget as before (conservative: a finished round resets it).

Cost: one small message each way (32 bytes up, 32·n down), no public-key operation.
A committed client that drops between advertising and revealing aborts the round: the
reveal follows the advertisement directly (training is already done), so this is rare, and
when the appliance saw that client vanish it replaces the round at once with a fresh draw
among the others (appliance/orchestrator.py, ``_vanished_before_reveal``): the same lever
as any abort-and-restart, counted by the same ledger.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from collections.abc import Mapping

from sealagg.crypto.errors import CoinRevealError

__all__ = ["COIN_BYTES", "coin_commitment", "draw_coin", "graph_seed"]

COIN_BYTES = 32


def _id(client_id: int) -> bytes:
    return struct.pack(">I", client_id)


def draw_coin() -> bytes:
    """A fresh coin from the OS CSPRNG."""
    return os.urandom(COIN_BYTES)


def coin_commitment(round_id: bytes, client_id: int, coin: bytes) -> bytes:
    """``H(label ‖ round id ‖ client ‖ coin)``: hiding (32 uniform bytes), binding (SHA-256)."""
    return hashlib.sha256(b"sealagg/coin/v1" + round_id + _id(client_id) + coin).digest()


def graph_seed(
    round_id: bytes,
    transcript: bytes,
    commitments: Mapping[int, bytes],
    coins: Mapping[int, bytes],
) -> bytes:
    """The graph seed from every committed client's coin, or :class:`CoinRevealError`.

    ``commitments``: client -> coin commitment, for every client of the key directory.
    ``coins``: the revealed coins. Both the server (closing the reveal phase) and each
    client (on the coin directory) call this, so both refuse the same missing or wrong coin.
    """
    missing = sorted(set(commitments) - set(coins))
    if missing:
        raise CoinRevealError(
            f"clients {missing} committed to a graph coin and did not reveal it: the round "
            "is aborted (continuing without them would let the server choose the graph)"
        )
    stray = sorted(set(coins) - set(commitments))
    if stray:
        raise CoinRevealError(f"coins from clients {stray}, who committed to none")
    h = hashlib.sha256(b"sealagg/graph-seed/v1" + transcript)
    for u in sorted(commitments):
        coin = coins[u]
        if len(coin) != COIN_BYTES or not hmac.compare_digest(
            commitments[u], coin_commitment(round_id, u, coin)
        ):
            raise CoinRevealError(
                f"client {u}'s revealed coin does not open its commitment: the round is aborted"
            )
        h.update(_id(u) + coin)
    return h.digest()


def check_coin(round_id: bytes, client_id: int, commitment: bytes, coin: bytes) -> None:
    """Refuse one reveal that does not open ``commitment`` (the server, on receipt)."""
    if len(coin) != COIN_BYTES or not hmac.compare_digest(
        commitment, coin_commitment(round_id, client_id, coin)
    ):
        raise CoinRevealError(f"client {client_id}'s coin does not open its commitment")
