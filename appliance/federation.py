"""The federation folder: its layout and the operations that change it.

One folder holds everything the appliance needs to authenticate a federation::

    sealagg.toml               configuration (written last: its presence marks a finished init)
    ca.pem / ca.key            root CA certificate / key (0600, passphrase-encrypted if given)
    server.pem / server.key    the appliance's TLS certificate / key (0600, unencrypted: the
                               server starts unattended)
    audit_signing_key.pem      Ed25519 key signing audit entries and kit manifests (0600)
    audit_public_key.pem       its public key, for auditors and ``load_kit(trusted_signer=)``
    audit_key_history.json     optional: every audit public key in order, after a rotation
                               (appliance/audit_rotation.py); auditors pin the first one
    ca-previous.pem / .key     during a CA rotation only: the old CA, still trusted for client
                               certificates (appliance/ca_rotation.py)
    ca-cross.pem               during a CA rotation only: the new CA certified by the old one,
                               so a client learns the new CA only from a CA it already trusts
    revoked.json               revoked certificate serials (replaced atomically)
    clients/<name>.json        one public record per issued client (serial, identity key)
    kits/                      default place for new kits (0700); hand them over, then delete
    authority.pub              optional: the federation authority's public key (hex), pinned
    roster.json                optional: the authority's signed roster, served in RoundStart

The authority's *private* key never lives here (the appliance may be malicious: the roster is
what clients check its list of round members against). The appliance keeps the signed
roster only to hand it out; it cannot change it without the clients noticing.

The CA key is needed only to issue kits and to renew certificates
(``Aggregator.RenewCertificate``, appliance/renewal.py), so a passphrase-protected federation
can serve without ever decrypting it; it then answers renewals FAILED_PRECONDITION.

The CA and server certificates are re-read whenever their files change, so a renewal or a CA
rotation done by another process (``sealagg certs ...``) applies without a restart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import shutil
import threading
import tomllib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import filelock
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.x509.oid import ExtendedKeyUsageOID

from sealagg.appliance import kit, kit_issue, pki
from sealagg.appliance.attestation import client_policy_path, kit_collateral
from sealagg.appliance.errors import CertificateError, ProvisioningError
from sealagg.attest import PolicyError, parse_policy
from sealagg.crypto.errors import RosterError, RosterRollbackError
from sealagg.crypto.roster import Roster, verify_enrolment_request, verify_roster

DEFAULT_PORT = 50051
CONFIG_FORMAT = 1
RECORD_FORMAT = "sealagg-client/1"
MAX_KEY_FILE_BYTES = 64 * 1024
MAX_ROSTER_FILE_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class FederationPaths:
    """Where each part of a federation lives inside its folder."""

    folder: Path

    @property
    def config(self) -> Path:
        return self.folder / "sealagg.toml"

    @property
    def ca_cert(self) -> Path:
        return self.folder / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.folder / "ca.key"

    @property
    def server_cert(self) -> Path:
        return self.folder / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.folder / "server.key"

    @property
    def audit_signing_key(self) -> Path:
        return self.folder / "audit_signing_key.pem"

    @property
    def audit_public_key(self) -> Path:
        return self.folder / "audit_public_key.pem"

    @property
    def ca_previous_cert(self) -> Path:
        return self.folder / "ca-previous.pem"

    @property
    def ca_previous_key(self) -> Path:
        return self.folder / "ca-previous.key"

    @property
    def ca_cross_cert(self) -> Path:
        return self.folder / "ca-cross.pem"

    @property
    def audit_key_history(self) -> Path:
        return self.folder / "audit_key_history.json"

    @property
    def revoked(self) -> Path:
        return self.folder / "revoked.json"

    @property
    def clients(self) -> Path:
        return self.folder / "clients"

    @property
    def kits(self) -> Path:
        return self.folder / "kits"

    @property
    def authority_public_key(self) -> Path:
        return self.folder / "authority.pub"

    @property
    def roster(self) -> Path:
        return self.folder / "roster.json"

    @property
    def lock(self) -> Path:
        return self.folder / ".lock"

    def client_record(self, name: str) -> Path:
        return self.clients / f"{pki.validate_client_name(name)}.json"

    def required(self) -> tuple[Path, ...]:
        """Everything a complete federation has (``kits/`` is optional: it may be removed)."""
        return (
            self.config,
            self.ca_cert,
            self.ca_key,
            self.server_cert,
            self.server_key,
            self.audit_signing_key,
            self.audit_public_key,
            self.revoked,
            self.clients,
        )


#: How long a renewed client's previous certificate is still accepted. Long enough for a
#: client whose renewal reply was lost (it still holds the old certificate) to fetch the new
#: one again, and for its other processes to reconnect; short, because a renewal is also how
#: a client replaces a key it fears is exposed (appliance/renewal.py).
RENEWAL_GRACE = timedelta(days=7)
#: At most this many superseded certificates are kept in grace (the oldest drops first), so a
#: client renewing in a loop cannot grow its record or the handshake's trust anchors.
MAX_PREVIOUS_CERTIFICATES = 2


@dataclass(frozen=True)
class PreviousCertificate:
    """A client's superseded certificate, accepted until ``accepted_until``."""

    serial: int
    certificate_pem: bytes
    accepted_until: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "serial": format(self.serial, "x"),
            "certificate_pem": self.certificate_pem.decode("ascii"),
            "accepted_until": pki.iso_time(self.accepted_until),
        }

    @classmethod
    def from_json(cls, body: Any) -> PreviousCertificate:
        pem = body["certificate_pem"].encode("ascii")
        cert = pki.load_certificate(pem, what="previous certificate_pem")
        serial = int(body["serial"], 16)
        if cert.serial_number != serial:
            raise ValueError("a previous certificate does not match its serial")
        return cls(serial, pem, datetime.fromisoformat(body["accepted_until"]))


