"""Identify the caller of every RPC without re-validating the same certificate each time.

Every call is identified from its TLS client certificate. The full check (signature, path
validation, revocation, the client record on disk) costs about half a millisecond, and a
secure round makes over a dozen calls per client, so on a busy appliance it was a large
share of the event loop's time. A verdict is reused only for the identical certificate
bytes, only while the provisioning stamp (``clients/``, ``revoked.json``) is unchanged, and
only inside the validity window of both the certificate and the CA: a revocation, a
reissue or an expiry takes effect at the next call exactly as without the cache. Refusals
are never cached, so they keep their precise reasons.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509

from sealagg.appliance.federation import FederationFolder

#: Distinct certificates remembered; beyond this the memo starts over (bounded memory).
MAX_ENTRIES = 4096


@dataclass(frozen=True)
class _Verdict:
    name: str
    stamp: tuple
    valid_from: datetime
    valid_until: datetime


class CachedPeerCheck:
    """``FederationFolder.check_peer_certificate`` with a memo of accepted certificates."""

    def __init__(
        self,
        federation: FederationFolder,
        *,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._federation = federation
        self._clock = clock
        self._max_entries = max_entries
        self._verdicts: dict[bytes, _Verdict] = {}
        self._lock = threading.Lock()

    def __call__(self, der: bytes) -> str:
        der = bytes(der)
        stamp = self._federation.provisioning_stamp()
        now = self._clock()
        with self._lock:
            known = self._verdicts.get(der)
        if known and known.stamp == stamp and known.valid_from <= now <= known.valid_until:
            return known.name
        name = self._federation.check_peer_certificate(der, now=now)  # raises if refused
        cert = x509.load_der_x509_certificate(der)
        ca = self._federation.ca_certificate
        verdict = _Verdict(
            name=name,
            stamp=stamp,
            valid_from=max(cert.not_valid_before_utc, ca.not_valid_before_utc),
            valid_until=min(cert.not_valid_after_utc, ca.not_valid_after_utc),
        )
        with self._lock:
            if len(self._verdicts) >= self._max_entries:
                self._verdicts.clear()
            self._verdicts[der] = verdict
        return name
