"""``sealagg-enrol``: a data owner makes its own keys and asks to join a federation.

Two steps, both on the client's machine:

1. ``sealagg-enrol request --name NAME --federation FED --authority-key HEX --dir DIR``
   generates the protocol identity key (Ed25519) and the TLS key (P-256) *here*, writes them
   into ``DIR`` (0600, never sent anywhere), pins the authority's public key (which the
   security team gives the client out of band), and writes the request (name, identity public
   key, CSR; signed by the identity key) to ``--request-out``. Hand the request to the
   federation authority (it signs a new roster) and to the appliance's operator (the CA
   certifies the CSR: ``sealagg add-client --request FILE``).
2. ``sealagg-enrol install ISSUED --dir DIR`` checks the kit the appliance issued (signed
   manifest, certificate for our TLS key, no private key of the appliance's making, the
   same authority key we pinned, and the authority's countersignature over the manifest:
   ``sealagg authority sign-kit``, so the CA, server name and policies in it are the
   authority's word, not the appliance's) and copies its public files into ``DIR``, which is
   then a complete kit for :func:`sealagg.appliance.kit.load_kit` (which checks the
   countersignature against our pinned key every time it opens the kit).

Why: an appliance that generated a client's keys could impersonate it, and list it as a
ghost in a round; here it never holds a client's private key.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from sealagg.appliance.kit import (
    AUTHORITY_KEY,
    CLIENT_CERT,
    CLIENT_KEY,
    IDENTITY_KEY,
    MANIFEST,
    ProvisioningError,
    load_kit,
    parse_authority_key,
)
from sealagg.crypto import IdentityKey
from sealagg.crypto.roster import make_enrolment_request

PRIVATE_MODE = 0o600


def request(
    *, name: str, federation: str, authority_key: bytes, folder: Path, request_out: Path
) -> Path:
    """Generate this client's keys in ``folder`` and write its enrolment request."""
    folder = Path(folder)
    if len(authority_key) != 32:
        raise ProvisioningError("the authority key is 32 bytes (64 hex digits)")
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for file in (IDENTITY_KEY, CLIENT_KEY, AUTHORITY_KEY):
        if (folder / file).exists():
            raise ProvisioningError(f"{folder / file} exists: enrol into a new folder")
    seed = os.urandom(32)
    identity = IdentityKey.from_seed(seed)
    tls_key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(tls_key, hashes.SHA256())
    )
    tls_pem = tls_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(folder / IDENTITY_KEY, seed, PRIVATE_MODE)
    _write(folder / CLIENT_KEY, tls_pem, PRIVATE_MODE)
    _write(folder / AUTHORITY_KEY, authority_key.hex().encode() + b"\n", 0o644)
    data = make_enrolment_request(
        name=name,
        federation=federation,
        identity=identity,
        tls_csr_pem=csr.public_bytes(serialization.Encoding.PEM).decode("ascii"),
    )
    _write(Path(request_out), data, 0o644)
    return Path(request_out)


def install(issued: Path, folder: Path) -> Path:
    """Check the appliance's issued kit against this client's own keys and pinned authority,
    then copy its public files into ``folder``; returns ``folder``."""
    folder = Path(folder)
    pinned = parse_authority_key((folder / AUTHORITY_KEY).read_bytes())
    files = _issued_files(Path(issued))
    for private in (CLIENT_KEY, IDENTITY_KEY):
        if private in files:
            raise ProvisioningError(
                f"the issued kit contains {private}: a key the appliance made is refused"
            )
    if AUTHORITY_KEY in files and parse_authority_key(files[AUTHORITY_KEY]) != pinned:
        raise ProvisioningError(
            "the issued kit pins another authority key than the one given to this client "
            "out of band: refusing it"
        )
    with tempfile.TemporaryDirectory(dir=folder.parent) as staging:
        stage = Path(staging)  # verify the combination before touching the client's folder
        for file, data in files.items():
            (stage / file).write_bytes(data)
        for file in (CLIENT_KEY, IDENTITY_KEY):
            (stage / file).write_bytes((folder / file).read_bytes())
        (stage / AUTHORITY_KEY).write_bytes((folder / AUTHORITY_KEY).read_bytes())
        # Manifest signature, certificate for our TLS key, the authority's countersignature
        # under the key we pinned (KitTamperedError if the appliance re-signed the kit).
        kit = load_kit(stage, trusted_authority=pinned)
        if not kit.enrolled or kit.authority_public_key != pinned:
            raise ProvisioningError("the issued kit is not an enrolled kit for this client")
    for file, data in files.items():
        if file != AUTHORITY_KEY:
            _write(folder / file, data, 0o644)
    load_kit(folder, trusted_authority=pinned)
    return folder


def _issued_files(path: Path) -> dict[str, bytes]:
    if path.is_dir():
        return {p.name: p.read_bytes() for p in path.iterdir() if p.is_file()}
    import tarfile

    with tarfile.open(path, "r:gz") as tar:
        files = {}
        for member in tar.getmembers():
            if not member.isreg() or "/" in member.name or member.name.startswith("."):
                raise ProvisioningError(f"{path}: unexpected member {member.name!r}")
            handle = tar.extractfile(member)
            if handle is not None:
                files[member.name] = handle.read()
    if MANIFEST not in files or CLIENT_CERT not in files:
        raise ProvisioningError(f"{path} is not an issued kit")
    return files


def _write(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sealagg-enrol", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    req = sub.add_parser("request", help="generate this client's keys and an enrolment request")
    req.add_argument("--name", required=True)
    req.add_argument("--federation", required=True)
    req.add_argument("--authority-key", required=True, help="hex, from the security team")
    req.add_argument("--dir", required=True, type=Path, help="the client's kit folder")
    req.add_argument("--request-out", type=Path, help="default: NAME.request.json")
    ins = sub.add_parser("install", help="install the kit the appliance issued")
    ins.add_argument("issued", type=Path)
    ins.add_argument("--dir", required=True, type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "request":
            out = args.request_out or Path(f"{args.name}.request.json")
            key = parse_authority_key(args.authority_key.encode())
            request(
                name=args.name,
                federation=args.federation,
                authority_key=key,
                folder=args.dir,
                request_out=out,
            )
            print(f"keys written to {args.dir} (keep them there); request: {out}")
        else:
            install(args.issued, args.dir)
            print(f"kit installed in {args.dir}")
    except (ProvisioningError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