@dataclass(frozen=True)
class ClientRecord:
    """What the federation remembers about an issued client; public data only."""

    name: str
    serial: int
    certificate_sha256: str
    identity_public_key: bytes
    issued_at: datetime
    not_after: datetime
    revoked: bool = False
    revoked_at: datetime | None = None
    #: The issued certificate (PEM): the TLS layer trusts exactly the active clients' ones.
    certificate_pem: bytes | None = None
    #: Certificates this one renewed, still accepted during :data:`RENEWAL_GRACE`.
    previous: tuple[PreviousCertificate, ...] = ()

    def previous_in_grace(self, now: datetime) -> tuple[PreviousCertificate, ...]:
        return tuple(p for p in self.previous if p.accepted_until > now)

    def all_serials(self) -> tuple[int, ...]:
        return (self.serial, *(p.serial for p in self.previous))

    def to_json(self) -> bytes:
        body = {
            "format": RECORD_FORMAT,
            "name": self.name,
            "serial": format(self.serial, "x"),
            "certificate_sha256": self.certificate_sha256,
            "identity_public_key": self.identity_public_key.hex(),
            "issued_at": pki.iso_time(self.issued_at),
            "not_after": pki.iso_time(self.not_after),
            "revoked": self.revoked,
            "revoked_at": None if self.revoked_at is None else pki.iso_time(self.revoked_at),
            "certificate_pem": None
            if self.certificate_pem is None
            else self.certificate_pem.decode("ascii"),
        }
        if self.previous:
            body["previous"] = [p.to_json() for p in self.previous]
        return (json.dumps(body, indent=2) + "\n").encode()

    @classmethod
    def from_json(cls, data: bytes, *, source: Path) -> ClientRecord:
        try:
            body = json.loads(data)
            if body["format"] != RECORD_FORMAT:
                raise ValueError(f"unknown format {body['format']!r}")
            identity = bytes.fromhex(body["identity_public_key"])
            if len(identity) != 32:
                raise ValueError("identity_public_key is not 32 bytes")
            revoked_at = body["revoked_at"]
            if not isinstance(body["revoked"], bool):
                raise ValueError("revoked is not true or false")
            pem = body.get("certificate_pem")
            certificate_pem = None if pem is None else pem.encode("ascii")
            if certificate_pem is not None:
                cert = pki.load_certificate(certificate_pem, what="certificate_pem")
                if cert.fingerprint(hashes.SHA256()).hex() != body["certificate_sha256"]:
                    raise ValueError("certificate_pem does not match certificate_sha256")
            return cls(
                name=pki.validate_client_name(body["name"]),
                serial=int(body["serial"], 16),
                certificate_sha256=str(body["certificate_sha256"]),
                identity_public_key=identity,
                issued_at=datetime.fromisoformat(body["issued_at"]),
                not_after=datetime.fromisoformat(body["not_after"]),
                revoked=body["revoked"],
                revoked_at=None if revoked_at is None else datetime.fromisoformat(revoked_at),
                certificate_pem=certificate_pem,
                previous=tuple(
                    PreviousCertificate.from_json(p) for p in body.get("previous") or ()
                ),
            )
        except (
            ValueError,
            KeyError,
            TypeError,
            AttributeError,
            ProvisioningError,
        ) as exc:
            raise ProvisioningError(f"client record {source} is corrupt: {exc}") from None


