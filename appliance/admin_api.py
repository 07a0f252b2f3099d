"""The Python admin API: the same operations as the CLI and the console, over the same
mutual-TLS Admin service, with an administrator kit.

Usage::

    from sealagg.appliance import admin_api

    with admin_api.connect(folder="federation") as admin:   # <folder>/admin-kit
        for version in admin.versions():
            print(version["version"], version["status"], version["metrics"])
        admin.approve(12, reason="accuracy 0.91 on the holdout")
        print(admin.verify_audit())                          # {"ok": True, "entries": ...}

Every call is authorized by the appliance from the kit's certificate (roles per action,
appliance/admins.py) and every state-changing call is audited there with the administrator's
name; nothing here is trusted by the appliance. Failures raise :class:`AdminAPIError` with a
one-line reason (unreachable, refused, invalid, not found).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from sealagg.appliance.admins import LEGACY_ADMIN
from sealagg.appliance.kit import ClientKit, load_kit, raw_public_key
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc

__all__ = [
    "ADMIN_KIT_DIRNAME",
    "AdminAPIError",
    "AdminClient",
    "ExportedModel",
    "connect",
    "load_admin_kit",
]

#: Where ``sealagg init`` writes the administrator kit inside the federation folder.
ADMIN_KIT_DIRNAME = "admin-kit"
DEFAULT_FOLDER = Path("federation")
#: What ``client_shim.connection`` sends in --insecure mode (development only).
INSECURE_NAME_HEADER = "sealagg-insecure-client"
INSECURE_CLIENT_WARNING = (
    "WARNING: --insecure: talking to the appliance without TLS; for local development only."
)
#: Seconds an export may take beyond the client's timeout (a large model streams for a while).
EXPORT_EXTRA_SECONDS = 120.0


class AdminAPIError(Exception):
    """The appliance could not be reached, refused the call, or answered something malformed;
    the message says which, in one line."""


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """A model version as exported: its bytes hash to ``sha256`` (checked on arrival)."""

    version: int
    sha256: str
    data: bytes
    path: Path | None = None


def _trusted_signer(folder: Path) -> bytes | None:
    """The federation's provisioning key, when the folder holds it, to pin the kit's signer."""
    path = folder / "audit_public_key.pem"
    try:
        key = load_pem_public_key(path.read_bytes())
    except (OSError, ValueError):
        return None
    return raw_public_key(key) if isinstance(key, Ed25519PublicKey) else None


def _named_admin(folder: Path, name: str) -> bool:
    """Whether ``name`` is a named administrator of ``folder`` (appliance/admins.py); the
    appliance decides what it may do, this only avoids sending a client's kit."""
    from sealagg.appliance.admins import AdminDirectory
    from sealagg.appliance.errors import ProvisioningError

    try:
        return AdminDirectory.load(folder).is_admin(name)
    except (OSError, ProvisioningError):
        return False


def load_admin_kit(
    folder: Path, kit_path: Path | None, *, error: type[Exception] = AdminAPIError
) -> ClientKit:
    """The administrator kit at ``kit_path`` (default ``<folder>/admin-kit``); refuses a
    client's kit before it is sent (the appliance would refuse it anyway)."""
    folder = Path(folder)
    path = Path(kit_path) if kit_path is not None else folder / ADMIN_KIT_DIRNAME
    if not path.exists():
        raise error(
            f"no administrator kit at {path} (`sealagg init` writes it to "
            f"<folder>/{ADMIN_KIT_DIRNAME}; pass --folder or --kit)"
        )
    kit = load_kit(path, trusted_signer=_trusted_signer(folder))
    if kit.name != LEGACY_ADMIN and not _named_admin(folder, kit.name):
        raise error(
            f"the kit at {path} belongs to client {kit.name!r}, not to the administrator "
            f"({LEGACY_ADMIN!r}): the appliance would refuse it"
        )
    return kit


def connect(
    folder: Path | str = DEFAULT_FOLDER,
    kit: Path | str | None = None,
    address: str | None = None,
    timeout: float = 5.0,
    *,
    insecure: bool = False,
) -> AdminClient:
    """An :class:`AdminClient` for the appliance of federation ``folder``, authenticated with
    the administrator kit ``kit`` (default ``<folder>/admin-kit``); ``address``: HOST:PORT
    (default: the kit's)."""
    return AdminClient(
        Path(folder),
        kit_path=None if kit is None else Path(kit),
        address=address,
        timeout=timeout,
        insecure=insecure,
    )


