"""Certificate renewal over real mutual TLS on loopback: client renewal (fresh key, same key,
re-delivery), its refusals, and the server certificate renewed under a running appliance."""

from __future__ import annotations

import socket
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from sealagg_testkit.audit import audit_details

from sealagg.appliance import kit as kit_api
from sealagg.appliance import pki
from sealagg.appliance.ca_rotation import renew_server_certificate
from sealagg.appliance.federation import FederationFolder, add_client, init_federation
from sealagg.appliance.kit import ClientKit, load_kit
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import base_model, free_port, make_deployment
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.client_shim.renewal import RenewalError, renew, renew_if_due, renew_on_connect


def roster_call(kit: ClientKit, address: str) -> pb.RosterReply:
    """One authenticated call on a fresh channel (so a fresh handshake) with ``kit``."""
    ca, key, cert = kit.channel_credentials_material()
    creds = grpc.ssl_channel_credentials(ca, key, cert)
    options = [("grpc.ssl_target_name_override", kit.server_name)]
    with grpc.secure_channel(address, creds, options=options) as channel:
        return pb_grpc.AggregatorStub(channel).GetRoster(pb.RosterRequest(), timeout=10)


def renew_raw(kit: ClientKit, address: str, csr_der: bytes) -> pb.RenewalReply:
    ca, key, cert = kit.channel_credentials_material()
    creds = grpc.ssl_channel_credentials(ca, key, cert)
    options = [("grpc.ssl_target_name_override", kit.server_name)]
    with grpc.secure_channel(address, creds, options=options) as channel:
        return pb_grpc.AggregatorStub(channel).RenewCertificate(
            pb.RenewalRequest(csr_der=csr_der), timeout=10
        )


def csr_for(name: str, key_pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(key_pem, None)
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .sign(key, hashes.SHA256())
    )
    return csr.public_bytes(serialization.Encoding.DER)


def server_certificate_seen(address: str, kit: ClientKit, tmp: Path) -> x509.Certificate:
    """The certificate the appliance presents to a new connection."""
    host, _, port = address.rpartition(":")
    context = ssl.create_default_context(cadata=kit.ca_cert_pem.decode("ascii"))
    (tmp / "c.pem").write_bytes(kit.client_cert_pem)
    (tmp / "k.pem").write_bytes(kit.client_key_pem)
    context.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection((host, int(port)), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname=kit.server_name) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    return x509.load_der_x509_certificate(der)


def test_client_renews_with_a_fresh_key_and_the_next_handshake_accepts_it(tmp_path, running):
    dep = make_deployment(tmp_path, clients=3, authority=False)
    running(dep.folder)
    old = dep.kits["client0"]
    identity = old.identity_public_key
    renewed = renew(old)
    new_cert = renewed.certificate
    assert new_cert.serial_number != old.certificate.serial_number
    assert pki.spki_sha256(new_cert) != pki.spki_sha256(old.certificate)  # a fresh key
    assert pki.client_name_of(new_cert) == "client0"
    # The kit as it loads from now on presents the new certificate; identity unchanged.
    reloaded = load_kit(old.source)
    assert reloaded.client_cert_pem == renewed.client_cert_pem
    assert reloaded.identity_public_key == identity
    record = FederationFolder.load(dep.folder).client_record("client0")
    assert record is not None and record.identity_public_key == identity
    assert record.serial == new_cert.serial_number
    # Accepted at the next handshake, no restart; the old one still in its grace period.
    roster_call(reloaded, dep.address)
    roster_call(old, dep.address)
    (entry,) = audit_details(dep.folder, "certificate_renewed")
    assert entry["client"] == "client0"
    assert entry["old_serial"] == format(old.certificate.serial_number, "x")
    assert entry["new_serial"] == format(new_cert.serial_number, "x")
    assert entry["not_after"] == pki.iso_time(new_cert.not_valid_after_utc)
    # The pending key file is gone; only the renewal file was added beside the kit.
    assert not (old.source / kit_api.RENEWAL_PENDING).exists()
    assert (old.source / kit_api.RENEWAL).stat().st_mode & 0o077 == 0


def test_old_certificate_refused_after_its_grace_period(tmp_path, running):
    dep = make_deployment(tmp_path, clients=3, authority=False)
    running(dep.folder)
    old = dep.kits["client1"]
    renew(old)
    fed = FederationFolder.load(dep.folder)
    later = datetime.now(UTC) + timedelta(days=8)
    der = old.certificate.public_bytes(serialization.Encoding.DER)
    with pytest.raises(pki.CertificateError, match="grace period ended"):
        fed.check_peer_certificate(der, now=later)


def test_lost_reply_is_redelivered_but_an_old_certificate_cannot_certify_a_new_key(
    tmp_path, running
):
    dep = make_deployment(tmp_path, clients=3, authority=False)
    running(dep.folder)
    old = dep.kits["client2"]
    renewed = renew(old)
    # The old certificate (in grace) asks for the key already certified: same certificate.
    again = renew_raw(old, dep.address, csr_for("client2", renewed.client_key_pem))
    assert again.certificate_pem == renewed.client_cert_pem
    # ... but not for another key.
    other = pki.private_key_pem(pki.generate_tls_key(), None)
    with pytest.raises(grpc.RpcError) as refused:
        renew_raw(old, dep.address, csr_for("client2", other))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "superseded" in refused.value.details()
    assert len(audit_details(dep.folder, "certificate_renewed")) == 1


