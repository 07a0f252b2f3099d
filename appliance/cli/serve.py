"""``sealagg serve``: run the appliance until Ctrl-C or SIGTERM, logging JSON lines to stderr."""

import asyncio
import contextlib
import enum
import json
import logging
import signal
import sys
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
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

if TYPE_CHECKING:
    from sealagg.appliance.server import Appliance

_log = logging.getLogger("sealagg.cli")


class LogLevel(enum.StrEnum):
    debug = "debug"
    info = "info"
    warning = "warning"
    error = "error"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ``time``, ``level``, ``logger``, ``message`` (+ ``exception``).

    Only the formatted message is written: ``extra`` fields and raw arguments never are, so
    nothing reaches the log that the appliance's own messages do not state (and they state
    counts and names, never update values or keys).
    """

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info and record.exc_info[1] is not None:
            entry["exception"] = "".join(traceback.format_exception(record.exc_info[1])).rstrip()
        return json.dumps(entry, ensure_ascii=False)


class _StderrHandler(logging.Handler):
    """Writes to whatever ``sys.stderr`` is at the time (not the stream at install time)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(self.format(record) + "\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def json_logging(level: str) -> Iterator[None]:
    """Route every logger to JSON lines on stderr for the duration of the block."""
    handler = _StderrHandler()
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    root.handlers = [handler]
    root.setLevel(getattr(logging, level.upper()))
    logging.captureWarnings(True)
    try:
        yield
    finally:
        logging.captureWarnings(False)
        root.handlers, root_level = saved
        root.setLevel(root_level)


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
    check_federation(Path(folder))
    with json_logging(log_level.value):
        # Imported here: the server pulls in the numba kernels; the other commands need not.
        from sealagg.appliance.server import Appliance

        # Config errors surface here, before anything binds. The --insecure warning is
        # printed by the appliance itself at start (to stderr, whatever the log level).
        # An attesting appliance issues its in-memory TLS key's certificate at start: a
        # passphrase-protected CA key needs the passphrase (appliance/tee_identity.py).
        appliance = Appliance(
            folder, insecure=insecure, ca_passphrase=read_passphrase(passphrase_file)
        )
        _log.info(
            "federation %s loaded from %s (mode %s)",
            appliance.federation.name,
            folder,
            appliance.config.aggregation.mode,
        )
        asyncio.run(_serve(appliance, appliance.config.server.listen))


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
