"""Client kits, read side: the signed bundle a data owner receives to join a federation.

A kit is a folder or a single ``.tar.gz`` holding the CA certificate, the client's TLS
certificate and key, its Ed25519 protocol identity seed, ``client.toml`` and a
``MANIFEST.json`` that lists the SHA-256 of every other file. The federation's Ed25519
provisioning key signs the manifest (``MANIFEST.sig``) and the manifest names that key, so a
kit changed after issue is refused, and with ``trusted_signer`` a kit re-signed by anyone else
is refused too. Archives are read into memory, never extracted, so no member can land outside
the kit.

Kits come in two kinds. A *development* kit (``sealagg-kit/1``) is made whole by the
appliance, private keys included: that appliance could impersonate the client, so it is for
development and trusted sites only. An *enrolled* kit (``sealagg-kit/2``) lists only public
files: the client made its identity and TLS keys itself (``sealagg-enrol``), they never left
its folder, and the manifest does not name them. Either kind may pin the federation
authority's public key (``authority.pub``); the client shim then verifies the authority's
signed roster in every round (:mod:`sealagg.crypto.roster`). For an enrolled kit the client
pinned that key itself, out of band, before the appliance was involved.

The provisioning key is the appliance's own, so its signature proves only that *someone*
signed the kit. What matters for trust (the CA certificate and server name the client will
believe, the policy, the attestation policy, collateral: every file the manifest lists) must
come from the authority instead: it countersigns the manifest (``AUTHORITY.sig``, Ed25519
under :data:`AUTHORITY_SIGNATURE_CONTEXT`; ``sealagg authority sign-kit``). An enrolled kit
is refused unless that countersignature verifies under the authority key the client pinned
at enrolment (``trusted_authority``, by default the kit's own ``authority.pub``, which the
client wrote itself): an appliance that re-signs a kit, say with a permissive attestation
policy or its own CA, cannot produce it.

The authority also puts its current signed roster in the kit (``AUTHORITY.roster.json``).
The manifest is the appliance's (its key signs it), so the roster is not listed there;
instead ``AUTHORITY.sig`` then signs the roster's SHA-256 with the manifest (under
:data:`AUTHORITY_ROSTER_SIGNATURE_CONTEXT`, so neither form verifies as the other): the
appliance can neither swap in an older roster, nor drop it, nor add one. The client records
that roster's version as its floor before it meets the appliance, so a freshly enrolled
client refuses an older roster (one still listing removed clients) from its first round on.
Kits countersigned before this carry no roster and keep the old form; their client's first
roster is the appliance's word until it learns a newer one.

A client renews its own certificate (``Aggregator.RenewCertificate``, client_shim/renewal.py)
without a new kit. The manifest and the countersignature cover the kit *as issued*, so the
renewal is a file of its own beside them, ``RENEWAL.json`` (mode 0600): the new certificate,
its key and the CA bundle, replaced atomically as one file. :func:`load_kit` applies it only
after checking it like the issued files: the certificate names this client, certifies this
key and comes from a CA the kit trusts; a CA the kit did not trust yet counts only when a CA
it trusts certified it (a cross-certificate in the bundle, from a CA rotation), so whoever
answers a renewal cannot plant a CA of its own. A bad renewal file refuses the kit.

This module is the client shim's one door into the appliance besides the wire schema: it only
loads and validates kits (:func:`load_kit`, :class:`ClientKit`) and re-exports the kit errors,
so a data owner never imports code that issues or signs kits. Issuing lives in
:mod:`sealagg.appliance.kit_issue`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import tomllib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import ExtendedKeyUsageOID

from sealagg.appliance import pki
from sealagg.appliance.errors import (
    CertificateError,
    KitExpiredError,
    KitMismatchError,
    KitTamperedError,
    ProvisioningError,
)
from sealagg.crypto.errors import RosterError
from sealagg.crypto.policy import (
    DEFAULT_ALLOWED_MODES,
    DEFAULT_COLLUDERS,
    MODES,
    FederationPolicy,
)
from sealagg.crypto.roster import verify_roster
from sealagg.crypto.rules import MIN_MASKED_PARTIES

__all__ = [
    "ATTESTATION_POLICY",
    "AUTHORITY_KEY",
    "AUTHORITY_ROSTER",
    "AUTHORITY_ROSTER_SIGNATURE_CONTEXT",
    "AUTHORITY_SIGNATURE",
    "CA_CERT",
    "CLIENT_CERT",
    "CLIENT_CONFIG",
    "CLIENT_KEY",
    "IDENTITY_KEY",
    "KIT_FILES",
    "MANIFEST",
    "SIGNATURE",
    "CertificateError",
    "ClientKit",
    "KitExpiredError",
    "KitMismatchError",
    "KitTamperedError",
    "ProvisioningError",
    "load_kit",
    "parse_authority_key",
    "raw_public_key",
    "read_kit_files",
    "verify_authority_signature",
    "verify_kit_files",
]

CA_CERT = "ca.pem"
CLIENT_CERT = "client.pem"
CLIENT_KEY = "client.key"
IDENTITY_KEY = "identity.key"
CLIENT_CONFIG = "client.toml"
MANIFEST = "MANIFEST.json"
SIGNATURE = "MANIFEST.sig"
#: The federation authority's countersignature of MANIFEST.json (hex, one line).
AUTHORITY_SIGNATURE = "AUTHORITY.sig"
#: Never valid as a roster or enrolment signature of the same key, nor as a provisioning one.
AUTHORITY_SIGNATURE_CONTEXT = b"sealagg kit manifest, countersigned by the authority v1\x00"
#: Countersignature over the manifest *and* the kit's roster (``sha256(roster) || manifest``).
AUTHORITY_ROSTER_SIGNATURE_CONTEXT = (
    b"sealagg kit manifest and roster, countersigned by the authority v2\x00"
)
#: The authority's signed roster at countersigning (bound by AUTHORITY.sig, not the manifest).
AUTHORITY_ROSTER = "AUTHORITY.roster.json"
#: The client's renewed certificate, key and CA bundle (JSON, 0600): checked on load instead.
RENEWAL = "RENEWAL.json"
#: A renewal under way: the new key, kept until its certificate arrives (a lost reply is
#: answered again for the same key; appliance/renewal.py).
RENEWAL_PENDING = "RENEWAL.pending.json"
RENEWAL_FORMAT = "sealagg-renewal/1"
#: Files that are the kit's signatures (or bound by one, or checked on load like the
#: renewal), never listed in its manifest.
SIGNATURE_FILES = frozenset(
    {MANIFEST, SIGNATURE, AUTHORITY_SIGNATURE, AUTHORITY_ROSTER, RENEWAL, RENEWAL_PENDING}
)
#: Optional: the federation authority's raw Ed25519 public key (hex), which signs the roster.
AUTHORITY_KEY = "authority.pub"
#: Optional: the TEE attestation policy (attest/policy.py) the client enforces before sending.
ATTESTATION_POLICY = "attestation_policy.toml"
#: Optional: vendor-signed attestation collateral (attest/collateral.py bundle, msgpack).
ATTESTATION_COLLATERAL = "attestation_collateral.msgpack"

KIT_FILES = (CA_CERT, CLIENT_CERT, CLIENT_KEY, IDENTITY_KEY, CLIENT_CONFIG)
PRIVATE_FILES = frozenset({CLIENT_KEY, IDENTITY_KEY})
MANIFEST_FORMAT = "sealagg-kit/1"
#: An enrolled kit: the private files are the client's own and absent from the manifest.
ENROLLED_MANIFEST_FORMAT = "sealagg-kit/2"
# The provisioning key also signs audit entries; this prefix keeps a manifest signature from
# ever verifying as anything else.
SIGNATURE_CONTEXT = b"sealagg kit manifest v1\x00"

MAX_FILE_BYTES = 256 * 1024
#: The roster grows with the federation (about 300 bytes a client): room for ~6,800 clients.
MAX_ROSTER_FILE_BYTES = 2 * 1024 * 1024
MAX_FILES = 16
MAX_ARCHIVE_BYTES = 4 * 1024 * 1024
MAX_ARCHIVE_STREAM_BYTES = 8 * 1024 * 1024

_FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def raw_public_key(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key (how manifests and records name keys)."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


@dataclass(frozen=True, repr=False, eq=False)
class ClientKit:
    """A verified kit. Secrets are held as bytes and never appear in ``repr``."""

    name: str
    federation: str
    address: str
    server_name: str
    source: Path
    folder: Path | None
    ca_cert_pem: bytes
    client_cert_pem: bytes
    client_key_pem: bytes
    identity_seed: bytes
    signer_public_key: bytes
    config: Mapping[str, Any] = field(default_factory=dict)
    #: The signed attestation policy, if the federation ships one (then the shim enforces it).
    attestation_policy: bytes | None = None
    #: The collateral bundle shipped with the kit (the verifier's local collateral), if any.
    attestation_collateral: bytes | None = None
    #: The federation authority's raw Ed25519 key; set: every round's roster is verified.
    authority_public_key: bytes | None = None
    #: True for an enrolled kit: no private key in it was made by the appliance.
    enrolled: bool = False
    #: True when the federation authority countersigned the manifest (``AUTHORITY.sig``).
    authority_signed: bool = False
    #: The authority's signed roster the countersignature covers (verified under the pinned
    #: key): the client's roster floor before it meets the appliance. None in older kits.
    authority_roster: bytes | None = None

    def __repr__(self) -> str:
        return (
            f"ClientKit(name={self.name!r}, federation={self.federation!r}, "
            f"address={self.address!r}, source={str(self.source)!r})"
        )

    def __reduce__(self) -> object:
        raise TypeError("ClientKit holds private keys and cannot be pickled")

    @property
    def policy(self) -> FederationPolicy:
        """The federation policy this client enforces on every round (``[policy]`` in the kit).

        Until the authority-signed policy replaces it, the kit's own ``[policy]`` section is
        the source (the kit is signed as a whole). A kit without one (issued before policies
        existed) gets c = 1, m = 3 and every mode, i.e. today's behaviour for modes: kits
        issued from now on carry the section and refuse modes it does not list.
        """
        section = self.config.get("policy")
        if not isinstance(section, Mapping):
            return FederationPolicy(allowed_modes=MODES)
        try:
            return FederationPolicy(
                colluders=section.get("colluders", DEFAULT_COLLUDERS),
                minimum_sum=section.get("minimum_sum", MIN_MASKED_PARTIES),
                allowed_modes=frozenset(section.get("allowed_modes", DEFAULT_ALLOWED_MODES)),
            )
        except (TypeError, ValueError) as error:
            raise ProvisioningError(f"the kit's [policy] is invalid: {error}") from None

    @property
    def certificate(self) -> x509.Certificate:
        return pki.load_certificate(self.client_cert_pem, what="the kit's client certificate")

    @property
    def ca_certificate(self) -> x509.Certificate:
        return pki.load_certificate(self.ca_cert_pem, what="the kit's CA certificate")

    @property
    def ca_certificates(self) -> list[x509.Certificate]:
        """Every CA this kit trusts (more than one after a CA rotation)."""
        return pki.load_certificates(self.ca_cert_pem, what="the kit's CA certificates")

    @property
    def identity_public_key(self) -> bytes:
        """The Ed25519 verify key the federation recorded for this client."""
        key = Ed25519PrivateKey.from_private_bytes(self.identity_seed)
        return raw_public_key(key.public_key())

    def _path(self, file: str) -> Path | None:
        return None if self.folder is None else self.folder / file

    @property
    def ca_cert_path(self) -> Path | None:
        """Path of the CA certificate for folder kits; None for archives (use the bytes)."""
        return self._path(CA_CERT)

    @property
    def client_cert_path(self) -> Path | None:
        return self._path(CLIENT_CERT)

    @property
    def client_key_path(self) -> Path | None:
        return self._path(CLIENT_KEY)

    @property
    def identity_key_path(self) -> Path | None:
        return self._path(IDENTITY_KEY)

    def check_validity(self, now: datetime | None = None) -> None:
        """Refuse a kit whose client or CA certificate is outside its validity period.

        Checked before any connection, so an expired kit fails with a clear message instead
        of a handshake the appliance refuses without saying why.
        """
        moment = pki.check_time(now)
        for what, cert in (
            ("client certificate", self.certificate),
            ("federation CA certificate", self.ca_certificate),
        ):
            if moment < cert.not_valid_before_utc:
                raise KitExpiredError(
                    f"kit {self.name!r}: its {what} is not valid before "
                    f"{pki.iso_time(cert.not_valid_before_utc)} (is this machine's clock right?)"
                )
            if moment >= cert.not_valid_after_utc:
                raise KitExpiredError(
                    f"kit {self.name!r}: its {what} expired on "
                    f"{pki.iso_time(cert.not_valid_after_utc)}; ask the federation's operator "
                    f"for a new kit (revoke {self.name!r}, then add-client again)"
                )

    def channel_credentials_material(self) -> tuple[bytes, bytes, bytes]:
        """(CA PEM, client key PEM, client certificate PEM), the order
        ``grpc.ssl_channel_credentials`` takes them in."""
        return self.ca_cert_pem, self.client_key_pem, self.client_cert_pem


def load_kit(
    path: Path,
    *,
    trusted_signer: bytes | None = None,
    trusted_authority: bytes | None = None,
) -> ClientKit:
    """Open a kit folder or archive and verify it completely before returning it.

    ``trusted_signer`` is the federation's raw 32-byte Ed25519 provisioning key (its
    ``signer_public_key``). Without it the signature only proves the kit was not edited since
    *someone* signed it; pass it whenever the key is known out of band.

    ``trusted_authority`` is the federation authority's raw key as the client pinned it; then
    the manifest must carry the authority's countersignature (``AUTHORITY.sig``) under that
    key. An enrolled kit always needs it, by default under the kit's own ``authority.pub``
    (the key the client pinned at enrolment: the appliance never wrote that file).
    """
    path = Path(path)
    for what, key in (("trusted_signer", trusted_signer), ("trusted_authority", trusted_authority)):
        if key is not None and (not isinstance(key, bytes) or len(key) != 32):
            raise ProvisioningError(f"{what} must be a raw 32-byte Ed25519 public key")
    files = read_kit_files(path)
    folder = path if path.is_dir() else None
    signer = verify_kit_files(files, trusted_signer=trusted_signer)
    kit = _open_verified(files, path, folder, signer)
    pinned = trusted_authority
    if pinned is None and kit.enrolled:
        pinned = kit.authority_public_key
        if pinned is None:
            raise KitTamperedError(
                "the enrolled kit pins no federation authority: the client's own authority.pub "
                "is missing"
            )
    if pinned is not None:
        if kit.authority_public_key is not None and kit.authority_public_key != pinned:
            raise KitTamperedError(
                f"the kit pins authority key {kit.authority_public_key.hex()[:16]}…, not the "
                "one this client pinned"
            )
    elif AUTHORITY_SIGNATURE in files and kit.authority_public_key is not None:
        pinned = kit.authority_public_key  # present: must be right
    if pinned is not None:
        verify_authority_signature(files, pinned)
    roster = files.get(AUTHORITY_ROSTER)
    if roster is not None:
        if pinned is None:
            raise KitTamperedError(
                f"the kit carries {AUTHORITY_ROSTER} but no countersignature vouches for it"
            )
        _check_kit_roster(roster, pinned, kit.federation)
    kit = dataclasses.replace(
        kit, authority_signed=AUTHORITY_SIGNATURE in files, authority_roster=roster
    )
    if RENEWAL in files:
        kit = apply_renewal(kit, files[RENEWAL])
    return kit


# --------------------------------------------------------------------------------------------
# Renewal (the client's own file beside the issued kit)


def accepted_anchors(
    trusted: list[x509.Certificate], bundle: list[x509.Certificate]
) -> list[x509.Certificate]:
    """The self-signed CAs of ``bundle`` this client may trust: those it trusts already, and
    those a trusted CA certified (a cross-certificate in the bundle with the same subject and
    key, issued by a trusted CA). Bundle order is kept; cross-certificates are not anchors."""
    known = {c.public_bytes(Encoding.DER) for c in trusted}
    accepted: list[x509.Certificate] = []
    roots = [c for c in bundle if pki.is_self_signed_ca(c)]
    cross = [c for c in bundle if not pki.is_self_signed_ca(c)]
    changed = True
    while changed:  # a chain of rotations: each CA vouched for by the one before
        changed = False
        for root in roots:
            der = root.public_bytes(Encoding.DER)
            if der in {a.public_bytes(Encoding.DER) for a in accepted}:
                continue
            vouched = der in known or any(_certifies(x, root, [*trusted, *accepted]) for x in cross)
            if vouched:
                accepted.append(root)
                changed = True
    return sorted(accepted, key=lambda c: roots.index(c))


def _certifies(
    cross: x509.Certificate, root: x509.Certificate, trusted: list[x509.Certificate]
) -> bool:
    if cross.subject != root.subject or not _same_key(cross, root):
        return False
    try:
        constraints = cross.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    if not constraints.ca:
        return False
    for anchor in trusted:
        try:
            pki.check_issued_by(cross, anchor)
            return True
        except CertificateError:
            continue
    return False


def _same_key(a: x509.Certificate, b: x509.Certificate) -> bool:
    spki = PublicFormat.SubjectPublicKeyInfo
    return a.public_key().public_bytes(Encoding.DER, spki) == b.public_key().public_bytes(
        Encoding.DER, spki
    )


def check_renewed_certificate(
    kit: ClientKit, cert_pem: bytes, key_pem: bytes, ca_bundle_pem: bytes
) -> bytes:
    """Check a renewal for ``kit`` and return the CA PEMs the kit trusts from now on.

    Raises :class:`KitTamperedError` unless the certificate is a clientAuth certificate naming
    this client, certifies ``key_pem``'s key and was issued by a CA the kit trusts or that a
    CA it trusts certified."""
    try:
        cert = pki.load_certificate(cert_pem, what="the renewed certificate")
        key = pki.load_tls_key(key_pem, None, what="the renewed key")
        bundle = pki.load_certificates(ca_bundle_pem, what="the renewal's CA bundle")
        trusted = kit.ca_certificates
        if pki.client_name_of(cert) != kit.name:
            raise CertificateError(f"the renewed certificate does not name {kit.name!r}")
        pki.check_purpose(cert, ExtendedKeyUsageOID.CLIENT_AUTH, role="client")
        if not pki.same_public_key(key, cert):
            raise CertificateError("the renewed certificate does not certify the new key")
        anchors = accepted_anchors(trusted, bundle)
        if not anchors:
            raise CertificateError("the renewal's CA bundle holds no CA this kit trusts")
        issuers = [a for a in anchors if _issued(cert, a)]
        if not issuers:
            raise CertificateError("the renewed certificate was not issued by a CA this kit trusts")
    except ProvisioningError as error:  # CertificateError included
        raise KitTamperedError(f"renewal refused: {error}") from None
    return b"".join(pki.certificate_pem(a) for a in anchors)


def _issued(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        pki.check_issued_by(cert, ca)
    except CertificateError:
        return False
    return True


def render_renewal(cert_pem: bytes, key_pem: bytes, ca_pem: bytes) -> bytes:
    body = {
        "format": RENEWAL_FORMAT,
        "certificate_pem": cert_pem.decode("ascii"),
        "key_pem": key_pem.decode("ascii"),
        "ca_pem": ca_pem.decode("ascii"),
    }
    return (json.dumps(body, indent=2) + "\n").encode()


def apply_renewal(kit: ClientKit, data: bytes) -> ClientKit:
    """``kit`` with the renewed certificate, key and CAs of a ``RENEWAL.json``, checked.

    The CAs are checked against the *issued* kit's CA file: a renewal file cannot vouch for
    itself."""
    try:
        body = json.loads(data)
        if body["format"] != RENEWAL_FORMAT:
            raise ValueError(f"unknown format {body['format']!r}")
        cert_pem = body["certificate_pem"].encode("ascii")
        key_pem = body["key_pem"].encode("ascii")
        ca_pem = body["ca_pem"].encode("ascii")
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeError) as exc:
        raise KitTamperedError(f"{RENEWAL} is corrupt: {exc}") from None
    anchors = check_renewed_certificate(kit, cert_pem, key_pem, ca_pem)
    return dataclasses.replace(
        kit, client_cert_pem=cert_pem, client_key_pem=key_pem, ca_cert_pem=anchors
    )


def install_renewal(
    kit: ClientKit, cert_pem: bytes, key_pem: bytes, ca_bundle_pem: bytes
) -> ClientKit:
    """Check a renewal and write it into the kit folder as one atomic file (0600); return
    the kit as it loads from now on. The pending key file, if any, is removed after."""
    if kit.folder is None:
        raise ProvisioningError(
            f"kit {kit.source} is an archive: renewal writes beside the kit's files; unpack "
            "it into a folder first"
        )
    # The cross-certificates of earlier rotations are kept: loading checks the renewal against
    # the kit's *issued* CA, and each rotation's CA is vouched for by the one before.
    bundle = ca_bundle_pem + _earlier_cross_certificates(kit.folder / RENEWAL, ca_bundle_pem)
    anchors = check_renewed_certificate(kit, cert_pem, key_pem, bundle)
    data = render_renewal(cert_pem, key_pem, bundle)
    pki.write_file_atomic(kit.folder / RENEWAL, data, mode=pki.PRIVATE_FILE_MODE)
    with contextlib.suppress(FileNotFoundError):
        (kit.folder / RENEWAL_PENDING).unlink()
    return dataclasses.replace(
        kit, client_cert_pem=cert_pem, client_key_pem=key_pem, ca_cert_pem=anchors
    )


def _earlier_cross_certificates(path: Path, bundle_pem: bytes) -> bytes:
    if not path.exists():
        return b""
    try:
        body = json.loads(pki.read_file(path, limit=MAX_FILE_BYTES))
        earlier = pki.load_certificates(body["ca_pem"].encode("ascii"), what=str(path))
        present = {
            c.public_bytes(Encoding.DER) for c in pki.load_certificates(bundle_pem, what="bundle")
        }
    except (ValueError, KeyError, TypeError, AttributeError, ProvisioningError):
        return b""
    return b"".join(
        pki.certificate_pem(c)
        for c in earlier
        if not pki.is_self_signed_ca(c) and c.public_bytes(Encoding.DER) not in present
    )


def pending_renewal_key(kit: ClientKit) -> bytes | None:
    """The key of a renewal whose reply has not arrived yet (PEM), if any."""
    if kit.folder is None:
        return None
    path = kit.folder / RENEWAL_PENDING
    if not path.exists():
        return None
    try:
        body = json.loads(pki.read_file(path, limit=MAX_FILE_BYTES))
        key_pem = body["key_pem"].encode("ascii")
        pki.load_tls_key(key_pem, None, what=str(path))
    except (ValueError, KeyError, TypeError, AttributeError, ProvisioningError):
        return None  # unusable: a fresh key is made instead
    return key_pem


def save_pending_renewal_key(kit: ClientKit, key_pem: bytes) -> None:
    if kit.folder is None:
        return
    body = {"format": RENEWAL_FORMAT, "key_pem": key_pem.decode("ascii")}
    pki.write_file_atomic(
        kit.folder / RENEWAL_PENDING, json.dumps(body).encode(), mode=pki.PRIVATE_FILE_MODE
    )


def _check_kit_roster(data: bytes, authority_key: bytes, federation: str) -> None:
    """The countersignature binds the roster's bytes; this checks they are a roster the
    authority signed for this federation (the authority never signs another, but the client
    trusts a floor only after verifying it itself)."""
    try:
        verify_roster(data, authority_key=authority_key, federation=federation)
    except RosterError as error:
        raise KitTamperedError(
            f"the roster in the kit is not the authority's ({AUTHORITY_ROSTER}: {error})"
        ) from None


def read_kit_files(path: Path) -> dict[str, bytes]:
    """Every file of a kit folder or archive, in memory (bounded; archives never extracted),
    unverified: check them with :func:`verify_kit_files`."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if path.is_file():
        return _read_archive(path.resolve())
    raise ProvisioningError(f"no client kit at {path}")


