"""The TLS identity the appliance presents: born in memory at start whenever it attests.

Why (issue 18, the relay): the evidence binds SHA-512(nonce || SPKI of the TLS key). If
that key is a file (``server.key`` in the federation folder, written by ``sealagg init``
outside any TEE), whoever copies the folder runs a relay that presents the very key the
genuine appliance's evidence names: the client pins it, the relay forwards only ``Attest``
to the genuine appliance, and the client's update arrives in plaintext at the relay.

So an appliance that attests (any provider but ``none``) generates its TLS key here, in
process memory at start (inside the TEE on hardware providers), and never writes it: it
exists only as the PEM handed to gRPC's server credentials. Each start makes a new one.

Its certificate is issued at boot by the federation CA (not self-signed), because clients
learn which certificate to pin over their kit's CA-trusted channel and the kit's ordinary
TLS checks (CA, host name) keep working. The CA signature is *not* what makes the key
trustworthy in attested mode, and nothing here relies on the CA key being secret: a relay
holding a copy of the folder (CA key included) can mint a CA-signed certificate for a key
of its own, but no genuine TEE will produce evidence bound to that key; and it cannot
present the genuine certificate, whose private key never left the TEE. The client pins
exactly the certificate the evidence binds (client_shim/attestation.py), so both relays are
refused with ``Reason.WRONG_TLS_KEY`` before an update byte leaves. Restarting the
appliance outside the TEE gives a key no hardware evidence binds: refused by the client's
hardware policy. The CA key must therefore be readable at boot (give the passphrase of a
protected federation to ``sealagg serve --passphrase-file``); only issuing uses it.

Without an attester (``provider = "none"``) the appliance presents the folder's
``server.key`` as before: nothing is attested, so nothing is promised about the key. When
``sealagg certs renew-server`` replaces that pair, :func:`refreshed_identity` hands the running
server the new one for its next handshake (no restart).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sealagg.appliance import pki
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import FederationFolder


@dataclasses.dataclass(frozen=True, repr=False, eq=False)
class TlsIdentity:
    """The key (PEM, in memory) and certificate the TLS server presents."""

    key_pem: bytes
    certificate: x509.Certificate
    #: True: born in memory at this start (attested); False: the folder's server.key.
    ephemeral: bool

    def __repr__(self) -> str:  # never the key
        return f"TlsIdentity(ephemeral={self.ephemeral}, spki_sha256={self.spki_sha256.hex()})"

    def __reduce__(self) -> object:
        raise TypeError("TlsIdentity holds a private key and cannot be pickled")

    @property
    def chain_pem(self) -> bytes:
        """The leaf alone: the kit's CA certificate is the clients' trust anchor."""
        return pki.certificate_pem(self.certificate)

    @property
    def certificate_der(self) -> bytes:
        return self.certificate.public_bytes(Encoding.DER)

    @property
    def spki_der(self) -> bytes:
        return self.certificate.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )

    @property
    def spki_sha256(self) -> bytes:
        return pki.spki_sha256(self.certificate)


def folder_identity(federation: FederationFolder) -> TlsIdentity:
    """The folder's ``server.key`` / ``server.pem`` (appliances that attest nothing)."""
    key_pem, _, _ = federation.server_credentials_material()
    cert = federation.server_certificate
    key = pki.load_tls_key(key_pem, None, what=str(federation.paths.server_key))
    if not pki.same_public_key(key, cert):
        raise ProvisioningError(
            f"{federation.paths.server_key} does not match {federation.paths.server_cert}"
        )
    return TlsIdentity(key_pem, cert, ephemeral=False)


def refreshed_identity(federation: FederationFolder, current: TlsIdentity) -> TlsIdentity:
    """What the server presents at its next handshake: ``current``, or the folder's renewed
    pair once ``sealagg certs renew-server`` replaced it. An identity born in memory (attested)
    is never swapped for a file. While the two files disagree (the key is written before the
    certificate) or cannot be read, ``current`` is kept: serving on is better than failing."""
    if current.ephemeral:
        return current
    try:
        fresh = folder_identity(federation)
    except (OSError, ProvisioningError):
        return current
    if fresh.certificate_der == current.certificate_der and fresh.key_pem == current.key_pem:
        return current
    return fresh


def born_identity(federation: FederationFolder, *, now: datetime | None = None) -> TlsIdentity:
    """A fresh P-256 key made in memory now, with a CA-issued certificate for the same hosts
    as the folder's server certificate. The key is never written anywhere."""
    try:
        ca_key = federation.ca_private_key()
    except ProvisioningError as error:
        raise ProvisioningError(
            f"an attesting appliance issues its TLS certificate at every start and needs the "
            f"federation CA key for it ({error}); give the CA passphrase "
            "(sealagg serve --passphrase-file)"
        ) from None
    issuer = federation.ca_certificate
    previous = federation.previous_ca_certificate
    if previous is not None and _issued_by(federation.server_certificate, previous):
        # A CA rotation in progress and the clients not all renewed yet: they trust the old
        # CA only, so the born certificate comes from it too (appliance/ca_rotation.py).
        issuer, ca_key = previous, federation.previous_ca_private_key()
    key = pki.generate_tls_key()
    cert = pki.issue_server_certificate(
        issuer,
        ca_key,
        key.public_key(),
        hosts=server_hosts(federation.server_certificate),
        now=now or datetime.now(UTC),
    )
    return TlsIdentity(pki.private_key_pem(key, None), cert, ephemeral=True)


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        pki.check_issued_by(cert, ca)
    except ProvisioningError:
        return False
    return True


def server_hosts(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a server certificate names, as ``init`` was given them."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise ProvisioningError("the server certificate names no hosts") from None
    hosts: list[str] = list(san.get_values_for_type(x509.DNSName))
    hosts += [str(ipaddress.ip_address(a)) for a in san.get_values_for_type(x509.IPAddress)]
    return hosts
