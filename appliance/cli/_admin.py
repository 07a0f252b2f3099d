"""The Admin service client for the CLI: appliance/admin_api.py with the CLI's error type.

The CLI's online commands, the console and the Python admin API share one client; here its
failures become :class:`CLIError` (one line, exit code 1), and the reply-shaped calls the
commands print keep their (ok, detail, ...) form.
"""

from pathlib import Path
from typing import Annotated, Any

import typer

from sealagg.appliance import admin_api
from sealagg.appliance.admin_api import INSECURE_CLIENT_WARNING, INSECURE_NAME_HEADER
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, CLIError
from sealagg.appliance.kit import ClientKit

__all__ = [
    "INSECURE_CLIENT_WARNING",
    "INSECURE_NAME_HEADER",
    "AddressOption",
    "AdminClient",
    "CLIAdminError",
    "InsecureOption",
    "KitOption",
    "TimeoutOption",
    "load_admin_kit",
]

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


class CLIAdminError(CLIError, admin_api.AdminAPIError):
    """An admin API failure, printed by the CLI as one line (exit code 1)."""


def load_admin_kit(folder: Path, kit_path: Path | None) -> ClientKit:
    return admin_api.load_admin_kit(folder, kit_path, error=CLIAdminError)


class AdminClient(admin_api.AdminClient):
    """The admin API client; failures raise :class:`CLIError`, and ``create_run``,
    ``control_run`` and ``evaluate`` answer (ok, detail, result) for the commands to print."""

    error_type = CLIAdminError

    def create_run(  # type: ignore[override]
        self, **spec: Any
    ) -> tuple[bool, str, dict[str, Any] | None]:
        return self.create_run_reply(**spec)

    def control_run(
        self, run_id: str, action: str, reason: str = ""
    ) -> tuple[bool, str, dict[str, Any] | None]:
        return self.control_run_reply(run_id, action, reason)

    def evaluate(  # type: ignore[override]
        self, **request: Any
    ) -> tuple[bool, str, dict[str, Any] | None]:
        return self.evaluate_reply(**request)