def authority_signed_message(manifest: bytes, roster: bytes | None) -> bytes:
    """What ``AUTHORITY.sig`` signs: the manifest, with the kit's roster when it has one.
    The two contexts differ, so dropping or adding the roster breaks the signature."""
    if roster is None:
        return AUTHORITY_SIGNATURE_CONTEXT + manifest
    return AUTHORITY_ROSTER_SIGNATURE_CONTEXT + hashlib.sha256(roster).digest() + manifest


def verify_authority_signature(files: Mapping[str, bytes], authority_key: bytes) -> None:
    """Raise :class:`KitTamperedError` unless the authority whose raw key is ``authority_key``
    countersigned this kit's manifest (so every file it lists is the authority's choice) and
    its roster file, if it has one."""
    if AUTHORITY_SIGNATURE not in files:
        raise KitTamperedError(
            f"the kit carries no {AUTHORITY_SIGNATURE}: the federation authority has not "
            "countersigned it (sealagg authority sign-kit), so its CA, server name and "
            "policies are only the appliance's word"
        )
    try:
        signature = bytes.fromhex(files[AUTHORITY_SIGNATURE].decode("ascii").strip())
        Ed25519PublicKey.from_public_bytes(authority_key).verify(
            signature, authority_signed_message(files[MANIFEST], files.get(AUTHORITY_ROSTER))
        )
    except (ValueError, UnicodeDecodeError, InvalidSignature):
        raise KitTamperedError(
            f"{AUTHORITY_SIGNATURE} is not the signature of the federation authority this "
            f"client pinned ({authority_key.hex()[:16]}…) over {MANIFEST} (and "
            f"{AUTHORITY_ROSTER}, if any): the kit was "
            "re-signed or changed after the authority signed it"
        ) from None


