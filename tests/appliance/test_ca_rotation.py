"""CA rotation over real mutual TLS on loopback: both CAs trusted during the transition,
renewals from the new CA with a cross-certified bundle, the server certificate switched once
the clients have it, and the old CA refused after the rotation is finished."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import grpc
import pytest
from cryptography.hazmat.primitives import serialization

from sealagg.appliance import kit as kit_api
from sealagg.appliance import pki
from sealagg.appliance.ca_rotation import (
    clients_on_previous_ca,
    finish_ca_rotation,
    renew_client_offline,
    renew_server_certificate,
    rotate_ca,
)
from sealagg.appliance.cert_lifecycle import expiry_report
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.kit import ClientKit, load_kit
from sealagg.appliance.testing import make_deployment
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.client_shim.renewal import renew


def call_ca_rotation(kit: ClientKit, address: str) -> None:
    ca, key, cert = kit.channel_credentials_material()
    creds = grpc.ssl_channel_credentials(ca, key, cert)
    options = [("grpc.ssl_target_name_override", kit.server_name)]
    with grpc.secure_channel(address, creds, options=options) as channel:
        pb_grpc.AggregatorStub(channel).GetRoster(pb.RosterRequest(), timeout=10)


def test_ca_rotation_end_to_end(tmp_path, running):
    dep = make_deployment(tmp_path, clients=3, authority=False)
    running(dep.folder)
    fed = FederationFolder.load(dep.folder)
    old_ca = fed.ca_certificate
    new_ca = rotate_ca(fed)
    assert new_ca.subject != old_ca.subject
    with pytest.raises(ProvisioningError, match="already in progress"):
        rotate_ca(fed)

    # Transition: a client that has not renewed still connects.
    call_ca_rotation(dep.kits["client1"], dep.address)
    # A renewal now comes from the new CA, and the kit learns the new CA via the cross cert.
    renewed = renew(dep.kits["client0"])
    pki.check_issued_by(renewed.certificate, new_ca)
    assert {c.subject for c in renewed.ca_certificates} == {old_ca.subject, new_ca.subject}
    assert {c.subject for c in load_kit(renewed.source).ca_certificates} == {
        old_ca.subject,
        new_ca.subject,
    }
    call_ca_rotation(renewed, dep.address)
    assert sorted(clients_on_previous_ca(fed)) == ["client1", "client2"]
    report = expiry_report(dep.folder)
    assert any("still on the old CA: client1, client2" in w for w in report.warnings)

    with pytest.raises(ProvisioningError, match="renew-server"):
        finish_ca_rotation(fed)
    renew_server_certificate(fed)
    call_ca_rotation(load_kit(renewed.source), dep.address)  # trusts the new CA
    with pytest.raises(grpc.RpcError) as locked_out:  # trusts only the old CA
        call_ca_rotation(dep.kits["client1"], dep.address)
    assert locked_out.value.code() == grpc.StatusCode.UNAVAILABLE

    # The operator re-issues client1 offline and hands over the renewal.
    kit1 = dep.kits["client1"]
    offline = renew_client_offline(fed, "client1")
    kit_api.install_renewal(
        kit1, offline.certificate_pem, kit1.client_key_pem, offline.ca_bundle_pem
    )
    call_ca_rotation(load_kit(kit1.source), dep.address)

    # client2 never renewed; with the new CA in its trust store it still gets in (old CA
    # trusted by the appliance during the transition) ...
    kit2 = dataclasses.replace(dep.kits["client2"], ca_cert_pem=fed.ca_pem())
    call_ca_rotation(kit2, dep.address)
    with pytest.raises(ProvisioningError, match="client2"):
        finish_ca_rotation(fed)
    assert finish_ca_rotation(fed, force=True) == ["client2"]
    assert not fed.paths.ca_previous_key.exists()
    assert not fed.paths.ca_previous_cert.exists()
    # ... and after the rotation is finished the old CA is no longer trusted.
    with pytest.raises(grpc.RpcError) as refused:
        call_ca_rotation(kit2, dep.address)
    assert refused.value.code() in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
    )
    der = kit2.certificate.public_bytes(serialization.Encoding.DER)
    with pytest.raises(pki.CertificateError, match="not issued by this federation's CA"):
        FederationFolder.load(dep.folder).check_peer_certificate(der)
    call_ca_rotation(load_kit(renewed.source), dep.address)  # the renewed ones carry on


def test_renewal_bundle_cannot_plant_an_uncertified_ca(tmp_path):
    dep = make_deployment(tmp_path, clients=3, authority=False)
    kit = dep.kits["client0"]
    now = datetime.now(UTC)
    rogue_key = pki.generate_tls_key()
    rogue = pki.create_ca("testfed", rogue_key, now=now, common_name="rogue CA")
    key = pki.generate_tls_key()
    cert = pki.issue_client_certificate(rogue, rogue_key, key.public_key(), name="client0", now=now)
    bundle = pki.certificate_pem(rogue) + kit.ca_cert_pem
    with pytest.raises(kit_api.KitTamperedError, match="not issued by a CA this kit trusts"):
        kit_api.install_renewal(
            kit, pki.certificate_pem(cert), pki.private_key_pem(key, None), bundle
        )
    assert not (kit.source / kit_api.RENEWAL).exists()
    # A cross certificate signed by the rogue key itself vouches for nothing either.
    forged_cross = pki.cross_certify(rogue, rogue, rogue_key, now=now)
    with pytest.raises(kit_api.KitTamperedError):
        kit_api.install_renewal(
            kit,
            pki.certificate_pem(cert),
            pki.private_key_pem(key, None),
            bundle + pki.certificate_pem(forged_cross),
        )


def test_new_kits_during_a_rotation_trust_both_cas(tmp_path):
    from sealagg.appliance.federation import add_client

    dep = make_deployment(tmp_path, clients=3, authority=False)
    fed = FederationFolder.load(dep.folder)
    old_ca = fed.ca_certificate
    new_ca = rotate_ca(fed)
    kit = load_kit(add_client(fed, "late"))
    pki.check_issued_by(kit.certificate, new_ca)
    assert [c.subject for c in kit.ca_certificates] == [new_ca.subject, old_ca.subject]
