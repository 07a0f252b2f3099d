"""Keys, X.509 certificates and the revocation list of a federation.

Every TLS key and certificate is ECDSA P-256 signed with SHA-256: grpcio's BoringSSL and every
OpenSSL accept it, which is not yet true of Ed25519 certificates. Ed25519 is used only outside
X.509 (audit and kit signatures, protocol identities). This module also holds the small durable
file helpers the federation and kit modules share, so every secret is written the same way.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import json
import os
import re
import stat
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from sealagg.appliance.errors import CertificateError, ProvisioningError

CA_VALIDITY = timedelta(days=3650)
SERVER_VALIDITY = timedelta(days=365)
CLIENT_VALIDITY = timedelta(days=365)
# Certificates start this much before their issuing moment so a peer whose clock lags a little
# does not refuse a certificate issued a minute ago.
CLOCK_SKEW = timedelta(minutes=5)

CLIENT_URI_PREFIX = "sealagg://client/"
CA_COMMON_NAME = "sealagg root CA"
SERVER_COMMON_NAME = "sealagg appliance"

PRIVATE_FILE_MODE = 0o600
PUBLIC_FILE_MODE = 0o644
PRIVATE_DIR_MODE = 0o700

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_REVOCATION_FORMAT = "sealagg-revocations/1"

# --------------------------------------------------------------------------------------------
# Time and names


def issuance_time(now: datetime | None) -> datetime:
    """The moment to issue at, in UTC and whole seconds (X.509 has no sub-second precision)."""
    return check_time(now).replace(microsecond=0)


def check_time(now: datetime | None) -> datetime:
    """``now`` in UTC; a naive datetime is refused rather than guessed to be local or UTC."""
    if now is None:
        return datetime.now(UTC)
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise ProvisioningError(f"now={now!r} must be a timezone-aware datetime")
    return now.astimezone(UTC)


def validate_client_name(name: object) -> str:
    """Return ``name`` if it can be a client name: 1-64 of [A-Za-z0-9._-], not starting with
    '.' or '-' (it becomes a file name and a URI path segment)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ProvisioningError(
            f"client name {name!r} is invalid: use 1-64 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return name


def validate_federation_name(name: object) -> str:
    """Return ``name`` if it can name a federation (same alphabet as client names)."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ProvisioningError(
            f"federation name {name!r} is invalid: use 1-64 characters of A-Z a-z 0-9 . _ -, "
            "starting with a letter or digit"
        )
    return name


def host_general_name(host: object) -> x509.GeneralName:
    """The subjectAltName entry for ``host``: an IP address or a DNS name.

    Names x509 cannot hold unambiguously are refused with the reason, never silently mapped
    (IDNA 2003 would quietly turn full-width letters into ASCII, for example).
    """
    if not isinstance(host, str):
        raise CertificateError(f"host {host!r} is not a string")
    if host == "":
        raise CertificateError("host name is empty")
    if any(c.isspace() for c in host):
        raise CertificateError(f"host {host!r} contains whitespace")
    if host.startswith("[") or host.endswith("]"):
        raise CertificateError(f"host {host!r}: write IPv6 addresses without brackets")
    if "%" in host:
        raise CertificateError(f"host {host!r}: scoped IPv6 addresses cannot be certified")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        if address.is_unspecified or address.is_multicast:
            raise CertificateError(f"host {host!r} is not an address clients can connect to")
        return x509.IPAddress(address)
    if not host.isascii():
        try:
            a_label = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise CertificateError(f"host {host!r} is not a valid internationalized name") from None
        raise CertificateError(
            f"host {host!r} is not ASCII; give its IDNA A-label form {a_label!r}"
        )
    name = host.lower()
    if name.endswith("."):
        raise CertificateError(f"host {host!r}: remove the trailing dot")
    if len(name) > 253:
        raise CertificateError(f"host {host!r} is longer than 253 characters")
    labels = name.split(".")
    if "*" in name:
        if labels[0] != "*" or "*" in ".".join(labels[1:]):
            raise CertificateError(
                f"host {host!r}: a wildcard must be the whole left-most label, as in *.example.com"
            )
        if len(labels) < 3:
            raise CertificateError(f"host {host!r}: a wildcard needs at least two labels after it")
        labels = labels[1:]
    for label in labels:
        _check_dns_label(host, label)
    if labels[-1].isdigit():
        raise CertificateError(f"host {host!r} looks like an IPv4 address but is not a valid one")
    return x509.DNSName(name)


def _check_dns_label(host: str, label: str) -> None:
    if label == "":
        raise CertificateError(f"host {host!r} has an empty label (leading or doubled dot)")
    if len(label) > 63:
        raise CertificateError(f"host {host!r} has a label longer than 63 characters")
    if not _DNS_LABEL.fullmatch(label):
        raise CertificateError(
            f"host {host!r}: label {label!r} may hold only letters, digits and inner hyphens"
        )
    if label.startswith("xn--"):
        try:
            label.encode("ascii").decode("idna")
        except UnicodeError:
            raise CertificateError(
                f"host {host!r}: {label!r} is not a valid IDNA A-label"
            ) from None


def validate_hosts(hosts: Sequence[str]) -> list[x509.GeneralName]:
    """SAN entries for ``hosts`` in order, duplicates dropped; at least one is required."""
    if isinstance(hosts, str | bytes):
        raise CertificateError("hosts must be a list of names, not a single string")
    names: list[x509.GeneralName] = []
    for host in hosts:
        general_name = host_general_name(host)
        if general_name not in names:
            names.append(general_name)
    if not names:
        raise CertificateError("at least one host name or address is required")
    return names


# --------------------------------------------------------------------------------------------
# Keys


def generate_tls_key() -> ec.EllipticCurvePrivateKey:
    """A fresh P-256 key: the curve grpcio's BoringSSL and OpenSSL both accept."""
    return ec.generate_private_key(ec.SECP256R1())


def check_passphrase(passphrase: object) -> bytes | None:
    """``passphrase`` if it is None or non-empty bytes (an empty one would protect nothing)."""
    if passphrase is None:
        return None
    if not isinstance(passphrase, bytes) or not passphrase:
        raise ProvisioningError(
            "the passphrase must be non-empty bytes (or None for no passphrase)"
        )
    return passphrase


def private_key_pem(key: PrivateKeyTypes, passphrase: bytes | None) -> bytes:
    """PKCS#8 PEM of ``key``, encrypted with the best available scheme given a passphrase."""
    encryption: serialization.KeySerializationEncryption
    secret = check_passphrase(passphrase)
    if secret is None:
        encryption = serialization.NoEncryption()
    else:
        encryption = serialization.BestAvailableEncryption(secret)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def load_private_key(data: bytes, passphrase: bytes | None, *, what: str) -> PrivateKeyTypes:
    """Load a PEM private key, turning the library's errors into ones that say what to do."""
    try:
        return serialization.load_pem_private_key(data, password=check_passphrase(passphrase))
    except TypeError:
        if passphrase is None:
            raise ProvisioningError(
                f"{what} is encrypted: give the federation passphrase"
            ) from None
        raise ProvisioningError(f"{what} is not encrypted, yet a passphrase was given") from None
    except ValueError:
        if passphrase is None:
            raise ProvisioningError(f"{what} is not a readable PEM private key") from None
        raise ProvisioningError(f"{what} could not be decrypted: wrong passphrase?") from None


def load_tls_key(data: bytes, passphrase: bytes | None, *, what: str) -> ec.EllipticCurvePrivateKey:
    """Load a P-256 private key; any other key type is refused."""
    key = load_private_key(data, passphrase, what=what)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ProvisioningError(f"{what} is not an ECDSA P-256 key")
    return key


def load_certificate(data: bytes, *, what: str) -> x509.Certificate:
    """Load one PEM certificate or raise :class:`CertificateError` naming it."""
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise CertificateError(f"{what} is not a readable PEM certificate") from None


def certificate_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def same_public_key(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    """Whether ``cert`` certifies ``key`` (a mismatched pair fails only at handshake time)."""
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return key.public_key().public_bytes(der, spki) == cert.public_key().public_bytes(der, spki)


def spki_sha256(key_or_cert: x509.Certificate | ec.EllipticCurvePublicKey) -> bytes:
    """SHA-256 of the DER SubjectPublicKeyInfo of a TLS key: what the authority's roster pins
    (a key, not a certificate, so a renewed certificate for the same key needs no new roster)."""
    key = key_or_cert.public_key() if isinstance(key_or_cert, x509.Certificate) else key_or_cert
    der = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).digest()


def load_client_csr(pem: object, *, name: str) -> x509.CertificateSigningRequest:
    """A client's certificate request, if it is self-signed (the requester holds the TLS
    key: the client made it, the appliance never sees it), uses a P-256 key like every
    federation certificate, and names client ``name``."""
    try:
        csr = x509.load_pem_x509_csr(str(pem).encode("ascii"))
        valid = csr.is_signature_valid
    except (ValueError, UnicodeEncodeError, InvalidSignature):
        raise CertificateError("the request's TLS CSR is not a valid PEM request") from None
    if not valid:
        raise CertificateError("the request's TLS CSR signature does not verify")
    key = csr.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise CertificateError("the request's TLS key must be ECDSA P-256")
    names = [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if names != [validate_client_name(name)]:
        raise CertificateError(f"the request's CSR does not name client {name!r}")
    return csr


# --------------------------------------------------------------------------------------------
# Issuing


def _subject(federation: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, federation),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def create_ca(
    federation: str,
    key: ec.EllipticCurvePrivateKey,
    *,
    now: datetime,
    common_name: str = CA_COMMON_NAME,
) -> x509.Certificate:
    """A self-signed root that may sign leaf certificates only (path length 0).

    A rotated CA gets its own ``common_name`` (:func:`rotated_ca_name`): two roots with one
    subject would leave TLS libraries to guess which one issued a certificate."""
    now = issuance_time(now)
    subject = _subject(validate_federation_name(federation), common_name)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
    )
    return builder.sign(key, hashes.SHA256())


def rotated_ca_name(now: datetime) -> str:
    """The common name of a CA made by a rotation at ``now`` (distinct from every earlier)."""
    return f"{CA_COMMON_NAME} {issuance_time(now):%Y%m%dT%H%M%SZ}"


def cross_certify(
    new_ca: x509.Certificate,
    old_ca: x509.Certificate,
    old_key: ec.EllipticCurvePrivateKey,
    *,
    now: datetime,
) -> x509.Certificate:
    """The new CA's subject and key, certified by the old CA: the proof a client that trusts
    only the old CA needs before it trusts the new one (client_shim/renewal.py)."""
    now = issuance_time(now)
    if not same_public_key(old_key, old_ca):
        raise CertificateError("the old CA key does not match the old CA certificate")
    old_ski = old_ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    new_key = new_ca.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(new_ca.subject)
        .issuer_name(old_ca.subject)
        .public_key(new_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - CLOCK_SKEW, old_ca.not_valid_before_utc))
        .not_valid_after(min(new_ca.not_valid_after_utc, old_ca.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(new_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(old_ski),
            critical=False,
        )
        .sign(old_key, hashes.SHA256())
    )


def load_certificates(data: bytes, *, what: str) -> list[x509.Certificate]:
    """Every PEM certificate in ``data`` (a CA bundle); at least one."""
    try:
        certs = x509.load_pem_x509_certificates(data)
    except ValueError:
        raise CertificateError(f"{what} is not a readable PEM certificate bundle") from None
    return certs


def is_self_signed_ca(cert: x509.Certificate) -> bool:
    try:
        check_is_ca(cert)
    except CertificateError:
        return False
    return True


def issue_server_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    *,
    hosts: Sequence[str],
    now: datetime,
    validity: timedelta = SERVER_VALIDITY,
) -> x509.Certificate:
    """The appliance's serverAuth certificate, naming every host clients may dial."""
    federation = _federation_of(ca_cert)
    return _issue(
        ca_cert,
        ca_key,
        public_key,
        subject=_subject(federation, SERVER_COMMON_NAME),
        san=validate_hosts(hosts),
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        now=now,
        validity=validity,
    )


