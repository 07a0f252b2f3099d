"""X.509 issuing and checking, host-name validation, key files and the revocation list."""

from __future__ import annotations

import ipaddress
import os
import stat
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import DNSName, IPAddress, PolicyBuilder, Store

from sealagg.appliance import pki
from sealagg.appliance.errors import CertificateError, ProvisioningError

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def ca() -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = pki.generate_tls_key()
    return key, pki.create_ca("demo", key, now=T0)


def _server(ca, hosts=("localhost", "127.0.0.1", "::1"), now=T0):
    key = pki.generate_tls_key()
    return pki.issue_server_certificate(ca[1], ca[0], key.public_key(), hosts=hosts, now=now)


def _client(ca, name="alice", now=T0):
    key = pki.generate_tls_key()
    return pki.issue_client_certificate(ca[1], ca[0], key.public_key(), name=name, now=now)


# ---- host names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("localhost", x509.DNSName("localhost")),
        ("Agg.Example.COM", x509.DNSName("agg.example.com")),
        ("*.example.com", x509.DNSName("*.example.com")),
        ("xn--bcher-kva.de", x509.DNSName("xn--bcher-kva.de")),
        ("127.0.0.1", x509.IPAddress(ipaddress.ip_address("127.0.0.1"))),
        ("::1", x509.IPAddress(ipaddress.ip_address("::1"))),
        ("a" * 63 + ".example", x509.DNSName("a" * 63 + ".example")),
    ],
)
def test_host_names_x509_can_hold_are_accepted(host, expected):
    assert pki.host_general_name(host) == expected


@pytest.mark.parametrize(
    ("host", "reason"),
    [
        ("", "empty"),
        (" localhost", "whitespace"),
        ("local host", "whitespace"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("\u2603", "not ASCII"),
        ("a..example.com", "empty label"),
        (".example.com", "empty label"),
        ("example.com.", "trailing dot"),
        ("-a.example.com", "inner hyphens"),
        ("a-.example.com", "inner hyphens"),
        ("under_score.example.com", "inner hyphens"),
        ("a" * 64 + ".example.com", "longer than 63"),
        (".".join(["a" * 60] * 5), "longer than 253"),
        ("*", "wildcard"),
        ("*.com", "wildcard"),
        ("f*o.example.com", "wildcard"),
        ("*.*.example.com", "wildcard"),
        ("a.*.example.com", "wildcard"),
        ("[::1]", "brackets"),
        ("fe80::1%eth0", "scoped"),
        ("0.0.0.0", "connect to"),
        ("::", "connect to"),
        ("224.0.0.1", "connect to"),
        ("256.1.1.1", "IPv4"),
        ("1.2.3", "IPv4"),
        ("xn--a.example.com", "A-label"),
        (None, "not a string"),
    ],
)
def test_host_names_x509_cannot_hold_are_refused(host, reason):
    with pytest.raises(CertificateError, match=reason):
        pki.host_general_name(host)


def test_hosts_must_be_a_non_empty_list_and_duplicates_collapse():
    with pytest.raises(CertificateError, match="not a single string"):
        pki.validate_hosts("localhost")
    with pytest.raises(CertificateError, match="at least one"):
        pki.validate_hosts([])
    assert pki.validate_hosts(["localhost", "LOCALHOST", "::1", "0:0::1"]) == [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("::1")),
    ]


@pytest.mark.parametrize("name", ["", "a" * 65, "../x", "a/b", ".hidden", "-x", "ünï", "a b", 7])
def test_bad_client_names_are_refused(name):
    with pytest.raises(ProvisioningError, match="client name"):
        pki.validate_client_name(name)


def test_naive_times_are_refused():
    with pytest.raises(ProvisioningError, match="timezone-aware"):
        pki.check_time(datetime(2030, 1, 1))


# ---- certificates -------------------------------------------------------------------------


def test_ca_is_a_p256_root_limited_to_leaves(ca):
    _, cert = ca
    assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
    assert cert.public_key().curve.name == "secp256r1"
    cert.verify_directly_issued_by(cert)
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical and constraints.value.ca and constraints.value.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign
    ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ski.digest
    assert cert.not_valid_after_utc - cert.not_valid_before_utc >= timedelta(days=3650)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "demo"


def test_server_certificate_verifies_for_each_host_and_no_other(ca):
    cert = _server(ca)
    store = Store([ca[1]])
    for subject in (
        DNSName("localhost"),
        IPAddress(ipaddress.ip_address("127.0.0.1")),
        IPAddress(ipaddress.ip_address("::1")),
    ):
        chain = (
            PolicyBuilder().store(store).time(T0).build_server_verifier(subject).verify(cert, [])
        )
        assert chain[-1] == ca[1]
    with pytest.raises(Exception, match="validation failed"):
        PolicyBuilder().store(store).time(T0).build_server_verifier(DNSName("example.org")).verify(
            cert, []
        )
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca[1].extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    assert cert.not_valid_after_utc - T0 == timedelta(days=365)


