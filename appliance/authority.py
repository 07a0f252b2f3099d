"""The federation authority: the security team's offline key that decides who participates.

It never runs on the appliance. It signs the roster (:mod:`sealagg.crypto.roster`), which
every client verifies against the authority key pinned in its kit, so an appliance that
invents participants is refused by the clients themselves. The key sits behind the
:class:`~sealagg.crypto.roster.Signer` interface (``sign``, ``public_key``): a
passphrase-protected file here (:class:`FileSigner`); an HSM or KMS can back the same
interface later without changing anything else.

Files of an authority folder (never inside a federation folder, see :func:`check_outside`)::

    authority.key     the Ed25519 key: PKCS#8, encrypted (0600)
    authority.pub     its public key (hex): give it to every client out of band
    roster.json       the current signed roster (the one to install on the appliance)
    kit_identity.json the federation CA and server name the authority vouches for in kits
                      (recorded at the first ``sign-kit``; a kit naming others is refused)

The key file is PKCS#8 with ``BestAvailableEncryption``, whose password is not the
passphrase itself but scrypt(passphrase, salt; N=2^17, r=8, p=1): a stolen file then costs an
attacker 128 MiB of memory per guess, where PKCS#8's own KDF (PBKDF2) costs almost nothing.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import os
import tomllib
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from sealagg.appliance import kit, kit_issue, pki
from sealagg.appliance.errors import ProvisioningError
from sealagg.crypto.errors import RosterError
from sealagg.crypto.roster import (
    Role,
    Roster,
    RosterEntry,
    Signer,
    sign_roster,
    verify_enrolment_request,
    verify_roster,
)

KEY_FILE = "authority.key"
PUBLIC_FILE = "authority.pub"
ROSTER_FILE = "roster.json"
KIT_IDENTITY_FILE = "kit_identity.json"
KEY_FORMAT = "sealagg-authority-key/1"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**17, 8, 1
#: How long an approved entry stays valid unless the approver says otherwise.
DEFAULT_VALIDITY = timedelta(days=365)
MIN_PASSPHRASE_BYTES = 12


class FileSigner:
    """An Ed25519 authority key decrypted from a passphrase-protected file, in memory only."""

    def __init__(self, key: Ed25519PrivateKey) -> None:
        self._key = key

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    def public_key(self) -> bytes:
        return kit.raw_public_key(self._key.public_key())

    def __reduce__(self) -> object:
        raise TypeError("FileSigner holds the authority's private key and cannot be pickled")

    def __repr__(self) -> str:
        return f"FileSigner(public_key={self.public_key().hex()[:16]}…)"

    @classmethod
    def load(cls, folder: Path, passphrase: bytes) -> FileSigner:
        """Decrypt ``folder/authority.key``; a wrong passphrase raises ProvisioningError."""
        path = Path(folder) / KEY_FILE
        try:
            document = json.loads(pki.read_file(path, limit=64 * 1024))
            if document["format"] != KEY_FORMAT or document["kdf"] != "scrypt":
                raise ValueError("unknown format")
            salt = base64.b64decode(document["salt"])
            n, r, p = int(document["n"]), int(document["r"]), int(document["p"])
            pem = document["pkcs8_pem"].encode("ascii")
            public = bytes.fromhex(document["public_key"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ProvisioningError(f"{path} is not an authority key file: {exc}") from None
        try:
            key = serialization.load_pem_private_key(pem, _derive(passphrase, salt, n, r, p))
        except (ValueError, TypeError):
            raise ProvisioningError(f"cannot decrypt {path}: wrong passphrase?") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise ProvisioningError(f"{path} does not hold an Ed25519 key")
        signer = cls(key)
        if signer.public_key() != public:
            raise ProvisioningError(f"{path}: the key does not match its recorded public key")
        return signer


def _derive(passphrase: bytes, salt: bytes, n: int, r: int, p: int) -> bytes:
    if not isinstance(passphrase, bytes) or not passphrase:
        raise ProvisioningError("the authority key needs a passphrase")
    key = Scrypt(salt=salt, length=32, n=n, r=r, p=p).derive(passphrase)
    return base64.b64encode(key)  # PKCS#8 password: printable, full entropy


def check_outside(folder: Path, federation_folder: Path | None) -> None:
    """Refuse an authority folder inside (or equal to) a federation folder, or any folder
    that holds a federation: the appliance must never hold the key that admits clients."""
    folder = Path(folder).resolve()
    for parent in (folder, *folder.parents):
        if (parent / "sealagg.toml").exists() or (parent / "ca.key").exists():
            raise ProvisioningError(
                f"{folder} is inside the federation folder {parent}: the authority key must "
                "live off the appliance (e.g. the security team's offline machine)"
            )
    if federation_folder is not None:
        fed = Path(federation_folder).resolve()
        if folder == fed or fed in folder.parents:
            raise ProvisioningError(f"{folder} is inside the federation folder {fed}")


def init_authority(
    folder: Path,
    passphrase: bytes,
    *,
    federation: str,
    policy: Mapping[str, Any] | None = None,
) -> FileSigner:
    """Create a new authority key in ``folder`` (new or empty) and an empty roster version 1,
    carrying the federation ``policy`` (``colluders``, ``minimum_sum``, ``allowed_modes``,
    the DP floor ``min_noise_multiplier`` and ``required_privacy``) if given: the policy
    every client then enforces (``sign-roster`` changes it later)."""
    folder = Path(folder)
    check_outside(folder, None)
    if len(passphrase) < MIN_PASSPHRASE_BYTES:
        raise ProvisioningError(
            f"the authority passphrase must be at least {MIN_PASSPHRASE_BYTES} bytes"
        )
    try:  # before any file is written: a policy no client could parse creates nothing
        empty = Roster(
            federation, 1, datetime.now(UTC).replace(microsecond=0), (), dict(policy or {})
        )
    except RosterError as error:
        raise ProvisioningError(f"not creating the authority: {error}") from None
    if (folder / KEY_FILE).exists():
        raise ProvisioningError(f"{folder} already holds an authority key; refusing to replace it")
    folder.mkdir(mode=pki.PRIVATE_DIR_MODE, parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    salt = os.urandom(16)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(
            _derive(passphrase, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
        ),
    )
    signer = FileSigner(key)
    document = {
        "format": KEY_FORMAT,
        "kdf": "scrypt",
        "n": SCRYPT_N,
        "r": SCRYPT_R,
        "p": SCRYPT_P,
        "salt": base64.b64encode(salt).decode(),
        "public_key": signer.public_key().hex(),
        "pkcs8_pem": pem.decode("ascii"),
    }
    data = (json.dumps(document, indent=2) + "\n").encode()
    pki.write_file_atomic(folder / KEY_FILE, data, mode=pki.PRIVATE_FILE_MODE)
    pki.write_file_atomic(
        folder / PUBLIC_FILE, kit.render_authority_key(signer.public_key()), mode=0o644
    )
    pki.write_file_atomic(folder / ROSTER_FILE, sign_roster(empty, signer), mode=0o644)
    return signer


def current_roster(folder: Path, signer: Signer, federation: str | None = None) -> Roster:
    """The authority's current roster, verified with its own key."""
    return current_signed_roster(folder, signer, federation)[0]