class FederationFolder:
    """An opened federation folder. Use :meth:`load` or :func:`init_federation`."""

    def __init__(
        self,
        paths: FederationPaths,
        *,
        config: dict[str, Any],
        ca_certificate: x509.Certificate,
        server_certificate: x509.Certificate,
        audit_signing_key: Ed25519PrivateKey,
        passphrase: bytes | None,
    ) -> None:
        self.paths = paths
        self.config = config
        self.name: str = pki.validate_federation_name(config["federation"]["name"])
        self._files_lock = threading.Lock()
        self._files: dict[Path, tuple[tuple | None, Any]] = {
            paths.ca_cert: (_stamp(paths.ca_cert), ca_certificate),
            paths.server_cert: (_stamp(paths.server_cert), server_certificate),
        }
        self._audit_signing_key = audit_signing_key
        self._passphrase = passphrase
        self._revocations = pki.RevocationList()
        self._revocations_stamp: tuple[int, int, int, int] | None = None
        self._revocations_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"FederationFolder(name={self.name!r}, folder={str(self.paths.folder)!r})"

    def __reduce__(self) -> object:
        raise TypeError("FederationFolder holds private keys and cannot be pickled")

    # ---- opening ------------------------------------------------------------------------

    @classmethod
    def load(cls, folder: Path, *, passphrase: bytes | None = None) -> FederationFolder:
        """Open an existing federation, checking it is complete and self-consistent.

        ``passphrase`` is needed only to issue kits; when given it is checked right away.
        """
        paths = FederationPaths(Path(folder))
        if not paths.folder.is_dir():
            raise ProvisioningError(f"no federation at {paths.folder}: the folder does not exist")
        missing = [p.name for p in paths.required() if not p.exists()]
        if missing:
            raise ProvisioningError(
                f"federation folder {paths.folder} is incomplete: missing {', '.join(missing)}"
            )
        config = _load_config(paths.config)
        ca_cert = pki.load_certificate(_read(paths.ca_cert), what=str(paths.ca_cert))
        server_cert = pki.load_certificate(_read(paths.server_cert), what=str(paths.server_cert))
        pki.check_is_ca(ca_cert)
        _check_server_issuer(server_cert, ca_cert, _load_previous_ca(paths))
        pki.check_purpose(server_cert, ExtendedKeyUsageOID.SERVER_AUTH, role="server")
        server_key = pki.load_tls_key(_read(paths.server_key), None, what=str(paths.server_key))
        if not pki.same_public_key(server_key, server_cert):
            raise ProvisioningError(f"{paths.server_key} does not match {paths.server_cert}")
        audit_key = pki.load_private_key(
            _read(paths.audit_signing_key), None, what=str(paths.audit_signing_key)
        )
        if not isinstance(audit_key, Ed25519PrivateKey):
            raise ProvisioningError(f"{paths.audit_signing_key} is not an Ed25519 key")
        if _read(paths.audit_public_key) != _public_pem(audit_key.public_key()):
            raise ProvisioningError(
                f"{paths.audit_public_key} does not match {paths.audit_signing_key}"
            )
        federation = cls(
            paths,
            config=config,
            ca_certificate=ca_cert,
            server_certificate=server_cert,
            audit_signing_key=audit_key,
            passphrase=pki.check_passphrase(passphrase),
        )
        federation.revocations()
        if passphrase is not None:
            federation.ca_private_key()
        return federation

    # ---- keys and material --------------------------------------------------------------

    @property
    def folder(self) -> Path:
        return self.paths.folder

    def _reloaded(self, path: Path, parse: Callable[[bytes], Any]) -> Any:
        """The parsed content of ``path``, re-read whenever the file was replaced (another
        process renewed or rotated it). A replacement that does not parse or check raises:
        the caller fails closed rather than serving stale trust."""
        stamp = _stamp(path)
        with self._files_lock:
            cached = self._files.get(path)
            if cached is not None and cached[0] == stamp:
                return cached[1]
        value = None if stamp is None else parse(_read(path))
        with self._files_lock:
            self._files[path] = (stamp, value)
        return value

    @property
    def ca_certificate(self) -> x509.Certificate:
        """The CA that issues now (after a rotation: the new one)."""

        def parse(data: bytes) -> x509.Certificate:
            cert = pki.load_certificate(data, what=str(self.paths.ca_cert))
            pki.check_is_ca(cert)
            return cert

        cert = self._reloaded(self.paths.ca_cert, parse)
        if cert is None:
            raise ProvisioningError(f"{self.paths.ca_cert} is missing")
        return cert

    @property
    def previous_ca_certificate(self) -> x509.Certificate | None:
        """During a CA rotation, the old CA: client certificates it issued are still accepted
        (None outside a rotation)."""

        def parse(data: bytes) -> x509.Certificate:
            cert = pki.load_certificate(data, what=str(self.paths.ca_previous_cert))
            pki.check_is_ca(cert)
            return cert

        return self._reloaded(self.paths.ca_previous_cert, parse)

    @property
    def trusted_ca_certificates(self) -> tuple[x509.Certificate, ...]:
        """Every CA whose client certificates are accepted: the current one first."""
        previous = self.previous_ca_certificate
        current = self.ca_certificate
        return (current,) if previous is None else (current, previous)

    @property
    def server_certificate(self) -> x509.Certificate:
        """The folder's server certificate, re-read when ``sealagg certs renew-server``
        replaced it."""

        def parse(data: bytes) -> x509.Certificate:
            cert = pki.load_certificate(data, what=str(self.paths.server_cert))
            _check_server_issuer(cert, *self.trusted_ca_certificates)
            pki.check_purpose(cert, ExtendedKeyUsageOID.SERVER_AUTH, role="server")
            return cert

        cert = self._reloaded(self.paths.server_cert, parse)
        if cert is None:
            raise ProvisioningError(f"{self.paths.server_cert} is missing")
        return cert

    @property
    def audit_signing_key(self) -> Ed25519PrivateKey:
        """The Ed25519 key for audit entries (and kit manifests, under their own prefix)."""
        return self._audit_signing_key

    @property
    def signer_public_key(self) -> bytes:
        """Raw 32-byte Ed25519 key that signs kit manifests: pass it as ``trusted_signer``."""
        return kit.raw_public_key(self._audit_signing_key.public_key())

    @property
    def public_address(self) -> str:
        """host:port that client kits dial."""
        return _config_str(self.config, "server", "public_address")

    @property
    def tls_server_name(self) -> str:
        """The name clients check the server certificate against."""
        return _config_str(self.config, "server", "tls_server_name")

    def ca_private_key(self) -> ec.EllipticCurvePrivateKey:
        """Decrypt the CA key (only issuing needs it)."""
        data = _read(self.paths.ca_key)
        key = pki.load_tls_key(data, self._passphrase, what=f"CA key {self.paths.ca_key}")
        if not pki.same_public_key(key, self.ca_certificate):
            raise ProvisioningError(f"{self.paths.ca_key} does not match {self.paths.ca_cert}")
        return key

    def previous_ca_private_key(self) -> ec.EllipticCurvePrivateKey:
        """During a CA rotation, the old CA's key (it may still issue the server certificate
        the clients that have not renewed yet trust)."""
        previous = self.previous_ca_certificate
        if previous is None:
            raise ProvisioningError("no CA rotation is in progress")
        path = self.paths.ca_previous_key
        key = pki.load_tls_key(_read(path), self._passphrase, what=f"CA key {path}")
        if not pki.same_public_key(key, previous):
            raise ProvisioningError(f"{path} does not match {self.paths.ca_previous_cert}")
        return key

    @property
    def has_passphrase(self) -> bool:
        return self._passphrase is not None

    def server_credentials_material(self) -> tuple[bytes, bytes, bytes]:
        """(server key PEM, server certificate chain PEM, CA certificate PEM) for
        ``grpc.ssl_server_credentials([(key, chain)], root_certificates=ca,
        require_client_auth=True)``. The chain is the leaf alone: the CA is the trust anchor."""
        key = _read(self.paths.server_key)
        pki.load_tls_key(key, None, what=str(self.paths.server_key))
        return key, pki.certificate_pem(self.server_certificate), self.ca_pem()

    def ca_pem(self) -> bytes:
        """Every CA a client must trust now (a kit's ``ca.pem``): the current CA first, then,
        during a rotation, the old one (the server certificate may still come from it)."""
        return b"".join(pki.certificate_pem(c) for c in self.trusted_ca_certificates)

    def ca_bundle_pem(self) -> bytes:
        """What a renewal reply hands a client: :meth:`ca_pem` plus, during a rotation, the
        new CA certified by the old one. A client adds a CA it does not trust yet only when
        a CA it trusts certified it (client_shim/renewal.py), so a stolen server key alone
        cannot plant a CA of its own in the clients."""
        bundle = self.ca_pem()
        if self.previous_ca_certificate is not None and self.paths.ca_cross_cert.exists():
            bundle += _read(self.paths.ca_cross_cert)
        return bundle

    # ---- the authority's roster -----------------------------------------------------------

    @property
    def authority_public_key(self) -> bytes | None:
        """The federation authority's raw Ed25519 key, if one is pinned (then kits carry it)."""
        path = self.paths.authority_public_key
        if not path.exists():
            return None
        return kit.parse_authority_key(_read(path))

    def signed_roster(self) -> bytes:
        """The installed signed roster, as the authority signed it (b"" if none)."""
        path = self.paths.roster
        if not path.exists():
            return b""
        return pki.read_file(path, limit=MAX_ROSTER_FILE_BYTES)

    def roster(self) -> Roster | None:
        """The installed roster, verified against the pinned authority key (None if none)."""
        data = self.signed_roster()
        key = self.authority_public_key
        if not data or key is None:
            return None
        try:
            return verify_roster(data, authority_key=key, federation=self.name)
        except RosterError as error:
            raise ProvisioningError(f"{self.paths.roster}: {error}") from None

    # ---- clients and revocation ---------------------------------------------------------

    def revocations(self) -> pki.RevocationList:
        """The revocation list, re-read whenever ``revoked.json`` was replaced, so a revocation
        made by another process applies at the next handshake. A missing or corrupt list
        raises (fails closed) instead of revoking nobody."""
        with self._revocations_lock:
            try:
                info = os.stat(self.paths.revoked)
            except OSError as exc:
                raise ProvisioningError(
                    f"cannot read revocation list {self.paths.revoked}: {exc.strerror}"
                ) from None
            stamp = (info.st_dev, info.st_ino, info.st_mtime_ns, info.st_size)
            if stamp != self._revocations_stamp:
                self._revocations = pki.RevocationList.load(self.paths.revoked)
                self._revocations_stamp = stamp
            return self._revocations

    def is_revoked(self, cert: x509.Certificate) -> bool:
        return cert.serial_number in self.revocations()

    def client_record(self, name: str) -> ClientRecord | None:
        """The record of client ``name``, or None if it was never issued."""
        path = self.paths.client_record(name)
        if not path.exists():
            return None
        record = ClientRecord.from_json(_read(path), source=path)
        if record.name != name:
            raise ProvisioningError(f"client record {path} names {record.name!r}")
        return record

    def client_records(self) -> list[ClientRecord]:
        records = []
        for path in sorted(self.paths.clients.glob("*.json")):
            record = self.client_record(path.stem)
            if record is not None:
                records.append(record)
        return records

    def client_names(self, *, include_revoked: bool = False) -> list[str]:
        """Names of issued clients, sorted; revoked ones only when asked for."""
        revoked = self.revocations()
        return [
            r.name
            for r in self.client_records()
            if include_revoked or not (r.revoked or r.serial in revoked)
        ]

    def client_identity_keys(self) -> dict[str, bytes]:
        """Ed25519 verify keys of the clients that are not revoked, for the protocol layer."""
        revoked = self.revocations()
        return {
            r.name: r.identity_public_key
            for r in self.client_records()
            if not (r.revoked or r.serial in revoked)
        }

    def provisioning_stamp(self) -> tuple[tuple[int, int, int] | None, ...]:
        """Changes whenever a client is issued, renewed or revoked (``clients/``,
        ``revoked.json``), and when the CAs or the server certificate change (renewal, CA
        rotation): the key for caches of anything derived from them."""
        files = [os.stat(p) for p in self._stamped_paths]
        stamps: list[tuple[int, int, int] | None] = [
            (st.st_ino, st.st_mtime_ns, st.st_size) for st in files
        ]
        return (*stamps, *(_stamp(Path(p)) for p in self._optional_stamped_paths))

    @functools.cached_property
    def _stamped_paths(self) -> tuple[str, ...]:  # asked on every call: no Path building
        return (str(self.paths.clients), str(self.paths.revoked))

    @functools.cached_property
    def _optional_stamped_paths(self) -> tuple[str, ...]:
        return (
            str(self.paths.ca_cert),
            str(self.paths.ca_previous_cert),
            str(self.paths.server_cert),
        )

    def handshake_trust_anchors(self) -> bytes:
        """PEM certificates a client may present in the TLS handshake: exactly the current
        certificates of the clients that are neither revoked nor expired.

        gRPC accepts these leaves as trust anchors, so revoking a client removes it here and
        its next handshake fails. Without any eligible client, the server's own certificate
        stands in (it is not a client certificate, so nobody gets in). A record from before
        certificates were kept falls back to trusting the CA for every client (the per-call
        check still refuses revoked ones).
        """
        revoked = self.revocations()
        now = datetime.now(UTC)
        issuers = {ca.subject for ca in self.trusted_ca_certificates}
        anchors: list[bytes] = []
        for record in self.client_records():
            if record.revoked:
                continue
            candidates = [
                p.certificate_pem for p in record.previous_in_grace(now) if p.serial not in revoked
            ]  # renewed: the old one, in grace only
            if record.serial not in revoked and record.not_after > now:
                if record.certificate_pem is None:
                    return self.ca_pem()
                candidates.append(record.certificate_pem)
            for pem in candidates:  # after a CA rotation ends, the old CA's leaves drop out
                if _issuer(pem) in issuers:
                    anchors.append(pem)
        return b"".join(anchors) or pki.certificate_pem(self.server_certificate)

    def check_peer_certificate(self, der: bytes, *, now: datetime | None = None) -> str:
        """Return the client name of a TLS peer, or raise :class:`CertificateError` saying why
        it is refused: not from this CA, expired, not yet valid, not a client certificate,
        revoked, or superseded."""
        if not isinstance(der, bytes | bytearray | memoryview):
            raise CertificateError("the peer certificate must be DER bytes")
        try:
            cert = x509.load_der_x509_certificate(bytes(der))
        except ValueError:
            raise CertificateError("the peer certificate is not a DER X.509 certificate") from None
        moment = pki.check_time(now)
        name = self._check_with_trusted_cas(cert, moment)
        if self.is_revoked(cert):
            raise CertificateError(
                f"the certificate of client {name!r} (serial {cert.serial_number:x}) is revoked"
            )
        record = self.client_record(name)
        if record is None:
            raise CertificateError(f"client {name!r} is not registered in this federation")
        if record.revoked:
            raise CertificateError(f"client {name!r} is revoked")
        if record.serial != cert.serial_number:
            if any(p.serial == cert.serial_number for p in record.previous_in_grace(moment)):
                return name  # renewed; the old certificate is accepted for the grace period
            if any(p.serial == cert.serial_number for p in record.previous):
                raise CertificateError(
                    f"this certificate of client {name!r} was renewed and its grace period "
                    "ended: use the renewed certificate"
                )
            raise CertificateError(f"this is not the current certificate of client {name!r}")
        return name

    def _check_with_trusted_cas(self, cert: x509.Certificate, now: datetime) -> str:
        """The client name, if a CA this federation trusts now issued ``cert``; the current
        CA's refusal reason otherwise."""
        first_error: CertificateError | None = None
        for ca in self.trusted_ca_certificates:
            try:
                return pki.check_client_certificate(cert, ca, now=now)
            except CertificateError as error:
                first_error = first_error or error
        assert first_error is not None
        raise first_error

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """Serialize changes to the folder across processes and threads (filelock: flock on
        a lock file opened without following symlinks; released when the process dies)."""
        with filelock.FileLock(self.paths.lock, mode=0o600, thread_local=False):
            yield


