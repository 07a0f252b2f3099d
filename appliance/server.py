"""Run the appliance: load the federation, open the store, serve gRPC over mutual TLS."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from sealagg.appliance import pki
from sealagg.appliance.admin_service import AdminService
from sealagg.appliance.admins import DirectoryWatch
from sealagg.appliance.attestation import configured_attesters, endpoint_for
from sealagg.appliance.config import ApplianceConfig, load_config
from sealagg.appliance.console import ConsoleHandle, ConsoleSettings, start_console
from sealagg.appliance.errors import ConfigError, ProvisioningError
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.health import ApplianceHealth, add_health_service
from sealagg.appliance.instance_lock import InstanceLock
from sealagg.appliance.interceptors import MalformedRequestInterceptor, PeerCheckInterceptor
from sealagg.appliance.metrics import CertificateExpiry, Metrics, StateCollector
from sealagg.appliance.orchestrator import Orchestrator, QualityGate
from sealagg.appliance.participant_sync import sync_at_start
from sealagg.appliance.peer_check import CachedPeerCheck
from sealagg.appliance.renewal import CertificateRenewer
from sealagg.appliance.service import (
    AggregatorService,
    certificate_identity,
    insecure_identity,
)
from sealagg.appliance.store import Store, default_state_path
from sealagg.appliance.tee_identity import (
    TlsIdentity,
    born_identity,
    folder_identity,
    refreshed_identity,
)
from sealagg.appliance.upload_limits import UploadBudget
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.attest import Attester
from sealagg.crypto.encoding import warm_up

if TYPE_CHECKING:  # Ray is imported only when [scale] is configured
    from sealagg.appliance.scale.runtime import ScaleRuntime

_log = logging.getLogger("sealagg.server")

ADMIN_NAMES = frozenset({"admin"})
#: Seconds between health probes of the store for ``Watch`` streams (``Check`` probes anew).
HEALTH_PROBE_SECONDS = 5.0
#: Longest a metrics scrape waits for the event loop's status snapshot.
STATUS_SNAPSHOT_SECONDS = 5.0
MAX_MESSAGE_BYTES = 2 * 1024 * 1024  # chunks are 1 MiB; nothing larger is accepted
INSECURE_WARNING = (
    "WARNING: --insecure: no TLS, clients name themselves; for local development only. "
    "Never expose this appliance in this mode."
)


def start_scale(config: ApplianceConfig) -> ScaleRuntime:
    """``[scale]``: start or join the Ray cluster and create the stripes (blocking). Ray is
    imported here only, so an appliance without ``[scale]`` runs without it installed."""
    assert config.scale is not None
    try:
        from sealagg.appliance.scale.runtime import ScaleRuntime
    except ImportError as error:
        raise ConfigError(
            f"[scale] needs Ray: install the sealagg[scale] extra ({error})"
        ) from None
    return ScaleRuntime.start(config.scale)


def open_store(federation: FederationFolder) -> Store:
    return Store.open(
        default_state_path(federation.folder),
        audit_key=federation.audit_signing_key,
        federation=federation.name,
    )


def handshake_credentials(
    federation: FederationFolder, identity: TlsIdentity | None = None
) -> grpc.ServerCredentials:
    """Mutual-TLS credentials whose client trust anchors follow provisioning.

    ``identity``: the key and certificate to present (an attesting appliance's key born in
    memory at start, appliance/tee_identity.py); the folder's server.key by default. The key
    reaches gRPC as in-memory PEM only.

    The trust anchors are the federation's CA certificates (:func:`client_trust_anchors`): the
    handshake admits any client certificate a trusted CA issued and that is within its dates;
    whether that client may call *now* (revoked, superseded, unregistered) is decided for every
    call by :class:`PeerCheckInterceptor`, which can name the client in its refusal, log it and
    count it; a refusal in the handshake could do none of that. gRPC asks for the configuration
    before every new handshake; it is rebuilt only when the provisioning stamp (clients,
    revocations, CAs, server certificate) or the hour changed.
    """
    identity = identity or folder_identity(federation)
    presented = [identity]  # swapped for the folder's renewed pair (sealagg certs renew-server)

    def stamp() -> tuple:  # hourly too, so clients whose certificates expired drop out
        hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
        return (federation.provisioning_stamp(), hour)

    def build() -> grpc.ServerCertificateConfiguration:
        presented[0] = refreshed_identity(federation, presented[0])
        key, chain = presented[0].key_pem, presented[0].chain_pem
        try:
            anchors = client_trust_anchors(federation)
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


def client_trust_anchors(federation: FederationFolder) -> bytes:
    """PEM of every CA whose client certificates the handshake accepts (during a CA rotation,
    the previous one too)."""
    cas = getattr(federation, "trusted_ca_certificates", (federation.ca_certificate,))
    return b"".join(pki.certificate_pem(ca) for ca in cas)


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
        its in-memory TLS key's certificate at start and needs a protected CA key for it.

        The folder's instance lock is taken first (appliance/instance_lock.py): a second
        appliance on a live folder is refused before it reads or writes anything there."""
        self.instance_lock = InstanceLock(Path(folder))
        self.instance_lock.acquire()
        try:
            self._open(folder, insecure, quality_gate, config, attester, ca_passphrase)
        except BaseException:
            self.instance_lock.release()
            raise

    def _open(
        self,
        folder: Path,
        insecure: bool,
        quality_gate: QualityGate | None,
        config: ApplianceConfig | None,
        attester: Attester | Sequence[Attester] | None,
        ca_passphrase: bytes | None,
    ) -> None:
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
        #: Named administrators and their roles (appliance/admins.py); never participants.
        self.admins = DirectoryWatch(self.federation.folder)
        # Issued/revoked kits and admins the CLI could not audit at the time (no database
        # yet) are recorded once, with their own times (appliance/participant_sync.py).
        sync_at_start(self.federation, self.store)
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
        #: grpc.health.v1 on the main port: SERVING while the listener is up and the store answers.
        self.health = ApplianceHealth(self.store.federation)
        self._health_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: The web console ([console], appliance/console/), when enabled and serving.
        self.console: ConsoleHandle | None = None
        self.admin_service: AdminService | None = None
        self.metrics.watch(StateCollector(self._status_snapshot, self._certificate_expiry))

    def _identity_keys(self) -> dict[str, bytes]:
        """Active clients' identity keys; re-read only when a client record or the revocation
        list changed (every poll asks, and parsing every record each time made the event loop
        the bottleneck at 200 clients)."""
        admins = self.admins.never_participants()  # an admin added while serving too
        stamp = (self.federation.provisioning_stamp(), admins)
        if self._keys_cache is None or self._keys_cache[0] != stamp:
            keys = self.federation.client_identity_keys()
            self._keys_cache = (stamp, {n: k for n, k in keys.items() if n not in admins})
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
        self._loop = asyncio.get_running_loop()
        identify: Callable = insecure_identity
        interceptors: list[grpc.aio.ServerInterceptor] = [MalformedRequestInterceptor()]
        if not self.insecure:
            peer_check = CachedPeerCheck(self.federation)
            identify = certificate_identity(peer_check)
            # First: a refused certificate reaches no handler, not even a request parser.
            interceptors.insert(0, PeerCheckInterceptor(peer_check.admit, self.metrics))
        server = grpc.aio.server(options=options, interceptors=interceptors)
        aggregator = AggregatorService(
            self.orchestrator,
            self.store,
            identify,
            self.metrics,
            self.attestation,
            self.upload_budget,
        )
        aggregator.renewer = CertificateRenewer(self.federation, self.store)
        pb_grpc.add_AggregatorServicer_to_server(aggregator, server)
        self.admin_service = self._admin_service(identify)
        pb_grpc.add_AdminServicer_to_server(self.admin_service, server)
        add_health_service(self.health, server)
        listen = self.config.server.listen
        if self.insecure:
            _log.error(INSECURE_WARNING)  # ERROR: shown whatever the --log-level
            self.port = server.add_insecure_port(listen)
        else:
            self.port = server.add_secure_port(
                listen, handshake_credentials(self.federation, self.tls_identity)
            )
        if self.config.server.metrics_listen:
            self.metrics.serve(self.config.server.metrics_listen)
        # The kernels load before the first call is served, not inside the first round.
        warmed = await asyncio.to_thread(warm_up)
        _log.debug("secure-aggregation kernels ready in %.2f s", warmed)
        if self.config.scale_enabled and self.orchestrator.scale is None:
            self.orchestrator.scale = await asyncio.to_thread(start_scale, self.config)
        await server.start()
        self.server = server
        await self.health.listening()
        self._health_task = asyncio.create_task(self._probe_health())
        _log.info("appliance listening on %s (port %d)", listen, self.port)
        if self.config.console.enabled:
            self.console = await self._start_console()
            _log.warning("console at %s (sign in: `sealagg console`)", self.console.url)
        return self.port

    def _admin_service(self, identify: Callable) -> AdminService:
        """The Admin service; it hands out console logins (``OpenConsole``) when the console
        is enabled."""
        return AdminService(
            self.orchestrator,
            self.store,
            identify,
            self.admins.current,
            self.metrics,
            federation=self.federation,
            console_login=self._console_login if self.config.console.enabled else None,
            console_address=lambda: self.console.url if self.console is not None else None,
        )

    def _console_login(self, admin: str) -> tuple[str, float]:
        """A one-time console login URL for ``admin`` (the console starts after gRPC)."""
        if self.console is None:
            raise RuntimeError("the console is not serving yet")
        return self.console.login(admin)

    async def _start_console(self) -> ConsoleHandle:
        """The web console on this loop, with the gRPC server's key and certificate, the same
        per-call certificate check, the admin directory, and the Admin service's own views and
        operations (one code path for gRPC, the admin API and the console)."""
        section = self.config.console
        directory = self.admins.current
        return await start_console(
            settings=ConsoleSettings(
                host=section.host,
                port=section.port,
                anonymous_read=section.anonymous,
                session_seconds=section.session_minutes * 60.0,
                token_seconds=section.token_seconds,
                public_host=self.config.server.tls_server_name,
            ),
            views=self.admin_service.views,
            operations=self.admin_service.operations,
            key_pem=self.tls_identity.key_pem,
            chain_pem=self.tls_identity.chain_pem,
            client_cas_pem=client_trust_anchors(self.federation),
            check_peer=CachedPeerCheck(self.federation),
            is_admin=lambda name: directory().is_admin(name),
            roles=lambda name: sorted(r.value for r in directory().roles_of(name)),
            audit=self.store.audit.append,
        )

    async def _probe_health(self) -> None:
        """Keep ``Watch`` streams current (a failing store turns NOT_SERVING within seconds)."""
        while True:
            await asyncio.sleep(HEALTH_PROBE_SECONDS)
            await self.health.refresh()

    def _status_snapshot(self) -> dict:
        """``orchestrator.status()`` taken on the event loop (a metrics scrape runs on its own
        thread; the orchestrator's state belongs to the loop)."""
        loop = self._loop
        if loop is None or loop.is_closed() or self.server is None:
            raise RuntimeError("the appliance is not serving")
        try:
            on_loop = asyncio.get_running_loop() is loop
        except RuntimeError:
            on_loop = False
        if on_loop:  # waiting for the loop from the loop itself would never end
            return self.orchestrator.status()

        async def snapshot() -> dict:
            return self.orchestrator.status()

        future = asyncio.run_coroutine_threadsafe(snapshot(), loop)
        return future.result(timeout=STATUS_SNAPSHOT_SECONDS)

    def _certificate_expiry(self) -> list[CertificateExpiry]:
        """The presented server certificate, the CA and the soonest active client certificate."""
        federation = self.federation
        served = self.tls_identity.certificate
        if not self.tls_identity.ephemeral:  # follows a renewal of server.pem on disk
            served = federation.server_certificate
        items = [
            CertificateExpiry("server", "", served.not_valid_after_utc),
            CertificateExpiry("ca", "", federation.ca_certificate.not_valid_after_utc),
        ]
        revoked = federation.revocations()
        active = [
            r
            for r in federation.client_records()
            if not r.revoked
            and r.serial not in revoked
            and r.name not in self.admins.never_participants()
        ]
        if active:
            soonest = min(active, key=lambda r: r.not_after)
            items.append(CertificateExpiry("client", soonest.name, soonest.not_after))
        return items

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
        try:
            await self.health.shutting_down()  # NOT_SERVING before the listener goes
            if self.console is not None:
                await self.console.close()
                self.console = None
            if self._health_task is not None:
                self._health_task.cancel()
                self._health_task = None
            if self.server is not None:
                await self.server.stop(grace=1.0)
                self.server = None
            if self.orchestrator.scale is not None:  # the stripes; the cluster if it owns it
                scale, self.orchestrator.scale = self.orchestrator.scale, None
                await asyncio.to_thread(scale.shutdown)
            self.store.close()
        finally:
            self.metrics.close()
            self.instance_lock.release()