def issue_client_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    *,
    name: str,
    now: datetime,
    validity: timedelta = CLIENT_VALIDITY,
) -> x509.Certificate:
    """A clientAuth certificate whose CN and URI SAN both carry the client name."""
    name = validate_client_name(name)
    return _issue(
        ca_cert,
        ca_key,
        public_key,
        subject=_subject(_federation_of(ca_cert), name),
        san=[x509.UniformResourceIdentifier(CLIENT_URI_PREFIX + name)],
        usage=ExtendedKeyUsageOID.CLIENT_AUTH,
        now=now,
        validity=validity,
    )


def _issue(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    public_key: ec.EllipticCurvePublicKey,
    *,
    subject: x509.Name,
    san: Iterable[x509.GeneralName],
    usage: x509.ObjectIdentifier,
    now: datetime,
    validity: timedelta,
) -> x509.Certificate:
    now = issuance_time(now)
    if not same_public_key(ca_key, ca_cert):
        raise CertificateError("the CA private key does not match the CA certificate")
    # A leaf never outlives its CA: a verifier would refuse the tail anyway.
    not_after = min(now + validity, ca_cert.not_valid_after_utc)
    not_before = max(now - CLOCK_SKEW, ca_cert.not_valid_before_utc)
    if not_after <= now or now < ca_cert.not_valid_before_utc:
        raise CertificateError(f"the federation CA is not valid at {now.isoformat()}")
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(san)), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    return builder.sign(ca_key, hashes.SHA256())


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _federation_of(ca_cert: x509.Certificate) -> str:
    values = ca_cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    if len(values) != 1 or not isinstance(values[0].value, str):
        raise CertificateError("the CA certificate does not name its federation")
    return values[0].value


