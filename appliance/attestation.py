"""The appliance's side of attested mode: the attester it runs and the evidence it answers with.

The appliance answers ``Attest(nonce)`` with evidence whose report data is
SHA-512(nonce || DER SubjectPublicKeyInfo of its own TLS certificate) plus that
certificate, so a client can pin exactly the attested key for the session that
carries its update. Clients report their appraisal results; each is audited.

Providers (``[attestation] provider``): ``none``; ``software`` (Ed25519, INSECURE,
development only: its key and a matching client policy are created in the
federation folder); ``sev-snp`` / ``tdx`` / ``configfs-tsm`` (Linux configfs-tsm
in a confidential VM). For hardware providers the operator writes the client
policy (``attestation/policy.toml``: expected measurements from the reproducible
build, trusted vendor roots) before issuing kits.
"""

from __future__ import annotations

import hashlib
import secrets
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from sealagg.appliance import pki
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
from sealagg.crypto import IdentityKey

ATTESTATION_DIR = "attestation"
CLIENT_POLICY = "policy.toml"  # shipped in every kit issued while it exists
SOFTWARE_KEY = "software.key"
#: The software attester measures nothing; this constant says so in every report.
SOFTWARE_MEASUREMENT = hashlib.sha384(b"sealagg software attester: measures nothing").digest()
APPLIANCE_WARNING = (
    "WARNING: attestation provider 'software': the evidence this appliance gives proves "
    "nothing (development only). Clients will say so too."
)
MAX_DETAIL = 300


def client_policy_path(folder: Path) -> Path:
    return Path(folder) / ATTESTATION_DIR / CLIENT_POLICY


def software_key_path(folder: Path, configured: str = "") -> Path:
    path = Path(configured) if configured else Path(ATTESTATION_DIR) / SOFTWARE_KEY
    return path if path.is_absolute() else Path(folder) / path


def setup_software_attestation(folder: Path, *, key_path: Path | None = None) -> Path:
    """Create the software attester's key and a client policy trusting it; return the policy path.

    Idempotent: an existing key is kept; the policy is rewritten for it. Kits issued afterwards
    carry the policy (kits issued before do not: re-issue them).
    """
    key_path = key_path or software_key_path(folder)
    key_path.parent.mkdir(mode=pki.PRIVATE_DIR_MODE, exist_ok=True)
    if not key_path.exists():
        seed = secrets.token_bytes(32)  # an Ed25519 seed
        pki.write_file_atomic(key_path, seed, mode=pki.PRIVATE_FILE_MODE)
    key = _load_software_key(key_path)
    text = (
        "# Attestation policy for clients (shipped in every kit issued while this file exists).\n"
        "# Provider 'software' is INSECURE: it proves nothing; development only.\n"
        "version = 1\nmax_age_seconds = 60\n\n[software]\nallow_insecure = true\n"
        f'trusted_keys = ["{key.verify_key_bytes.hex()}"]\n\n'
        f'[[software.measurements]]\nmeasurement = "{SOFTWARE_MEASUREMENT.hex()}"\n'
    )
    parse_policy(text)  # never ship a policy the shim would refuse
    path = client_policy_path(folder)
    path.parent.mkdir(mode=pki.PRIVATE_DIR_MODE, exist_ok=True)
    pki.write_file_atomic(path, text.encode(), mode=pki.PUBLIC_FILE_MODE)
    return path


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


class AttestationEndpoint:
    """Answers Attest calls: evidence bound to this appliance's TLS certificate."""

    def __init__(self, attester: Attester, tls_certificate: x509.Certificate) -> None:
        self.attester = attester
        self.certificate_der = tls_certificate.public_bytes(Encoding.DER)
        self.spki_der = tls_certificate.public_key().public_bytes(
            Encoding.DER, PublicFormat.SubjectPublicKeyInfo
        )
        self.insecure = attester.insecure
        if self.insecure:
            print(APPLIANCE_WARNING, file=sys.stderr)

    def evidence(self, nonce: bytes):
        """(format, evidence bytes, certificates) for ``nonce``; ValueError on a bad nonce."""
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"a nonce is {NONCE_BYTES} bytes")
        ev = self.attester.evidence(report_data(nonce, self.spki_der))
        return ev.format, bytes(ev.data), tuple(bytes(c) for c in ev.certificates)


def report_details(client: str, accepted: bool, fmt: str, reason: str, detail: str) -> dict:
    """The audit record of one client's appraisal (bounded, no evidence bytes)."""
    return {
        "client": client,
        "accepted": bool(accepted),
        "format": fmt[:32],
        "reason": reason[:64],
        "detail": detail[:MAX_DETAIL],
    }


def endpoint_for(federation, section, attester: Attester | None = None):
    """The Attest endpoint for this appliance (None when the provider is ``none``).

    ``attester`` overrides the configured provider (tests inject fake SNP/TDX hardware).
    The bound certificate is the one the TLS server actually presents.
    """
    if attester is None:
        attester = build_attester(
            section.provider,
            federation.folder,
            software_key=section.software_key,
            tsm_root=section.tsm_root,
        )
    if attester is None:
        return None
    _, chain_pem, _ = federation.server_credentials_material()
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    return AttestationEndpoint(attester, leaf)
