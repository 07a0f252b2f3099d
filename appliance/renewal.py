"""Server side of ``Aggregator.RenewCertificate``: a client renews its TLS certificate itself.

Who may renew: the caller proves possession of its current, unexpired, unrevoked certificate
by the mutual-TLS handshake (its identity is the certificate's, never a message field), and of
the key it wants certified by the CSR's self-signature; the CSR must name the caller and
nobody else. What changes: only the TLS certificate (and, with a fresh key, the TLS key). The
client's Ed25519 identity key, which the participants table, the roster and every round
transcript pin, is not touched: a renewal is not a re-enrolment.

The old certificate is not revoked at once: it stays accepted for
:data:`~sealagg.appliance.federation.RENEWAL_GRACE` (7 days), then stops. Why not until its
own expiry: a renewal is also how a client replaces a key it fears exposed, and a stolen key
should die soon. Why not at once: a client whose reply was lost still holds only the old
certificate; it reconnects with it and, sending a CSR for the key already certified, gets the
new certificate again (re-delivery, nothing new is issued). Any other request made with an
old certificate is refused: only the current certificate can obtain a new key's certificate.

A federation that pins an authority has the authority's roster pin every client's TLS key
(``RosterEntry.tls_key_sha256``; the roster gate and the clients check it). A renewal for a
key the installed roster does not list is refused (FAILED_PRECONDITION) instead of locking the
client out of rounds: renew with the same key, or have the authority sign a roster that lists
the new key first.

Issuing needs the CA key at run time: a passphrase-protected federation must be served with
``sealagg serve --passphrase-file``; otherwise the call answers FAILED_PRECONDITION saying so.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
from datetime import datetime

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealagg.appliance import pki
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import (
    MAX_PREVIOUS_CERTIFICATES,
    RENEWAL_GRACE,
    ClientRecord,
    FederationFolder,
    PreviousCertificate,
)
from sealagg.appliance.store import Store
from sealagg.appliance.wire import sealagg_pb2 as pb

__all__ = ["MAX_CSR_BYTES", "CertificateRenewer", "RenewalRefusedError", "RenewalResult", "renew"]

_log = logging.getLogger("sealagg.renewal")

#: A P-256 CSR is about 300 bytes; anything much larger is not one.
MAX_CSR_BYTES = 4096


class RenewalRefusedError(Exception):
    """A refused renewal: the gRPC status name and a reason the client can act on."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class RenewalResult:
    certificate_pem: bytes
    ca_bundle_pem: bytes
    not_after: datetime
    serial: int
    previous_serial: int
    #: False: the re-delivery of a certificate issued earlier (its reply was lost).
    issued: bool


