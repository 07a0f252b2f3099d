"""Verifier-issued nonces: fresh, single-use, and the source of the evidence's age.

The verifier, not the attester, decides freshness (RFC 9334 §10.2, nonce-based):
each appraisal consumes a nonce this verifier issued; an unknown nonce or one
already consumed is refused, and the time since issue is the evidence's age.
"""

from __future__ import annotations

import hashlib
import secrets

from sealagg.attest.binding import NONCE_BYTES
from sealagg.attest.errors import AppraisalFailure, Reason

MAX_OUTSTANDING = 1024


class NonceIssuer:
    def __init__(self) -> None:
        self._outstanding: dict[bytes, float] = {}
        self._consumed: set[bytes] = set()

    def issue(self, now: float) -> bytes:
        if len(self._outstanding) >= MAX_OUTSTANDING:  # drop the oldest
            oldest = min(self._outstanding, key=self._outstanding.__getitem__)
            del self._outstanding[oldest]
        nonce = secrets.token_bytes(NONCE_BYTES)
        self._outstanding[_key(nonce)] = now
        return nonce

    def redeem(self, nonce: bytes, now: float, max_age: float) -> float:
        """Consume ``nonce``; return its age in seconds, or raise with the reason."""
        key = _key(nonce)
        if key in self._consumed:
            raise AppraisalFailure(Reason.REPLAYED_NONCE, "this nonce was already used")
        issued = self._outstanding.pop(key, None)
        if issued is None:
            raise AppraisalFailure(Reason.UNKNOWN_NONCE, "this verifier did not issue the nonce")
        self._consumed.add(key)
        age = now - issued
        if age > max_age:
            raise AppraisalFailure(
                Reason.TOO_OLD, f"evidence is {age:.1f} s old; the policy allows {max_age:g} s"
            )
        return age


def _key(nonce: bytes) -> bytes:
    return hashlib.sha256(bytes(nonce)).digest()
