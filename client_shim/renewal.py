"""The client renews its own TLS certificate before it expires, without a new kit.

:func:`renew_if_due` is meant to run when the shim connects: when the kit's certificate has
less than ``within_days`` (30) left, it asks the appliance (``Aggregator.RenewCertificate``,
over the mutual-TLS channel the current certificate opens) to certify a key, checks the
answer (the certificate names this client, certifies that key, and comes from a CA the kit
trusts or one a trusted CA cross-certified) and writes it beside the kit, atomically, as one
file (``RENEWAL.json``, appliance/kit.py). The identity key never changes: rounds and the
roster keep recognising the client.

Which key: a fresh one by default. A kit that pins a federation authority keeps its key,
because the authority's roster pins every client's TLS key and a new one would keep the client
out of rounds until the authority signs a new roster (``rekey=True`` forces a fresh key once
it has). The new key is saved (``RENEWAL.pending.json``) before the call, so a client whose
reply was lost asks again for the same key and gets the certificate already issued.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealagg.appliance.kit import (
    ClientKit,
    ProvisioningError,
    install_renewal,
    pending_renewal_key,
    save_pending_renewal_key,
)
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_RENEW_WITHIN_DAYS",
    "RenewalError",
    "days_left",
    "renew",
    "renew_if_due",
    "renew_on_connect",
]

_log = logging.getLogger("sealagg.client.renewal")

DEFAULT_RENEW_WITHIN_DAYS = 30.0


class RenewalError(RuntimeError):
    """The appliance refused the renewal, or its answer did not check out."""


def days_left(kit: ClientKit, now: datetime | None = None) -> float:
    """Days until the kit's client certificate expires (negative: expired)."""
    moment = now or datetime.now(UTC)
    return (kit.certificate.not_valid_after_utc - moment) / timedelta(days=1)


def renew_if_due(
    kit: ClientKit,
    *,
    within_days: float = DEFAULT_RENEW_WITHIN_DAYS,
    address: str | None = None,
    timeout: float = 30.0,
    now: datetime | None = None,
) -> ClientKit:
    """``kit`` renewed if its certificate expires within ``within_days``; ``kit`` otherwise."""
    if days_left(kit, now) > within_days:
        return kit
    return renew(kit, address=address, timeout=timeout)


def renew_on_connect(
    kit: ClientKit,
    *,
    address: str | None = None,
    within_days: float = DEFAULT_RENEW_WITHIN_DAYS,
    timeout: float = 30.0,
) -> ClientKit:
    """:func:`renew_if_due` for the shim's connect: a failed renewal (appliance down, no CA
    key there, an answer refused) is logged and the current, still valid, kit is used; the
    next connect tries again. An expired kit is left to the caller's validity check."""
    if days_left(kit) <= 0:
        return kit
    try:
        return renew_if_due(kit, within_days=within_days, address=address, timeout=timeout)
    except RenewalError as error:
        _log.warning(
            "kit %r: certificate expires in %.1f days and could not be renewed: %s",
            kit.name,
            days_left(kit),
            error,
        )
        return kit


def renew(
    kit: ClientKit,
    *,
    address: str | None = None,
    rekey: bool | None = None,
    timeout: float = 30.0,
) -> ClientKit:
    """Renew now; returns the kit as it loads from now on. Raises :class:`RenewalError`."""
    if kit.folder is None:
        raise RenewalError(
            f"kit {kit.source} is an archive; unpack it into a folder to renew its certificate"
        )
    if rekey is None:
        rekey = kit.authority_public_key is None
    key_pem = _key_for(kit, rekey)
    key = serialization.load_pem_private_key(key_pem, password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kit.name)]))
        .sign(key, hashes.SHA256())
    )
    ca, client_key, client_cert = kit.channel_credentials_material()
    credentials = grpc.ssl_channel_credentials(ca, client_key, client_cert)
    options = [("grpc.ssl_target_name_override", kit.server_name)]
    with grpc.secure_channel(address or kit.address, credentials, options=options) as channel:
        stub = pb_grpc.AggregatorStub(channel)
        try:
            reply = stub.RenewCertificate(
                pb.RenewalRequest(csr_der=csr.public_bytes(serialization.Encoding.DER)),
                timeout=timeout,
            )
        except grpc.RpcError as error:
            code = error.code().name if hasattr(error, "code") else "UNKNOWN"
            detail = error.details() if hasattr(error, "details") else str(error)
            raise RenewalError(f"the appliance refused to renew ({code}): {detail}") from None
    try:
        return install_renewal(
            kit, bytes(reply.certificate_pem), key_pem, bytes(reply.ca_bundle_pem)
        )
    except ProvisioningError as error:  # the answer does not check out: nothing written
        raise RenewalError(f"the renewal answer was refused: {error}") from None


def _key_for(kit: ClientKit, rekey: bool) -> bytes:
    if not rekey:
        return kit.client_key_pem
    pending = pending_renewal_key(kit)
    if pending is not None:
        return pending
    key_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    save_pending_renewal_key(kit, key_pem)
    return key_pem