def test_csr_naming_another_client_is_refused_and_audited(tmp_path, running):
    dep = make_deployment(tmp_path, clients=3, authority=False)
    running(dep.folder)
    kit = dep.kits["client0"]
    key = pki.private_key_pem(pki.generate_tls_key(), None)
    with pytest.raises(grpc.RpcError) as refused:
        renew_raw(kit, dep.address, csr_for("client1", key))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "must name exactly the caller 'client0'" in refused.value.details()
    with pytest.raises(grpc.RpcError) as garbage:
        renew_raw(kit, dep.address, b"\x30\x03\x02\x01\x00")
    assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    refusals = audit_details(dep.folder, "certificate_renewal_refused")
    assert [r["client"] for r in refusals] == ["client0", "client0"]
    assert audit_details(dep.folder, "certificate_renewed") == []
    roster_call(dep.kits["client1"], dep.address)  # the service keeps serving the others


def test_authority_pinned_kit_keeps_its_key_and_a_new_key_needs_the_roster(tmp_path, running):
    dep = make_deployment(tmp_path, clients=3)  # the authority's roster pins TLS keys
    running(dep.folder)
    kit = dep.kits["client0"]
    with pytest.raises(RenewalError, match="pins another TLS key"):
        renew(kit, rekey=True)
    assert not (kit.source / kit_api.RENEWAL).exists()  # nothing written
    renewed = renew(kit)
    assert renewed.certificate.serial_number != kit.certificate.serial_number
    assert pki.spki_sha256(renewed.certificate) == pki.spki_sha256(kit.certificate)
    roster_call(load_kit(kit.source), dep.address)


def test_appliance_without_the_ca_key_answers_failed_precondition(tmp_path, running):
    port = free_port()
    folder = tmp_path / "fed"
    fed = init_federation(
        folder, name="locked", hosts=["localhost", "127.0.0.1"], port=port, passphrase=b"pw"
    )
    kits = [load_kit(add_client(fed, f"c{i}")) for i in range(3)]
    store = open_store(fed)
    store.add_model_version(base_model(0), parent=None, status="accepted")
    store.close()
    locked = running(folder)  # no --passphrase-file
    with pytest.raises(RenewalError, match=r"FAILED_PRECONDITION.*--passphrase-file"):
        renew(kits[0])
    assert not (kits[0].source / kit_api.RENEWAL).exists()
    (refusal,) = audit_details(folder, "certificate_renewal_refused")
    assert refusal["status"] == "FAILED_PRECONDITION"
    locked.stop()
    running(folder, ca_passphrase=b"pw")  # what `sealagg serve --passphrase-file` passes
    renewed = renew(kits[0])
    assert renewed.certificate.serial_number != kits[0].certificate.serial_number


def test_renew_if_due_only_near_expiry(tmp_path, running):
    dep = make_deployment(tmp_path, clients=3, authority=False)
    running(dep.folder)
    kit = dep.kits["client0"]
    assert renew_if_due(kit) is kit  # 365 days left: nothing to do
    soon = kit.certificate.not_valid_after_utc - timedelta(days=10)
    renewed = renew_if_due(kit, now=soon)
    assert renewed.certificate.serial_number != kit.certificate.serial_number


def test_a_bad_renewal_file_refuses_the_kit(tmp_path):
    dep = make_deployment(tmp_path, clients=3, authority=False)
    kit = dep.kits["client0"]
    # A certificate for another client, dropped into the kit as its renewal.
    other = dep.kits["client1"]
    data = kit_api.render_renewal(other.client_cert_pem, other.client_key_pem, kit.ca_cert_pem)
    (kit.source / kit_api.RENEWAL).write_bytes(data)
    with pytest.raises(kit_api.KitTamperedError, match="does not name 'client0'"):
        load_kit(kit.source)


def test_server_certificate_renewed_under_a_running_appliance(tmp_path, running):
    dep = make_deployment(tmp_path, clients=3, authority=False)
    running(dep.folder)
    kit = dep.kits["client0"]
    before = server_certificate_seen(dep.address, kit, tmp_path)
    fed = FederationFolder.load(dep.folder)
    renewed = renew_server_certificate(fed)
    after = server_certificate_seen(dep.address, kit, tmp_path)
    assert before.serial_number != after.serial_number
    assert after.serial_number == renewed.serial_number
    assert pki.spki_sha256(after) != pki.spki_sha256(before)  # a new key
    roster_call(kit, dep.address)  # clients verify by the CA: nothing changes for them


def test_renew_on_connect_falls_back_to_the_valid_kit(tmp_path, running, caplog):
    dep = make_deployment(tmp_path, clients=3, authority=False)
    kit = dep.kits["client0"]
    soon = kit.certificate.not_valid_after_utc - timedelta(days=5)
    # Nothing listens yet: the renewal fails, the (still valid) kit is used, a warning says so.
    with caplog.at_level("WARNING"):
        assert renew_on_connect(kit, within_days=400, timeout=2) is kit
    assert "could not be renewed" in caplog.text
    running(dep.folder)
    renewed = renew_on_connect(kit, within_days=400)
    assert renewed.certificate.serial_number != kit.certificate.serial_number
    assert soon < renewed.certificate.not_valid_after_utc


def test_appliance_restarts_after_a_renewal_with_the_participant_following(tmp_path, running):
    dep = make_deployment(tmp_path, clients=3, authority=False)
    first = running(dep.folder)
    renewed = renew(dep.kits["client0"])
    first.stop()
    running(dep.folder)  # start-time sync must not take the new serial for a second client
    roster_call(load_kit(renewed.source), dep.address)
    store = open_store(FederationFolder.load(dep.folder))
    try:
        (row,) = [p for p in store.participants(active_only=True) if p.name == "client0"]
        assert row.cert_serial == format(renewed.certificate.serial_number, "x")
    finally:
        store.close()
    new_serial = format(renewed.certificate.serial_number, "x")
    assert all(d["cert_serial"] != new_serial for d in audit_details(dep.folder, "client_added"))
