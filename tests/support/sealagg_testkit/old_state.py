"""Federation states written by earlier sealagg releases, for migration tests.

The databases under ``tests/appliance/fixtures/old_state/<release>/`` were written by those
releases' own ``Store`` (``make_old_state.py`` beside them regenerates them from git history).
Their audit chains are signed by :func:`fixture_audit_key`, a public test key.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealagg.appliance import pki
from sealagg.appliance.federation import (
    FederationFolder,
    add_client,
    init_federation,
    pin_authority,
)
from sealagg.appliance.kit import load_kit
from sealagg.appliance.testing import Deployment, free_port
from sealagg.crypto import IdentityKey
from sealagg.crypto.roster import IdentityKeySigner

FIXTURES = Path(__file__).resolve().parents[2] / "appliance" / "fixtures" / "old_state"
#: release directory -> the commit whose store wrote it
RELEASES = {"schema1_64a0780": "64a0780", "schema1_a7dfff5": "a7dfff5"}
#: The same label as make_old_state.py: the key is public and only ever signs fixtures.
_AUDIT_SEED_LABEL = b"sealagg test fixture: old-schema audit key (public, never use)"
#: What every fixture holds (make_old_state.py's script).
PARTICIPANTS = {"alice": "active", "bob": "active", "carol": "active", "dave": "revoked"}
ROUND_STATUSES = ["accepted", "aborted", "rejected", "open"]
MODEL_STATUSES = ["accepted", "accepted", "rejected"]


def fixture_audit_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(hashlib.sha256(_AUDIT_SEED_LABEL).digest())


def has_exclusions_table(release: str) -> bool:
    return release != "schema1_64a0780"


def install_state(release: str, folder: Path) -> Path:
    """Copy ``release``'s state database and model files into ``folder``; the database path."""
    source = FIXTURES / release
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / "state.sqlite3"
    shutil.copyfile(source / "state.sqlite3", database)
    models = folder / "models"
    models.mkdir(exist_ok=True)
    for path in (source / "models").iterdir():
        shutil.copyfile(path, models / path.name)
    return database


def old_deployment(root: Path, release: str, *, clients: int = 3) -> Deployment:
    """A federation in ``root/federation`` whose state is ``release``'s old database.

    The folder is made as ``make_deployment`` makes it, except that its audit key is the
    fixtures' one (the key the old release signed the chain with) and no store is created:
    the state is the old database, untouched until the appliance opens it.
    """
    port = free_port()
    folder = root / "federation"
    init_federation(folder, name="testfed", hosts=["localhost", "127.0.0.1"], port=port)
    key = fixture_audit_key()
    pki.write_file_atomic(
        folder / "audit_signing_key.pem", pki.private_key_pem(key, None), mode=0o600
    )
    pki.write_file_atomic(
        folder / "audit_public_key.pem",
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        mode=0o644,
    )
    fed = FederationFolder.load(folder)
    signer = IdentityKeySigner(IdentityKey.generate())
    pin_authority(fed, signer.public_key())
    kits = {f"client{i}": load_kit(add_client(fed, f"client{i}")) for i in range(clients)}
    install_state(release, folder)
    deployment = Deployment(folder, port, fed, kits, authority=signer)
    deployment.sign_roster()
    return deployment
