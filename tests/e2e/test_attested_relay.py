"""Issue 18, critical: a relay outside the TEE with a copy of the federation folder.

The relay holds every key on disk (server.key, the CA key, the kits left in ``kits/``),
runs its own mutual-TLS endpoint and its own appliance built from the copied folder, and
forwards only ``Attest`` to the genuine, attested appliance (fake SEV-SNP / TDX hardware
with collateral from the test suite's own vendor chains). Before issue 18 the genuine
evidence bound ``server.key``, so the client pinned a certificate the relay could present
and sent its update to the relay in plaintext. Now the genuine appliance's TLS key is born
in memory at start (appliance/tee_identity.py): the client refuses the relay with
``Reason.WRONG_TLS_KEY`` before a single upload byte reaches it.

Everything is real: gRPC on loopback, federation certificates, the appliance, the shim.
"""

from __future__ import annotations

import shutil
import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from sealagg.appliance import pki
from sealagg.appliance.attestation import client_policy_path, collateral_path
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import FederationFolder, add_client, init_federation
from sealagg.appliance.kit import load_kit
from sealagg.appliance.server import Appliance, open_store
from sealagg.appliance.testing import Deployment, base_model, free_port
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout
from sealagg.attest import AttestationRefusedError, Reason
from sealagg.attest.testing_common import DEFAULT_TCB
from sealagg.attest.testing_snp import SnpAuthority
from sealagg.attest.testing_tdx import DEFAULT_TEE_TCB_SVN, TdxAuthority
from sealagg.client_shim.attestation import AttestationGuard
from sealagg.client_shim.connection import INSECURE_NAME_HEADER, Connection
from sealagg.client_shim.session import Participant

HOSTS = ["localhost", "127.0.0.1"]
MEASUREMENT = bytes.fromhex("44" * 48)
DIM = Layout.of(base_model()).dimension
SERVICE = "/sealagg.v1.Aggregator/"
UPLOADS = {SERVICE + "Submit", SERVICE + "SubmitMessage"}


# ---------------------------------------------------------------------------- the hardware


class Snp:
    format = "sev-snp"

    def __init__(self) -> None:
        self.authority = SnpAuthority()

    def attester(self):
        return self.authority.attester(MEASUREMENT)

    def collateral(self):
        return self.authority.collateral()

    def policy(self) -> str:
        tcb = DEFAULT_TCB
        return (
            "version = 1\nmax_age_seconds = 60\n[sev-snp]\n"
            f'trusted_ark_sha256 = ["{self.authority.ark_sha256}"]\n'
            f"min_tcb = {{ bootloader = {tcb.bootloader}, tee = {tcb.tee}, snp = {tcb.snp}, "
            f"microcode = {tcb.microcode} }}\n"
            f'[[sev-snp.measurements]]\nmeasurement = "{MEASUREMENT.hex()}"\n'
        )


class Tdx:
    format = "tdx"

    def __init__(self) -> None:
        self.authority = TdxAuthority()

    def attester(self):
        return self.authority.attester(MEASUREMENT)

    def collateral(self):
        return self.authority.collateral()

    def policy(self) -> str:
        zero = "00" * 48
        return (
            "version = 1\nmax_age_seconds = 60\n[tdx]\n"
            f'trusted_root_sha256 = ["{self.authority.root_sha256}"]\n'
            f'min_tee_tcb_svn = "{DEFAULT_TEE_TCB_SVN.hex()}"\n'
            f'[[tdx.measurements]]\nmrtd = "{MEASUREMENT.hex()}"\n'
            f'rtmr0 = "{zero}"\nrtmr1 = "{zero}"\nrtmr2 = "{zero}"\n'
        )


HARDWARE = {"sev-snp": Snp, "tdx": Tdx}