def current_signed_roster(
    folder: Path, signer: Signer, federation: str | None = None
) -> tuple[Roster, bytes]:
    """The authority's current roster, verified with its own key, and its signed bytes."""
    data = pki.read_file(Path(folder) / ROSTER_FILE, limit=8 * 1024 * 1024)
    body = json.loads(data)["body"]
    name = federation or json.loads(body)["federation"]
    try:
        return verify_roster(data, authority_key=signer.public_key(), federation=name), data
    except RosterError as error:
        raise ProvisioningError(f"{folder / ROSTER_FILE}: {error}") from None


def policy_with(
    policy: Mapping[str, Any],
    *,
    colluders: int | None = None,
    minimum_sum: int | None = None,
    modes: list[str] | None = None,
    min_noise_multiplier: float | None = None,
    required_privacy: list[str] | None = None,
) -> dict[str, Any]:
    """``policy`` (a roster's plain mapping) with the given fields set; None keeps a field.

    ``required_privacy`` ``["none"]`` (or ``[]``) drops the requirement; a floor of 0 drops
    the floor. The result is what the authority signs, so lists are sorted (one spelling)."""
    out = dict(policy)
    for key, value in (("colluders", colluders), ("minimum_sum", minimum_sum)):
        if value is not None:
            out[key] = value
    if modes:
        out["allowed_modes"] = sorted(modes)
    if min_noise_multiplier is not None:
        out["min_noise_multiplier"] = float(min_noise_multiplier)
        if not min_noise_multiplier:
            del out["min_noise_multiplier"]  # 0: no floor, as a roster without the field
    if required_privacy is not None:
        chosen = sorted(set(required_privacy) - {"none"})
        out["required_privacy"] = chosen
        if not chosen:
            del out["required_privacy"]
    return out


