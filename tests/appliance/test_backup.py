"""State backup, verify and restore on real federation folders and real SQLite files."""

from __future__ import annotations

import hashlib
import io
import json
import os
import sqlite3
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sealagg.appliance.audit import canonical_json
from sealagg.appliance.backup import (
    MANIFEST_NAME,
    BackupError,
    create_backup,
    restore_backup,
    sign_manifest,
    verify_backup,
)
from sealagg.appliance.cli import app
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment, base_model, make_deployment

runner = CliRunner()


def _fill(dep: Deployment) -> None:
    """Two finished rounds, a published model and a rejected one: a federation with history."""
    with open_store(FederationFolder.load(dep.folder)) as store:
        for i, outcome in enumerate(["accepted", "rejected"]):
            number = store.open_round("secagg+", bytes([i]) * 32)
            store.record_phase(number, "advertise_keys", 3)
            parent = store.current_model().version
            shifted = {k: v + 0.1 * (i + 1) for k, v in base_model().items()}
            model = store.add_model_version(shifted, parent=parent, round=number, status="pending")
            store.set_model_status(model.version, outcome)
            store.set_round_status(number, outcome)


@pytest.fixture
def dep(deployment) -> Deployment:
    d = deployment(clients=3)
    _fill(d)
    return d


def _events(folder: Path) -> list:
    with open_store(FederationFolder.load(folder)) as store:
        return store.audit.entries()


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _resign(root: Path, dep: Deployment, **changes) -> None:
    """What someone holding the audit key could do: rewrite the manifest and sign it again."""
    manifest = json.loads((root / MANIFEST_NAME).read_bytes())
    for name, entry in manifest["files"].items():  # hashes of the files as they are now
        data = (root / name).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), size=len(data))
    manifest.update(changes)
    (root / MANIFEST_NAME).write_bytes(sign_manifest(manifest, dep.federation.audit_signing_key))


# ------------------------------------------------------------------------------ backup


@pytest.mark.parametrize("name", ["backup", "backup.tar"])
def test_backup_verifies_and_is_audited(dep: Deployment, tmp_path: Path, name: str) -> None:
    target = tmp_path / name
    report = create_backup(dep.folder, target, by="ops@test")
    checked = verify_backup(target, audit_public_key=dep.federation.audit_signing_key.public_key())
    assert checked.manifest_sha256 == report.manifest_sha256
    assert checked.federation == "testfed" and checked.schema_version == 3
    assert checked.models == 3 and not checked.private_keys_included
    assert set(checked.private_keys) == {"ca.key", "server.key", "audit_signing_key.pem"}

    entry = _events(dep.folder)[-1]
    assert entry.event == "state_backup"
    assert entry.details["by"] == "ops@test"
    assert entry.details["manifest_sha256"] == report.manifest_sha256
    assert entry.details["audit_head"]["count"] == report.audit_head.count == entry.seq

    if target.is_dir():
        files = _files(target)
    else:
        with tarfile.open(target) as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    assert hashlib.sha256(files[MANIFEST_NAME]).hexdigest() == report.manifest_sha256
    assert {"state.sqlite3", "federation/sealagg.toml", "federation/clients/client0.json"} <= set(
        files
    )
    assert not any(n.startswith(("kits", "federation/kits", "private-keys")) for n in files)
    assert not any(b"PRIVATE KEY" in data for data in files.values()), "a secret leaked"


def test_private_keys_only_on_request(dep: Deployment, tmp_path: Path) -> None:
    create_backup(dep.folder, tmp_path / "b", include_private_keys=True)
    manifest = json.loads((tmp_path / "b" / MANIFEST_NAME).read_bytes())
    assert manifest["private_keys_included"] is True
    for name in ("ca.key", "server.key", "audit_signing_key.pem"):
        assert (tmp_path / "b" / "private-keys" / name).read_bytes() == (
            dep.folder / name
        ).read_bytes()
        assert (tmp_path / "b" / "private-keys" / name).stat().st_mode & 0o077 == 0


