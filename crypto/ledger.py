"""A client's record of the round transcripts it took part in, so that none is replayed.

Consistency signatures bind the hash of the whole transcript (round id, parameters,
roster version, every advertised key), so a signature from an earlier round cannot
fill this round's quorum. The ledger adds the client's own memory on top: a client
never takes part twice in one transcript, nor in two transcripts under one round id
(an appliance that reuses a round id is replaying or equivocating, whatever it says).

:class:`TranscriptLedger` is the interface; :class:`InMemoryTranscriptLedger` serves
the protocol classes and tests; the client shim keeps a durable, file-backed one
(``client_shim/transcript_ledger.py``) so the record survives a restart.
"""

from __future__ import annotations

import threading
from typing import Protocol

from sealagg.crypto.errors import TranscriptReusedError


class TranscriptLedger(Protocol):
    """Remembers (round id, transcript hash) pairs; refuses a second claim of either."""

    def claim(self, round_id: bytes, transcript_hash: bytes) -> None:
        """Record the pair, or raise :class:`TranscriptReusedError` if the transcript was
        claimed before or the round id was claimed with another transcript. Must be
        durable before it returns (the client acts on the transcript right after)."""


class InMemoryTranscriptLedger:
    """A ledger for one process's lifetime (tests, simulations, a client object's default)."""

    def __init__(self) -> None:
        self._by_round: dict[bytes, bytes] = {}
        self._hashes: set[bytes] = set()
        self._lock = threading.Lock()

    def claim(self, round_id: bytes, transcript_hash: bytes) -> None:
        with self._lock:
            check_claim(self._by_round, self._hashes, bytes(round_id), bytes(transcript_hash))
            self._by_round[bytes(round_id)] = bytes(transcript_hash)
            self._hashes.add(bytes(transcript_hash))


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