def publish(folder: Path, roster: Roster, signer: Signer) -> bytes:
    """Sign ``roster`` and make it the authority's current one; returns the signed bytes."""
    data = sign_roster(roster, signer)
    pki.write_file_atomic(Path(folder) / ROSTER_FILE, data, mode=0o644)
    return data


def approve(
    folder: Path,
    signer: Signer,
    request: bytes,
    *,
    role: Role = Role.DATA_OWNER,
    validity: timedelta = DEFAULT_VALIDITY,
    now: datetime | None = None,
) -> tuple[Roster, bytes]:
    """Approve an enrolment request: check it (the client's identity key signed it, its CSR
    is self-signed and names the client), add the entry, sign the next roster version.

    The request carries only public keys: the authority never sees a private key either.
    """
    return approve_all(folder, signer, [(request, role)], validity=validity, now=now)


def approve_all(
    folder: Path,
    signer: Signer,
    requests: list[tuple[bytes, Role]],
    *,
    validity: timedelta = DEFAULT_VALIDITY,
    now: datetime | None = None,
) -> tuple[Roster, bytes]:
    """Approve several enrolment requests (each with its role) into one new roster version;
    every request is checked as :func:`approve` checks one, and none is added unless all pass."""
    moment = pki.issuance_time(now)
    roster = current_roster(folder, signer)
    entries = [_entry_for(request, role, roster, validity, moment) for request, role in requests]
    if not entries:
        raise ProvisioningError("no enrolment request to approve")
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ProvisioningError("two requests name the same client")
    updated = roster
    for entry in entries:
        updated = updated.with_entry(entry, issued_at=moment)
    updated = dataclasses.replace(updated, version=roster.version + 1)
    return updated, publish(folder, updated, signer)


def _entry_for(
    request: bytes, role: Role, roster: Roster, validity: timedelta, moment: datetime
) -> RosterEntry:
    try:
        fields = verify_enrolment_request(request)
    except RosterError as error:
        raise ProvisioningError(f"enrolment request refused: {error}") from None
    if fields["federation"] != roster.federation:
        raise ProvisioningError(
            f"the request is for federation {fields['federation']!r}, not {roster.federation!r}"
        )
    name = pki.validate_client_name(fields["name"])
    csr = pki.load_client_csr(fields["tls_csr_pem"], name=name)
    return RosterEntry(
        name=name,
        identity_key=bytes.fromhex(fields["identity_key"]),
        tls_key_sha256=pki.spki_sha256(csr.public_key()),
        role=role,
        not_before=moment - pki.CLOCK_SKEW,
        not_after=moment + validity,
    )


# ------------------------------------------------------------------------------ kit countersign