def _federation(root: Path, hardware) -> Deployment:
    """A federation whose kits carry ``hardware``'s policy; its collateral is in the folder."""
    port = free_port()
    folder = root / "federation"
    fed = init_federation(folder, name="testfed", hosts=HOSTS, port=port)
    client_policy_path(folder).parent.mkdir(exist_ok=True)
    client_policy_path(folder).write_text(hardware.policy())
    hardware.collateral().write_directory(collateral_path(folder))
    kits = {f"client{i}": load_kit(add_client(fed, f"client{i}")) for i in range(2)}
    store = open_store(fed)
    store.add_model_version(base_model(), parent=None, status="accepted")
    store.close()
    dep = Deployment(folder, port, fed, kits)
    dep.configure(
        aggregation={"mode": "attested", "min_clients": 1, "rounds": 1},
        attestation={"provider": hardware.format},
        deadlines={"advertise_keys": 5},
    )
    return dep


def _audit(folder: Path, event: str) -> list[dict]:
    store = open_store(FederationFolder.load(folder))
    try:
        return [e.details for e in store.audit.entries() if e.event == event]
    finally:
        store.close()


# ------------------------------------------------------------------------------- the relay


class Relay(grpc.GenericRpcHandler):
    """A man in the middle outside the TEE, built from a copy of the federation folder.

    It terminates the clients' mutual TLS with the copied ``server.key`` (or any key it
    likes: it has the CA key), forwards ``Attest`` to the genuine appliance as a member
    (a kit it found in the copied ``kits/``), and serves every other call from its own
    appliance, which runs on the copied folder. ``own_certificate``: rewrite the genuine
    reply to name the relay's certificate instead of passing the genuine one through.
    """

    def __init__(self, genuine: str, backend: str, folder: Path, *, own_certificate: bool):
        member = load_kit(folder / "kits" / "client1")
        ca, key, cert = member.channel_credentials_material()
        self.genuine = grpc.secure_channel(
            genuine,
            grpc.ssl_channel_credentials(ca, key, cert),
            options=[("grpc.ssl_target_name_override", member.server_name)],
        )
        self.backend = grpc.insecure_channel(backend)
        fed = FederationFolder.load(folder)
        self.key_pem, chain, self.ca_pem = fed.server_credentials_material()
        self.cert_der = fed.server_certificate.public_bytes(Encoding.DER)
        self.chain_pem = chain
        self.own_certificate = own_certificate
        self.calls: list[str] = []
        self.upload_bytes = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((self,))
        creds = grpc.ssl_server_credentials(
            [(self.key_pem, self.chain_pem)],
            root_certificates=self.ca_pem,
            require_client_auth=True,
        )
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.server.stop(0)
        self.genuine.close()
        self.backend.close()

    def _seen(self, method: str, size: int) -> None:
        with self._lock:
            self.calls.append(method.removeprefix(SERVICE))
            if method in UPLOADS:
                self.upload_bytes += size

    def service(self, details):
        method = details.method
        if method == SERVICE + "Attest":
            return grpc.unary_unary_rpc_method_handler(self._attest)
        if method == SERVICE + "Submit":
            return grpc.stream_unary_rpc_method_handler(
                lambda chunks, context: self._stream_in(method, chunks, context)
            )
        if method == SERVICE + "DownloadModel":
            return grpc.unary_stream_rpc_method_handler(
                lambda request, context: self._stream_out(method, request, context)
            )
        if method.startswith(SERVICE):
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: self._unary(method, request, context)
            )
        return None

    @staticmethod
    def _name(context) -> tuple[tuple[str, str]]:
        return ((INSECURE_NAME_HEADER, context.auth_context()["x509_common_name"][0].decode()),)

    def _attest(self, request: bytes, context) -> bytes:
        self._seen(SERVICE + "Attest", len(request))
        try:
            raw = self.genuine.unary_unary(SERVICE + "Attest")(request, timeout=10)
        except grpc.RpcError as error:
            context.abort(error.code(), error.details())
        if not self.own_certificate:
            return raw
        reply = pb.AttestReply.FromString(raw)
        reply.tls_certificate_der = self.cert_der
        return reply.SerializeToString()

    def _unary(self, method: str, request: bytes, context) -> bytes:
        self._seen(method, len(request))
        try:
            return self.backend.unary_unary(method)(
                request, metadata=self._name(context), timeout=30
            )
        except grpc.RpcError as error:
            context.abort(error.code(), error.details())

    def _stream_in(self, method: str, chunks, context) -> bytes:
        def counted():
            for chunk in chunks:
                self._seen(method, len(chunk))
                yield chunk

        try:
            return self.backend.stream_unary(method)(
                counted(), metadata=self._name(context), timeout=30
            )
        except grpc.RpcError as error:
            context.abort(error.code(), error.details())

    def _stream_out(self, method: str, request: bytes, context):
        self._seen(method, len(request))
        yield from self.backend.unary_stream(method)(
            request, metadata=self._name(context), timeout=30
        )