# --------------------------------------------------------------------------------------------
# Operations


def init_federation(
    folder: Path,
    *,
    name: str,
    hosts: Sequence[str],
    passphrase: bytes | None = None,
    now: datetime | None = None,
    port: int = DEFAULT_PORT,
) -> FederationFolder:
    """Create a federation in ``folder`` (new or empty): CA, server certificate for ``hosts``,
    audit key, empty revocation list and a loopback-only configuration.

    Everything is validated before the first file is written; on failure the files written so
    far are removed again.
    """
    name = pki.validate_federation_name(name)
    pki.validate_hosts(hosts)
    passphrase = pki.check_passphrase(passphrase)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ProvisioningError(f"port {port!r} is not a TCP port number")
    moment = pki.issuance_time(now)
    public_host = _public_host(hosts)
    paths = FederationPaths(Path(folder))
    created_folder = _claim_folder(paths)
    try:
        ca_key = pki.generate_tls_key()
        ca_cert = pki.create_ca(name, ca_key, now=moment)
        server_key = pki.generate_tls_key()
        server_cert = pki.issue_server_certificate(
            ca_cert, ca_key, server_key.public_key(), hosts=hosts, now=moment
        )
        audit_key = Ed25519PrivateKey.generate()
        private, public = pki.PRIVATE_FILE_MODE, pki.PUBLIC_FILE_MODE
        pki.write_file_atomic(paths.ca_key, pki.private_key_pem(ca_key, passphrase), mode=private)
        pki.write_file_atomic(paths.ca_cert, pki.certificate_pem(ca_cert), mode=public)
        pki.write_file_atomic(paths.server_key, pki.private_key_pem(server_key, None), mode=private)
        pki.write_file_atomic(paths.server_cert, pki.certificate_pem(server_cert), mode=public)
        pki.write_file_atomic(
            paths.audit_signing_key, pki.private_key_pem(audit_key, None), mode=private
        )
        pki.write_file_atomic(
            paths.audit_public_key, _public_pem(audit_key.public_key()), mode=public
        )
        pki.RevocationList().save(paths.revoked)
        paths.clients.mkdir(mode=0o755)
        paths.kits.mkdir(mode=pki.PRIVATE_DIR_MODE)
        config = render_config(
            name=name,
            listen=f"127.0.0.1:{port}",
            public_address=f"{_bracket(public_host)}:{port}",
            tls_server_name=public_host,
        )
        pki.write_file_atomic(paths.config, config, mode=public)
    except BaseException:
        _undo_init(paths, created_folder)
        raise
    return FederationFolder.load(paths.folder, passphrase=passphrase)


