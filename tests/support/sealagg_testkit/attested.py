"""Attested-mode federations on fake TEE hardware, and a relay outside the TEE.

Shared by the shim, end-to-end and red-team tests. The hardware is the test suite's own AMD /
Intel (attest/testing_*); everything else is real: the federation folder and its kits, the
appliance's store, gRPC with the federation's certificates.
"""

from __future__ import annotations

import shutil
import threading
from collections.abc import Callable, Iterable
from concurrent import futures
from pathlib import Path

import grpc
from cryptography.hazmat.primitives.serialization import Encoding

from sealagg.appliance.attestation import (
    client_policy_path,
    collateral_path,
    setup_software_attestation,
)
from sealagg.appliance.federation import FederationFolder, add_client, init_federation
from sealagg.appliance.kit import load_kit
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment, base_model, free_port
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.attest.collateral import CollateralBundle
from sealagg.attest.testing_snp import SnpAuthority
from sealagg.attest.testing_tdx import DEFAULT_TEE_TCB_SVN, TdxAuthority
from sealagg.client_shim.connection import INSECURE_NAME_HEADER
from sealagg_testkit.attest_evidence import policy_text

HOSTS = ["localhost", "127.0.0.1"]
#: What the fake hardware measures and the strict policies allow.
MEASUREMENT = bytes.fromhex("44" * 48)
SERVICE = "/sealagg.v1.Aggregator/"
#: The calls that carry (part of) a client's update.
UPLOADS = frozenset({SERVICE + "Submit", SERVICE + "SubmitMessage"})
#: The fake hardware of each format, by the name the appliance's config gives its provider.
HARDWARE: dict[str, type[SnpAuthority] | type[TdxAuthority]] = {
    "sev-snp": SnpAuthority,
    "tdx": TdxAuthority,
}


def hardware_format(authority: SnpAuthority | TdxAuthority) -> str:
    return "sev-snp" if isinstance(authority, SnpAuthority) else "tdx"


def strict_policy(
    authority: SnpAuthority | TdxAuthority,
    *,
    max_age: float = 60,
    gpu_sdk_policy: str | None = None,
) -> str:
    """The strict policy a data owner writes for ``authority``'s hardware running
    :data:`MEASUREMENT`: its root pinned, the TCB floor at what the hardware reports (SNP: the
    authority's TCB; TDX: :data:`DEFAULT_TEE_TCB_SVN`), TDX's RTMR0-2 pinned to zeros."""
    if isinstance(authority, SnpAuthority):
        return policy_text(
            snp=authority, measurement=MEASUREMENT, max_age=max_age, gpu_sdk_policy=gpu_sdk_policy
        )
    return policy_text(
        tdx=authority,
        measurement=MEASUREMENT,
        max_age=max_age,
        extra_tdx=f'min_tee_tcb_svn = "{DEFAULT_TEE_TCB_SVN.hex()}"',
        gpu_sdk_policy=gpu_sdk_policy,
    )


def policy_federation(
    root: Path,
    *,
    policy: str | None = None,
    collateral: CollateralBundle | None = None,
    clients: int = 2,
    software: bool = False,
) -> Deployment:
    """A federation in ``root/federation`` with an accepted base model and kits for
    ``client0..``; the kits carry ``policy`` (and ``collateral``, which stays in the folder).

    ``software``: set the folder up for the software attester first (its policy, unless
    ``policy`` replaces it). The configuration is left as ``init`` wrote it."""
    port = free_port()
    folder = root / "federation"
    fed = init_federation(folder, name="testfed", hosts=HOSTS, port=port)
    if software:
        setup_software_attestation(folder)
    if policy is not None:
        client_policy_path(folder).parent.mkdir(exist_ok=True)
        client_policy_path(folder).write_text(policy)
    if collateral is not None:
        collateral.write_directory(collateral_path(folder))
    kits = {f"client{i}": load_kit(add_client(fed, f"client{i}")) for i in range(clients)}
    store = open_store(fed)
    store.add_model_version(base_model(), parent=None, status="accepted")
    store.close()
    return Deployment(folder, port, fed, kits)


def attested_federation(
    root: Path,
    authority: SnpAuthority | TdxAuthority,
    *,
    collateral: CollateralBundle | None = None,
    provider: str | None = None,
    **config: dict,
) -> Deployment:
    """An attested-mode federation (one round, one client suffices) whose kits carry the
    :func:`strict_policy` for ``authority`` and whose folder holds ``collateral`` (default:
    the authority's current bundle).

    ``provider``: the configured attester (default: the authority's format; the tests inject
    the fake hardware's attester). ``config``: further sections for ``Deployment.configure``."""
    dep = policy_federation(
        root,
        policy=strict_policy(authority),
        collateral=authority.collateral() if collateral is None else collateral,
    )
    dep.configure(
        aggregation={"mode": "attested", "min_clients": 1, "rounds": 1},
        attestation={"provider": provider or hardware_format(authority)},
    )
    if config:
        dep.configure(**config)
    return dep


