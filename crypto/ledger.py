"""A client's record of the round transcripts it took part in, so that none is replayed.

Consistency signatures bind the hash of the whole transcript (round id, parameters,
roster version, every advertised key), so a signature from an earlier round cannot
fill this round's quorum. The ledger adds the client's own memory on top: a client
never takes part twice in one transcript, nor in two transcripts under one round id
(an appliance that reuses a round id is replaying or equivocating, whatever it says).

It also bounds how often the appliance can re-draw the SecAgg+ graph: a client claims a
transcript right before it reveals its graph coin (:mod:`crypto.coins`), so every claim
is one draw the appliance has seen; :meth:`TranscriptLedger.finish` marks the round in
which the client answered the unmask request. A claim is refused
(:class:`~sealagg.crypto.errors.RevealBudgetError`) once :data:`MAX_UNFINISHED_REVEALS`
claims in a row never finished, unless :data:`REVEAL_COOLDOWN_SECONDS` passed since the
last one: aborting after seeing the graph (withholding a coin, stalling a phase) then
buys at most that many draws per finished round, plus one per cooldown.

:class:`TranscriptLedger` is the interface; :class:`InMemoryTranscriptLedger` serves
the protocol classes and tests; the client shim keeps a durable, file-backed one
(``client_shim/transcript_ledger.py``) so the record survives a restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from sealagg.crypto.errors import RevealBudgetError, TranscriptReusedError

#: Revealed rounds in a row that never finished before the client pauses.
MAX_UNFINISHED_REVEALS = 8
#: While paused, one more round per this many seconds (an honest outage heals by itself).
REVEAL_COOLDOWN_SECONDS = 3600.0


class TranscriptLedger(Protocol):
    """Remembers (round id, transcript hash) pairs; refuses a second claim of either."""

    def claim(self, round_id: bytes, transcript_hash: bytes) -> None:
        """Record the pair, or raise :class:`TranscriptReusedError` if the transcript was
        claimed before or the round id was claimed with another transcript, or
        :class:`RevealBudgetError` (:func:`check_reveal_budget`). Must be durable before
        it returns (the client reveals its coin right after)."""

    def finish(self, round_id: bytes) -> None:
        """Record that the round ``round_id`` finished for this client (it unmasked)."""


class InMemoryTranscriptLedger:
    """A ledger for one process's lifetime (tests, simulations, a client object's default)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._by_round: dict[bytes, bytes] = {}
        self._hashes: set[bytes] = set()
        self._unfinished = 0
        self._last_claim = 0.0
        self._clock = clock
        self._lock = threading.Lock()

    def claim(self, round_id: bytes, transcript_hash: bytes) -> None:
        with self._lock:
            check_claim(self._by_round, self._hashes, bytes(round_id), bytes(transcript_hash))
            now = self._clock()
            check_reveal_budget(self._unfinished, self._last_claim, now)
            self._by_round[bytes(round_id)] = bytes(transcript_hash)
            self._hashes.add(bytes(transcript_hash))
            self._unfinished += 1
            self._last_claim = now

    def finish(self, round_id: bytes) -> None:
        with self._lock:
            if bytes(round_id) in self._by_round:
                self._unfinished = 0


def check_claim(
    by_round: dict[bytes, bytes], hashes: set[bytes], round_id: bytes, transcript_hash: bytes
) -> None:
    """The ledger rule, shared by every implementation: raise if the claim is a reuse."""
    if transcript_hash in hashes:
        raise TranscriptReusedError(
            "this client already took part in this round transcript: a replayed round"
        )
    if round_id in by_round:
        raise TranscriptReusedError(
            "this client already took part in a round with this id under another transcript: "
            "the appliance reused a round id"
        )


def check_reveal_budget(unfinished: int, last_claim: float, now: float) -> None:
    """Refuse one more reveal after :data:`MAX_UNFINISHED_REVEALS` unfinished ones in a row,
    unless the last was :data:`REVEAL_COOLDOWN_SECONDS` ago (the ledger rule, shared)."""
    if unfinished >= MAX_UNFINISHED_REVEALS and now - last_claim < REVEAL_COOLDOWN_SECONDS:
        raise RevealBudgetError(
            f"this client revealed its graph coin in {unfinished} rounds in a row that never "
            "finished: each gave the appliance another draw of the graph, so it takes part "
            f"again only {REVEAL_COOLDOWN_SECONDS:.0f} s after the last one (or after a round "
            "finishes)"
        )