def add_client(
    federation: FederationFolder,
    name: str,
    *,
    out: Path | None = None,
    archive: bool = False,
    now: datetime | None = None,
) -> Path:
    """Issue a signed *development* kit for client ``name`` and record it; return its path.

    INSECURE against a malicious appliance: the appliance generates the client's identity
    seed and TLS key here, so it could impersonate the client (and list it as a ghost in a
    round). For development, tests and fully trusted sites only; real clients enrol
    (``sealagg-enrol``, the authority's approval, :func:`add_enrolled_client`).

    The kit goes to ``out`` or ``kits/<name>`` (``kits/<name>.tar.gz`` with ``archive``) and
    is never written over an existing path. A name may be issued again only once its previous
    certificate is revoked.
    """
    name = pki.validate_client_name(name)
    moment = pki.issuance_time(now)
    with federation._exclusive():
        _refuse_active(federation, name)
        ca_key = federation.ca_private_key()
        tls_key = pki.generate_tls_key()
        cert = pki.issue_client_certificate(
            federation.ca_certificate, ca_key, tls_key.public_key(), name=name, now=moment
        )
        identity = Ed25519PrivateKey.generate()
        seed = identity.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )
        files = kit_issue.build_kit(
            name=name,
            federation=federation.name,
            address=federation.public_address,
            server_name=federation.tls_server_name,
            ca_cert_pem=federation.ca_pem(),
            client_cert_pem=pki.certificate_pem(cert),
            client_key_pem=pki.private_key_pem(tls_key, None),
            identity_seed=seed,
            signer=federation.audit_signing_key,
            issued_at=moment,
            attestation_policy=_attestation_policy(federation),
            attestation_collateral=kit_collateral(federation.folder, limit=kit.MAX_FILE_BYTES),
            authority_public_key=federation.authority_public_key,
        )
        path = _write_kit(federation, files, name, out, archive, moment)
        _record(federation, name, cert, kit.raw_public_key(identity.public_key()), moment)
    return path