# --------------------------------------------------------------------------------------------
# Checking


def check_issued_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> None:
    """Raise unless ``ca_cert``'s key signed ``cert`` and the issuer name matches."""
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError("the certificate was not issued by this federation's CA") from None


def check_is_ca(cert: x509.Certificate) -> None:
    """Raise unless ``cert`` is a self-signed CA certificate allowed to sign certificates."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        raise CertificateError("the CA certificate has no usable basic constraints") from None
    if not constraints.ca:
        raise CertificateError("the CA certificate is not a CA certificate")
    check_issued_by(cert, cert)


def check_validity(cert: x509.Certificate, now: datetime, *, what: str) -> None:
    """Raise with 'expired' or 'not yet valid' when ``now`` is outside the validity period."""
    if now < cert.not_valid_before_utc:
        raise CertificateError(
            f"{what} is not yet valid (valid from {cert.not_valid_before_utc.isoformat()})"
        )
    if now > cert.not_valid_after_utc:
        raise CertificateError(f"{what} expired at {cert.not_valid_after_utc.isoformat()}")


def check_purpose(cert: x509.Certificate, usage: x509.ObjectIdentifier, *, role: str) -> None:
    """Raise unless ``cert`` is a leaf whose extended key usage allows ``usage``."""
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        raise CertificateError(f"not a {role} certificate (missing extensions)") from None
    except ValueError:
        raise CertificateError("the certificate has malformed extensions") from None
    if constraints.ca:
        raise CertificateError(f"not a {role} certificate (it is a CA certificate)")
    if usage not in eku:
        raise CertificateError(f"not a {role} certificate (its extended key usage excludes it)")


def client_name_of(cert: x509.Certificate) -> str:
    """The client name a certificate asserts: its single sealagg URI SAN, which the CN repeats."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        raise CertificateError("not a client certificate (no subjectAltName)") from None
    uris = [u for u in san.get_values_for_type(x509.UniformResourceIdentifier)]
    if len(uris) != 1 or not uris[0].startswith(CLIENT_URI_PREFIX):
        raise CertificateError(f"not a client certificate (needs one {CLIENT_URI_PREFIX} URI)")
    name = uris[0][len(CLIENT_URI_PREFIX) :]
    common_names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if [a.value for a in common_names] != [name]:
        raise CertificateError("the certificate's common name and client URI disagree")
    try:
        return validate_client_name(name)
    except ProvisioningError:
        raise CertificateError(f"the certificate names an invalid client {name!r}") from None


