"""The Admin service client: mutual TLS with the administrator kit (``<folder>/admin-kit``)."""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import grpc
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME, CLIError
from sealagg.appliance.kit import ClientKit, load_kit, raw_public_key
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc

#: What ``client_shim.connection`` sends in --insecure mode (development only).
INSECURE_NAME_HEADER = "sealagg-insecure-client"
INSECURE_CLIENT_WARNING = (
    "WARNING: --insecure: talking to the appliance without TLS; for local development only."
)

AddressOption = Annotated[
    str | None,
    typer.Option("--address", help="HOST:PORT of the appliance (default: the kit's address)."),
]
KitOption = Annotated[
    Path | None,
    typer.Option("--kit", help=f"Administrator kit (default: <folder>/{ADMIN_KIT_DIRNAME})."),
]
TimeoutOption = Annotated[
    float, typer.Option("--timeout", min=0.1, help="Seconds to wait for the appliance.")
]
InsecureOption = Annotated[
    bool,
    typer.Option("--insecure", help="Plaintext, for an appliance run with `serve --insecure`."),
]


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


def load_admin_kit(folder: Path, kit_path: Path | None) -> ClientKit:
    path = kit_path if kit_path is not None else folder / ADMIN_KIT_DIRNAME
    if not path.exists():
        raise CLIError(
            f"no administrator kit at {path} (`sealagg init` writes it to "
            f"<folder>/{ADMIN_KIT_DIRNAME}; pass --folder or --kit)"
        )
    kit = load_kit(path, trusted_signer=_trusted_signer(folder))
    if kit.name != ADMIN_NAME and not _named_admin(folder, kit.name):
        raise CLIError(
            f"the kit at {path} belongs to client {kit.name!r}, not to the administrator "
            f"({ADMIN_NAME!r}): the appliance would refuse it"
        )
    return kit


class AdminClient:
    """One channel to the Admin service; every failure becomes a :class:`CLIError`."""

    def __init__(
        self,
        folder: Path,
        *,
        kit_path: Path | None = None,
        address: str | None = None,
        timeout: float = 5.0,
        insecure: bool = False,
    ) -> None:
        kit = load_admin_kit(folder, kit_path)
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

    def __enter__(self) -> "AdminClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _error(self, error: grpc.RpcError) -> CLIError:
        code = error.code() if callable(getattr(error, "code", None)) else None
        details = error.details() if callable(getattr(error, "details", None)) else str(error)
        if code == grpc.StatusCode.UNAVAILABLE:
            return CLIError(
                f"cannot reach the appliance at {self.address}: {details} (is `sealagg serve` "
                "running there? use --address HOST:PORT)"
            )
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            return CLIError(
                f"the appliance at {self.address} did not answer within {self.timeout:g} s"
            )
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return CLIError(f"the appliance at {self.address} refused the admin kit: {details}")
        name = code.name if code is not None else "error"
        return CLIError(f"the appliance at {self.address} answered {name}: {details}")

    def status(self) -> dict[str, Any]:
        try:
            reply = self._stub.Status(
                pb.StatusRequest(), timeout=self.timeout, metadata=self._metadata
            )
        except grpc.RpcError as error:
            raise self._error(error) from None
        try:
            status = json.loads(reply.json)
        except ValueError:
            raise CLIError(f"the appliance at {self.address} sent a malformed status") from None
        if not isinstance(status, dict):
            raise CLIError(f"the appliance at {self.address} sent a malformed status")
        return status

    def decide(self, round_number: int, *, approve: bool, reason: str) -> tuple[bool, str]:
        request = pb.DecisionRequest(round_number=round_number, approve=approve, reason=reason)
        try:
            reply = self._stub.Decide(request, timeout=self.timeout, metadata=self._metadata)
        except grpc.RpcError as error:
            raise self._error(error) from None
        return reply.ok, reply.detail

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
            raise CLIError(f"the appliance at {self.address} sent a malformed {what}") from None

    def create_run(
        self,
        *,
        name: str,
        mode: str = "",
        rounds: int = 0,
        hyperparameters_json: str = "",
        base_model_version: int = 0,
        start: bool = False,
    ) -> tuple[bool, str, dict[str, Any] | None]:
        """Admin.CreateRun: (ok, detail, the run as a dict)."""
        reply = self._call(
            "CreateRun",
            pb.RunSpec(
                name=name,
                mode=mode,
                rounds=rounds,
                hyperparameters_json=hyperparameters_json,
                base_model_version=base_model_version,
                start=start,
            ),
        )
        return reply.ok, reply.detail, self._json(reply.run_json, "run")

    def control_run(
        self, run_id: str, action: str, reason: str = ""
    ) -> tuple[bool, str, dict[str, Any] | None]:
        """Admin.ControlRun (start, pause, resume, stop): (ok, detail, the run)."""
        reply = self._call("ControlRun", pb.RunControl(run_id=run_id, action=action, reason=reason))
        return reply.ok, reply.detail, self._json(reply.run_json, "run")

    def list_runs(self) -> list[dict[str, Any]]:
        runs = self._json(self._call("ListRuns", pb.ListRunsRequest()).json, "run list")
        if not isinstance(runs, list):
            raise CLIError(f"the appliance at {self.address} sent a malformed run list")
        return runs

    def evaluate(
        self, *, version: int = 0, run_id: str = "", deadline_seconds: float = 0.0
    ) -> tuple[bool, str, dict[str, Any] | None]:
        """Admin.Evaluate; waits until the evaluation closes (the call's timeout is
        ``deadline_seconds`` plus this client's timeout)."""
        request = pb.EvaluationRequest(
            model_version=version, run_id=run_id, deadline_seconds=deadline_seconds
        )
        wait = (deadline_seconds or 300.0) + self.timeout
        reply = self._call("Evaluate", request, timeout=wait)
        return reply.ok, reply.detail, self._json(reply.json, "evaluation")
