"""Server-side renewal rules (appliance/renewal.py), expiry warnings (cert_lifecycle.py) and
the ``sealagg certs`` commands, on real federation folders."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from sealagg_testkit.audit import audit_details
from typer.testing import CliRunner

from sealagg.appliance import kit as kit_api
from sealagg.appliance import pki
from sealagg.appliance.cert_lifecycle import expiry_report
from sealagg.appliance.cli import app
from sealagg.appliance.federation import FederationFolder, revoke_client
from sealagg.appliance.kit import load_kit
from sealagg.appliance.renewal import RenewalRefusedError, renew
from sealagg.appliance.testing import make_deployment

runner = CliRunner()


def certs_cli(*args: object):
    return runner.invoke(app, ["certs", *[str(a) for a in args]], env={"COLUMNS": "200"})


def csr_der(name: str, key=None, extra: bool = False) -> bytes:
    key = key or pki.generate_tls_key()
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if extra:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "else"))
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


@pytest.fixture
def dep(tmp_path: Path):
    return make_deployment(tmp_path, clients=3, authority=False)


def test_renewal_keeps_identity_and_records_the_grace_period(dep) -> None:
    fed = FederationFolder.load(dep.folder)
    kit = dep.kits["client0"]
    before = fed.client_record("client0")
    result = renew(fed, "client0", kit.certificate, csr_der("client0"))
    after = fed.client_record("client0")
    assert after.identity_public_key == before.identity_public_key
    assert after.serial == result.serial != before.serial
    (grace,) = after.previous
    assert grace.serial == before.serial
    assert timedelta(days=6) < grace.accepted_until - datetime.now(UTC) <= timedelta(days=7)
    # Handshake anchors hold the new and, in grace, the old certificate.
    anchors = fed.handshake_trust_anchors()
    assert kit.client_cert_pem in anchors and result.certificate_pem in anchors


@pytest.mark.parametrize(
    ("csr", "code", "words"),
    [
        (lambda: csr_der("client1"), "PERMISSION_DENIED", "must name exactly the caller"),
        (lambda: csr_der("client0", extra=True), "PERMISSION_DENIED", "must name exactly"),
        (lambda: b"not a csr", "INVALID_ARGUMENT", "not a valid PKCS#10"),
        (lambda: b"\x00" * 5000, "INVALID_ARGUMENT", "DER PKCS#10"),
        (
            lambda: csr_der("client0", key=pki.ec.generate_private_key(pki.ec.SECP384R1())),
            "INVALID_ARGUMENT",
            "P-256",
        ),
    ],
)
def test_bad_requests_are_refused(dep, csr, code, words) -> None:
    fed = FederationFolder.load(dep.folder)
    with pytest.raises(RenewalRefusedError, match=words) as refused:
        renew(fed, "client0", dep.kits["client0"].certificate, csr())
    assert refused.value.code == code
    assert fed.client_record("client0").serial == dep.kits["client0"].certificate.serial_number


def test_revoked_client_cannot_renew_and_revocation_covers_grace_certificates(dep) -> None:
    fed = FederationFolder.load(dep.folder)
    old = dep.kits["client0"].certificate
    result = renew(fed, "client0", old, csr_der("client0"))
    revoke_client(fed, "client0")
    assert old.serial_number in fed.revocations() and result.serial in fed.revocations()
    with pytest.raises(RenewalRefusedError, match="not active"):
        renew(fed, "client0", old, csr_der("client0"))
    assert dep.kits["client0"].client_cert_pem not in fed.handshake_trust_anchors()


def test_renewals_in_a_loop_keep_a_bounded_record(dep) -> None:
    fed = FederationFolder.load(dep.folder)
    cert = dep.kits["client0"].certificate
    for _ in range(5):
        result = renew(fed, "client0", cert, csr_der("client0"))
        cert = pki.load_certificate(result.certificate_pem, what="new")
    assert len(fed.client_record("client0").previous) == 2


def test_expiry_report_warns_within_30_days(dep) -> None:
    fresh = expiry_report(dep.folder)
    assert 364 < fresh.server_days <= 365
    assert fresh.soonest_client is not None and fresh.soonest_client[1] > 364
    assert fresh.warnings == []
    late = expiry_report(dep.folder, now=datetime.now(UTC) + timedelta(days=340))
    assert any("server certificate 'server' expires in" in w for w in late.warnings)
    assert any("client certificate 'client0' expires in" in w for w in late.warnings)
    gone = expiry_report(dep.folder, now=datetime.now(UTC) + timedelta(days=400))
    assert any("EXPIRED" in w for w in gone.warnings)


def test_certs_cli_status_renew_and_rotate(dep) -> None:
    folder = dep.folder
    status = certs_cli("status", "-f", folder)
    assert status.exit_code == 0, status.output
    assert "client0" in status.output and "server" in status.output

    old_server = FederationFolder.load(folder).server_certificate
    result = certs_cli("renew-server", "-f", folder)
    assert result.exit_code == 0, result.output
    assert FederationFolder.load(folder).server_certificate.serial_number != (
        old_server.serial_number
    )
    (entry,) = audit_details(folder, "server_certificate_renewed")
    assert entry["old_serial"] == format(old_server.serial_number, "x")

    kit = dep.kits["client1"]
    result = certs_cli("renew-client", "client1", "-f", folder, "--kit", kit.source)
    assert result.exit_code == 0, result.output
    renewed = load_kit(kit.source)
    assert renewed.certificate.serial_number != kit.certificate.serial_number
    assert renewed.identity_public_key == kit.identity_public_key
    (entry,) = audit_details(folder, "certificate_renewed")
    assert entry["client"] == "client1" and entry["by"] == "operator"
    wrong = certs_cli("renew-client", "client2", "-f", folder, "--kit", kit.source)
    assert wrong.exit_code == 1 and "not 'client2'" in wrong.output

    assert certs_cli("rotate-ca", "-f", folder).exit_code == 0
    status = certs_cli("status", "-f", folder)
    assert "CA rotation is in progress" in status.output
    refused = certs_cli("finish-ca-rotation", "-f", folder)
    assert refused.exit_code == 1 and "renew-server" in refused.output
    assert certs_cli("renew-server", "-f", folder).exit_code == 0
    assert certs_cli("finish-ca-rotation", "-f", folder, "--force").exit_code == 0
    assert audit_details(folder, "ca_rotation_finished")[0]["clients_cut_off"] == [
        "client0",
        "client1",
        "client2",
    ]

    result = certs_cli("rotate-audit-key", "-f", folder)
    assert result.exit_code == 0, result.output
    history = json.loads((folder / "audit_key_history.json").read_text())["keys"]
    assert len(history) == 2
    # `sealagg audit verify` follows the chain across the rotation (the key history) ...
    verified = runner.invoke(app, ["audit", "verify", "-f", str(folder)])
    assert verified.exit_code == 0, verified.output
    # ... and with the new key alone it cannot: entry 0 was signed by the first key.
    alone = runner.invoke(
        app,
        [
            "audit",
            "verify",
            "-f",
            str(folder),
            "--public-key",
            str(folder / "audit_public_key.pem"),
        ],
    )
    assert alone.exit_code == 1 and "at entry 0" in alone.output
    assert kit_api.RENEWAL in {p.name for p in kit.source.iterdir()}


def test_renew_server_needs_the_passphrase(tmp_path: Path) -> None:
    from sealagg.appliance.federation import init_federation

    folder = tmp_path / "fed"
    init_federation(folder, name="p", hosts=["localhost"], passphrase=b"secret")
    refused = certs_cli("renew-server", "-f", folder)
    assert refused.exit_code == 1 and "passphrase" in refused.output
    (tmp_path / "pw").write_text("secret\n")
    assert (
        certs_cli("renew-server", "-f", folder, "--passphrase-file", tmp_path / "pw").exit_code == 0
    )
