"""TLS material for the local Ray cluster: a throw-away private CA and one node certificate.

Ray encrypts and mutually authenticates its gRPC traffic (GCS, raylets, workers, the
driver) when every process finds ``RAY_USE_TLS=1`` with ``RAY_TLS_SERVER_CERT``,
``RAY_TLS_SERVER_KEY`` and ``RAY_TLS_CA_CERT`` in its environment; each process presents
the same certificate as server and as client, and accepts peers signed by the CA.

:func:`local_cluster_tls` makes that material once per process:

* a fresh P-256 CA (:func:`sealagg.appliance.pki.create_ca`); its private key signs the
  node certificate and is then dropped, never written: nobody, not even this process, can
  mint a second certificate the cluster would accept;
* a node certificate (P-256, ECDSA-SHA256) usable for both serverAuth and clientAuth (Ray
  uses one certificate both ways), naming 127.0.0.1, ``localhost``, this host's name and
  the address Ray picks for its nodes (as IP and as DNS entries: gRPC versions differ in
  which they match for an IP target);
* files in a private directory (0700), the key file 0600, removed at interpreter exit.

The security argument: with TLS on, a process on the host (or network) that can reach a
Ray port but holds no certificate from this CA cannot complete a handshake, so it can
neither read stripe traffic (masked inputs, the unmask plan) nor inject calls; token
authentication (``RAY_AUTH_MODE=token``) stays on as a second, independent check.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import ipaddress
import shutil
import socket
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sealagg.appliance import pki

#: The federation name carried by the throw-away CA (it certifies Ray nodes only).
CA_ORGANIZATION = "sealagg-ray-local"
NODE_COMMON_NAME = "sealagg ray node"
#: Long enough for any appliance run; the CA dies with the process anyway.
NODE_VALIDITY = timedelta(days=30)


@dataclasses.dataclass(frozen=True)
class RayTls:
    """Where the local cluster's TLS files are; :meth:`environment` is what Ray reads."""

    directory: Path
    ca_cert: Path
    node_cert: Path
    node_key: Path

    def environment(self) -> dict[str, str]:
        return {
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": str(self.node_cert),
            "RAY_TLS_SERVER_KEY": str(self.node_key),
            "RAY_TLS_CA_CERT": str(self.ca_cert),
        }


_material: RayTls | None = None


def node_hosts() -> list[str]:
    """The names a node certificate must carry: loopback, this host, Ray's node address."""
    hosts = ["127.0.0.1", "localhost"]
    # Ray picks 127.0.0.1 when it finds no route (covered above).
    with contextlib.suppress(Exception):
        from ray._private.services import get_node_ip_address

        hosts.append(get_node_ip_address())
    name = socket.gethostname()
    hosts.append(name)
    with contextlib.suppress(OSError):
        hosts.append(socket.gethostbyname(name))
    return list(dict.fromkeys(hosts))


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for host in hosts:
        with contextlib.suppress(ValueError):
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        # Ray's own test certificates put addresses in DNS entries; some gRPC versions
        # match an IP target only there.
        dns = x509.DNSName(host.lower())
        if dns not in names:
            names.append(dns)
    return x509.SubjectAlternativeName(names)


def issue_node_certificate(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, hosts: list[str]
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A P-256 key and its serverAuth + clientAuth certificate for ``hosts``."""
    key = pki.generate_tls_key()
    now = datetime.now(UTC)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, CA_ORGANIZATION),
                    x509.NameAttribute(NameOID.COMMON_NAME, NODE_COMMON_NAME),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - pki.CLOCK_SKEW)
        .not_valid_after(now + NODE_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage(
                [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
            ),
            critical=False,
        )
        .add_extension(_san(hosts), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def local_cluster_tls() -> RayTls:
    """This process's TLS material for local clusters (made on first use, then reused:
    Ray processes and the driver keep the paths they were started with)."""
    global _material
    if _material is not None and _material.directory.is_dir():
        return _material
    directory = Path(tempfile.mkdtemp(prefix="sealagg-ray-tls-"))  # 0700
    atexit.register(shutil.rmtree, directory, True)
    ca_key = pki.generate_tls_key()
    ca_cert = pki.create_ca(CA_ORGANIZATION, ca_key, now=datetime.now(UTC))
    node_cert, node_key = issue_node_certificate(ca_cert, ca_key, node_hosts())
    del ca_key  # never written: no further certificate can be issued
    material = RayTls(
        directory=directory,
        ca_cert=directory / "ca.pem",
        node_cert=directory / "node.pem",
        node_key=directory / "node.key",
    )
    pki.write_file_atomic(material.node_key, pki.private_key_pem(node_key, None), mode=0o600)
    pki.write_file_atomic(material.node_cert, pki.certificate_pem(node_cert), mode=0o644)
    pki.write_file_atomic(material.ca_cert, pki.certificate_pem(ca_cert), mode=0o644)
    _material = material
    return material
