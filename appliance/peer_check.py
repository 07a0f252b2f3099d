"""Identify the caller of every RPC without re-validating the same certificate each time.

Every call is identified from its TLS client certificate. The full check (signature, path
validation, revocation, the client record on disk) costs about half a millisecond, and a
secure round makes over a dozen calls per client, so on a busy appliance it was a large
share of the event loop's time. A verdict is reused only for the identical certificate
bytes, only while the provisioning stamp (``clients/``, ``revoked.json``) is unchanged, and
only inside the validity window of both the certificate and the CA: a revocation, a
reissue or an expiry takes effect at the next call exactly as without the cache. Refusals
are never cached, so they keep their precise reasons.

A refusal is described by :class:`PeerRefusal`: the client name the certificate claims
(only when the federation's CA issued it, so the name is the CA's word, not the caller's),
a short reason label for the metrics (``revoked``, ``superseded``, ``unregistered``,
``expired``, ``not_yet_valid``, ``not_a_client``, ``invalid``) and the full detail.
The decision itself is always :meth:`FederationFolder.check_peer_certificate`; the label is a
classification of a certificate it already refused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from cryptography import x509

from sealagg.appliance import pki
from sealagg.appliance.errors import ProvisioningError
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

    def admit(self, der: bytes) -> str:
        """The client name, or :class:`PeerRefusedError` naming the client and the reason."""
        try:
            return self(der)
        except ProvisioningError as error:
            raise PeerRefusedError(describe_refusal(self._federation, der, error)) from None


@dataclass(frozen=True)
class PeerRefusal:
    """Why a certificate was refused: for the caller's message, the log and the metrics."""

    name: str | None
    reason: str
    detail: str

    def __str__(self) -> str:
        who = f"client {self.name!r}" if self.name else "an unidentified certificate"
        return f"{who} refused ({self.reason}): {self.detail}"


class PeerRefusedError(PermissionError):
    """A call's client certificate is not admitted now; carries the :class:`PeerRefusal`."""

    def __init__(self, refusal: PeerRefusal) -> None:
        super().__init__(str(refusal))
        self.refusal = refusal


def describe_refusal(federation: FederationFolder, der: bytes, error: Exception) -> PeerRefusal:
    """Classify a certificate ``check_peer_certificate`` refused with ``error``."""
    detail = str(error)
    try:
        cert = x509.load_der_x509_certificate(bytes(der))
    except ValueError:
        return PeerRefusal(None, "invalid", detail)
    if not _issued_by_trusted_ca(federation, cert):
        return PeerRefusal(None, "invalid", detail)  # not ours: its name means nothing
    try:
        name: str | None = pki.client_name_of(cert)
    except ProvisioningError:
        return PeerRefusal(None, "not_a_client", detail)
    now = datetime.now(UTC)
    if now > cert.not_valid_after_utc:
        reason = "expired"
    elif now < cert.not_valid_before_utc:
        reason = "not_yet_valid"
    else:
        reason = _provisioning_reason(federation, cert, name)
    return PeerRefusal(name, reason, detail)


def _provisioning_reason(federation: FederationFolder, cert: x509.Certificate, name: str) -> str:
    try:
        if federation.is_revoked(cert):
            return "revoked"
        record = federation.client_record(name)
    except (OSError, ProvisioningError):
        return "invalid"
    if record is None:
        return "unregistered"
    if record.revoked:
        return "revoked"
    if record.serial != cert.serial_number:
        return "superseded"
    return "invalid"


def _issued_by_trusted_ca(federation: FederationFolder, cert: x509.Certificate) -> bool:
    cas = getattr(federation, "trusted_ca_certificates", (federation.ca_certificate,))
    for ca in cas:
        try:
            pki.check_issued_by(cert, ca)
        except ProvisioningError:
            continue
        return True
    return False
