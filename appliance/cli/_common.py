"""What every command shares: the folder option, consoles, error handling, store access.

Heavy modules (the server, numba kernels) are imported inside the commands that need them, so
``sealagg --help`` and the provisioning commands start fast. Nothing here imports torch.
"""

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from sealagg.appliance.errors import ApplianceError

FOLDER_ENV = "SEALAGG_FOLDER"
DEFAULT_FOLDER = Path("federation")
#: Where ``sealagg init`` writes the administrator's kit, inside the federation folder.
ADMIN_KIT_DIRNAME = "admin-kit"
#: The name reserved for administration (the appliance's ``ADMIN_NAMES``; checked in tests).
ADMIN_NAME = "admin"

FolderOption = Annotated[
    Path,
    typer.Option(
        "--folder",
        "-f",
        envvar=FOLDER_ENV,
        help="FederationFolder folder.",
        show_envvar=True,
    ),
]
PassphraseFileOption = Annotated[
    Path | None,
    typer.Option(
        "--passphrase-file",
        envvar="SEALAGG_PASSPHRASE_FILE",
        help="File holding the CA key passphrase (first line; never pass it on the command line).",
        show_envvar=True,
    ),
]

# file=None: both consoles write to whatever sys.stdout / sys.stderr are at print time.
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)


class CLIError(Exception):
    """A refusal detected by the CLI itself; printed as one line, exit code 1."""


def fail(message: str) -> NoReturn:
    err_console.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(1)


class SealaggGroup(TyperGroup):
    """Turns the errors our packages raise into a one-line message and exit code 1.

    Sub-command groups (``model``, ``audit``) run inside this ``invoke``, so one handler
    covers every command. Anything else is a bug and keeps its traceback (without locals).
    """

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except (ApplianceError, CLIError) as error:
            fail(str(error))
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            fail(f"{where}{error.strerror or error}")


def read_passphrase(path: Path | None) -> bytes | None:
    """The first line of ``path`` as bytes (None without a file)."""
    if path is None:
        return None
    try:
        data = path.read_bytes()
    except OSError as error:
        raise CLIError(f"cannot read passphrase file {path}: {error.strerror}") from None
    lines = data.splitlines()
    passphrase = lines[0] if lines else b""
    if not passphrase:
        raise CLIError(f"passphrase file {path} is empty")
    return passphrase


def check_federation(folder: Path) -> None:
    """Refuse early, with a hint, when ``folder`` holds no federation at all."""
    if not (folder / "sealagg.toml").is_file():
        raise CLIError(
            f"no federation at {folder} (create one with `sealagg init`, or pass --folder / "
            f"set {FOLDER_ENV})"
        )


def state_exists(folder: Path) -> bool:
    from sealagg.appliance.store import default_state_path

    return default_state_path(folder).is_file()


def open_state_readonly(folder: Path) -> Any:
    """The federation's state database opened read-only: reading needs no private key and
    never writes. Raises :class:`CLIError` when it does not exist yet."""
    from sealagg.appliance.store import Store, default_state_path

    check_federation(folder)
    path = default_state_path(folder)
    if not path.is_file():
        raise CLIError(
            f"{folder} has no state database yet ({path.name} is created when the appliance "
            "first starts or a model is imported)"
        )
    return Store.open(path, read_only=True)


def open_state_writable(folder: Path) -> Any:
    """The store exactly as the appliance opens it (creating it on first use)."""
    from sealagg.appliance.federation import FederationFolder
    from sealagg.appliance.server import open_store

    check_federation(folder)
    return open_store(FederationFolder.load(folder))


def short_time(stamp: str | None) -> str:
    """``2025-01-31T12:00:00.123456Z`` -> ``2025-01-31 12:00:00Z``."""
    if not stamp:
        return "-"
    return f"{stamp[:19].replace('T', ' ')}Z" if stamp.endswith("Z") else stamp


STATUS_STYLES = {
    "open": "cyan",
    "aggregating": "cyan",
    "pending_approval": "yellow",
    "pending": "yellow",
    "candidate": "yellow",
    "accepted": "green",
    "published": "green",
    "rejected": "red",
    "aborted": "red",
    "excluded": "red",
}


def styled(status: str) -> str:
    style = STATUS_STYLES.get(status)
    return f"[{style}]{escape(status)}[/]" if style else escape(status)