class AdminClient:
    """One channel to the Admin service; every failure raises :class:`AdminAPIError`."""

    #: What failures raise (the CLI's wrapper raises its own error type, appliance/cli/_admin.py).
    error_type: type[Exception] = AdminAPIError

    def __init__(
        self,
        folder: Path,
        *,
        kit_path: Path | None = None,
        address: str | None = None,
        timeout: float = 5.0,
        insecure: bool = False,
    ) -> None:
        kit = load_admin_kit(Path(folder), kit_path, error=self.error_type)
        self.name = kit.name
        self.address = address or kit.address
        self.federation = kit.federation
        self.timeout = timeout
        if insecure:
            print(INSECURE_CLIENT_WARNING, file=sys.stderr)
            self._metadata: tuple[tuple[str, str], ...] = ((INSECURE_NAME_HEADER, kit.name),)
            self._channel = grpc.insecure_channel(self.address)
        else:
            self._metadata = ()
            ca, key, cert = kit.channel_credentials_material()
            credentials = grpc.ssl_channel_credentials(ca, key, cert)
            options = [("grpc.ssl_target_name_override", kit.server_name)]
            self._channel = grpc.secure_channel(self.address, credentials, options=options)
        self._stub = pb_grpc.AdminStub(self._channel)

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    # ------------------------------------------------------------------------- plumbing

    def _error(self, error: grpc.RpcError) -> Exception:
        code = error.code() if callable(getattr(error, "code", None)) else None
        details = error.details() if callable(getattr(error, "details", None)) else str(error)
        make = self.error_type
        if code == grpc.StatusCode.UNAVAILABLE:
            return make(
                f"cannot reach the appliance at {self.address}: {details} (is `sealagg serve` "
                "running there? use --address HOST:PORT)"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return make(f"the appliance at {self.address} did not answer within {self.timeout:g} s")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return make(f"the appliance at {self.address} refused the admin kit: {details}")
        name = code.name if code is not None else "error"
        return make(f"the appliance at {self.address} answered {name}: {details}")

    def _call(self, method: str, request: Any, timeout: float | None = None) -> Any:
        try:
            return getattr(self._stub, method)(
                request, timeout=timeout or self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise self._error(error) from None

    def _json(self, text: str, what: str) -> Any:
        try:
            return json.loads(text) if text else None
        except ValueError:
            raise self.error_type(
                f"the appliance at {self.address} sent a malformed {what}"
            ) from None

    def _refused(self, detail: str) -> Exception:
        return self.error_type(f"the appliance at {self.address} refused: {detail}")

    # ------------------------------------------------------------------------ read views

    def status(self) -> dict[str, Any]:
        """The orchestrator's status snapshot (what ``sealagg status`` shows)."""
        status = self._json(self._call("Status", pb.StatusRequest()).json, "status")
        if not isinstance(status, dict):
            raise self.error_type(f"the appliance at {self.address} sent a malformed status")
        return status

    def query(self, view: str, **args: Any) -> Any:
        """A read-only view by name (appliance/admin_views.py lists them and their keys);
        ``args`` with value None are left out."""
        given = {k: v for k, v in args.items() if v is not None}
        request = pb.AdminQuery(view=view, args_json=json.dumps(given) if given else "")
        return self._json(self._call("Query", request).json, f"{view} view")

    def federation_view(self) -> dict[str, Any]:
        """Mode, policy (c, m), certificate expiry, roster, administrators."""
        return self.query("federation")

    def live(self) -> dict[str, Any]:
        """The live round: phase, clients in / waiting / vanished, deadline, bytes."""
        return self.query("live")

    def runs(self) -> list[dict[str, Any]]:
        return self.query("runs")

    def rounds(self, run_id: str | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Rounds, newest first, with outcome, duration and time per phase."""
        return self.query("rounds", run_id=run_id, limit=limit)

    def clients(self) -> list[dict[str, Any]]:
        """Participants: state, last seen, certificate validity, revoked, excluded."""
        return self.query("clients")

    def versions(self) -> list[dict[str, Any]]:
        """Model versions with their gate metrics and status; ``current`` marks one."""
        return self.query("versions")

    def approvals(self) -> list[dict[str, Any]]:
        """Candidates awaiting a decision, with the approvals so far and the count needed."""
        return self.query("approvals")

    def privacy(self) -> dict[str, Any]:
        """DP budget: ε spent per run over rounds, δ, the target."""
        return self.query("privacy")

    def attestations(self, limit: int = 200) -> list[dict[str, Any]]:
        return self.query("attestations", limit=limit)

    def audit(self, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """A page of the audit log (at most 500 entries), payloads summarized."""
        return self.query("audit", offset=offset, limit=limit)

    def list_runs(self) -> list[dict[str, Any]]:
        """Every run as the appliance stores it (hyperparameters included)."""
        runs = self._json(self._call("ListRuns", pb.ListRunsRequest()).json, "run list")
        if not isinstance(runs, list):
            raise self.error_type(f"the appliance at {self.address} sent a malformed run list")
        return runs

    # ------------------------------------------------------------------------- decisions

    def decide(self, round_number: int, *, approve: bool, reason: str) -> tuple[bool, str]:
        """Admin.Decide as it answers: (ok, detail)."""
        request = pb.DecisionRequest(round_number=round_number, approve=approve, reason=reason)
        reply = self._call("Decide", request)
        return reply.ok, reply.detail

    def approve(self, round_number: int, reason: str = "") -> str:
        """Approve round ``round_number``'s pending candidate; raises when refused."""
        ok, detail = self.decide(round_number, approve=True, reason=reason)
        if not ok:
            raise self._refused(detail)
        return detail

    def reject(self, round_number: int, reason: str) -> str:
        """Reject round ``round_number``'s pending candidate; raises when refused."""
        ok, detail = self.decide(round_number, approve=False, reason=reason)
        if not ok:
            raise self._refused(detail)
        return detail

    # ------------------------------------------------------------------------------ runs

    def create_run_reply(
        self,
        *,
        name: str,
        mode: str = "",
        rounds: int = 0,
        hyperparameters_json: str = "",
        base_model_version: int = 0,
        start: bool = False,
        schedule: str = "",
        async_json: str = "",
    ) -> tuple[bool, str, dict[str, Any] | None]:
        """Admin.CreateRun as it answers: (ok, detail, the run as a dict). ``schedule``
        "async" with ``async_json`` (a JSON object): a buffered asynchronous run."""
        reply = self._call(
            "CreateRun",
            pb.RunSpec(
                name=name,
                mode=mode,
                rounds=rounds,
                hyperparameters_json=hyperparameters_json,
                base_model_version=base_model_version,
                start=start,
                schedule=schedule,
                async_json=async_json,
            ),
        )
        return reply.ok, reply.detail, self._json(reply.run_json, "run")

    def create_run(
        self,
        *,
        name: str,
        mode: str = "",
        rounds: int = 0,
        hyperparameters: dict[str, Any] | None = None,
        base_model_version: int = 0,
        start: bool = False,
        schedule: str = "",
        async_params: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """A new run (started at once with ``start``); returns it; raises when refused.
        ``schedule="async"`` with ``async_params``: a buffered asynchronous run."""
        ok, detail, run = self.create_run_reply(
            name=name,
            mode=mode,
            rounds=rounds,
            hyperparameters_json=json.dumps(hyperparameters) if hyperparameters else "",
            base_model_version=base_model_version,
            start=start,
            schedule=schedule,
            async_json=json.dumps(async_params) if async_params else "",
        )
        if not ok or run is None:
            raise self._refused(detail)
        return run

    def control_run_reply(
        self, run_id: str, action: str, reason: str = ""
    ) -> tuple[bool, str, dict[str, Any] | None]:
        """Admin.ControlRun (start, pause, resume, stop) as it answers: (ok, detail, run)."""
        reply = self._call("ControlRun", pb.RunControl(run_id=run_id, action=action, reason=reason))
        return reply.ok, reply.detail, self._json(reply.run_json, "run")

    def _control(self, run_id: str, action: str, reason: str) -> dict[str, Any]:
        ok, detail, run = self.control_run_reply(run_id, action, reason)
        if not ok or run is None:
            raise self._refused(detail)
        return run

    def start_run(self, run_id: str, reason: str = "") -> dict[str, Any]:
        return self._control(run_id, "start", reason)

    def pause_run(self, run_id: str, reason: str = "") -> dict[str, Any]:
        return self._control(run_id, "pause", reason)

    def resume_run(self, run_id: str, reason: str = "") -> dict[str, Any]:
        return self._control(run_id, "resume", reason)

    def stop_run(self, run_id: str, reason: str = "") -> dict[str, Any]:
        return self._control(run_id, "stop", reason)

    def evaluate_reply(
        self, *, version: int = 0, run_id: str = "", deadline_seconds: float = 0.0
    ) -> tuple[bool, str, dict[str, Any] | None]:
        """Admin.Evaluate as it answers; waits until the evaluation closes (the call's
        timeout is ``deadline_seconds`` plus this client's timeout)."""
        request = pb.EvaluationRequest(
            model_version=version, run_id=run_id, deadline_seconds=deadline_seconds
        )
        wait = (deadline_seconds or 300.0) + self.timeout
        reply = self._call("Evaluate", request, timeout=wait)
        return reply.ok, reply.detail, self._json(reply.json, "evaluation")

    def evaluate(
        self, *, version: int = 0, run_id: str = "", deadline_seconds: float = 0.0
    ) -> dict[str, Any]:
        """A federated evaluation of ``version`` (0: current); the weighted mean metrics."""
        ok, detail, result = self.evaluate_reply(
            version=version, run_id=run_id, deadline_seconds=deadline_seconds
        )
        if not ok or result is None:
            raise self._refused(detail)
        return result

    # ------------------------------------------------------------------- clients, audit

    def revoke(self, name: str, reason: str = "") -> str:
        """Revoke client ``name``: the appliance refuses it from its next call on."""
        reply = self._call("Revoke", pb.RevokeRequest(name=name, reason=reason))
        if not reply.ok:
            raise self._refused(reply.detail)
        return reply.detail

    def verify_audit(self) -> dict[str, Any]:
        """{ok, entries, head_hash, first_broken: {seq, reason} | None}."""
        result = self._json(self._call("VerifyAudit", pb.VerifyAuditRequest()).json, "report")
        if not isinstance(result, dict) or "ok" not in result:
            raise self.error_type(f"the appliance at {self.address} sent a malformed report")
        return result

    def export_model(self, version: int = 0, out: Path | str | None = None) -> ExportedModel:
        """The safetensors bytes of ``version`` (0: the current one), checked against the
        SHA-256 the appliance announced; written atomically to ``out`` when given."""
        request = pb.ExportModelRequest(version=version)
        header: pb.ModelHeader | None = None
        parts: list[bytes] = []
        received = 0
        try:
            stream = self._stub.ExportModel(
                request, timeout=self.timeout + EXPORT_EXTRA_SECONDS, metadata=self._metadata
            )
            for chunk in stream:
                kind = chunk.WhichOneof("kind")
                if header is None:
                    if kind != "header":
                        raise self.error_type("the model export did not start with its header")
                    header = chunk.header
                    continue
                if kind != "data":
                    raise self.error_type("the model export sent a second header")
                received += len(chunk.data)
                if received > header.total_bytes:
                    raise self.error_type("the model export sent more bytes than announced")
                parts.append(chunk.data)
        except grpc.RpcError as error:
            raise self._error(error) from None
        if header is None:
            raise self.error_type("the model export ended before its header")
        data = b"".join(parts)
        if len(data) != header.total_bytes:
            raise self.error_type(
                f"the model export ended early: {len(data)} of {header.total_bytes} bytes"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != header.sha256:
            raise self.error_type(
                f"model version {header.version} arrived damaged: SHA-256 {digest} is not "
                f"the announced {header.sha256}"
            )
        path = None
        if out is not None:
            path = Path(out)
            _write_atomically(path, data)
        return ExportedModel(header.version, header.sha256, data, path)

    # --------------------------------------------------------------------------- console

    def open_console(self) -> tuple[str, float]:
        """(a one-time console login URL for this administrator, its lifetime in seconds)."""
        reply = self._call("OpenConsole", pb.ConsoleRequest())
        return reply.url, reply.expires_seconds

    def console_url(self) -> str:
        """A one-time console login URL for this administrator."""
        return self.open_console()[0]


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, rename: never a half-written model."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent or Path("."))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