def parse_csr(der: bytes, *, name: str) -> x509.CertificateSigningRequest:
    """The CSR, if it is a self-signed PKCS#10 request for a P-256 key naming exactly client
    ``name`` (one common name, nothing else that could claim another identity)."""
    if not isinstance(der, bytes) or not der or len(der) > MAX_CSR_BYTES:
        raise RenewalRefusedError("INVALID_ARGUMENT", "csr_der must be a DER PKCS#10 request")
    try:
        csr = x509.load_der_x509_csr(der)
        valid = csr.is_signature_valid
        subject = list(csr.subject)
    except (ValueError, InvalidSignature):
        raise RenewalRefusedError(
            "INVALID_ARGUMENT", "csr_der is not a valid PKCS#10 request"
        ) from None
    if not valid:
        raise RenewalRefusedError("INVALID_ARGUMENT", "the CSR's signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise RenewalRefusedError("INVALID_ARGUMENT", "the CSR's key must be ECDSA P-256")
    names = [a.value for a in subject if a.oid == NameOID.COMMON_NAME]
    if names != [name] or len(subject) != 1:
        raise RenewalRefusedError(
            "PERMISSION_DENIED",
            f"the CSR must name exactly the caller {name!r} (its subject is "
            f"{csr.subject.rfc4514_string()!r})",
        )
    return csr


def renew(
    federation: FederationFolder,
    name: str,
    presented: x509.Certificate,
    csr_der: bytes,
    *,
    now: datetime | None = None,
) -> RenewalResult:
    """Issue client ``name`` a certificate for the CSR's key, or re-deliver the one issued.

    ``presented``: the certificate the caller authenticated with (already checked by the
    handshake and the per-call check). Raises :class:`RenewalRefusedError`.
    """
    moment = pki.issuance_time(now)
    csr = parse_csr(csr_der, name=name)
    with federation._exclusive():
        record = federation.client_record(name)
        if record is None or record.revoked or presented.serial_number in federation.revocations():
            raise RenewalRefusedError("PERMISSION_DENIED", f"client {name!r} is not active")
        if record.certificate_pem is None:
            raise RenewalRefusedError(
                "FAILED_PRECONDITION",
                f"the record of {name!r} predates kept certificates: re-issue its kit",
            )
        if presented.serial_number != record.serial:
            return _redeliver(federation, record, presented, csr, moment)
        _check_roster(federation, name, csr)
        try:
            ca_key = federation.ca_private_key()
        except ProvisioningError as error:
            raise RenewalRefusedError(
                "FAILED_PRECONDITION",
                "this appliance cannot renew certificates: it does not hold the federation CA "
                f"key ({error}); the operator must serve with --passphrase-file, or renew "
                f"offline (sealagg certs renew-client {name})",
            ) from None
        try:
            cert = pki.issue_client_certificate(
                federation.ca_certificate, ca_key, csr.public_key(), name=name, now=moment
            )
        except ProvisioningError as error:
            raise RenewalRefusedError("FAILED_PRECONDITION", str(error)) from None
        old = pki.load_certificate(record.certificate_pem or b"", what="the current certificate")
        record_renewal(federation, record, cert, old, moment)
    return RenewalResult(
        certificate_pem=pki.certificate_pem(cert),
        ca_bundle_pem=federation.ca_bundle_pem(),
        not_after=cert.not_valid_after_utc,
        serial=cert.serial_number,
        previous_serial=record.serial,
        issued=True,
    )


def record_renewal(
    federation: FederationFolder,
    record: ClientRecord,
    cert: x509.Certificate,
    old: x509.Certificate,
    moment: datetime,
) -> ClientRecord:
    """Make ``cert`` the client's current certificate; the old one enters its grace period.
    The caller holds ``federation._exclusive()``."""
    grace = PreviousCertificate(
        serial=record.serial,
        certificate_pem=pki.certificate_pem(old),
        accepted_until=min(moment + RENEWAL_GRACE, old.not_valid_after_utc),
    )
    kept = (grace, *record.previous_in_grace(moment))[:MAX_PREVIOUS_CERTIFICATES]
    renewed = dataclasses.replace(
        record,
        serial=cert.serial_number,
        certificate_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        not_after=cert.not_valid_after_utc,
        certificate_pem=pki.certificate_pem(cert),
        previous=kept,
    )
    pki.write_file_atomic(
        federation.paths.client_record(record.name), renewed.to_json(), mode=pki.PUBLIC_FILE_MODE
    )
    return renewed


def _redeliver(
    federation: FederationFolder,
    record: ClientRecord,
    presented: x509.Certificate,
    csr: x509.CertificateSigningRequest,
    moment: datetime,
) -> RenewalResult:
    """A caller still on a certificate in grace gets the certificate already issued for the
    key it asks for (its reply was lost); it never gets a new key certified."""
    in_grace = {p.serial for p in record.previous_in_grace(moment)}
    current = pki.load_certificate(record.certificate_pem or b"", what="the current certificate")
    if presented.serial_number not in in_grace or not hmac.compare_digest(
        pki.spki_sha256(current), pki.spki_sha256(csr.public_key())
    ):
        raise RenewalRefusedError(
            "PERMISSION_DENIED",
            f"only the current certificate of {record.name!r} may renew it: this one "
            f"(serial {presented.serial_number:x}) was superseded",
        )
    return RenewalResult(
        certificate_pem=record.certificate_pem or b"",
        ca_bundle_pem=federation.ca_bundle_pem(),
        not_after=current.not_valid_after_utc,
        serial=current.serial_number,
        previous_serial=presented.serial_number,
        issued=False,
    )


def _check_roster(
    federation: FederationFolder, name: str, csr: x509.CertificateSigningRequest
) -> None:
    """With a pinned authority, the new key must be the one its roster lists for ``name``."""
    if federation.authority_public_key is None:
        return
    try:
        roster = federation.roster()
    except ProvisioningError as error:
        raise RenewalRefusedError("FAILED_PRECONDITION", str(error)) from None
    if roster is None:
        return
    entry = next((e for e in roster.entries if e.name == name), None)
    if entry is None:
        return  # not in rounds anyway; the TLS layer is all it uses
    if not hmac.compare_digest(entry.tls_key_sha256, pki.spki_sha256(csr.public_key())):
        raise RenewalRefusedError(
            "FAILED_PRECONDITION",
            f"roster version {roster.version} pins another TLS key for {name!r}: renew with "
            "the same key, or have the federation authority sign a roster listing the new "
            f"key (sha256 {pki.spki_sha256(csr.public_key()).hex()}) first",
        )


def record_in_store(
    store: Store,
    *,
    name: str,
    old_serial: int,
    new_serial: int,
    not_after: datetime,
    by: str,
) -> None:
    """In one transaction: the participant's row follows the new serial (participants are
    keyed by certificate serial, appliance/participant_sync.py, and a renewed client must not
    look like a second, unknown certificate at the next start), and ``certificate_renewed``
    is audited with both serials."""
    old_hex, new_hex = format(old_serial, "x"), format(new_serial, "x")
    with store.transaction() as tx:
        tx.execute(
            "UPDATE participants SET cert_serial = ? "
            "WHERE cert_serial = ? AND name = ? AND status = 'active'",
            (new_hex, old_hex, name),
        )
        store.audit.append(
            "certificate_renewed",
            {
                "client": name,
                "old_serial": old_hex,
                "new_serial": new_hex,
                "not_after": pki.iso_time(not_after),
                "by": by,
            },
            conn=tx,
        )


class CertificateRenewer:
    """The RPC's work for the running appliance: renew, audit, answer."""

    def __init__(self, federation: FederationFolder, store: Store) -> None:
        self._federation = federation
        self._store = store

    async def serve(
        self, name: str, request: pb.RenewalRequest, context: grpc.aio.ServicerContext
    ) -> pb.RenewalReply:
        presented = _presented_certificate(context)
        if presented is None:
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, "renewal needs the caller's TLS certificate"
            )
        try:
            # Decrypting the CA key and signing take milliseconds: off the event loop.
            result = await asyncio.to_thread(
                renew, self._federation, name, presented, bytes(request.csr_der)
            )
        except RenewalRefusedError as refused:
            _log.info("refused certificate renewal for %s: %s", name, refused.detail)
            self._store.audit.append(
                "certificate_renewal_refused",
                {"client": name, "status": refused.code, "reason": refused.detail},
            )
            await context.abort(getattr(grpc.StatusCode, refused.code), refused.detail)
        if result.issued:
            record_in_store(
                self._store,
                name=name,
                old_serial=result.previous_serial,
                new_serial=result.serial,
                not_after=result.not_after,
                by="client",
            )
            _log.info("renewed the certificate of %s until %s", name, result.not_after)
        return pb.RenewalReply(
            certificate_pem=result.certificate_pem,
            ca_bundle_pem=result.ca_bundle_pem,
            not_after=pki.iso_time(result.not_after),
        )


def _presented_certificate(context: grpc.aio.ServicerContext) -> x509.Certificate | None:
    pems = context.auth_context().get("x509_pem_cert") or []
    if not pems:
        return None
    try:
        return x509.load_pem_x509_certificate(pems[0])
    except ValueError:
        return None