def verify_kit_files(
    files: Mapping[str, bytes], *, trusted_signer: bytes | None, as_issued: bool = False
) -> bytes:
    """Check the manifest signature and every file's hash; return the signer's public key.

    Raises :class:`KitTamperedError` naming the first file that does not match.
    ``as_issued``: an enrolled kit as the appliance issued it, before the client added its
    own private keys (what the authority countersigns).
    """
    for required in (MANIFEST, SIGNATURE):
        if required not in files:
            raise KitTamperedError(f"{required} is missing from the kit")
    manifest_bytes = files[MANIFEST]
    manifest = _parse_manifest(manifest_bytes)
    signer = bytes.fromhex(manifest["signer"])
    if trusted_signer is not None and signer != trusted_signer:
        raise KitTamperedError(
            f"{MANIFEST} is signed by key {signer.hex()[:16]}…, not by the trusted federation key"
        )
    try:
        signature = bytes.fromhex(files[SIGNATURE].decode("ascii").strip())
        Ed25519PublicKey.from_public_bytes(signer).verify(
            signature, SIGNATURE_CONTEXT + manifest_bytes
        )
    except (ValueError, UnicodeDecodeError, InvalidSignature):
        raise KitTamperedError(
            f"{MANIFEST}: the signature in {SIGNATURE} does not verify (edited after signing?)"
        ) from None
    listed: dict[str, str] = manifest["files"]
    present = set(files) - SIGNATURE_FILES
    enrolled = manifest["format"] == ENROLLED_MANIFEST_FORMAT
    if enrolled:  # the client's own keys: never listed, never from the appliance
        if listed_private := sorted(PRIVATE_FILES & set(listed)):
            raise KitTamperedError(
                f"an enrolled kit's manifest lists {', '.join(listed_private)}: private keys "
                "made by the appliance are not accepted in an enrolled kit"
            )
        present -= PRIVATE_FILES
    if added := sorted(present - set(listed)):
        raise KitTamperedError(f"{', '.join(added)} added to the kit (not in {MANIFEST})")
    if missing := sorted(set(listed) - present):
        raise KitTamperedError(f"{', '.join(missing)} missing from the kit")
    for file in sorted(listed):
        if hashlib.sha256(files[file]).hexdigest() != listed[file]:
            raise KitTamperedError(f"{file} was modified (its SHA-256 does not match {MANIFEST})")
    for required in KIT_FILES:
        if enrolled and required in PRIVATE_FILES:
            if required not in files and not as_issued:
                raise ProvisioningError(
                    f"the enrolled kit has no {required}: install the issued kit into the "
                    "folder where sealagg-enrol wrote the client's keys"
                )
            continue
        if required not in listed:
            raise ProvisioningError(f"the kit manifest does not list {required}")
    return signer