def stolen_copy(dep: Deployment, root: Path) -> Path:
    """What a relay outside the TEE holds: a copy of every key on disk (CA key, server.key,
    the kits left in ``kits/``)."""
    copy = root / "stolen"
    shutil.copytree(dep.folder, copy)
    return copy


class Relay(grpc.GenericRpcHandler):
    """A man in the middle outside the TEE, built from a copy of the federation folder.

    It terminates the clients' mutual TLS with the copied ``server.key`` and forwards
    ``Attest`` to the genuine appliance as a member (a kit it found in the copied ``kits/``).
    The certificate the genuine reply names is passed through, or replaced by the copied
    folder's own (``own_certificate``), or by ``name_certificate(genuine_der)``. Every other
    call goes to ``backend`` (the relay's own appliance on the copied folder) when given;
    without one the relay takes uploads itself and refuses the rest. ``calls`` and
    ``upload_bytes`` count what reached it.
    """

    def __init__(
        self,
        genuine: str,
        folder: Path,
        *,
        backend: str | None = None,
        own_certificate: bool = False,
        name_certificate: Callable[[bytes], bytes] | None = None,
    ) -> None:
        if own_certificate and name_certificate is not None:
            raise ValueError("own_certificate or name_certificate, not both")
        member = load_kit(folder / "kits" / "client1")
        ca, key, cert = member.channel_credentials_material()
        self.genuine = grpc.secure_channel(
            genuine,
            grpc.ssl_channel_credentials(ca, key, cert),
            options=[("grpc.ssl_target_name_override", member.server_name)],
        )
        self.backend = grpc.insecure_channel(backend) if backend is not None else None
        fed = FederationFolder.load(folder)
        key_pem, chain_pem, ca_pem = fed.server_credentials_material()
        if own_certificate:
            own = fed.server_certificate.public_bytes(Encoding.DER)
            name_certificate = lambda genuine_der: own  # noqa: E731
        self.name_certificate = name_certificate
        self.calls: list[str] = []
        self.upload_bytes = 0
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self.server.add_generic_rpc_handlers((self,))
        creds = grpc.ssl_server_credentials(
            [(key_pem, chain_pem)], root_certificates=ca_pem, require_client_auth=True
        )
        self.port = self.server.add_secure_port("127.0.0.1:0", creds)
        self.server.start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def attests(self) -> int:
        with self._lock:
            return self.calls.count("Attest")

    def close(self) -> None:
        self.server.stop(0)
        self.genuine.close()
        if self.backend is not None:
            self.backend.close()

    def _seen(self, method: str, size: int) -> None:
        with self._lock:
            self.calls.append(method.removeprefix(SERVICE))
            if method in UPLOADS:
                self.upload_bytes += size

    def service(self, details):
        method = details.method
        if not method.startswith(SERVICE):
            return None
        if method == SERVICE + "Attest":
            return grpc.unary_unary_rpc_method_handler(self._attest)
        if method == SERVICE + "Submit":
            return grpc.stream_unary_rpc_method_handler(
                lambda chunks, context: self._stream_in(method, chunks, context)
            )
        if method == SERVICE + "DownloadModel" and self.backend is not None:
            return grpc.unary_stream_rpc_method_handler(
                lambda request, context: self._stream_out(method, request, context)
            )
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._unary(method, request, context)
        )

    @staticmethod
    def _name(context) -> tuple[tuple[str, str]]:
        return ((INSECURE_NAME_HEADER, context.auth_context()["x509_common_name"][0].decode()),)

    def _attest(self, request: bytes, context) -> bytes:
        self._seen(SERVICE + "Attest", len(request))
        try:
            raw = self.genuine.unary_unary(SERVICE + "Attest")(request, timeout=10)
        except grpc.RpcError as error:
            context.abort(error.code(), error.details())
        if self.name_certificate is None:
            return raw
        reply = pb.AttestReply.FromString(raw)
        reply.tls_certificate_der = self.name_certificate(bytes(reply.tls_certificate_der))
        return reply.SerializeToString()

    def _unary(self, method: str, request: bytes, context) -> bytes:
        self._seen(method, len(request))
        if self.backend is None:
            return self._keep(method, [], context)
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

        if self.backend is None:
            return self._keep(method, counted(), context)
        try:
            return self.backend.stream_unary(method)(
                counted(), metadata=self._name(context), timeout=30
            )
        except grpc.RpcError as error:
            context.abort(error.code(), error.details())

    def _stream_out(self, method: str, request: bytes, context):
        self._seen(method, len(request))
        yield from self.backend.unary_stream(method)(  # type: ignore[union-attr]
            request, metadata=self._name(context), timeout=30
        )

    @staticmethod
    def _keep(method: str, parts: Iterable[bytes], context) -> bytes:
        """No backend: an upload is taken (drained, already counted), anything else refused."""
        if method not in UPLOADS:
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "relay")
        for _ in parts:
            pass
        return pb.SubmitAck(accepted=True).SerializeToString()
