"""The Admin gRPC service: status, views, approval decisions, runs, evaluation, revocation,
audit verification, model export and console logins.

Every caller is identified by its mutual-TLS certificate (the same check as the Aggregator
service); only administrators get an answer. Each handler is a thin adapter: authorization,
the operation and its audit record live in appliance/admin_ops.py, the read-only views in
appliance/admin_views.py, shared with the console, so no front-end can decide differently.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc

from sealagg.appliance.admin_ops import AdminOperations, Admins
from sealagg.appliance.admin_views import AdminViews, ViewError
from sealagg.appliance.admins import Action
from sealagg.appliance.errors import ProvisioningError, StoreError
from sealagg.appliance.evaluation import EvaluationError
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.metrics import Metrics
from sealagg.appliance.orchestrator import Orchestrator
from sealagg.appliance.runs import RunError
from sealagg.appliance.service import Identify, who
from sealagg.appliance.store import Store
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc

__all__ = ["CONSOLE_OFF", "EXPORT_CHUNK_BYTES", "AdminService", "ConsoleLogin"]

_log = logging.getLogger("sealagg.admin")

#: Given an administrator's verified name: (the console's one-time login URL, its lifetime s).
ConsoleLogin = Callable[[str], tuple[str, float]]
CONSOLE_OFF = "the console is off ([console] enabled = false)"
#: Model export chunks stay under the 2 MiB message ceiling of the server (server.py).
EXPORT_CHUNK_BYTES = 1024 * 1024
#: Longest ``args_json`` a Query accepts (views take a few small arguments).
MAX_ARGS_JSON = 4096


class AdminService(pb_grpc.AdminServicer):
    """Status, views and every admin operation, for administrator certificates."""

    def __init__(
        self,
        orchestrator: Orchestrator,
        store: Store,
        identify: Identify,
        admins: Admins,
        metrics: Metrics,
        *,
        federation: FederationFolder | None = None,
        console_login: ConsoleLogin | None = None,
        console_address: Callable[[], str | None] = lambda: None,
    ) -> None:
        """``federation``: the loaded folder (certificates, client records, revocation);
        None: loaded from the store's folder. ``console_login``: mints a console login for
        an administrator (None: the console is off and OpenConsole says so).
        ``console_address``: where the console serves now (None: off), shown by Status."""
        self._orch = orchestrator
        self._store = store
        self._identify = identify
        self._metrics = metrics
        self.console_login = console_login
        self._console_address = console_address
        if federation is None:
            federation = _federation_of(store)
        self.operations = AdminOperations(orchestrator, store, admins, federation)
        self.views = AdminViews(
            orchestrator, store, federation, admins=admins if callable(admins) else None
        )

    async def _admin(self, context: grpc.aio.ServicerContext, action: str = "status") -> str:
        """The caller's name if it is an administrator whose roles allow ``action`` (an
        ``appliance.admins.Action`` value); PERMISSION_DENIED otherwise."""
        name = await who(self._identify, context, self._metrics)
        try:
            self.operations.authorize(name, action)
        except PermissionError as error:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        return name

    # ------------------------------------------------------------------------ read access

    async def Status(
        self, request: pb.StatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.StatusReply:
        await self._admin(context, Action.STATUS)
        return pb.StatusReply(
            json=json.dumps({**self.views.status(), "console": self._console_address()})
        )

    async def ListRuns(
        self, request: pb.ListRunsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListRunsReply:
        await self._admin(context, Action.LIST)
        return pb.ListRunsReply(json=json.dumps(self.views.run_records()))

    async def Query(
        self, request: pb.AdminQuery, context: grpc.aio.ServicerContext
    ) -> pb.AdminQueryReply:
        """One read-only view (appliance/admin_views.py) as JSON."""
        await self._admin(context, Action.LIST)
        args = await _query_args(request.args_json, context)
        try:
            data = self.views.view(request.view, args)
        except ViewError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except StoreError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        return pb.AdminQueryReply(json=json.dumps(data))

    # -------------------------------------------------------------------------- decisions

    async def Decide(
        self, request: pb.DecisionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecisionReply:
        admin = await self._admin(context, Action.DECIDE)
        try:
            detail = self.operations.decide(
                admin, request.round_number, request.approve, request.reason
            )
        except (StoreError, ValueError) as error:
            return pb.DecisionReply(ok=False, detail=str(error))
        return pb.DecisionReply(ok=True, detail=detail)

    # ------------------------------------------------------------------------------- runs

    async def CreateRun(
        self, request: pb.RunSpec, context: grpc.aio.ServicerContext
    ) -> pb.RunReply:
        admin = await self._admin(context, Action.CREATE_RUN)
        try:
            run = self.operations.create_run(
                admin,
                name=request.name,
                mode=request.mode,
                rounds=request.rounds,
                hyperparameters_json=request.hyperparameters_json,
                base_model_version=request.base_model_version,
                start=request.start,
                schedule=request.schedule,
                async_json=request.async_json,
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
        admin = await self._admin(context, Action.CONTROL_RUN)
        try:
            run = self.operations.control_run(admin, request.run_id, request.action, request.reason)
        except (RunError, StoreError, ValueError) as error:
            return pb.RunReply(ok=False, detail=str(error))
        return pb.RunReply(
            ok=True, detail=f"run {run.run_id} is {run.status}", run_json=json.dumps(run.as_dict())
        )

    async def Evaluate(
        self, request: pb.EvaluationRequest, context: grpc.aio.ServicerContext
    ) -> pb.EvaluationReply:
        """Blocks until the evaluation closes (its deadline, or every asked client answered)."""
        admin = await self._admin(context, Action.EVALUATE)
        try:
            result = await self.operations.evaluate(
                admin,
                version=request.model_version,
                run_id=request.run_id,
                deadline_seconds=request.deadline_seconds,
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

    # ------------------------------------------------------------------ clients and audit

    async def Revoke(
        self, request: pb.RevokeRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdminActionReply:
        """Revoke a client (not an administrator); audited ``client_revoked`` with the
        caller's name and the reason."""
        admin = await self._admin(context, Action.REVOKE_CLIENT)
        try:
            detail = self.operations.revoke(admin, request.name, request.reason)
        except PermissionError as error:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, str(error))
        except LookupError as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except (StoreError, ProvisioningError, OSError) as error:
            return pb.AdminActionReply(ok=False, detail=f"revocation failed: {error}")
        return pb.AdminActionReply(ok=True, detail=detail)

    async def VerifyAudit(
        self, request: pb.VerifyAuditRequest, context: grpc.aio.ServicerContext
    ) -> pb.AdminQueryReply:
        """{ok, entries, head_hash, first_broken: {seq, reason} | None} as JSON."""
        admin = await self._admin(context, Action.AUDIT_VERIFY)
        try:
            result = self.operations.verify_audit(admin)
        except (StoreError, ProvisioningError, OSError) as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cannot verify: {error}")
        return pb.AdminQueryReply(json=json.dumps(result))

    async def ExportModel(
        self, request: pb.ExportModelRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ModelChunk]:
        """The stored safetensors bytes of a version (0: the current one): a header (version,
        size, SHA-256), then chunks of at most 1 MiB."""
        admin = await self._admin(context, Action.LIST)
        try:
            version, sha256, data = self.operations.export_model(admin, request.version)
        except LookupError as error:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(error))
        except ValueError as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        except StoreError as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(error))
        header = pb.ModelHeader(version=version, total_bytes=len(data), sha256=sha256)
        yield pb.ModelChunk(header=header)
        view = memoryview(data)
        for offset in range(0, len(data), EXPORT_CHUNK_BYTES):
            yield pb.ModelChunk(data=bytes(view[offset : offset + EXPORT_CHUNK_BYTES]))

    # ---------------------------------------------------------------------------- console

    async def OpenConsole(
        self, request: pb.ConsoleRequest, context: grpc.aio.ServicerContext
    ) -> pb.ConsoleReply:
        """A one-time console login for the calling administrator (its mTLS identity)."""
        admin = await self._admin(context, Action.STATUS)
        if self.console_login is None:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, CONSOLE_OFF)
        try:
            url, expires = self.console_login(admin)
        except (RuntimeError, ValueError, OSError) as error:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"no console login: {error}")
        return pb.ConsoleReply(url=url, expires_seconds=float(expires))


async def _query_args(text: str, context: grpc.aio.ServicerContext) -> dict[str, Any]:
    if not text:
        return {}
    if len(text) > MAX_ARGS_JSON:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"args_json is longer than {MAX_ARGS_JSON} bytes"
        )
    try:
        args = json.loads(text)
    except ValueError:
        args = None
    if not isinstance(args, dict):
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "args_json must be a JSON object")
    return args


def _federation_of(store: Store) -> FederationFolder | None:
    """The federation folder the store lives in (None when it is not one: a bare store in
    tests); views then leave out certificates and client records."""
    try:
        return FederationFolder.load(Path(store.folder))
    except (ProvisioningError, OSError) as error:
        _log.warning("admin views without the federation folder: %s", error)
        return None