def test_client_certificate_names_the_client_in_cn_and_uri(ca):
    cert = _client(ca, "alice")
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "alice"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["sealagg://client/alice"]
    assert pki.check_client_certificate(cert, ca[1], now=T0) == "alice"
    assert cert.not_valid_after_utc - T0 == timedelta(days=365)


def test_a_leaf_never_outlives_its_ca(ca):
    near_end = ca[1].not_valid_after_utc - timedelta(days=30)
    cert = _client(ca, now=near_end)
    assert cert.not_valid_after_utc == ca[1].not_valid_after_utc
    with pytest.raises(CertificateError, match="CA is not valid"):
        _client(ca, now=ca[1].not_valid_after_utc + timedelta(days=1))


def test_check_client_certificate_gives_the_reason(ca):
    other_key = pki.generate_tls_key()
    other = (other_key, pki.create_ca("demo", other_key, now=T0))
    with pytest.raises(CertificateError, match="not issued by this federation's CA"):
        pki.check_client_certificate(_client(other), ca[1], now=T0)
    with pytest.raises(CertificateError, match="not a client certificate"):
        pki.check_client_certificate(_server(ca), ca[1], now=T0)
    cert = _client(ca)
    with pytest.raises(CertificateError, match="expired"):
        pki.check_client_certificate(cert, ca[1], now=T0 + timedelta(days=366))
    later = _client(ca, now=T0 + timedelta(days=30))
    with pytest.raises(CertificateError, match="not yet valid"):
        pki.check_client_certificate(later, ca[1], now=T0 + timedelta(days=29))


# ---- key files ----------------------------------------------------------------------------


def test_encrypted_key_needs_the_right_passphrase():
    key = pki.generate_tls_key()
    pem = pki.private_key_pem(key, b"correct horse")
    assert b"ENCRYPTED PRIVATE KEY" in pem
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(pem, password=None)
    with pytest.raises(ProvisioningError, match="give the federation passphrase"):
        pki.load_tls_key(pem, None, what="k")
    with pytest.raises(ProvisioningError, match="wrong passphrase"):
        pki.load_tls_key(pem, b"wrong", what="k")
    loaded = pki.load_tls_key(pem, b"correct horse", what="k")
    assert loaded.private_numbers() == key.private_numbers()
    plain = pki.private_key_pem(key, None)
    with pytest.raises(ProvisioningError, match="not encrypted"):
        pki.load_tls_key(plain, b"x", what="k")
    with pytest.raises(ProvisioningError, match="non-empty"):
        pki.private_key_pem(key, b"")


def test_atomic_write_sets_mode_and_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "secret.key"
    pki.write_file_atomic(target, b"one", mode=0o600)
    pki.write_file_atomic(target, b"two", mode=0o600)
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["secret.key"]


def test_read_file_refuses_symlinks_and_oversized_files(tmp_path):
    real = tmp_path / "real"
    real.write_bytes(b"x" * 10)
    os.symlink(real, tmp_path / "link")
    with pytest.raises(ProvisioningError, match="symbolic link"):
        pki.read_file(tmp_path / "link", limit=100)
    with pytest.raises(ProvisioningError, match="larger than"):
        pki.read_file(real, limit=9)
    assert pki.read_file(real, limit=10) == b"x" * 10


# ---- revocation list ----------------------------------------------------------------------


def test_revocation_list_round_trips_and_fails_closed(tmp_path):
    path = tmp_path / "revoked.json"
    pki.RevocationList().save(path)
    assert len(pki.RevocationList.load(path)) == 0
    revoked = pki.RevocationList().with_revocation(0xABC, "alice", T0)
    revoked.save(path)
    loaded = pki.RevocationList.load(path)
    assert 0xABC in loaded and 0xABD not in loaded
    assert loaded.entries[0].name == "alice" and loaded.entries[0].revoked_at == T0
    path.write_text('{"format": "sealagg-revocations/1", "revoked": [{"serial": "zz"}]}')
    with pytest.raises(ProvisioningError, match="corrupt"):
        pki.RevocationList.load(path)


def test_a_client_uri_without_client_auth_is_not_a_client_certificate(ca):
    key = pki.generate_tls_key()
    cert = pki._issue(
        ca[1],
        ca[0],
        key.public_key(),
        subject=x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "alice")]),
        san=[x509.UniformResourceIdentifier("sealagg://client/alice")],
        usage=ExtendedKeyUsageOID.SERVER_AUTH,
        now=T0,
        validity=timedelta(days=1),
    )
    assert pki.client_name_of(cert) == "alice"
    with pytest.raises(CertificateError, match="extended key usage excludes it"):
        pki.check_client_certificate(cert, ca[1], now=T0)
