"""The Admin gRPC service: status, approval decisions, runs and federated evaluation.

Every caller is identified by its mutual-TLS certificate (the same check as the Aggregator
service); only administrators get an answer, and every state-changing call is audited with
the administrator's name.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import grpc

from sealagg.appliance.admins import AdminDirectory
from sealagg.appliance.errors import StoreError
from sealagg.appliance.evaluation import EvaluationError
from sealagg.appliance.metrics import Metrics
from sealagg.appliance.orchestrator import Orchestrator
from sealagg.appliance.runs import RunError
from sealagg.appliance.service import Identify, who
from sealagg.appliance.store import Store
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc

__all__ = ["AdminService"]

#: Who may do what: the live administrator directory (appliance/admins.py), or a plain set
#: of names that may do everything (tests and older callers).
Admins = Callable[[], AdminDirectory] | set[str]


class AdminService(pb_grpc.AdminServicer):
    """Status, approval decisions, runs and evaluations, for administrator certificates."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        store: Store,
        identify: Identify,
        admins: Admins,
        metrics: Metrics,
    ) -> None:
        self._orch = orchestrator
        self._store = store
        self._identify = identify
        self._admins = admins
        self._metrics = metrics

    async def _admin(self, context: grpc.aio.ServicerContext, action: str = "status") -> str:
        """The caller's name if it is an administrator (``action``: what it asks for, an
        ``appliance.admins.Action`` value, for per-role checks)."""
        name = await who(self._identify, context, self._metrics)
        try:
            if callable(self._admins):  # roles per action; deny by default
                self._admins().authorize(name, action)
            elif name not in self._admins:
                raise PermissionError(f"{name} is not an administrator")
        except PermissionError as error:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        return name

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusReply:
        await self._admin(context, "status")
        return pb.StatusReply(json=json.dumps(self._orch.status()))

    async def Decide(
        self, request: pb.DecisionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecisionReply:
        admin = await self._admin(context, "decide")
        try:
            detail = self._orch.decide(request.round_number, request.approve, request.reason, admin)
        except (StoreError, ValueError) as error:
            return pb.DecisionReply(ok=False, detail=str(error))
        return pb.DecisionReply(ok=True, detail=detail)

    async def CreateRun(
        self, request: pb.RunSpec, context: grpc.aio.ServicerContext
    ) -> pb.RunReply:
        admin = await self._admin(context, "create_run")
        try:
            run = self._orch.create_run(
                name=request.name,
                mode=request.mode,
                rounds=request.rounds,
                hyperparameters_json=request.hyperparameters_json,
                base_model_version=request.base_model_version,
                start=request.start,
                by=admin,
            )
        except (RunError, StoreError) as error:
            return pb.RunReply(ok=False, detail=str(error))
        verb = "created and started" if run.status == "running" else "created"
        return pb.RunReply(
            ok=True, detail=f"run {run.run_id} {verb}", run_json=json.dumps(run.as_dict())
        )

    async def ControlRun(
        self, request: pb.RunControl, context: grpc.aio.ServicerContext
    ) -> pb.RunReply:
        admin = await self._admin(context, "control_run")
        try:
            run = self._orch.control_run(request.run_id, request.action, request.reason, admin)
        except (RunError, StoreError) as error:
            return pb.RunReply(ok=False, detail=str(error))
        return pb.RunReply(
            ok=True, detail=f"run {run.run_id} is {run.status}", run_json=json.dumps(run.as_dict())
        )

    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunsReply:
        await self._admin(context, "list")
        return pb.ListRunsReply(json=json.dumps([r.as_dict() for r in self._orch.runs.runs()]))

    async def Evaluate(
        self, request: pb.EvaluationRequest, context: grpc.aio.ServicerContext
    ) -> pb.EvaluationReply:
        """Blocks until the evaluation closes (its deadline, or every asked client answered)."""
        admin = await self._admin(context, "evaluate")
        try:
            result = await self._orch.evaluate(
                version=request.model_version,
                run_id=request.run_id,
                deadline_seconds=request.deadline_seconds,
                by=admin,
            )
        except (RunError, EvaluationError, StoreError) as error:
            return pb.EvaluationReply(ok=False, detail=str(error))
        ok = result["status"] == "done"
        detail = (
            f"evaluation of version {result['version']} by {result['clients']} clients"
            if ok
            else f"evaluation failed: {result['reason']}"
        )
        return pb.EvaluationReply(ok=ok, detail=detail, json=json.dumps(result))