def add_enrolled_client(
    federation: FederationFolder,
    request: bytes,
    *,
    out: Path | None = None,
    archive: bool = False,
    now: datetime | None = None,
) -> Path:
    """Issue the TLS certificate for an enrolment request the authority approved, and write
    the client's kit: public files only (CA, certificate, config, the authority key). The
    client made its identity and TLS keys itself; the appliance never sees either private key.

    Refused unless the installed roster (signed by the authority) lists the request's name
    with exactly its identity key and TLS key: the CA certifies only admitted clients.
    """
    moment = pki.issuance_time(now)
    try:
        fields = verify_enrolment_request(request)
    except RosterError as error:
        raise ProvisioningError(f"enrolment request refused: {error}") from None
    name = pki.validate_client_name(fields["name"])
    if fields["federation"] != federation.name:
        raise ProvisioningError(
            f"the request is for federation {fields['federation']!r}, not {federation.name!r}"
        )
    csr = pki.load_client_csr(fields["tls_csr_pem"], name=name)
    roster = federation.roster()
    if roster is None:
        raise ProvisioningError("no signed roster is installed: install the authority's first")
    try:
        entry = roster.entry(name)
    except RosterError:
        raise ProvisioningError(
            f"{name!r} is not on the installed roster (version {roster.version}): the "
            "authority must approve the request first"
        ) from None
    identity = bytes.fromhex(fields["identity_key"])
    if entry.identity_key != identity or entry.tls_key_sha256 != pki.spki_sha256(csr.public_key()):
        raise ProvisioningError(
            f"the request's keys are not the ones roster version {roster.version} admits "
            f"for {name!r}"
        )
    with federation._exclusive():
        _refuse_active(federation, name)
        cert = pki.issue_client_certificate(
            federation.ca_certificate,
            federation.ca_private_key(),
            csr.public_key(),
            name=name,
            now=moment,
        )
        files = kit_issue.build_kit(
            name=name,
            federation=federation.name,
            address=federation.public_address,
            server_name=federation.tls_server_name,
            ca_cert_pem=federation.ca_pem(),
            client_cert_pem=pki.certificate_pem(cert),
            client_key_pem=None,
            identity_seed=None,
            signer=federation.audit_signing_key,
            issued_at=moment,
            attestation_policy=_attestation_policy(federation),
            attestation_collateral=kit_collateral(federation.folder, limit=kit.MAX_FILE_BYTES),
            authority_public_key=federation.authority_public_key,
        )
        path = _write_kit(federation, files, name, out, archive, moment)
        _record(federation, name, cert, identity, moment)
    return path


