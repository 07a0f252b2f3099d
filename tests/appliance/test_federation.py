"""Federation folders: init, load, issuing and revoking clients, peer checks, real mTLS."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from sealagg.appliance import kit as kits
from sealagg.appliance.errors import CertificateError, ProvisioningError
from sealagg.appliance.federation import (
    FederationFolder,
    add_client,
    init_federation,
    revoke_client,
)

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
HOSTS = ["localhost", "127.0.0.1", "::1"]


def _init(folder: Path, **kwargs) -> FederationFolder:
    kwargs.setdefault("name", "demo")
    kwargs.setdefault("hosts", HOSTS)
    kwargs.setdefault("now", T0)
    return init_federation(folder, **kwargs)


@pytest.fixture
def federation(tmp_path) -> FederationFolder:
    return _init(tmp_path / "fed")


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _issue(
    federation: FederationFolder, name: str, tmp_path: Path, now: datetime = T0
) -> kits.ClientKit:
    path = add_client(federation, name, out=tmp_path / f"kit-{name}-{now:%Y%m%d}", now=now)
    return kits.load_kit(path, trusted_signer=federation.signer_public_key)


# ---- init and load ------------------------------------------------------------------------


def test_init_creates_every_file_with_safe_permissions(federation):
    folder = federation.folder
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    private = ["ca.key", "server.key", "audit_signing_key.pem"]
    public = [
        "ca.pem",
        "server.pem",
        "audit_public_key.pem",
        "revoked.json",
        "sealagg.toml",
    ]
    for name in private:
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o600, name
    for name in public:
        assert (folder / name).is_file(), name
        assert not (folder / name).stat().st_mode & 0o022, name
    assert (folder / "clients").is_dir() and not list((folder / "clients").iterdir())
    assert stat.S_IMODE((folder / "kits").stat().st_mode) == 0o700
    audit = serialization.load_pem_private_key(
        (folder / "audit_signing_key.pem").read_bytes(), None
    )
    assert isinstance(audit, Ed25519PrivateKey)
    assert federation.signer_public_key == kits.raw_public_key(audit.public_key())
    assert len(federation.revocations()) == 0


def test_config_has_safe_defaults(federation):
    config = tomllib.loads((federation.folder / "sealagg.toml").read_text())
    assert config["federation"]["name"] == "demo"
    assert config["server"]["listen"] == "127.0.0.1:50051"
    assert config["server"]["public_address"] == "localhost:50051"
    assert config["aggregation"]["mode"] == "secagg+"
    assert config["aggregation"]["min_clients"] >= 3
    assert config["aggregation"]["max_upload_bytes"] > 0
    assert all(v > 0 for v in config["deadlines"].values())
    assert {"advertise_keys", "share_keys", "masked_input", "unmasking"} <= set(config["deadlines"])


def test_ipv6_first_host_gets_a_bracketed_address(tmp_path):
    federation = _init(tmp_path / "fed", hosts=["::1", "localhost"], port=7000)
    assert federation.public_address == "[::1]:7000"
    assert federation.tls_server_name == "::1"


def test_init_refuses_an_existing_federation_or_a_non_empty_folder(federation, tmp_path):
    before = (federation.folder / "ca.pem").read_bytes()
    with pytest.raises(ProvisioningError, match="already holds a federation"):
        _init(federation.folder)
    assert (federation.folder / "ca.pem").read_bytes() == before
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ProvisioningError, match="not empty"):
        _init(busy)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _init(empty).name == "demo"


@pytest.mark.parametrize("hosts", [["localhost", "bad_host"], ["*.com"], [""], "localhost", []])
def test_bad_hosts_are_refused_before_anything_is_written(tmp_path, hosts):
    with pytest.raises(CertificateError):
        _init(tmp_path / "fed", hosts=hosts)
    assert not (tmp_path / "fed").exists()


def test_bad_federation_names_and_ports_are_refused(tmp_path):
    with pytest.raises(ProvisioningError, match="federation name"):
        _init(tmp_path / "a", name='x"y')
    with pytest.raises(ProvisioningError, match="port"):
        _init(tmp_path / "b", port=0)


def test_load_reopens_and_reports_missing_or_incomplete_folders(federation, tmp_path):
    again = FederationFolder.load(federation.folder)
    assert again.name == "demo"
    assert again.ca_certificate == federation.ca_certificate
    assert again.server_certificate == federation.server_certificate
    assert "PRIVATE" not in repr(again)
    with pytest.raises(ProvisioningError, match="does not exist"):
        FederationFolder.load(tmp_path / "nowhere")
    (federation.folder / "server.key").unlink()
    with pytest.raises(ProvisioningError, match=r"incomplete: missing server\.key"):
        FederationFolder.load(federation.folder)


def test_a_passphrase_protected_ca_key_needs_the_passphrase(tmp_path):
    folder = tmp_path / "fed"
    _init(folder, passphrase=b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in (folder / "ca.key").read_bytes()
    with pytest.raises(TypeError):
        serialization.load_pem_private_key((folder / "ca.key").read_bytes(), password=None)
    # Serving does not need the CA key; issuing does.
    serving = FederationFolder.load(folder)
    assert serving.server_credentials_material()[0].startswith(b"-----BEGIN PRIVATE KEY")
    with pytest.raises(ProvisioningError, match="encrypted: give the federation passphrase"):
        add_client(serving, "alice", now=T0)
    assert serving.client_names(include_revoked=True) == []
    with pytest.raises(ProvisioningError, match="wrong passphrase"):
        FederationFolder.load(folder, passphrase=b"wrong")
    issuing = FederationFolder.load(folder, passphrase=b"correct horse")
    add_client(issuing, "alice", out=tmp_path / "kit", now=T0)
    assert issuing.client_names() == ["alice"]


def test_server_credentials_material_is_a_matching_unencrypted_pair(federation):
    key_pem, chain_pem, ca_pem = federation.server_credentials_material()
    key = serialization.load_pem_private_key(key_pem, password=None)
    chain = x509.load_pem_x509_certificates(chain_pem)
    assert chain[0] == federation.server_certificate
    assert key.public_key() == chain[0].public_key()
    assert x509.load_pem_x509_certificate(ca_pem) == federation.ca_certificate


# ---- clients ------------------------------------------------------------------------------


def test_client_names_are_validated_and_duplicates_refused(federation, tmp_path):
    for bad in ["", "a" * 65, "../x", "a/b", ".hidden", "a b"]:
        with pytest.raises(ProvisioningError, match="client name"):
            add_client(federation, bad, now=T0)
    add_client(federation, "alice", now=T0)
    with pytest.raises(ProvisioningError, match="already has a kit"):
        add_client(federation, "alice", out=tmp_path / "second", now=T0)
    assert not (tmp_path / "second").exists()
    assert federation.client_names() == ["alice"]


def test_client_record_holds_the_protocol_identity_key(federation, tmp_path):
    kit = _issue(federation, "alice", tmp_path)
    identity = Ed25519PrivateKey.from_private_bytes(kit.identity_seed)
    expected = kits.raw_public_key(identity.public_key())
    assert federation.client_identity_keys() == {"alice": expected}
    assert stat.S_IMODE(kit.identity_key_path.stat().st_mode) == 0o600


def test_check_peer_certificate_accepts_a_good_client(federation, tmp_path):
    kit = _issue(federation, "alice", tmp_path)
    assert federation.check_peer_certificate(_der(kit.certificate), now=T0) == "alice"
    assert federation.check_peer_certificate(_der(kit.certificate), now=T0 + timedelta(days=364))


def test_check_peer_certificate_refuses_a_certificate_from_another_ca(federation, tmp_path):
    other = _init(tmp_path / "other")  # same federation name, different CA
    stranger = _issue(other, "alice", tmp_path / "o")
    _issue(federation, "alice", tmp_path)
    with pytest.raises(CertificateError, match="not issued by this federation's CA"):
        federation.check_peer_certificate(_der(stranger.certificate), now=T0)


def test_check_peer_certificate_refuses_expired_and_not_yet_valid(federation, tmp_path):
    kit = _issue(federation, "alice", tmp_path)
    with pytest.raises(CertificateError, match="expired"):
        federation.check_peer_certificate(_der(kit.certificate), now=T0 + timedelta(days=366))
    future = _issue(federation, "bob", tmp_path, now=T0 + timedelta(days=30))
    with pytest.raises(CertificateError, match="not yet valid"):
        federation.check_peer_certificate(_der(future.certificate), now=T0 + timedelta(days=29))


def test_check_peer_certificate_refuses_the_server_certificate(federation):
    with pytest.raises(CertificateError, match="not a client certificate"):
        federation.check_peer_certificate(_der(federation.server_certificate), now=T0)


def test_check_peer_certificate_refuses_garbage(federation):
    with pytest.raises(CertificateError, match=r"not a DER X\.509"):
        federation.check_peer_certificate(b"\x30\x03junk", now=T0)


def test_revoked_clients_are_refused_and_revocation_persists(federation, tmp_path):
    alice = _issue(federation, "alice", tmp_path)
    bob = _issue(federation, "bob", tmp_path)
    der = _der(alice.certificate)
    assert federation.check_peer_certificate(der, now=T0) == "alice"
    revoke_client(federation, "alice", now=T0)
    with pytest.raises(CertificateError, match="revoked"):
        federation.check_peer_certificate(der, now=T0)
    assert federation.check_peer_certificate(_der(bob.certificate), now=T0) == "bob"
    reopened = FederationFolder.load(federation.folder)
    assert reopened.is_revoked(alice.certificate)
    assert not reopened.is_revoked(bob.certificate)
    with pytest.raises(CertificateError, match="revoked"):
        reopened.check_peer_certificate(der, now=T0)
    assert reopened.client_names() == ["bob"]
    assert reopened.client_names(include_revoked=True) == ["alice", "bob"]
    assert reopened.client_record("alice").revoked
    assert list(reopened.client_identity_keys()) == ["bob"]
    assert not [p for p in federation.folder.iterdir() if p.name.endswith(".tmp")]


def test_a_revocation_made_elsewhere_applies_at_the_next_check(federation, tmp_path):
    kit = _issue(federation, "alice", tmp_path)
    assert federation.check_peer_certificate(_der(kit.certificate), now=T0) == "alice"
    revoke_client(FederationFolder.load(federation.folder), "alice")  # e.g. the operator's CLI
    with pytest.raises(CertificateError, match="revoked"):
        federation.check_peer_certificate(_der(kit.certificate), now=T0)


def test_a_corrupt_revocation_list_refuses_everyone(federation, tmp_path):
    kit = _issue(federation, "alice", tmp_path)
    (federation.folder / "revoked.json").write_text("{not json")
    with pytest.raises(ProvisioningError, match="corrupt"):
        federation.check_peer_certificate(_der(kit.certificate), now=T0)


def test_revoking_an_unknown_client_is_an_error_and_revoking_twice_is_harmless(
    federation, tmp_path
):
    with pytest.raises(ProvisioningError, match="no client named 'ghost'"):
        revoke_client(federation, "ghost")
    _issue(federation, "alice", tmp_path)
    revoke_client(federation, "alice", now=T0)
    revoke_client(federation, "alice", now=T0 + timedelta(days=1))
    assert len(federation.revocations()) == 1


def test_a_revoked_name_can_be_issued_again_and_only_the_new_cert_works(federation, tmp_path):
    old = _issue(federation, "alice", tmp_path)
    revoke_client(federation, "alice", now=T0)
    new = _issue(federation, "alice", tmp_path, now=T0 + timedelta(days=1))
    later = T0 + timedelta(days=2)
    assert federation.check_peer_certificate(_der(new.certificate), now=later) == "alice"
    with pytest.raises(CertificateError, match="revoked"):
        federation.check_peer_certificate(_der(old.certificate), now=later)
    assert federation.client_names() == ["alice"]


# ---- a real mutual-TLS handshake ----------------------------------------------------------


def _write(folder: Path, files: dict[str, bytes]) -> dict[str, str]:
    folder.mkdir()
    paths = {}
    for name, data in files.items():
        (folder / name).write_bytes(data)
        paths[name] = str(folder / name)
    return paths


def _handshake(
    federation: FederationFolder, client_material: tuple[bytes, bytes, bytes], tmp: Path
):
    """Serve one TLS connection on loopback that demands a client certificate; return what
    each side saw (the client name the server read, or the errors)."""
    key_pem, chain_pem, ca_pem = federation.server_credentials_material()
    server_files = _write(tmp / "server", {"key.pem": key_pem, "chain.pem": chain_pem})
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    server_ctx.load_cert_chain(server_files["chain.pem"], server_files["key.pem"])
    server_ctx.load_verify_locations(cadata=ca_pem.decode())

    trust_pem, client_key_pem, client_cert_pem = client_material
    client_files = _write(tmp / "client", {"key.pem": client_key_pem, "cert.pem": client_cert_pem})
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    client_ctx.load_verify_locations(cadata=trust_pem.decode())
    client_ctx.load_cert_chain(client_files["cert.pem"], client_files["key.pem"])

    seen: dict[str, object] = {}
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(5)
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                der = tls.getpeercert(binary_form=True)
                name = federation.check_peer_certificate(der)
                seen["server_name_seen"] = name
                tls.sendall(name.encode())
        except (ssl.SSLError, OSError, CertificateError) as exc:
            seen["server_error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with (
            socket.create_connection(listener.getsockname(), timeout=5) as raw,
            client_ctx.wrap_socket(raw, server_hostname="localhost") as tls,
        ):
            seen["client_received"] = tls.recv(100)
    except (ssl.SSLError, OSError) as exc:
        seen["client_error"] = exc
    thread.join(5)
    listener.close()
    return seen


@pytest.fixture
def live_federation(tmp_path) -> FederationFolder:
    """Issued at the real time: OpenSSL checks validity against the system clock."""
    return _init(tmp_path / "live", now=None)


def test_mutual_tls_handshake_with_openssl(live_federation, tmp_path):
    federation = live_federation
    add_client(federation, "alice", archive=True)
    kit = kits.load_kit(federation.paths.kits / "alice.tar.gz")
    seen = _handshake(federation, kit.channel_credentials_material(), tmp_path)
    assert seen.get("server_name_seen") == "alice", seen
    assert seen.get("client_received") == b"alice", seen


def test_mutual_tls_refuses_a_client_from_another_ca(live_federation, tmp_path):
    federation = live_federation
    other = _init(tmp_path / "other", now=None)
    stranger = kits.load_kit(add_client(other, "mallory"))
    # The stranger trusts our CA (so the server is accepted) but presents another CA's cert.
    _, key_pem, cert_pem = stranger.channel_credentials_material()
    seen = _handshake(federation, (federation.ca_pem(), key_pem, cert_pem), tmp_path)
    assert isinstance(seen.get("server_error"), ssl.SSLCertVerificationError), seen
    assert "server_name_seen" not in seen
    assert seen.get("client_received", b"") == b""


def test_a_revoked_client_is_refused_at_its_next_connection(live_federation, tmp_path):
    federation = live_federation
    kit = kits.load_kit(add_client(federation, "alice"))
    revoke_client(federation, "alice")
    seen = _handshake(federation, kit.channel_credentials_material(), tmp_path)
    # TLS itself succeeds (OpenSSL has no revocation list); the peer check refuses.
    assert isinstance(seen.get("server_error"), CertificateError), seen
    assert "revoked" in str(seen["server_error"])
    assert seen.get("client_received", b"") == b""
