"""Client kits, write side: build, sign and write the bundle a data owner receives.

Used by :mod:`sealagg.appliance.federation` when it adds a client. The kit format (file
names, manifest, signature context) and every check a reader makes live in
:mod:`sealagg.appliance.kit`, the read-only API the client shim imports; keeping the signing
side here means a data owner never imports it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealagg.appliance import pki
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.kit import (
    ATTESTATION_COLLATERAL,
    ATTESTATION_POLICY,
    AUTHORITY_KEY,
    CA_CERT,
    CLIENT_CERT,
    CLIENT_CONFIG,
    CLIENT_KEY,
    ENROLLED_MANIFEST_FORMAT,
    IDENTITY_KEY,
    MANIFEST,
    MANIFEST_FORMAT,
    PRIVATE_FILES,
    SIGNATURE,
    SIGNATURE_CONTEXT,
    raw_public_key,
    render_authority_key,
)
from sealagg.crypto.policy import FederationPolicy


def render_client_config(
    *,
    name: str,
    federation: str,
    address: str,
    server_name: str,
    policy: FederationPolicy | None = None,
) -> bytes:
    """``client.toml``: who the client is, where (and as whom) the appliance answers, and
    the federation policy (c, m, allowed modes) the client enforces on every round."""
    lines = [
        "# sealagg client kit; written by add_client. Keep client.key and identity.key secret.",
        "",
        "[client]",
        f"name = {toml_string(name)}",
        f"federation = {toml_string(federation)}",
        "",
        "[server]",
        f"address = {toml_string(address)}",
        f"tls_server_name = {toml_string(server_name)}",
        "",
        "[files]",
        f"ca_certificate = {toml_string(CA_CERT)}",
        f"certificate = {toml_string(CLIENT_CERT)}",
        f"private_key = {toml_string(CLIENT_KEY)}",
        f"identity_key = {toml_string(IDENTITY_KEY)}",
        "",
        "[ckks]",
        "# Accept a ckks round that seals the secret key to every data owner: INSECURE against",
        "# a colluding appliance (any data owner could then read every other's update).",
        "share_secret_key = false",
        "",
    ]
    if policy is not None:  # the federation policy the client enforces on every round
        modes = ", ".join(toml_string(m) for m in sorted(policy.allowed_modes))
        lines += [
            "[policy]",
            f"colluders = {int(policy.colluders)}",
            f"minimum_sum = {int(policy.minimum_sum)}",
            f"allowed_modes = [{modes}]",
            "",
        ]
    return "\n".join(lines).encode()


def toml_string(value: str) -> str:
    """A TOML basic string for printable ASCII without quotes or backslashes; refuses the rest
    rather than escaping, since every value we write was validated to that alphabet."""
    if not value.isascii() or not value.isprintable() or '"' in value or "\\" in value:
        raise ProvisioningError(f"{value!r} cannot be written to a TOML file")
    return f'"{value}"'


def build_kit(
    *,
    name: str,
    federation: str,
    address: str,
    server_name: str,
    ca_cert_pem: bytes,
    client_cert_pem: bytes,
    client_key_pem: bytes | None,
    identity_seed: bytes | None,
    signer: Ed25519PrivateKey,
    issued_at: datetime,
    attestation_policy: bytes | None = None,
    attestation_collateral: bytes | None = None,
    authority_public_key: bytes | None = None,
    policy: FederationPolicy | None = None,
) -> dict[str, bytes]:
    """Every file of a kit, manifest and signature included, ready to write.

    With ``client_key_pem`` and ``identity_seed`` both None the kit is an *enrolled* kit: it
    carries no private key at all (the client made its own), and its manifest says so.
    """
    enrolled = client_key_pem is None and identity_seed is None
    if not enrolled and (identity_seed is None or client_key_pem is None):
        raise ProvisioningError("a kit carries both private keys or neither (enrolled)")
    if identity_seed is not None and len(identity_seed) != 32:
        raise ProvisioningError("an Ed25519 identity seed is 32 bytes")
    files = {
        CA_CERT: ca_cert_pem,
        CLIENT_CERT: client_cert_pem,
        CLIENT_CONFIG: render_client_config(
            name=name,
            federation=federation,
            address=address,
            server_name=server_name,
            policy=policy,
        ),
    }
    if client_key_pem is not None and identity_seed is not None:
        files[CLIENT_KEY] = client_key_pem
        files[IDENTITY_KEY] = identity_seed
    if attestation_policy is not None:
        files[ATTESTATION_POLICY] = attestation_policy
    if attestation_collateral is not None:
        files[ATTESTATION_COLLATERAL] = attestation_collateral
    if authority_public_key is not None:
        files[AUTHORITY_KEY] = render_authority_key(authority_public_key)
    manifest = {
        "format": ENROLLED_MANIFEST_FORMAT if enrolled else MANIFEST_FORMAT,
        "client": name,
        "federation": federation,
        "issued_at": pki.iso_time(issued_at),
        "signer": raw_public_key(signer.public_key()).hex(),
        "files": {file: hashlib.sha256(data).hexdigest() for file, data in sorted(files.items())},
    }
    manifest_bytes = (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode()
    files[MANIFEST] = manifest_bytes
    files[SIGNATURE] = (signer.sign(SIGNATURE_CONTEXT + manifest_bytes).hex() + "\n").encode()
    return files


def _file_mode(file: str) -> int:
    return pki.PRIVATE_FILE_MODE if file in PRIVATE_FILES else pki.PUBLIC_FILE_MODE


def write_kit_folder(files: Mapping[str, bytes], out: Path) -> Path:
    """Write the kit as folder ``out`` (mode 0700), which must not exist yet.

    The kit is built in a hidden sibling folder and renamed into place, so ``out`` is either
    absent or complete.
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise ProvisioningError(f"{out} already exists; remove it or choose another kit path")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp"))
    except OSError as exc:
        raise ProvisioningError(f"cannot create kit folder {out}: {exc.strerror}") from None
    try:
        os.chmod(staging, pki.PRIVATE_DIR_MODE)
        for file, data in files.items():
            pki.write_file_atomic(staging / file, data, mode=_file_mode(file))
        os.rename(staging, out)
        pki.fsync_directory(out.parent)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise ProvisioningError(f"cannot create kit folder {out}: {exc.strerror}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def write_kit_archive(files: Mapping[str, bytes], out: Path, *, mtime: datetime) -> Path:
    """Write the kit as one gzip'd tar ``out`` (mode 0600), which must not exist yet.

    Members are flat regular files with fixed owner and ``mtime``, so the same kit gives the
    same bytes. The file is linked into place, which fails rather than overwrite.
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        raise ProvisioningError(f"{out} already exists; remove it or choose another kit path")
    buffer = io.BytesIO()
    stamp = int(mtime.timestamp())
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=stamp) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for file in sorted(files):
            info = tarfile.TarInfo(file)
            info.size = len(files[file])
            info.mode = _file_mode(file)
            info.mtime = stamp
            tar.addfile(info, io.BytesIO(files[file]))
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = out.parent / f".{out.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
        pki.write_file_atomic(staging, buffer.getvalue(), mode=pki.PRIVATE_FILE_MODE)
        try:
            os.link(staging, out)
        finally:
            os.unlink(staging)
        pki.fsync_directory(out.parent)
    except FileExistsError:
        raise ProvisioningError(
            f"{out} already exists; remove it or choose another kit path"
        ) from None
    except OSError as exc:
        raise ProvisioningError(f"cannot write kit archive {out}: {exc.strerror}") from None
    return out