def _refuse_active(federation: FederationFolder, name: str) -> None:
    previous = federation.client_record(name)
    if previous is not None and not (
        previous.revoked or previous.serial in federation.revocations()
    ):
        raise ProvisioningError(
            f"client {name!r} already has a kit (serial {previous.serial:x}); "
            "revoke it before issuing a new one"
        )


def _write_kit(
    federation: FederationFolder,
    files: dict[str, bytes],
    name: str,
    out: Path | None,
    archive: bool,
    moment: datetime,
) -> Path:
    if out is None:
        out = federation.paths.kits / (f"{name}.tar.gz" if archive else name)
    if archive:
        return kit_issue.write_kit_archive(files, Path(out), mtime=moment)
    return kit_issue.write_kit_folder(files, Path(out))


def _record(
    federation: FederationFolder,
    name: str,
    cert: x509.Certificate,
    identity_public_key: bytes,
    moment: datetime,
) -> None:
    record = ClientRecord(
        name=name,
        serial=cert.serial_number,
        certificate_sha256=cert.fingerprint(hashes.SHA256()).hex(),
        identity_public_key=identity_public_key,
        issued_at=moment,
        not_after=cert.not_valid_after_utc,
        certificate_pem=pki.certificate_pem(cert),
    )
    pki.write_file_atomic(
        federation.paths.client_record(name), record.to_json(), mode=pki.PUBLIC_FILE_MODE
    )


def installed_roster(folder: Path) -> bytes:
    """The signed roster installed in federation ``folder`` (b"" if none), for RoundStart.

    Read as bytes and not checked: the appliance only relays it, every client verifies it
    against its own pinned authority key. Re-read per round, so an installed new version
    applies from the next round on.
    """
    path = FederationPaths(Path(folder)).roster
    if not path.exists():
        return b""
    return pki.read_file(path, limit=MAX_ROSTER_FILE_BYTES)


def pin_authority(federation: FederationFolder, key: bytes) -> None:
    """Pin the federation authority's public key: kits issued from now on carry it, and only
    rosters it signed can be installed. Pinning another key over an existing one is refused
    (a new authority means new kits for every client, which must be deliberate)."""
    data = kit.render_authority_key(key)
    with federation._exclusive():
        current = federation.authority_public_key
        if current is not None and current != key:
            raise ProvisioningError(
                f"federation {federation.name!r} already pins authority key "
                f"{current.hex()[:16]}…; refusing to replace it"
            )
        pki.write_file_atomic(
            federation.paths.authority_public_key, data, mode=pki.PUBLIC_FILE_MODE
        )


def install_roster(federation: FederationFolder, data: bytes) -> Roster:
    """Install a signed roster for the appliance to serve, after checking it: signed by the
    pinned authority, for this federation, and not older than the installed one (clients
    would refuse an older roster anyway; refusing it here says so at once)."""
    key = federation.authority_public_key
    if key is None:
        raise ProvisioningError(
            "no federation authority is pinned: run `sealagg authority pin` with the "
            "authority's public key first"
        )
    try:
        roster = verify_roster(data, authority_key=key, federation=federation.name)
    except RosterError as error:
        raise ProvisioningError(f"not installing the roster: {error}") from None
    with federation._exclusive():
        installed = federation.roster()
        if installed is not None and roster.version < installed.version:
            error = RosterRollbackError(
                f"roster version {roster.version} is older than the installed version "
                f"{installed.version}"
            )
            raise ProvisioningError(f"not installing the roster: {error}")
        pki.write_file_atomic(federation.paths.roster, bytes(data), mode=pki.PUBLIC_FILE_MODE)
    return roster


def revoke_client(federation: FederationFolder, name: str, *, now: datetime | None = None) -> None:
    """Refuse client ``name`` from the next handshake on.

    The serial goes into ``revoked.json`` first (that is what handshakes consult), then the
    record is marked. Revoking again is harmless and completes a revocation a crash cut short.
    """
    name = pki.validate_client_name(name)
    moment = pki.issuance_time(now)
    with federation._exclusive():
        record = federation.client_record(name)
        if record is None:
            raise ProvisioningError(f"no client named {name!r} in federation {federation.name!r}")
        revocations = federation.revocations()
        missing = [s for s in record.all_serials() if s not in revocations]
        for serial in missing:  # a renewed client's certificates in grace go too
            revocations = revocations.with_revocation(serial, name, moment)
        if missing:
            revocations.save(federation.paths.revoked)
        if not record.revoked:
            marked = dataclasses.replace(record, revoked=True, revoked_at=moment)
            pki.write_file_atomic(
                federation.paths.client_record(name), marked.to_json(), mode=pki.PUBLIC_FILE_MODE
            )


# --------------------------------------------------------------------------------------------
# Configuration


