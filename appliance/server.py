"""Run the appliance: load the federation, open the store, serve gRPC over mutual TLS."""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import grpc

from sealagg.appliance.admin_service import AdminService
from sealagg.appliance.attestation import configured_attesters, endpoint_for
from sealagg.appliance.config import ApplianceConfig, load_config
from sealagg.appliance.errors import ProvisioningError
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.interceptors import MalformedRequestInterceptor
from sealagg.appliance.metrics import Metrics
from sealagg.appliance.orchestrator import Orchestrator, QualityGate
from sealagg.appliance.peer_check import CachedPeerCheck
from sealagg.appliance.service import (
    AggregatorService,
    certificate_identity,
    insecure_identity,
)
from sealagg.appliance.store import Store, default_state_path
from sealagg.appliance.tee_identity import TlsIdentity, born_identity, folder_identity
from sealagg.appliance.upload_limits import UploadBudget
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.attest import Attester

_log = logging.getLogger("sealagg.server")

ADMIN_NAMES = frozenset({"admin"})
MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # chunks are 1 MiB; nothing larger is accepted
INSECURE_WARNING = (
    "WARNING: --insecure: no TLS, clients name themselves; for local development only. "
    "Never expose this appliance in this mode."
)


def open_store(federation: FederationFolder) -> Store:
    return Store.open(
        default_state_path(federation.folder),
        audit_key=federation.audit_signing_key,
        federation=federation.name,
    )


def sync_participants(federation: FederationFolder, store: Store) -> None:
    """Mirror issued and revoked client kits into the store (each change audited)."""
    active = {p.name: p for p in store.participants(active_only=True)}
    for record in federation.client_records():
        if record.name in ADMIN_NAMES:
            continue
        if record.revoked and record.name in active:
            store.revoke_participant(record.name, reason="certificate revoked")
        elif not record.revoked and record.name not in active:
            store.add_participant(
                record.name, cert_serial=record.serial, identity_key=record.identity_public_key
            )


def handshake_credentials(
    federation: FederationFolder, identity: TlsIdentity | None = None
) -> grpc.ServerCredentials:
    """Mutual-TLS credentials whose client trust anchors follow provisioning.

    ``identity``: the key and certificate to present (an attesting appliance's key born in
    memory at start, appliance/tee_identity.py); the folder's server.key by default. The key
    reaches gRPC as in-memory PEM only.

    gRPC asks for the certificate configuration before every new handshake; the anchors are
    the active clients' own certificates (:meth:`FederationFolder.handshake_trust_anchors`), so a
    revoked, expired or unknown client certificate fails the handshake itself. The
    configuration is rebuilt only when ``clients/`` or ``revoked.json`` changed. Calls on a
    connection opened before a revocation are refused by the per-call certificate check.
    """
    identity = identity or folder_identity(federation)
    key, chain = identity.key_pem, identity.chain_pem

    def stamp() -> tuple:  # hourly too, so clients whose certificates expired drop out
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        return (federation.provisioning_stamp(), hour)

    def build() -> grpc.ServerCertificateConfiguration:
        try:
            anchors = federation.handshake_trust_anchors()
        except (OSError, ProvisioningError) as error:  # fail closed: nobody gets in
            _log.error("cannot read the client list (%s); refusing all handshakes", error)
            anchors = chain
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=anchors)

    current = {"stamp": stamp()}

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        try:
            now = stamp()
        except OSError:
            now = None
        if now is not None and now == current["stamp"]:
            return None  # unchanged: keep the configuration gRPC holds
        current["stamp"] = now
        return build()

    return grpc.dynamic_ssl_server_credentials(build(), fetch, require_client_authentication=True)


