"""``sealagg serve``: run the appliance until Ctrl-C or SIGTERM, logging JSON lines to stderr.

Every stderr line is a JSON object (appliance/logs.py), refusals at start included: a
second appliance on a folder in use, a bad configuration value or a port already taken is
logged as one ``ERROR`` line and the command exits with code 1.
"""

import asyncio
import enum
import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from sealagg.appliance.cli._common import (
    DEFAULT_FOLDER,
    CLIError,
    FolderOption,
    PassphraseFileOption,
    check_federation,
    read_passphrase,
)
from sealagg.appliance.errors import ApplianceError
from sealagg.appliance.logs import JsonFormatter, json_logging, native_stderr_as_json

__all__ = ["JsonFormatter", "register", "serve"]

if TYPE_CHECKING:
    from sealagg.appliance.server import Appliance

_log = logging.getLogger("sealagg.cli")


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


async def _serve(app: "Appliance", listen: str) -> None:
    """Start, install the signal handlers, run until the stop event or the round budget."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    installed = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    try:
        try:
            port = await app.start()
        except RuntimeError as error:  # grpc: "Failed to bind to address ..."
            await app.close()
            raise CLIError(
                f"cannot listen on {listen}: {error} (is another process using the port? "
                "see [server].listen in sealagg.toml)"
            ) from None
        except BaseException:
            await app.close()
            raise
        _log.info("serving on port %d; stop with Ctrl-C or SIGTERM", port)
        await app.run(stop)
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    _log.info("appliance stopped" if stop.is_set() else "appliance finished its rounds")


def serve(
    folder: FolderOption = DEFAULT_FOLDER,
    insecure: Annotated[
        bool,
        typer.Option(
            "--insecure",
            help="No TLS, clients name themselves: local development only, never exposed.",
        ),
    ] = False,
    log_level: Annotated[
        LogLevel, typer.Option("--log-level", help="Least severe level logged.")
    ] = LogLevel.info,
    passphrase_file: PassphraseFileOption = None,
) -> None:
    """Run the appliance (mutual TLS gRPC) until Ctrl-C or SIGTERM."""
    with json_logging(log_level.value), native_stderr_as_json():
        try:
            check_federation(Path(folder))
            _run(Path(folder), insecure, passphrase_file)
        except (ApplianceError, CLIError) as error:
            _log.error("%s", error)
            raise typer.Exit(1) from None
        except OSError as error:
            where = f"{error.filename}: " if error.filename else ""
            _log.error("%s%s", where, error.strerror or error)
            raise typer.Exit(1) from None
        except Exception:
            _log.exception("the appliance failed")
            raise typer.Exit(1) from None


def _run(folder: Path, insecure: bool, passphrase_file: Path | None) -> None:
    # Imported here: the server pulls in the numba kernels; the other commands need not.
    from sealagg.appliance.server import Appliance

    # The folder's instance lock is taken first, then config errors surface, before anything
    # binds. An attesting appliance issues its in-memory TLS key's certificate at start: a
    # passphrase-protected CA key needs the passphrase (appliance/tee_identity.py).
    appliance = Appliance(folder, insecure=insecure, ca_passphrase=read_passphrase(passphrase_file))
    _log.info(
        "federation %s loaded from %s (mode %s)",
        appliance.federation.name,
        folder,
        appliance.config.aggregation.mode,
    )
    asyncio.run(_serve(appliance, appliance.config.server.listen))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