def _parse_manifest(data: bytes) -> dict[str, Any]:
    try:
        manifest = json.loads(data)
        if manifest["format"] not in (MANIFEST_FORMAT, ENROLLED_MANIFEST_FORMAT):
            raise ValueError(f"unknown format {manifest['format']!r}")
        signer = manifest["signer"]
        if not isinstance(signer, str) or len(bytes.fromhex(signer)) != 32:
            raise ValueError("bad signer key")
        listed = manifest["files"]
        if not isinstance(listed, dict):
            raise ValueError("files is not a table")
        for file, digest in listed.items():
            _check_file_name(file)
            if file in SIGNATURE_FILES or not re.fullmatch(r"[0-9a-f]{64}", str(digest)):
                raise ValueError(f"bad entry for {file}")
    except (ValueError, KeyError, TypeError, ProvisioningError) as exc:
        raise KitTamperedError(f"{MANIFEST} is not a valid kit manifest: {exc}") from None
    return manifest


def _open_verified(
    files: Mapping[str, bytes], source: Path, folder: Path | None, signer: bytes
) -> ClientKit:
    """Build the ClientKit from verified bytes, checking the parts agree with each other."""
    try:
        config = tomllib.loads(files[CLIENT_CONFIG].decode("utf-8"))
        name = pki.validate_client_name(config["client"]["name"])
        federation = pki.validate_federation_name(config["client"]["federation"])
        address = str(config["server"]["address"])
        server_name = str(config["server"]["tls_server_name"])
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError) as exc:
        raise ProvisioningError(f"{CLIENT_CONFIG} in the kit is unreadable: {exc}") from None
    ca_cert = pki.load_certificate(files[CA_CERT], what=f"{CA_CERT} in the kit")
    client_cert = pki.load_certificate(files[CLIENT_CERT], what=f"{CLIENT_CERT} in the kit")
    pki.check_issued_by(client_cert, ca_cert)
    if pki.client_name_of(client_cert) != name:
        raise CertificateError(f"the kit's certificate is not for client {name!r}")
    key = pki.load_tls_key(files[CLIENT_KEY], None, what=f"{CLIENT_KEY} in the kit")
    if not pki.same_public_key(key, client_cert):
        raise ProvisioningError(f"{CLIENT_KEY} does not match {CLIENT_CERT} in the kit")
    if len(files[IDENTITY_KEY]) != 32:
        raise ProvisioningError(f"{IDENTITY_KEY} must hold a 32-byte Ed25519 seed")
    authority = None if AUTHORITY_KEY not in files else parse_authority_key(files[AUTHORITY_KEY])
    return ClientKit(
        name=name,
        federation=federation,
        address=address,
        server_name=server_name,
        source=source,
        folder=folder,
        ca_cert_pem=files[CA_CERT],
        client_cert_pem=files[CLIENT_CERT],
        client_key_pem=files[CLIENT_KEY],
        identity_seed=files[IDENTITY_KEY],
        signer_public_key=signer,
        config=config,
        attestation_policy=files.get(ATTESTATION_POLICY),
        attestation_collateral=files.get(ATTESTATION_COLLATERAL),
        authority_public_key=authority,
        enrolled=_parse_manifest(files[MANIFEST])["format"] == ENROLLED_MANIFEST_FORMAT,
    )


