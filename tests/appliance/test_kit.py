"""Client kits: signed contents, tamper detection, and refusal of malicious archives."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import pickle
import stat
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealagg.appliance import kit, kit_issue
from sealagg.appliance.errors import KitTamperedError, ProvisioningError
from sealagg.appliance.federation import add_client, init_federation

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def federation(tmp_path):
    return init_federation(tmp_path / "fed", name="demo", hosts=["localhost", "::1"], now=T0)


@pytest.fixture
def kit_dir(federation, tmp_path) -> Path:
    return add_client(federation, "alice", out=tmp_path / "alice-kit", now=T0)


def _archive(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, None if data is None else io.BytesIO(data))
    return buffer.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _kit_members(kit_dir: Path) -> list[tuple[tarfile.TarInfo, bytes]]:
    return [_file(p.name, p.read_bytes()) for p in sorted(kit_dir.iterdir())]


# ---- a good kit ---------------------------------------------------------------------------


def test_kit_loads_verifies_and_holds_what_the_client_needs(federation, kit_dir):
    assert sorted(p.name for p in kit_dir.iterdir()) == sorted(
        [*kit.KIT_FILES, kit.MANIFEST, kit.SIGNATURE]
    )
    assert stat.S_IMODE(kit_dir.stat().st_mode) == 0o700
    for private in ("client.key", "identity.key"):
        assert stat.S_IMODE((kit_dir / private).stat().st_mode) == 0o600
    loaded = kit.load_kit(kit_dir, trusted_signer=federation.signer_public_key)
    assert loaded.name == "alice" and loaded.federation == "demo"
    assert loaded.address == "localhost:50051" and loaded.server_name == "localhost"
    assert loaded.ca_cert_pem == federation.ca_pem()
    assert len(loaded.identity_seed) == 32
    assert loaded.client_key_path == kit_dir / "client.key"
    assert loaded.config["files"]["certificate"] == "client.pem"
    assert loaded.channel_credentials_material() == (
        (kit_dir / "ca.pem").read_bytes(),
        (kit_dir / "client.key").read_bytes(),
        (kit_dir / "client.pem").read_bytes(),
    )
    # The federation recorded the identity key the protocol will verify this client against.
    record = federation.client_record("alice")
    assert record.identity_public_key == loaded.identity_public_key
    assert record.serial == loaded.certificate.serial_number


def test_kit_secrets_stay_out_of_repr_and_pickle(kit_dir):
    loaded = kit.load_kit(kit_dir)
    text = repr(loaded)
    assert "alice" in text
    assert loaded.identity_seed.hex() not in text and "PRIVATE KEY" not in text
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(loaded)


def test_kit_path_is_never_overwritten(federation, kit_dir):
    with pytest.raises(ProvisioningError, match="already exists"):
        kit_issue.write_kit_folder({"x": b""}, kit_dir)


# ---- tampering ----------------------------------------------------------------------------


@pytest.mark.parametrize("victim", [*kit.KIT_FILES, kit.MANIFEST, kit.SIGNATURE])
def test_editing_any_file_is_detected(kit_dir, victim):
    path = kit_dir / victim
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(KitTamperedError, match="MANIFEST" if "MANIFEST" in victim else victim):
        kit.load_kit(kit_dir)


def test_adding_a_file_is_detected(kit_dir):
    (kit_dir / "extra.txt").write_text("hello")
    with pytest.raises(KitTamperedError, match=r"extra\.txt added"):
        kit.load_kit(kit_dir)


def test_adding_a_folder_is_detected(kit_dir):
    (kit_dir / "sub").mkdir()
    with pytest.raises(KitTamperedError, match="sub was added"):
        kit.load_kit(kit_dir)


@pytest.mark.parametrize("victim", [*kit.KIT_FILES, kit.MANIFEST, kit.SIGNATURE])
def test_deleting_any_file_is_detected(kit_dir, victim):
    (kit_dir / victim).unlink()
    with pytest.raises(KitTamperedError, match=f"{victim}.* missing"):
        kit.load_kit(kit_dir)


def _resign(kit_dir: Path, signer: Ed25519PrivateKey, *, address: str) -> None:
    """What an attacker with their own key can do: edit a file, fix the manifest, sign it."""
    config = (kit_dir / "client.toml").read_text().replace("localhost:50051", address)
    (kit_dir / "client.toml").write_text(config)
    manifest = json.loads((kit_dir / kit.MANIFEST).read_bytes())
    manifest["files"]["client.toml"] = hashlib.sha256(config.encode()).hexdigest()
    manifest["signer"] = kit.raw_public_key(signer.public_key()).hex()
    body = json.dumps(manifest).encode()
    (kit_dir / kit.MANIFEST).write_bytes(body)
    (kit_dir / kit.SIGNATURE).write_text(signer.sign(kit.SIGNATURE_CONTEXT + body).hex())


def test_a_kit_resigned_with_another_key_is_refused_by_the_trusted_signer(federation, kit_dir):
    _resign(kit_dir, Ed25519PrivateKey.generate(), address="evil.example:443")
    # Self-consistent, so without the federation's key only the signer differs...
    assert kit.load_kit(kit_dir).address == "evil.example:443"
    # ...which the trusted key catches.
    with pytest.raises(KitTamperedError, match="not by the trusted federation key"):
        kit.load_kit(kit_dir, trusted_signer=federation.signer_public_key)


def test_a_manifest_signature_without_the_kit_context_is_refused(federation, kit_dir):
    body = (kit_dir / kit.MANIFEST).read_bytes()
    bare = federation.audit_signing_key.sign(body)  # e.g. lifted from another signed object
    (kit_dir / kit.SIGNATURE).write_text(bare.hex())
    with pytest.raises(KitTamperedError, match="does not verify"):
        kit.load_kit(kit_dir, trusted_signer=federation.signer_public_key)


def test_trusted_signer_must_be_a_raw_key(kit_dir):
    with pytest.raises(ProvisioningError, match="32-byte"):
        kit.load_kit(kit_dir, trusted_signer=b"short")


def test_a_symlink_in_a_kit_folder_is_refused(kit_dir, tmp_path):
    outside = tmp_path / "outside.pem"
    outside.write_bytes((kit_dir / "ca.pem").read_bytes())
    (kit_dir / "ca.pem").unlink()
    (kit_dir / "ca.pem").symlink_to(outside)
    with pytest.raises(ProvisioningError, match="symbolic link"):
        kit.load_kit(kit_dir)


def test_missing_kit_is_a_clear_error(tmp_path):
    with pytest.raises(ProvisioningError, match="no client kit"):
        kit.load_kit(tmp_path / "nowhere")


# ---- archives -----------------------------------------------------------------------------


def test_archive_kit_loads_and_verifies(federation, tmp_path):
    path = add_client(federation, "bob", archive=True, now=T0)
    assert path == federation.paths.kits / "bob.tar.gz"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = kit.load_kit(path, trusted_signer=federation.signer_public_key)
    assert loaded.name == "bob" and loaded.folder is None and loaded.client_key_path is None
    assert loaded.ca_cert_pem == federation.ca_pem()
    with tarfile.open(path) as tar:
        assert all(m.isreg() and "/" not in m.name for m in tar.getmembers())


def test_tampered_archive_is_detected(kit_dir, tmp_path):
    members = _kit_members(kit_dir)
    members = [_file(info.name, data.replace(b"localhost", b"evilhost")) for info, data in members]
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(_archive(members))
    with pytest.raises(KitTamperedError, match=r"client\.toml was modified"):
        kit.load_kit(bad)


def _dir(name: str) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info, None


def _link(name: str, target: str, kind: bytes) -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info, None


@pytest.mark.parametrize(
    ("evil", "reason"),
    [
        (_file("../escape.pem", b"x"), r"'\.\.'"),
        (_file("sub/../../escape.pem", b"x"), r"'\.\.'"),
        (_file("/etc/cron.d/evil", b"x"), "absolute path"),
        (_link("ca.pem", "/etc/passwd", tarfile.SYMTYPE), "link"),
        (_link("client.pem", "ca.pem", tarfile.LNKTYPE), "link"),
        (_file("sub/ca.pem", b"x"), "subfolder"),
        (_dir("dir"), "not a regular file"),
        (_file("huge.bin", b"\0" * (kit.MAX_FILE_BYTES + 1)), "larger than"),
    ],
)
def test_malicious_archives_are_refused(kit_dir, tmp_path, evil, reason):
    bad = tmp_path / "evil.tar.gz"
    bad.write_bytes(_archive([evil, *_kit_members(kit_dir)]))
    with pytest.raises(ProvisioningError, match=reason):
        kit.load_kit(bad)
    assert not (tmp_path.parent / "escape.pem").exists()


def test_archive_with_too_many_members_is_refused(kit_dir, tmp_path):
    bad = tmp_path / "many.tar.gz"
    bad.write_bytes(_archive([_file(f"f{i}", b"") for i in range(kit.MAX_FILES + 1)]))
    with pytest.raises(ProvisioningError, match="more than"):
        kit.load_kit(bad)


def test_archive_decompression_is_bounded(kit_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(kit, "MAX_ARCHIVE_STREAM_BYTES", 4096)
    bad = tmp_path / "bomb.tar.gz"
    bad.write_bytes(_archive([_file("a.bin", b"\0" * 200_000)]))
    with pytest.raises(ProvisioningError, match="archive bomb"):
        kit.load_kit(bad)


def test_duplicate_archive_members_are_refused(kit_dir, tmp_path):
    members = _kit_members(kit_dir)
    bad = tmp_path / "dup.tar.gz"
    bad.write_bytes(_archive([*members, members[0]]))
    with pytest.raises(ProvisioningError, match="appears twice"):
        kit.load_kit(bad)


def test_a_file_that_is_not_an_archive_is_refused(tmp_path):
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not gzip at all")
    with pytest.raises(ProvisioningError, match="not a readable kit archive"):
        kit.load_kit(junk)


def _enrolled_files(federation, kit_dir: Path, **private: bytes) -> dict[str, bytes]:
    """An enrolled kit's files (no private key from the appliance), reusing kit_dir's cert."""
    files = kit_issue.build_kit(
        name="alice",
        federation=federation.name,
        address=federation.public_address,
        server_name=federation.tls_server_name,
        ca_cert_pem=(kit_dir / kit.CA_CERT).read_bytes(),
        client_cert_pem=(kit_dir / kit.CLIENT_CERT).read_bytes(),
        client_key_pem=None,
        identity_seed=None,
        signer=federation.audit_signing_key,
        issued_at=datetime.now(UTC),
        authority_public_key=b"\x07" * 32,
    )
    return {**files, **private}


def test_an_enrolled_kit_holds_no_appliance_key_and_needs_the_clients_own(federation, kit_dir):
    """An enrolled kit's manifest lists no private file; the client's own keys sit beside it
    unlisted. A manifest that lists one (keys made by the appliance) is refused, and so is an
    enrolled kit without the client's keys."""
    own = {f: (kit_dir / f).read_bytes() for f in (kit.CLIENT_KEY, kit.IDENTITY_KEY)}
    files = _enrolled_files(federation, kit_dir)
    manifest = json.loads(files[kit.MANIFEST])
    assert manifest["format"] == "sealagg-kit/2"
    assert not set(manifest["files"]) & {kit.CLIENT_KEY, kit.IDENTITY_KEY}
    kit.verify_kit_files({**files, **own}, trusted_signer=federation.signer_public_key)
    with pytest.raises(ProvisioningError, match=r"no client\.key"):
        kit.verify_kit_files(files, trusted_signer=federation.signer_public_key)
    manifest["files"][kit.IDENTITY_KEY] = hashlib.sha256(own[kit.IDENTITY_KEY]).hexdigest()
    body = (json.dumps(manifest) + "\n").encode()
    signature = federation.audit_signing_key.sign(kit.SIGNATURE_CONTEXT + body).hex().encode()
    forged = {**files, **own, kit.MANIFEST: body, kit.SIGNATURE: signature}
    with pytest.raises(KitTamperedError, match="not accepted in an enrolled kit"):
        kit.verify_kit_files(forged, trusted_signer=federation.signer_public_key)
