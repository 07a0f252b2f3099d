"""Forge client and server certificates for the TLS refusal tests (appliance/pki.py material).

Each forged client certificate carries exactly one defect (expired, not yet valid, self-signed,
...). ``make_current`` records a forged certificate as the client's current one, so the
appliance refuses it for that defect alone and not because its serial is unknown.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealagg.appliance import pki
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.kit import ClientKit


def _name(federation: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def forge_client_certificate(
    fed: FederationFolder,
    name: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    not_before: datetime,
    not_after: datetime,
    self_signed: bool = False,
) -> x509.Certificate:
    """A clientAuth leaf for ``name`` like ``pki.issue_client_certificate``, any validity."""
    issuer_key = key if self_signed else fed.ca_private_key()
    issuer = _name(fed.name, name) if self_signed else fed.ca_certificate.subject
    issuer_ski = x509.SubjectKeyIdentifier.from_public_key(issuer_key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(_name(fed.name, name))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(pki._key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(issuer_ski),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.UniformResourceIdentifier(pki.CLIENT_URI_PREFIX + name)]
            ),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def make_current(fed: FederationFolder, name: str, cert: x509.Certificate) -> None:
    """Record ``cert`` as client ``name``'s current certificate (serial, hash, PEM)."""
    record = fed.client_record(name)
    assert record is not None
    fields = {
        "serial": cert.serial_number,
        "certificate_sha256": cert.fingerprint(hashes.SHA256()).hex(),
        "not_after": cert.not_valid_after_utc,
    }
    if any(f.name == "certificate_pem" for f in dataclasses.fields(record)):
        fields["certificate_pem"] = pki.certificate_pem(cert)
    updated = dataclasses.replace(record, **fields)
    pki.write_file_atomic(
        fed.paths.client_record(name), updated.to_json(), mode=pki.PUBLIC_FILE_MODE
    )


def kit_with(kit: ClientKit, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> ClientKit:
    """The same kit presenting another certificate and TLS key."""
    return dataclasses.replace(
        kit,
        client_cert_pem=pki.certificate_pem(cert),
        client_key_pem=pki.private_key_pem(key, None),
    )


def forged_kit(fed: FederationFolder, kit: ClientKit, defect: str) -> ClientKit:
    """Client ``kit.name`` presenting a certificate with ``defect``, recorded as current."""
    now = datetime.now(UTC)
    key = pki.generate_tls_key()
    windows = {
        "valid": (now - timedelta(minutes=5), now + timedelta(days=1)),
        "expired": (now - timedelta(days=400), now - timedelta(days=35)),
        "not_yet_valid": (now + timedelta(days=1), now + timedelta(days=365)),
        "self_signed": (now - timedelta(minutes=5), now + timedelta(days=1)),
    }
    not_before, not_after = windows[defect]
    cert = forge_client_certificate(
        fed,
        kit.name,
        key,
        not_before=not_before,
        not_after=not_after,
        self_signed=defect == "self_signed",
    )
    make_current(fed, kit.name, cert)
    return kit_with(kit, cert, key)


def expire_server_certificate(fed: FederationFolder) -> None:
    """Replace the appliance's certificate by one that expired yesterday (same key, same hosts)."""
    now = datetime.now(UTC)
    key = pki.load_tls_key(fed.paths.server_key.read_bytes(), None, what="server key")
    old = pki.load_certificate(fed.paths.server_cert.read_bytes(), what="server cert")
    san = old.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(old.subject)
        .issuer_name(fed.ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=30))
        .not_valid_after(now - timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(pki._key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(
                x509.SubjectKeyIdentifier.from_public_key(fed.ca_certificate.public_key())
            ),
            critical=False,
        )
        .sign(fed.ca_private_key(), hashes.SHA256())
    )
    pki.write_file_atomic(fed.paths.server_cert, pki.certificate_pem(cert), mode=0o644)
