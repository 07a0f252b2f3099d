"""The appliance's side of attested mode: the attesters it runs and the evidence it answers with.

The appliance answers ``Attest(nonce)`` with evidence from every attester it runs (the CPU
TEE's first, then e.g. a confidential GPU's in ``AttestReply.additional``), each with report
data SHA-512(nonce || DER SubjectPublicKeyInfo of its TLS certificate), that certificate,
and its collateral bundle (``attestation/collateral/`` in the federation folder, fetched by
``sealagg attest collateral fetch``). The TLS key is born in memory at start
(appliance/tee_identity.py), so a copy of the federation folder cannot stand in for it.
Clients report their appraisal results; each is audited.

Providers (``[attestation] provider``): ``none``; ``software`` (Ed25519, INSECURE,
development only: its key and a matching client policy are created in the federation folder;
clients accept it only if *their own* configuration allows an insecure attester);
``sev-snp`` / ``tdx`` / ``configfs-tsm`` (Linux configfs-tsm in a confidential VM). For
hardware providers the policy author writes the client policy (``attestation/policy.toml``:
expected measurements from the reproducible build, trusted vendor roots, TCB floors; see
docs/attest-policy.md) before issuing kits.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from sealagg.appliance import pki
from sealagg.appliance.errors import ProvisioningError
from sealagg.attest import (
    NONCE_BYTES,
    SEV_SNP,
    TDX,
    Attester,
    ConfigfsTsmAttester,
    SoftwareAttester,
    parse_policy,
    report_data,
)
from sealagg.attest.collateral import MAX_BUNDLE_BYTES, CollateralBundle
from sealagg.crypto import IdentityKey

_log = logging.getLogger("sealagg.attestation")

ATTESTATION_DIR = "attestation"
CLIENT_POLICY = "policy.toml"  # shipped in every kit issued while it exists
COLLATERAL_DIR = "collateral"  # attestation/collateral/: sent with every Attest reply, in kits
SOFTWARE_KEY = "software.key"
#: The software attester measures nothing; this constant says so in every report.
SOFTWARE_MEASUREMENT = hashlib.sha384(b"sealagg software attester: measures nothing").digest()
APPLIANCE_WARNING = (
    "WARNING: attestation provider 'software': the evidence this appliance gives proves "
    "nothing (development only). Clients refuse it unless their own configuration allows "
    "an insecure attester (SEALAGG_ALLOW_INSECURE_ATTESTER=1)."
)
MAX_DETAIL = 300
#: The Attest reply must fit gRPC's 2 MiB message limit beside the evidence.
MAX_REPLY_COLLATERAL = 1536 * 1024


def client_policy_path(folder: Path) -> Path:
    return Path(folder) / ATTESTATION_DIR / CLIENT_POLICY


def collateral_path(folder: Path) -> Path:
    return Path(folder) / ATTESTATION_DIR / COLLATERAL_DIR


def software_key_path(folder: Path, configured: str = "") -> Path:
    path = Path(configured) if configured else Path(ATTESTATION_DIR) / SOFTWARE_KEY
    return path if path.is_absolute() else Path(folder) / path


def setup_software_attestation(folder: Path, *, key_path: Path | None = None) -> Path:
    """Create the software attester's key and a client policy trusting it; return the policy path.

    The policy does not opt clients in to the insecure attester (it has no say: only a
    client's own configuration can accept it, default refuse). Idempotent: an existing key
    is kept; the policy is rewritten for it. Kits issued afterwards carry the policy (kits
    issued before do not: re-issue them).
    """
    key_path = key_path or software_key_path(folder)
    key_path.parent.mkdir(mode=pki.PRIVATE_DIR_MODE, exist_ok=True)
    if not key_path.exists():
        seed = secrets.token_bytes(32)  # an Ed25519 seed
        pki.write_file_atomic(key_path, seed, mode=pki.PRIVATE_FILE_MODE)
    key = _load_software_key(key_path)
    text = software_policy(key.verify_key_bytes)
    path = client_policy_path(folder)
    path.parent.mkdir(mode=pki.PRIVATE_DIR_MODE, exist_ok=True)
    pki.write_file_atomic(path, text.encode(), mode=pki.PUBLIC_FILE_MODE)
    return path


def software_policy(verify_key: bytes) -> str:
    """The development client policy for the software attester (the strict schema)."""
    text = (
        "# Attestation policy for clients (shipped in every kit issued while this file exists).\n"
        "# Provider 'software' is INSECURE: it proves nothing; development only. Clients\n"
        "# accept it only with SEALAGG_ALLOW_INSECURE_ATTESTER=1 (or allow_insecure_attester=True\n"
        "# on their Connection): their own choice, never this file's.\n"
        "version = 1\nmax_age_seconds = 60\n\n[software]\n"
        f'trusted_keys = ["{verify_key.hex()}"]\n\n'
        f'[[software.measurements]]\nmeasurement = "{SOFTWARE_MEASUREMENT.hex()}"\n'
    )
    parse_policy(text)  # never ship a policy the shim would refuse
    return text


def _load_software_key(path: Path) -> IdentityKey:
    seed = pki.read_file(path, limit=64)
    if len(seed) != 32:
        raise ValueError(f"{path}: the software attester key is a 32-byte Ed25519 seed")
    return IdentityKey.from_seed(seed)


def build_attester(provider: str, folder: Path, *, software_key: str = "", tsm_root: str = ""):
    """The configured attester, or None for provider ``none``."""
    if provider == "none":
        return None
    if provider == "software":
        path = software_key_path(folder, software_key)
        if not path.exists():
            setup_software_attestation(folder, key_path=path)
        return SoftwareAttester(_load_software_key(path), SOFTWARE_MEASUREMENT)
    root = {"root": Path(tsm_root)} if tsm_root else {}
    expect = {"sev-snp": SEV_SNP, "tdx": TDX, "configfs-tsm": None}[provider]
    return ConfigfsTsmAttester(expect, **root)


def kit_collateral(folder: Path, *, limit: int) -> bytes | None:
    """The collateral bundle to ship in kits (one signed kit file), None if there is none."""
    bundle = _read_bundle(collateral_path(folder))
    if not bundle.files:
        return None
    data = bundle.to_bytes()
    if len(data) > limit:
        raise ProvisioningError(
            f"the collateral bundle in {collateral_path(folder)} is {len(data)} bytes, more "
            f"than a kit file may hold ({limit}); clients still get it with every Attest reply"
        )
    return data


def _read_bundle(root: Path) -> CollateralBundle:
    try:
        bundle = CollateralBundle.from_directory(root)
    except (OSError, ValueError) as error:
        raise ProvisioningError(f"cannot read the collateral bundle {root}: {error}") from None
    if sum(len(v) for v in bundle.files.values()) > MAX_BUNDLE_BYTES:
        raise ProvisioningError(f"the collateral bundle {root} is larger than {MAX_BUNDLE_BYTES}")
    return bundle


class CollateralSource:
    """The folder's collateral bundle as Attest replies carry it; re-read when files change.

    Collateral goes stale (Intel TCB info and CRLs carry a nextUpdate): an operator refreshes
    the folder and running appliances pick it up at the next Attest call. A refresh that
    fails keeps the last good bundle (clients then judge its dates) and logs why.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._lock = threading.Lock()
        self._stamp: tuple = ()
        self._blob = b""
        self._load(self._scan())  # a broken bundle stops the start, not the first client

    def _scan(self) -> tuple:
        if not self.root.is_dir():
            return ()
        stamps = []
        for path in sorted(self.root.rglob("*")):
            try:
                info = path.stat()
            except FileNotFoundError:  # replaced while we looked: the next call sees it
                continue
            stamps.append((path.as_posix(), info.st_mtime_ns, info.st_size))
        return tuple(stamps)

    def _load(self, stamp: tuple) -> None:
        blob = _read_bundle(self.root).to_bytes()
        if len(blob) > MAX_REPLY_COLLATERAL:
            raise ProvisioningError(
                f"the collateral bundle {self.root} is {len(blob)} bytes; an Attest reply "
                f"carries at most {MAX_REPLY_COLLATERAL}: keep only this appliance's items"
            )
        self._stamp, self._blob = stamp, blob

    def current(self) -> bytes:
        with self._lock:
            try:
                stamp = self._scan()
                if stamp != self._stamp:
                    self._load(stamp)
            except (OSError, ProvisioningError) as error:
                _log.error("collateral refresh failed (%s); serving the previous bundle", error)
            return self._blob


class AttestationEndpoint:
    """Answers Attest calls: evidence from every attester, bound to this TLS certificate."""

    def __init__(
        self,
        attesters: Attester | Sequence[Attester],
        certificate_der: bytes,
        spki_der: bytes,
        *,
        collateral: CollateralSource | None = None,
    ) -> None:
        self.attesters: tuple[Attester, ...] = (
            tuple(attesters) if isinstance(attesters, Sequence) else (attesters,)
        )
        if not self.attesters:
            raise ValueError("an attestation endpoint needs at least one attester")
        self.attester = self.attesters[0]  # the CPU TEE's: its format names the provider
        self.certificate_der = certificate_der
        self.spki_der = spki_der
        self.collateral = collateral
        self.insecure = any(a.insecure for a in self.attesters)
        if self.insecure:
            print(APPLIANCE_WARNING, file=sys.stderr)

    def evidence(self, nonce: bytes) -> list[tuple[str, bytes, tuple[bytes, ...]]]:
        """(format, evidence bytes, certificates) of each attester for ``nonce``, the first
        attester's first; ValueError on a bad nonce."""
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
        binding = report_data(nonce, self.spki_der)
        items = []
        for attester in self.attesters:
            ev = attester.evidence(binding)
            items.append((ev.format, bytes(ev.data), tuple(bytes(c) for c in ev.certificates)))
        return items

    def collateral_bytes(self) -> bytes:
        return b"" if self.collateral is None else self.collateral.current()


def report_details(client: str, accepted: bool, fmt: str, reason: str, detail: str) -> dict:
    """The audit record of one client's appraisal (bounded, no evidence bytes)."""
    return {
        "client": client,
        "accepted": bool(accepted),
        "format": fmt[:32],
        "reason": reason[:64],
        "detail": detail[:MAX_DETAIL],
    }


def configured_attesters(
    federation, section, attester: Attester | Sequence[Attester] | None = None
) -> tuple[Attester, ...]:
    """The attesters this appliance runs (none for provider ``none``).

    ``attester`` overrides the configured provider (tests inject fake SNP/TDX hardware, or a
    sequence: a CPU TEE's attester then a GPU's).
    """
    if attester is not None:
        return tuple(attester) if isinstance(attester, Sequence) else (attester,)
    built = build_attester(
        section.provider,
        federation.folder,
        software_key=section.software_key,
        tsm_root=section.tsm_root,
    )
    return () if built is None else (built,)


def endpoint_for(
    federation, attesters: Sequence[Attester], certificate_der: bytes, spki_der: bytes
) -> AttestationEndpoint | None:
    """The Attest endpoint for this appliance (None when it runs no attester).

    ``certificate_der`` / ``spki_der``: the certificate the TLS server actually presents,
    whose key was born in memory at this start (appliance/tee_identity.py).
    """
    if not attesters:
        return None
    source = CollateralSource(collateral_path(federation.folder))
    return AttestationEndpoint(attesters, certificate_der, spki_der, collateral=source)
