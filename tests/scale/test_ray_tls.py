"""The session's Ray cluster (tests/scale/conftest.py) speaks mutually authenticated TLS on
its gRPC ports, and a striped round runs over it.

Probed on the GCS port and on a worker node's raylet port, with real handshakes over
loopback/the node address: a client holding a certificate from the cluster's CA gets an
HTTP/2 SETTINGS frame back (the gRPC server answers); the server's certificate verifies
against the cluster CA and the node address (and fails against any other trust store); a
client with no certificate, with a certificate from another CA, or speaking plaintext
HTTP/2 gets the connection closed without a single HTTP/2 frame."""

from __future__ import annotations

import os
import socket
import ssl
from datetime import UTC, datetime

import numpy as np
import pytest
import ray

from sealagg.appliance import pki
from sealagg.appliance.scale.cluster import stripe_options
from sealagg.appliance.scale.coordinator import StripedRound, plan_stripes, stripe_actor_class
from sealagg.appliance.scale.local import run_striped_round
from sealagg.appliance.scale.tls import issue_node_certificate, node_hosts
from sealagg.crypto import Phase
from sealagg.crypto.testing import make_round

#: The HTTP/2 client preface and an empty SETTINGS frame: what a gRPC client sends first.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
SETTINGS = 4  # HTTP/2 frame type


def _ports() -> list[tuple[str, int]]:
    """The GCS port and one stripe node's raylet port."""
    host, port = ray.get_runtime_context().gcs_address.rsplit(":", 1)
    raylets = [
        (n["NodeManagerAddress"], n["NodeManagerPort"])
        for n in ray.nodes()
        if n["Alive"] and n["Resources"].get("stripe_slot")
    ]
    assert raylets
    return [(host, int(port)), raylets[0]]


def _context(cafile: str | None, cert: tuple[str, str] | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=cafile)
    if cert is not None:
        context.load_cert_chain(*cert)
    context.set_alpn_protocols(["h2"])
    return context


def _first_frame(sock: socket.socket) -> bytes:
    """Send the gRPC preface; what the server answers first (b"" if it closes)."""
    sock.settimeout(20)
    try:
        sock.sendall(PREFACE)
        return sock.recv(9)
    except (ssl.SSLError, ConnectionError):
        return b""


def _tls_answer(address: tuple[str, int], context: ssl.SSLContext) -> bytes:
    with (
        socket.create_connection(address, timeout=20) as raw,
        context.wrap_socket(raw, server_hostname=address[0]) as sock,
    ):
        return _first_frame(sock)


@pytest.fixture(scope="module")
def foreign_cert(tmp_path_factory) -> tuple[str, str]:
    """A node certificate like the cluster's, from a CA the cluster does not trust."""
    key = pki.generate_tls_key()
    ca = pki.create_ca("sealagg-other", key, now=datetime.now(UTC))
    cert, node_key = issue_node_certificate(ca, key, node_hosts())
    folder = tmp_path_factory.mktemp("foreign")
    (folder / "node.pem").write_bytes(pki.certificate_pem(cert))
    (folder / "node.key").write_bytes(pki.private_key_pem(node_key, None))
    return str(folder / "node.pem"), str(folder / "node.key")


def test_the_cluster_and_this_driver_run_with_tls(cluster) -> None:
    assert os.environ["RAY_USE_TLS"] == "1"
    key = os.environ["RAY_TLS_SERVER_KEY"]
    assert os.stat(key).st_mode & 0o777 == 0o600
    assert os.stat(os.path.dirname(key)).st_mode & 0o777 == 0o700


def test_a_client_with_the_cluster_certificate_is_answered(cluster) -> None:
    context = _context(
        os.environ["RAY_TLS_CA_CERT"],
        (os.environ["RAY_TLS_SERVER_CERT"], os.environ["RAY_TLS_SERVER_KEY"]),
    )
    for address in _ports():
        frame = _tls_answer(address, context)
        assert len(frame) == 9 and frame[3] == SETTINGS, (address, frame)


def test_the_server_certificate_is_only_trusted_under_the_cluster_ca(cluster) -> None:
    for address in _ports():
        with pytest.raises(ssl.SSLCertVerificationError):
            _tls_answer(address, _context(None, None))  # the system trust store


def test_a_client_without_a_cluster_certificate_is_refused(cluster, foreign_cert) -> None:
    ca = os.environ["RAY_TLS_CA_CERT"]
    for address in _ports():
        assert _tls_answer(address, _context(ca, None)) == b"", address
        assert _tls_answer(address, _context(ca, foreign_cert)) == b"", address


def test_plaintext_grpc_is_refused(cluster) -> None:
    for address in _ports():
        with socket.create_connection(address, timeout=20) as sock:
            assert _first_frame(sock) == b"", address


def test_a_striped_round_runs_over_tls(cluster) -> None:
    n, d = 5, 3_001
    kit = make_round(n, dimension=d, seed=22, threshold=3)
    actor = stripe_actor_class(**stripe_options())
    stripes = [actor.remote() for _ in range(2)]
    try:
        striped = StripedRound(kit.config, stripes, plan_stripes(d, [1, 2]), chunk_words=512)
        outcome = run_striped_round(striped, kit.identities, kit.inputs, {2: Phase.MASKED_INPUT})
        assert tuple(outcome.survivors) == (1, 3, 4, 5)
        assert np.array_equal(outcome.total, kit.expected_sum([1, 3, 4, 5]))
    finally:
        for stripe in stripes:
            ray.kill(stripe, no_restart=True)