def check_client_certificate(
    cert: x509.Certificate, ca_cert: x509.Certificate, *, now: datetime
) -> str:
    """The client name in ``cert`` if this CA issued it for client authentication and it is
    valid at ``now``. Revocation is the federation's job: it owns the list."""
    now = check_time(now)
    check_issued_by(cert, ca_cert)
    check_validity(ca_cert, now, what="the federation CA certificate")
    check_validity(cert, now, what="the certificate")
    check_purpose(cert, ExtendedKeyUsageOID.CLIENT_AUTH, role="client")
    name = client_name_of(cert)
    # The checks above give precise reasons; the library's RFC 5280 path validation then
    # backs them up (critical extensions, key usage, algorithm policy).
    verifier = PolicyBuilder().store(Store([ca_cert])).time(now).build_client_verifier()
    try:
        verifier.verify(cert, [])
    except VerificationError as exc:
        raise CertificateError(f"the certificate fails path validation: {exc}") from None
    return name


# --------------------------------------------------------------------------------------------
# Revocation


@dataclass(frozen=True)
class Revocation:
    """One revoked certificate: serial, the client it belonged to, and when."""

    serial: int
    name: str
    revoked_at: datetime


class RevocationList:
    """The serials a federation refuses, persisted as JSON (hex serials, one entry each)."""

    __slots__ = ("_entries",)

    def __init__(self, entries: Mapping[int, Revocation] | None = None) -> None:
        self._entries: dict[int, Revocation] = dict(entries or {})

    def __contains__(self, serial: object) -> bool:
        return serial in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"RevocationList({len(self._entries)} serials)"

    @property
    def entries(self) -> tuple[Revocation, ...]:
        return tuple(self._entries.values())

    def with_revocation(self, serial: int, name: str, revoked_at: datetime) -> RevocationList:
        """A copy that also refuses ``serial`` (the first revocation time is kept)."""
        entries = dict(self._entries)
        entries.setdefault(serial, Revocation(serial, name, issuance_time(revoked_at)))
        return RevocationList(entries)

    def to_json(self) -> bytes:
        body = {
            "format": _REVOCATION_FORMAT,
            "revoked": [
                {"serial": format(r.serial, "x"), "name": r.name, "revoked_at": _iso(r.revoked_at)}
                for r in sorted(self._entries.values(), key=lambda r: r.revoked_at)
            ],
        }
        return (json.dumps(body, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, *, source: str) -> RevocationList:
        """Parse strictly: a corrupt list must stop the appliance, not revoke nobody."""
        try:
            body = json.loads(data)
            if body["format"] != _REVOCATION_FORMAT:
                raise ValueError("unknown format")
            entries: dict[int, Revocation] = {}
            for item in body["revoked"]:
                serial = int(item["serial"], 16)
                entries[serial] = Revocation(
                    serial, str(item["name"]), datetime.fromisoformat(item["revoked_at"])
                )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise ProvisioningError(f"revocation list {source} is corrupt: {exc}") from None
        return cls(entries)

    @classmethod
    def load(cls, path: Path) -> RevocationList:
        return cls.from_json(read_file(path, limit=16 * 1024 * 1024), source=str(path))

    def save(self, path: Path) -> None:
        write_file_atomic(path, self.to_json(), mode=PUBLIC_FILE_MODE)


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def iso_time(moment: datetime) -> str:
    """RFC 3339 UTC time with a Z, as written in the federation's JSON files."""
    return _iso(moment)


# --------------------------------------------------------------------------------------------
# Files


def write_file_atomic(path: Path, data: bytes, *, mode: int) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old or the new file, never half.

    The temporary file gets ``mode`` before any byte is written, so a secret is never readable
    by others, even briefly.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise ProvisioningError(f"cannot write {path}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ProvisioningError(f"cannot write {path}: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def fsync_directory(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_file(path: Path, *, limit: int) -> bytes:
    """Read a regular file of at most ``limit`` bytes, refusing symlinks and special files."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ProvisioningError(f"{path} is a symbolic link; refusing to follow it") from None
        raise ProvisioningError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ProvisioningError(f"{path} is not a regular file")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ProvisioningError(f"{path} is larger than {limit} bytes")
    return data
