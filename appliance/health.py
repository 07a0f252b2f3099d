"""The standard gRPC health service (``grpc.health.v1.Health``) on the appliance's port.

SERVING means the listener is up and the state store answers a read now; anything else is
NOT_SERVING: before the listener is up, once shutdown began (for good, as grpc's own servicer
does), and whenever the store fails. ``Check`` probes the store at every call, so a load
balancer or an orchestrator sees a closed or broken store at once; ``Watch`` streams follow
:meth:`ApplianceHealth.refresh`, which the appliance calls periodically.

The service sits behind the same mutual-TLS port and per-call certificate check as everything
else: a health probe needs a kit of this federation (the operator's admin kit will do). The
answer is one enum, nothing about rounds or clients.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio

__all__ = ["SERVICES", "ApplianceHealth", "add_health_service"]

_log = logging.getLogger("sealagg.health")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
#: "" is the server as a whole (what ``grpc_health_probe`` asks by default).
SERVICES = ("", "sealagg.v1.Aggregator", "sealagg.v1.Admin")


class ApplianceHealth(aio.HealthServicer):
    """grpc's asyncio health servicer whose status follows the store and the listener."""

    def __init__(self, probe: Callable[[], object]) -> None:
        """``probe``: a cheap read of the state store; raises when the store cannot answer."""
        super().__init__()
        self._probe = probe
        self._listening = False
        self._healthy: bool | None = None
        for service in SERVICES:
            self._server_status[service] = NOT_SERVING  # nothing listens yet

    async def Check(  # noqa: N802 - the gRPC method's name
        self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext
    ) -> health_pb2.HealthCheckResponse:
        if request.service in SERVICES:
            await self.refresh()
        return await super().Check(request, context)

    async def listening(self) -> None:
        """The listener is up: from now on the store's answer decides."""
        self._listening = True
        await self.refresh()

    async def refresh(self) -> None:
        """Probe the store and publish the result (no-op once shutdown began)."""
        try:
            self._probe()
            healthy = True
        except Exception as error:  # a closed, missing or corrupt store: say so, never raise
            healthy = False
            if self._healthy is not False:
                _log.error("health: the state store does not answer (%s)", error)
        self._healthy = healthy
        status = SERVING if healthy and self._listening else NOT_SERVING
        for service in SERVICES:
            await self.set(service, status)

    async def shutting_down(self) -> None:
        """Every service NOT_SERVING for good (grpc's graceful-shutdown semantics)."""
        await self.enter_graceful_shutdown()


def add_health_service(health: ApplianceHealth, server: grpc.aio.Server) -> None:
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