def sign_kit(
    folder: Path,
    signer: Signer,
    kit_path: Path,
    *,
    new_identity: bool = False,
    now: datetime | None = None,
) -> dict[str, str]:
    """Countersign an issued kit (folder or archive) in place; returns what was vouched for.

    The appliance signed the kit's manifest with its own key, which proves nothing to a client
    that does not trust the appliance. The authority checks what matters before it signs:
    the manifest is intact; the kit pins this authority; its client is on the current roster,
    valid now, and its certificate carries the TLS key the roster lists for it; its CA and
    server name are the federation's (recorded in ``kit_identity.json`` at the first kit, which
    the security team compares out of band; a later kit naming another CA or server name is
    refused unless ``new_identity``). Then it signs the manifest, which lists the hash of every
    file: CA certificate, ``client.toml`` (server, policy), attestation policy, collateral.

    It also puts its current signed roster in the kit (``AUTHORITY.roster.json``, covered by
    the same signature): the client takes that version as its floor before it ever talks to
    the appliance, so not even its first roster can be an older one (say, one that still
    lists clients the authority removed).
    """
    folder, kit_path = Path(folder), Path(kit_path)
    files = kit.read_kit_files(kit_path)
    try:
        kit.verify_kit_files(files, trusted_signer=None, as_issued=True)
        manifest = json.loads(files[kit.MANIFEST])
        config = tomllib.loads(files[kit.CLIENT_CONFIG].decode("utf-8"))
        name = pki.validate_client_name(config["client"]["name"])
        server_name = str(config["server"]["tls_server_name"])
        address = str(config["server"]["address"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProvisioningError(f"{kit_path} is not a readable kit: {exc}") from None
    if (
        kit.AUTHORITY_KEY not in manifest["files"]
        or kit.parse_authority_key(files[kit.AUTHORITY_KEY]) != signer.public_key()
    ):
        raise ProvisioningError(f"{kit_path} does not pin this authority's key")
    roster, signed_roster = current_signed_roster(
        folder, signer, config["client"].get("federation")
    )
    if len(signed_roster) > kit.file_limit(kit.AUTHORITY_ROSTER):
        raise ProvisioningError(
            f"roster version {roster.version} is {len(signed_roster)} bytes, more than a kit "
            f"may carry ({kit.file_limit(kit.AUTHORITY_ROSTER)})"
        )
    try:
        entry = roster.entry(name)
        entry.check_valid_at(pki.issuance_time(now))
    except RosterError as error:
        raise ProvisioningError(f"not signing the kit of {name!r}: {error}") from None
    certificate = pki.load_certificate(files[kit.CLIENT_CERT], what="the kit's certificate")
    if pki.spki_sha256(certificate) != entry.tls_key_sha256:
        raise ProvisioningError(
            f"the kit's certificate for {name!r} is not for the TLS key roster version "
            f"{roster.version} lists"
        )
    ca = pki.load_certificate(files[kit.CA_CERT], what="the kit's CA certificate")
    pki.check_issued_by(certificate, ca)
    identity = {
        "ca_sha256": ca.fingerprint(hashes.SHA256()).hex(),
        "tls_server_name": server_name,
    }
    _check_kit_identity(folder, identity, new_identity=new_identity)
    signature = signer.sign(kit.authority_signed_message(files[kit.MANIFEST], signed_roster))
    added = {kit.AUTHORITY_ROSTER: signed_roster, kit.AUTHORITY_SIGNATURE: signature.hex().encode()}
    kit.verify_authority_signature({**files, **added}, signer.public_key())
    _write_countersignature(kit_path, files, signed_roster, (signature.hex() + "\n").encode())
    vouched = {
        "client": name,
        "address": address,
        "roster_version": str(roster.version),
        **identity,
    }
    if kit.ATTESTATION_POLICY in files:
        vouched["attestation_policy_sha256"] = hashlib.sha256(
            files[kit.ATTESTATION_POLICY]
        ).hexdigest()
    return vouched


def _check_kit_identity(folder: Path, identity: dict[str, str], *, new_identity: bool) -> None:
    path = folder / KIT_IDENTITY_FILE
    if path.exists() and not new_identity:
        try:
            recorded = json.loads(pki.read_file(path, limit=64 * 1024))
        except ValueError as exc:
            raise ProvisioningError(f"{path} is corrupt: {exc}") from None
        if recorded != identity:
            raise ProvisioningError(
                f"the kit names CA {identity['ca_sha256'][:16]}… and server "
                f"{identity['tls_server_name']!r}, not the federation's recorded in {path} "
                f"(CA {str(recorded.get('ca_sha256'))[:16]}…, server "
                f"{recorded.get('tls_server_name')!r}); refusing to vouch for it"
            )
        return
    data = (json.dumps(identity, indent=2, sort_keys=True) + "\n").encode()
    pki.write_file_atomic(path, data, mode=0o644)


def _write_countersignature(
    kit_path: Path, files: dict[str, bytes], roster: bytes, signature: bytes
) -> None:
    """Roster first, then the signature over it: a crash in between leaves a kit whose old
    signature no longer verifies (refused until signed again), never a roster unvouched for."""
    if kit_path.is_dir():
        pki.write_file_atomic(kit_path / kit.AUTHORITY_ROSTER, roster, mode=0o644)
        pki.write_file_atomic(kit_path / kit.AUTHORITY_SIGNATURE, signature, mode=0o644)
        return
    signed = {**files, kit.AUTHORITY_ROSTER: roster, kit.AUTHORITY_SIGNATURE: signature}
    staging = kit_path.with_name(f".{kit_path.name}.{os.getpid()}.signed")
    kit_issue.write_kit_archive(signed, staging, mtime=datetime.now(UTC))
    os.replace(staging, kit_path)