def parse_authority_key(data: bytes) -> bytes:
    """The raw 32-byte key in an ``authority.pub`` file (64 hex digits and a newline)."""
    try:
        key = bytes.fromhex(data.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != 32:
        raise ProvisioningError(f"{AUTHORITY_KEY} must hold a 32-byte Ed25519 key in hex")
    return key


def render_authority_key(key: bytes) -> bytes:
    """``authority.pub``'s content for a raw 32-byte key."""
    if not isinstance(key, bytes) or len(key) != 32:
        raise ProvisioningError("an authority key is a raw 32-byte Ed25519 public key")
    return key.hex().encode() + b"\n"


def file_limit(file: str) -> int:
    """The most bytes kit file ``file`` may hold (the roster grows with the federation)."""
    return MAX_ROSTER_FILE_BYTES if file == AUTHORITY_ROSTER else MAX_FILE_BYTES


def _check_file_name(file: object) -> None:
    if not isinstance(file, str) or not _FILE_NAME.fullmatch(file):
        raise ProvisioningError(f"{file!r} is not a plain kit file name")


def _read_folder(folder: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    with os.scandir(folder) as entries:
        for count, entry in enumerate(entries, start=1):
            if count > MAX_FILES:
                raise ProvisioningError(f"kit {folder} holds more than {MAX_FILES} entries")
            if entry.is_symlink():
                raise ProvisioningError(f"kit {folder}: {entry.name} is a symbolic link")
            if not entry.is_file(follow_symlinks=False):
                raise KitTamperedError(f"{entry.name} was added to the kit (not a regular file)")
            files[entry.name] = pki.read_file(Path(entry.path), limit=file_limit(entry.name))
    return files


class _BoundedReader(io.RawIOBase):
    """Stops decompression after ``limit`` bytes, whatever the tar headers claim."""

    def __init__(self, inner: io.BufferedIOBase, limit: int) -> None:
        self._inner = inner
        self._left = limit

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        want = self._left + 1 if size is None or size < 0 else min(size, self._left + 1)
        data = self._inner.read(want)
        self._left -= len(data)
        if self._left < 0:
            raise ProvisioningError(
                f"kit archive expands beyond {MAX_ARCHIVE_STREAM_BYTES} bytes (archive bomb?)"
            )
        return data


def _read_archive(path: Path) -> dict[str, bytes]:
    """Read a kit archive's members into memory, refusing anything but small flat files."""
    files: dict[str, bytes] = {}
    raw = io.BytesIO(pki.read_file(path, limit=MAX_ARCHIVE_BYTES))
    try:
        with contextlib.ExitStack() as stack:
            gz = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="rb"))
            stream = _BoundedReader(gz, MAX_ARCHIVE_STREAM_BYTES)
            tar = stack.enter_context(tarfile.open(fileobj=stream, mode="r|"))
            for count, member in enumerate(tar, start=1):
                if count > MAX_FILES:
                    raise ProvisioningError(f"kit archive {path} has more than {MAX_FILES} members")
                _check_member(path, member, files)
                handle = tar.extractfile(member)
                if handle is None:  # pragma: no cover - regular files always have data
                    raise ProvisioningError(f"kit archive {path}: {member.name} has no data")
                data = handle.read(file_limit(member.name) + 1)
                if len(data) != member.size:
                    raise ProvisioningError(f"kit archive {path}: {member.name} is truncated")
                files[member.name] = data
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise ProvisioningError(f"{path} is not a readable kit archive: {exc}") from None
    return files


def _check_member(path: Path, member: tarfile.TarInfo, seen: Mapping[str, bytes]) -> None:
    name = member.name
    where = f"kit archive {path}: member {name!r}"
    if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name):
        raise ProvisioningError(f"{where} has an absolute path")
    if ".." in re.split(r"[/\\]", name):
        raise ProvisioningError(f"{where} climbs out of the kit with '..'")
    if member.issym() or member.islnk():
        raise ProvisioningError(f"{where} is a link; a kit holds regular files only")
    if not member.isreg():
        raise ProvisioningError(f"{where} is not a regular file")
    if "/" in name or "\\" in name:
        raise ProvisioningError(f"{where} is in a subfolder; kit members are flat")
    _check_file_name(name)
    if member.size > file_limit(name):
        raise ProvisioningError(f"{where} is larger than {file_limit(name)} bytes (archive bomb?)")
    if name in seen:
        raise ProvisioningError(f"{where} appears twice")