def render_config(*, name: str, listen: str, public_address: str, tls_server_name: str) -> bytes:
    """``sealagg.toml`` with safe defaults: loopback only, SecAgg+, at least three clients."""
    s = kit_issue.toml_string
    lines = [
        "# sealagg federation configuration; written by init_federation.",
        "# The appliance listens on loopback only until [server].listen is changed.",
        "",
        "[federation]",
        f"name = {s(name)}",
        f"format = {CONFIG_FORMAT}",
        "",
        "[server]",
        f"listen = {s(listen)}",
        "# What client kits dial, and the name they check the server certificate against.",
        f"public_address = {s(public_address)}",
        f"tls_server_name = {s(tls_server_name)}",
        "",
        "[aggregation]",
        '# "secagg+" (sparse graph) or "secagg" (complete graph).',
        'mode = "secagg+"',
        "# Masking protects no one with fewer than three participants.",
        "min_clients = 3",
        "# Largest single client message accepted, in bytes.",
        "max_upload_bytes = 67108864",
        "# Byzantine-robust rule (README, 'Robust aggregation'): mean, median, trimmed_mean,",
        "# krum, multi_krum, geometric_median; masked modes apply it to SecAgg buckets.",
        '# rule = "median"',
        "",
        "[deadlines]",
        "# The most seconds each protocol phase waits for clients before it closes. A phase",
        "# closes as soon as every live client answered: clients whose process died are seen",
        "# at once ([presence]), so these only bound how long a connected-but-slow client is",
        "# waited for; after a few rounds the wait adapts to what this federation's clients",
        "# take (adaptive_factor x their 95th percentile, at least adaptive_floor seconds).",
        "advertise_keys = 60",
        "share_keys = 60",
        "masked_input = 300",
        "consistency_check = 60",
        "unmasking = 60",
        "# adaptive = true",
        "# adaptive_factor = 4.0",
        "# adaptive_floor = 5.0",
        "",
        "[presence]",
        "# Each client holds a presence stream and sends a heartbeat every beat_seconds; a closed",
        "# stream, or one silent for silence_seconds, counts the client as vanished at once.",
        "# beat_seconds = 1.0",
        "# silence_seconds = 5.0",
        "",
    ]
    return "\n".join(lines).encode()


def _load_config(path: Path) -> dict[str, Any]:
    try:
        config = tomllib.loads(_read(path).decode("utf-8"))
        pki.validate_federation_name(config["federation"]["name"])
        if config["federation"].get("format") != CONFIG_FORMAT:
            raise ValueError(f"[federation].format is not {CONFIG_FORMAT}")
    except (
        UnicodeDecodeError,
        tomllib.TOMLDecodeError,
        KeyError,
        TypeError,
        ValueError,
        ProvisioningError,
    ) as exc:
        raise ProvisioningError(f"{path} is not a valid federation configuration: {exc}") from None
    return config


def _config_str(config: dict[str, Any], table: str, key: str) -> str:
    value = config.get(table, {}).get(key)
    if not isinstance(value, str) or not value:
        raise ProvisioningError(f"sealagg.toml: [{table}].{key} must be a non-empty string")
    return value


# --------------------------------------------------------------------------------------------
# Helpers


def _read(path: Path) -> bytes:
    return pki.read_file(path, limit=MAX_KEY_FILE_BYTES)


def _issuer(pem: bytes) -> x509.Name | None:
    try:
        return pki.load_certificate(pem, what="a client certificate").issuer
    except CertificateError:
        return None


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """(inode, mtime, size) of ``path``; None when it does not exist."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


def _load_previous_ca(paths: FederationPaths) -> x509.Certificate | None:
    if not paths.ca_previous_cert.exists():
        return None
    cert = pki.load_certificate(_read(paths.ca_previous_cert), what=str(paths.ca_previous_cert))
    pki.check_is_ca(cert)
    return cert


def _check_server_issuer(cert: x509.Certificate, *cas: x509.Certificate | None) -> None:
    """Raise unless one of ``cas`` (the current CA, or the old one during a rotation) issued
    the server certificate."""
    for ca in cas:
        if ca is None:
            continue
        try:
            pki.check_issued_by(cert, ca)
            return
        except CertificateError:
            continue
    raise CertificateError("the server certificate was not issued by this federation's CA")


def _public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _public_host(hosts: Sequence[str]) -> str:
    """The host kits dial: the first one that is not a wildcard."""
    for host in hosts:
        general_name = pki.host_general_name(host)
        if isinstance(general_name, x509.IPAddress):
            return str(general_name.value)
        if not general_name.value.startswith("*."):
            return general_name.value
    raise CertificateError("at least one host must be a concrete name or address, not a wildcard")


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _claim_folder(paths: FederationPaths) -> bool:
    """Create ``folder`` or accept it if empty; return whether it was created here."""
    folder = paths.folder
    if folder.exists() or folder.is_symlink():
        if not folder.is_dir():
            raise ProvisioningError(f"{folder} exists and is not a folder")
        if any(p.exists() for p in (paths.config, paths.ca_cert, paths.ca_key)):
            raise ProvisioningError(
                f"{folder} already holds a federation; refusing to overwrite it"
            )
        if any(folder.iterdir()):
            raise ProvisioningError(f"{folder} is not empty; choose a new or empty folder")
        return False
    try:
        folder.mkdir(mode=pki.PRIVATE_DIR_MODE, parents=True)
    except OSError as exc:
        raise ProvisioningError(f"cannot create {folder}: {exc.strerror}") from None
    return True


def _undo_init(paths: FederationPaths, created_folder: bool) -> None:
    if created_folder:
        shutil.rmtree(paths.folder, ignore_errors=True)
        return
    for path in (*paths.required(), paths.kits, paths.lock):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()


def _attestation_policy(federation: FederationFolder) -> bytes | None:
    """The client attestation policy to ship in kits, checked so no kit carries a broken one."""
    path = client_policy_path(federation.folder)
    if not path.exists():
        return None
    data = _read(path)
    try:
        parse_policy(data.decode("utf-8"), source=str(path))
    except (PolicyError, UnicodeDecodeError) as error:
        raise ProvisioningError(
            f"not issuing a kit with a broken attestation policy: {error}"
        ) from None
    return data