def _relay_setup(tmp_path: Path, hardware, running, *, own_certificate: bool):
    dep = _federation(tmp_path, hardware)
    copy = tmp_path / "stolen"
    shutil.copytree(dep.folder, copy)  # every key on disk, CA key and kits included
    genuine = running(dep.folder, attester=hardware.attester())
    backend_port = free_port()
    FederationFolder.load(copy)  # the copy is a complete federation
    config = copy / "sealagg.toml"
    config.write_text(
        config.read_text().replace(f"127.0.0.1:{dep.port}", f"127.0.0.1:{backend_port}", 1)
    )
    # The relay's own appliance: the same code, outside any TEE, with the software attester.
    Deployment(copy, backend_port, FederationFolder.load(copy), {}).configure(
        attestation={"provider": "software"}
    )
    running(copy, insecure=True)
    relay = Relay(
        f"127.0.0.1:{genuine.port}",
        f"127.0.0.1:{backend_port}",
        copy,
        own_certificate=own_certificate,
    )
    return dep, genuine, relay


@pytest.mark.parametrize("own_certificate", [False, True], ids=["passes-cert-through", "own-cert"])
@pytest.mark.parametrize("fmt", sorted(HARDWARE))
def test_a_relay_with_a_copied_folder_gets_no_update_byte(
    tmp_path, running, accepted, fmt, own_certificate
):
    hardware = HARDWARE[fmt]()
    dep, genuine, relay = _relay_setup(tmp_path, hardware, running, own_certificate=own_certificate)
    conn = Connection(dep.kits["client0"], address=relay.address)
    computed: list[int] = []
    try:
        participant = Participant(conn, poll_seconds=0.5)
        with pytest.raises(AttestationRefusedError) as refused:
            participant.run_round(
                lambda s, t: computed.append(1) or (np.ones(DIM, np.float32), 1.0, {})
            )
    finally:
        conn.close()
        relay.close()
    assert refused.value.reason is Reason.WRONG_TLS_KEY
    assert "Attest" in relay.calls  # the relay did forward the genuine evidence
    assert relay.upload_bytes == 0 and not {"Submit", "SubmitMessage"} & set(relay.calls)
    assert not computed and not accepted  # no update was even computed, none accepted
    genuine.stop()
    results = _audit(dep.folder, "attestation_result")
    assert all(not r["accepted"] for r in results)  # the genuine appliance saw nothing else


@pytest.mark.parametrize("fmt", sorted(HARDWARE))
def test_the_genuine_appliance_is_accepted_through_the_same_steps(tmp_path, running, fmt):
    """The control: the same client, policy and collateral against the genuine appliance."""
    hardware = HARDWARE[fmt]()
    dep = _federation(tmp_path, hardware)
    app = running(dep.folder, attester=hardware.attester())
    conn = Connection(dep.kits["client0"], address=dep.address)
    try:
        participant = Participant(conn, poll_seconds=0.5)
        report = participant.run_round(lambda s, t: (np.ones(DIM, np.float32), 1.0, {}))
        result = participant.attestation.last_result
    finally:
        conn.close()
    assert report.outcome == "published"
    assert result.accepted and not result.insecure and result.format == fmt
    app.wait(30)
    results = _audit(dep.folder, "attestation_result")
    assert [(r["client"], r["accepted"]) for r in results] == [("client0", True)]


