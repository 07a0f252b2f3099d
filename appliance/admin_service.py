"""The Admin gRPC service: status, approval decisions, runs and federated evaluation.

Every caller is identified by its mutual-TLS certificate (the same check as the Aggregator
service); only administrators get an answer, and every state-changing call is audited with
the administrator's name.
"""

from __future__ import annotations

import json

import grpc

from sealagg.appliance.errors import StoreError
from sealagg.appliance.metrics import Metrics
from sealagg.appliance.orchestrator import Orchestrator
from sealagg.appliance.service import Identify, who
from sealagg.appliance.store import Store
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc

__all__ = ["AdminService"]


class AdminService(pb_grpc.AdminServicer):
    """Status and approval decisions, for certificates named in ``[server].admins``."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        store: Store,
        identify: Identify,
        admins: set[str],
        metrics: Metrics,
    ) -> None:
        self._orch = orchestrator
        self._store = store
        self._identify = identify
        self._admins = admins
        self._metrics = metrics

    async def _admin(self, context: grpc.aio.ServicerContext) -> str:
        name = await who(self._identify, context, self._metrics)
        if name not in self._admins:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED, f"{name} is not an administrator"
            )
        return name

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusReply:
        await self._admin(context)
        return pb.StatusReply(json=json.dumps(self._orch.status()))

    async def Decide(
        self, request: pb.DecisionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecisionReply:
        admin = await self._admin(context)
        try:
            detail = self._orch.decide(request.round_number, request.approve, request.reason, admin)
        except (StoreError, ValueError) as error:
            return pb.DecisionReply(ok=False, detail=str(error))
        return pb.DecisionReply(ok=True, detail=detail)