@pytest.mark.parametrize("existing", ["dir", "empty_dir", "file"])
def test_backup_never_overwrites(dep: Deployment, tmp_path: Path, existing: str) -> None:
    target = tmp_path / ("x.tar" if existing == "file" else "x")
    if existing == "file":
        target.write_bytes(b"keep me")
    else:
        target.mkdir()
        if existing == "dir":
            (target / "keep").write_bytes(b"keep me")
    count = len(_events(dep.folder))
    with pytest.raises(BackupError, match="already exists"):
        create_backup(dep.folder, target)
    assert len(_events(dep.folder)) == count
    if existing == "file":
        assert target.read_bytes() == b"keep me"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_backup_is_consistent_while_the_state_changes(dep: Deployment, tmp_path: Path) -> None:
    """Online: another connection keeps committing (audit entries and model versions)."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            with open_store(FederationFolder.load(dep.folder)) as store:
                i = 0
                while not stop.is_set():
                    i += 1
                    store.audit.append("busy", {"i": i})
                    if i % 5 == 0:
                        model = {"w": np.full(64, i, dtype=np.float32)}
                        store.add_model_version(model, parent=1, status="candidate")
        except BaseException as error:  # surfaced below
            errors.append(error)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        reports = [create_backup(dep.folder, tmp_path / f"b{i}") for i in range(4)]
    finally:
        stop.set()
        thread.join(30)
    assert not errors, errors
    key = dep.federation.audit_signing_key.public_key()
    heads = [verify_backup(r.path, audit_public_key=key).audit_head.count for r in reports]
    assert heads == sorted(heads) and len(set(heads)) == 4
    with open_store(FederationFolder.load(dep.folder)) as store:
        store.audit.verify(key)


# ------------------------------------------------------------------------------ tamper


@pytest.fixture
def made(dep: Deployment, tmp_path: Path) -> Path:
    target = tmp_path / "backup"
    create_backup(dep.folder, target)
    return target


def _model_file(root: Path) -> Path:
    return sorted((root / "models").iterdir())[0]


def _edit_audit_row(root: Path) -> None:
    conn = sqlite3.connect(root / "state.sqlite3")
    (raw,) = conn.execute("SELECT entry FROM audit_log WHERE seq = 1").fetchone()
    edited = raw.replace(b'"time":"2', b'"time":"1', 1)  # backdate one entry
    assert edited != raw
    conn.execute("UPDATE audit_log SET entry = ? WHERE seq = 1", (edited,))
    conn.commit()
    conn.close()


def _flip_model_byte(root: Path) -> None:
    path = _model_file(root)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))


def _replace_model(root: Path) -> None:
    import safetensors.numpy

    path = _model_file(root)
    path.write_bytes(safetensors.numpy.save({"w": np.ones(3, dtype=np.float32)}))


def _edit_manifest(root: Path) -> None:
    manifest = json.loads((root / MANIFEST_NAME).read_bytes())
    manifest["created_by"] = "someone-else"
    (root / MANIFEST_NAME).write_bytes(canonical_json(manifest) + b"\n")


def _rehash_manifest_without_key(root: Path) -> None:
    manifest = json.loads((root / MANIFEST_NAME).read_bytes())
    data = (root / "state.sqlite3").read_bytes()
    manifest["files"]["state.sqlite3"] = {
        "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }
    (root / MANIFEST_NAME).write_bytes(canonical_json(manifest) + b"\n")


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_flip_model_byte, r"models/[0-9a-f]{64}\.safetensors: its SHA-256 does not match"),
        (_edit_audit_row, r"state\.sqlite3: its SHA-256 does not match the manifest"),
        (_edit_manifest, r"signature does not verify"),
        (
            lambda r: (_edit_audit_row(r), _rehash_manifest_without_key(r)),
            r"signature does not verify",
        ),
        (lambda r: (r / "extra.txt").write_text("x"), r"files not in the manifest.*extra\.txt"),
        (lambda r: (r / "federation" / "revoked.json").unlink(), r"missing: federation/revoked"),
        (lambda r: (r / MANIFEST_NAME).write_text("{"), r"not valid JSON"),
        (lambda r: (r / MANIFEST_NAME).unlink(), r"no readable MANIFEST\.json"),
    ],
)
def test_tampering_is_detected(made: Path, dep: Deployment, tamper, message: str) -> None:
    tamper(made)
    with pytest.raises(BackupError, match=message):
        verify_backup(made, audit_public_key=dep.federation.audit_signing_key.public_key())
    with pytest.raises(BackupError, match=message):
        verify_backup(made)  # the backup's own key copy: the same answer


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (_edit_audit_row, r"audit chain in the backup is broken: audit entry seq 1"),
        (_replace_model, r"does not match the SHA-256 recorded in model_versions"),
        (lambda r: None, r"audit head .* does not match the manifest"),
    ],
)
def test_resigned_manifest_is_still_checked_inside(
    made: Path, dep: Deployment, tamper, message: str
) -> None:
    """Even a manifest signed again with the audit key: the database checks catch the rest."""
    tamper(made)
    changes = {}
    if "audit head" in message:
        changes["audit_head"] = {"count": 1, "hash": "0" * 64, "signature": None}
    _resign(made, dep, **changes)
    with pytest.raises(BackupError, match=message):
        verify_backup(made, audit_public_key=dep.federation.audit_signing_key.public_key())


def test_backup_of_another_federation_is_refused(made: Path, deployment, tmp_path) -> None:
    other = make_deployment(tmp_path / "other", clients=1)
    with pytest.raises(BackupError, match="names another audit key"):
        verify_backup(made, audit_public_key=other.federation.audit_signing_key.public_key())


def test_rolled_back_backup_fails_the_expected_head(made: Path, dep: Deployment) -> None:
    with open_store(FederationFolder.load(dep.folder)) as store:
        later = store.audit.head()  # the live chain is longer (state_backup was appended)
    with pytest.raises(BackupError, match="externally recorded head"):
        verify_backup(made, expected_head=(later.count, later.hash))


@pytest.mark.parametrize("evil", ["../escape", "/abs/path", "link"])
def test_hostile_tar_is_refused(tmp_path: Path, evil: str) -> None:
    target = tmp_path / "evil.tar"
    with tarfile.open(target, "w") as tar:
        info = tarfile.TarInfo(evil)
        if evil == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
            tar.addfile(info)
        else:
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BackupError, match=r"unsafe path|not a regular file"):
        verify_backup(target)
    assert not (tmp_path.parent / "escape").exists()


# ------------------------------------------------------------------------------ restore


def _key_store(dep: Deployment, root: Path) -> Path:
    keys = root / "keystore"
    keys.mkdir()
    for name in ("ca.key", "server.key", "audit_signing_key.pem"):
        (keys / name).write_bytes((dep.folder / name).read_bytes())
    return keys


@pytest.mark.parametrize("with_keys", [True, False])
def test_restore_continues_the_federation(dep: Deployment, tmp_path: Path, with_keys) -> None:
    target = tmp_path / "b.tar"
    report = create_backup(dep.folder, target, include_private_keys=with_keys)
    new = tmp_path / "new-machine" / "federation"
    key = dep.federation.audit_signing_key.public_key()
    restored = restore_backup(
        target,
        new,
        keys_from=None if with_keys else _key_store(dep, tmp_path),
        audit_public_key=key,
        by="ops@new",
    )
    assert restored.audit_count == report.audit_head.count + 1
    federation = FederationFolder.load(new)  # certificates and keys fit together
    with open_store(federation) as store:
        store.audit.verify(key, expected_head=(report.audit_head.count, report.audit_head.hash))
        last = store.audit.entries()[-1]
        assert last.event == "state_restored" and last.details["by"] == "ops@new"
        assert last.details["manifest_sha256"] == report.manifest_sha256
        with open_store(FederationFolder.load(dep.folder)) as old:
            assert store.current_model() == old.current_model()
            rounds = old.rounds()
        assert store.load_model(store.current_model().version).keys() == base_model().keys()
        assert store.open_round("secagg+", b"\x07" * 32) == len(rounds) + 1
    assert sorted(p.name for p in (new / "clients").iterdir()) == [
        "client0.json",
        "client1.json",
        "client2.json",
    ]
    assert (new / "audit_signing_key.pem").stat().st_mode & 0o077 == 0


def test_restore_without_keys_is_refused_and_leaves_nothing(made: Path, tmp_path: Path) -> None:
    new = tmp_path / "new"
    with pytest.raises(BackupError, match=r"holds no private keys.*--keys-from"):
        restore_backup(made, new)
    assert not new.exists()
    new.mkdir()
    with pytest.raises(BackupError, match="holds no private keys"):
        restore_backup(made, new)
    assert list(new.iterdir()) == []


def test_restore_refuses_another_audit_key(made: Path, dep: Deployment, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from sealagg.appliance import pki

    keys = _key_store(dep, tmp_path)
    (keys / "audit_signing_key.pem").write_bytes(
        pki.private_key_pem(Ed25519PrivateKey.generate(), None)
    )
    with pytest.raises(BackupError, match="not this federation's audit signing key"):
        restore_backup(made, tmp_path / "new", keys_from=keys)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("occupant", ["state", "federation", "other"])
def test_restore_refuses_an_occupied_folder(
    made: Path, dep: Deployment, tmp_path: Path, occupant: str
) -> None:
    from sealagg.appliance.federation import init_federation

    new = tmp_path / "new"
    if occupant == "federation":
        init_federation(new, name="testfed", hosts=["localhost"])
    else:
        new.mkdir()
        name = "state.sqlite3" if occupant == "state" else "notes.txt"
        (new / name).write_bytes(b"keep")
    before = _files(new)
    with pytest.raises(BackupError, match=r"state database|holds a federation|not empty"):
        restore_backup(made, new, keys_from=_key_store(dep, tmp_path))
    assert _files(new) == before


def test_restore_of_a_tampered_backup_writes_nothing(made: Path, dep, tmp_path: Path) -> None:
    _flip_model_byte(made)
    with pytest.raises(BackupError, match="SHA-256 does not match"):
        restore_backup(made, tmp_path / "new", keys_from=_key_store(dep, tmp_path))
    assert not (tmp_path / "new").exists()


# ------------------------------------------------------------------------------ CLI


def _cli(*args) -> object:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def test_cli_backup_verify_restore(dep: Deployment, tmp_path: Path) -> None:
    target = tmp_path / "b"
    result = _cli("state", "backup", target, "-f", dep.folder)
    assert result.exit_code == 0, result.output
    assert "private keys NOT included" in result.output
    again = _cli("state", "backup", target, "-f", dep.folder)
    assert again.exit_code == 1 and "already exists" in again.output

    pem = dep.folder / "audit_public_key.pem"
    result = _cli("state", "verify", target, "--audit-key", pem)
    assert result.exit_code == 0 and "state verify: OK" in result.output, result.output
    unpinned = _cli("state", "verify", target)
    assert "checked against the audit key inside the backup" in unpinned.output

    keys = _key_store(dep, tmp_path)
    new = tmp_path / "new"
    result = _cli("state", "restore", target, "-f", new, "--keys-from", keys, "--audit-key", pem)
    assert result.exit_code == 0, result.output
    assert "restored" in result.output and "revoked again" in result.output
    FederationFolder.load(new)

    _flip_model_byte(target)
    result = _cli("state", "verify", target, "--audit-key", pem)
    assert result.exit_code == 1
    assert "error:" in result.output and "SHA-256 does not match" in result.output


def test_kits_and_raw_keys_stay_out(dep: Deployment, tmp_path: Path) -> None:
    from sealagg.appliance.federation import add_client

    kit = add_client(dep.federation, "opsdesk", out=dep.folder / "admin-kit")
    secrets = {p.read_bytes() for p in kit.iterdir() if p.suffix == ".key"}
    (dep.folder / "collector-identity.key").write_bytes(os.urandom(32))
    secrets.add((dep.folder / "collector-identity.key").read_bytes())
    create_backup(dep.folder, tmp_path / "b")
    manifest = json.loads((tmp_path / "b" / MANIFEST_NAME).read_bytes())
    assert manifest["kits_left_out"] == ["admin-kit/"]
    assert "collector-identity.key" in manifest["private_keys"]
    assert "federation/clients/opsdesk.json" in manifest["files"]  # the public record stays
    everything = b"".join(_files(tmp_path / "b").values())
    assert not any(secret in everything for secret in secrets)


def test_backup_of_an_old_schema_folder_migrates_it_first(tmp_path: Path) -> None:
    from sealagg_testkit.old_state import fixture_audit_key, old_deployment

    old = old_deployment(tmp_path, "schema1_64a0780", clients=1)
    report = create_backup(old.folder, tmp_path / "b")
    checked = verify_backup(tmp_path / "b", audit_public_key=fixture_audit_key().public_key())
    assert checked.schema_version == 3 and checked.models == 3
    events = [e.event for e in _events(old.folder)]
    assert events[-3:] == ["schema_migrated", "schema_migrated", "state_backup"]
    assert report.audit_head.count == len(events) - 1


def test_backup_of_an_earlier_schema_restores_and_migrates(tmp_path: Path) -> None:
    """A backup whose database an earlier release wrote (schema 1) verifies as it is, and the
    restore migrates it, audited, before recording itself."""
    from sealagg_testkit.old_state import FIXTURES, fixture_audit_key, old_deployment

    old = old_deployment(tmp_path, "schema1_a7dfff5", clients=1)
    create_backup(old.folder, tmp_path / "b", include_private_keys=True)
    database = tmp_path / "b" / "state.sqlite3"
    database.unlink()
    source = sqlite3.connect(FIXTURES / "schema1_a7dfff5" / "state.sqlite3")
    target = sqlite3.connect(database)
    source.backup(target)
    target.execute("PRAGMA journal_mode = DELETE")
    seq, head_hash, signature = target.execute(
        "SELECT seq, hash, signature FROM audit_head"
    ).fetchone()
    source.close()
    target.close()
    head = {"count": seq + 1, "hash": head_hash, "signature": signature}
    _resign(tmp_path / "b", old, schema_version=1, audit_head=head)
    key = fixture_audit_key().public_key()
    assert verify_backup(tmp_path / "b", audit_public_key=key).schema_version == 1

    restored = restore_backup(tmp_path / "b", tmp_path / "new", audit_public_key=key)
    assert restored.audit_count == head["count"] + 3
    events = [e.event for e in _events(tmp_path / "new")]
    assert events[head["count"] :] == ["schema_migrated", "schema_migrated", "state_restored"]


@pytest.mark.parametrize(
    "edit",
    [
        "UPDATE audit_head SET seq = 'x'",
        "UPDATE model_versions SET sha256 = 'zz' || substr(sha256, 3) WHERE version = 1",
        "DELETE FROM schema_version",
        "UPDATE schema_version SET version = 99",
        "DELETE FROM federation",
        "UPDATE audit_log SET entry = x'00ff' WHERE seq = 0",
    ],
)
def test_hostile_database_is_refused_as_such(
    made: Path, dep: Deployment, tmp_path: Path, edit: str
) -> None:
    """Someone holding the audit key re-signs a hand-edited database: still only BackupError."""
    conn = sqlite3.connect(made / "state.sqlite3")
    conn.execute("PRAGMA foreign_keys = OFF")
    conn.execute(edit)
    conn.commit()
    conn.close()
    _resign(made, dep)
    with pytest.raises(BackupError):
        verify_backup(made)
    with pytest.raises(BackupError):
        restore_backup(made, tmp_path / "new", keys_from=_key_store(dep, tmp_path))
    assert not (tmp_path / "new").exists()


def test_any_flipped_manifest_byte_is_refused(made: Path) -> None:
    data = (made / MANIFEST_NAME).read_bytes()
    for position in range(len(data)):  # hex case included: one encoding, one manifest
        mutated = bytearray(data)
        mutated[position] ^= 0x20
        (made / MANIFEST_NAME).write_bytes(bytes(mutated))
        with pytest.raises(BackupError):
            verify_backup(made)


def test_backup_across_an_audit_key_rotation(dep: Deployment, tmp_path: Path) -> None:
    """After a rotation the chain starts under the first key and the manifest is signed by
    the current one: either key, pinned by the verifier, checks the whole backup."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from sealagg.appliance.audit_rotation import audit_key_history, rotate_audit_key

    first = dep.federation.audit_signing_key.public_key()
    current = Ed25519PublicKey.from_public_bytes(rotate_audit_key(dep.folder))
    report = create_backup(dep.folder, tmp_path / "b.tar")
    for pinned in (first, current):
        assert verify_backup(tmp_path / "b.tar", audit_public_key=pinned).audit_head.count == (
            report.audit_head.count
        )
    stranger = make_deployment(tmp_path / "other", clients=1).federation.audit_signing_key
    with pytest.raises(BackupError, match="names another audit key"):
        verify_backup(tmp_path / "b.tar", audit_public_key=stranger.public_key())

    restored = restore_backup(
        tmp_path / "b.tar", tmp_path / "new", keys_from=_key_store(dep, tmp_path)
    )
    assert restored.audit_count == report.audit_head.count + 1
    history = audit_key_history(tmp_path / "new")
    assert history[0] == first.public_bytes_raw() and history[-1] == current.public_bytes_raw()
    with open_store(FederationFolder.load(tmp_path / "new")) as store:
        assert store.audit.verify(history).count == restored.audit_count