@pytest.mark.parametrize("fmt", sorted(HARDWARE))
def test_the_appliance_restarted_outside_the_tee_is_refused(tmp_path, running, accepted, fmt):
    """The folder's appliance run outside any TEE (software attester) against a hardware policy.

    Even a client that allows the insecure attester for development refuses it here: its
    hardware policy requires hardware evidence.
    """
    hardware = HARDWARE[fmt]()
    dep = _federation(tmp_path, hardware)
    dep.configure(attestation={"provider": "software"}, aggregation={"rounds": 4})
    running(dep.folder)
    for allow in (False, True):
        conn = Connection(dep.kits["client0"], address=dep.address, allow_insecure_attester=allow)
        computed: list[int] = []

        def compute(s, t, computed=computed):
            computed.append(1)
            return np.ones(DIM, np.float32), 1.0, {}

        try:
            participant = Participant(conn, poll_seconds=0.5)
            with pytest.raises(AttestationRefusedError) as refused:
                participant.run_round(compute)
        finally:
            conn.close()
        assert refused.value.reason is Reason.FORMAT_NOT_ALLOWED, refused.value  # not hardware
        assert not computed and not accepted


def test_the_tls_key_is_born_in_memory_at_every_start(tmp_path, running):
    """An attesting appliance never presents server.key, never writes its key, and makes a
    new one at each start; the audit names the key each start presented."""
    hardware = Snp()
    dep = _federation(tmp_path, hardware)
    folder_key = FederationFolder.load(dep.folder).server_certificate
    spkis = []
    for _ in range(2):
        app = running(dep.folder, attester=hardware.attester())
        identity = app.app.tls_identity
        assert identity.ephemeral
        assert identity.spki_sha256 != pki.spki_sha256(folder_key)
        pki.check_issued_by(identity.certificate, dep.federation.ca_certificate)
        key = pki.load_tls_key(identity.key_pem, None, what="the born key")
        scalar = key.private_numbers().private_value.to_bytes(32, "big")
        body = b"".join(identity.key_pem.splitlines()[1:-1])  # the base64, lines joined
        for path in dep.folder.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                assert scalar not in data and body[40:] not in b"".join(data.splitlines()), path
        conn = Connection(dep.kits["client0"], address=dep.address)
        try:  # the certificate the client attests and pins is the one born at this start
            assert AttestationGuard.from_kit(conn).verify().accepted
            assert conn.pinned_certificate == identity.chain_pem
        finally:
            conn.close()
        spkis.append(identity.spki_sha256.hex())
        app.stop()
    assert spkis[0] != spkis[1]
    logged = [e["tls_spki_sha256"] for e in _audit(dep.folder, "attestation_provider")]
    assert logged == spkis


def test_a_protected_ca_key_must_be_given_to_an_attesting_appliance(tmp_path):
    """The born key's certificate is issued at start: a passphrase-protected CA key must be
    unlocked for it, and the refusal says how (``sealagg serve --passphrase-file``)."""
    folder = tmp_path / "federation"
    init_federation(folder, name="testfed", hosts=HOSTS, port=free_port(), passphrase=b"pw")
    Deployment(folder, 0, FederationFolder.load(folder), {}).configure(
        attestation={"provider": "software"}
    )
    with pytest.raises(ProvisioningError, match="passphrase-file"):
        Appliance(folder)
    app = Appliance(folder, ca_passphrase=b"pw")
    try:
        assert app.tls_identity.ephemeral
    finally:
        app.store.close()