class Appliance:
    """The running service: federation, store, orchestrator and the gRPC server."""

    def __init__(
        self,
        folder: Path,
        *,
        insecure: bool = False,
        quality_gate: QualityGate | None = None,
        config: ApplianceConfig | None = None,
        attester: Attester | Sequence[Attester] | None = None,
        ca_passphrase: bytes | None = None,
    ) -> None:
        """``attester``: overrides the configured provider (tests inject fake TEE hardware; a
        sequence for a CPU TEE plus a GPU). ``ca_passphrase``: an attesting appliance issues
        its in-memory TLS key's certificate at start and needs a protected CA key for it."""
        self.federation = FederationFolder.load(folder, passphrase=ca_passphrase)
        self.config = config or load_config(self.federation.paths.config)
        attesters = configured_attesters(self.federation, self.config.attestation, attester)
        # Anything that attests presents a key born in memory now (inside the TEE): the
        # folder's server.key is a file a relay can copy (appliance/tee_identity.py).
        self.tls_identity = (
            born_identity(self.federation) if attesters else folder_identity(self.federation)
        )
        self.attestation = endpoint_for(
            self.federation,
            attesters,
            self.tls_identity.certificate_der,
            self.tls_identity.spki_der,
        )
        self.store = open_store(self.federation)
        self.insecure = insecure
        self.metrics = Metrics()
        #: Uploads in flight, by client and in total ([uploads]; appliance/upload_limits.py).
        self.upload_budget = UploadBudget(self.config.uploads, self.metrics)
        self.store.audit.append(
            "config_loaded",
            {
                "mode": self.config.aggregation.mode,
                "min_clients": self.config.aggregation.min_clients,
                "optimizer": self.config.optimizer.name,
                "require_approval": self.config.gates.require_approval,
                "insecure": insecure,
            },
        )
        if self.attestation is not None:
            self.store.audit.append(
                "attestation_provider",
                {
                    "format": self.attestation.attester.format,
                    "additional": [a.format for a in self.attestation.attesters[1:]],
                    "insecure": self.attestation.insecure,
                    # The key born at this start: auditors match it to the clients' reports.
                    "tls_spki_sha256": self.tls_identity.spki_sha256.hex(),
                },
            )
        sync_participants(self.federation, self.store)
        self._keys_cache: tuple[tuple, dict[str, bytes]] | None = None
        self.orchestrator = Orchestrator(
            config=self.config,
            store=self.store,
            identity_keys=self._identity_keys,
            quality_gate=quality_gate,
            metrics=self.metrics,
        )
        self.server: grpc.aio.Server | None = None
        self.port: int | None = None

    def _identity_keys(self) -> dict[str, bytes]:
        """Active clients' identity keys; re-read only when a client record or the revocation
        list changed (every poll asks, and parsing every record each time made the event loop
        the bottleneck at 200 clients)."""
        stamp = self.federation.provisioning_stamp()
        if self._keys_cache is None or self._keys_cache[0] != stamp:
            keys = self.federation.client_identity_keys()
            self._keys_cache = (stamp, {n: k for n, k in keys.items() if n not in ADMIN_NAMES})
        return dict(self._keys_cache[1])

    async def start(self) -> int:
        """Bind and start serving; returns the bound port."""
        self.orchestrator.recover()  # before the first call can arrive
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),  # a second appliance on the same port must fail to bind
            # Fixed 64 KiB stream windows: a client waiting for an upload slot cannot park
            # megabytes in the transport, so memory stays flat in the number of clients.
            ("grpc.http2.bdp_probe", 0),
        ]
        server = grpc.aio.server(options=options, interceptors=[MalformedRequestInterceptor()])
        identify: Callable = insecure_identity
        if not self.insecure:
            identify = certificate_identity(CachedPeerCheck(self.federation))
        pb_grpc.add_AggregatorServicer_to_server(
            AggregatorService(
                self.orchestrator,
                self.store,
                identify,
                self.metrics,
                self.attestation,
                self.upload_budget,
            ),
            server,
        )
        pb_grpc.add_AdminServicer_to_server(
            AdminService(self.orchestrator, self.store, identify, set(ADMIN_NAMES), self.metrics),
            server,
        )
        listen = self.config.server.listen
        if self.insecure:
            print(INSECURE_WARNING, file=sys.stderr)
            self.port = server.add_insecure_port(listen)
        else:
            self.port = server.add_secure_port(
                listen, handshake_credentials(self.federation, self.tls_identity)
            )
        if self.config.server.metrics_listen:
            self.metrics.serve(self.config.server.metrics_listen)
        await server.start()
        self.server = server
        _log.info("appliance listening on %s (port %d)", listen, self.port)
        return self.port

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Serve and schedule rounds until ``stop`` is set or the round budget is spent."""
        stop = stop or asyncio.Event()
        if self.server is None:
            await self.start()
        try:
            await self.orchestrator.run(stop)
        finally:
            await self.close()

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop(grace=1.0)
            self.server = None
        self.store.close()
