"""JSON-only logs for ``sealagg serve``: one JSON object a line on stderr, nothing else.

Two sources write to stderr: Python's ``logging`` (formatted by :class:`JsonFormatter`, built on
python-json-logger) and native code, above all gRPC's C core, which writes its own
glog-style lines (``I1205 09:07:11.470477 22489 ssl_transport_security.cc:2563] Handshake
failed ...``) straight to file descriptor 2. ``GRPC_VERBOSITY`` is read only when grpc is first
imported, which the CLI does long before ``serve`` runs, so it cannot be set from here.
:func:`native_stderr_as_json` therefore puts a pipe on descriptor 2 for the duration of the
service and turns each native line into a log record (logger ``grpc.core`` with the level of
its glog letter, gRPC's own INFO counting as DEBUG; ``native`` for anything else), so log
collectors parse every line.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _LibraryJsonFormatter

__all__ = ["JsonFormatter", "json_logging", "native_stderr_as_json"]

#: The only keys a line may carry, in this order.
FIELDS = ("time", "level", "logger", "message", "exception")
#: glog: severity letter, date, time, thread, file:line] message.
_GLOG = re.compile(r"^([IWEF])\d{4} [\d:.]+\s+\d+\s+([^\]\s]+)\] ?(.*)$")
_GLOG_LEVELS = {
    "I": logging.DEBUG,  # the C core's info (handshake chatter) is not operator news
    "W": logging.WARNING,
    "E": logging.ERROR,
    "F": logging.CRITICAL,
}


class JsonFormatter(_LibraryJsonFormatter):
    """One JSON object a line: ``time``, ``level``, ``logger``, ``message`` (+ ``exception``).

    Only the formatted message is written: ``extra`` fields, a dict passed as the message and
    raw arguments never are, so nothing reaches the log that the appliance's own messages do
    not state (and they state counts and names, never update values or keys).
    """

    def __init__(self) -> None:
        super().__init__(
            ["levelname", "name", "message"],
            rename_fields={"levelname": "level", "name": "logger", "exc_info": "exception"},
            json_ensure_ascii=False,
        )

    def add_fields(
        self, log_data: dict[str, Any], record: logging.LogRecord, message_dict: dict[str, Any]
    ) -> None:
        # A dict message contributes nothing but its exception text (added by format()).
        kept = {k: v for k, v in message_dict.items() if k == "exc_info"}
        super().add_fields(log_data, record, kept)
        log_data["time"] = datetime.fromtimestamp(record.created, UTC).isoformat(
            timespec="milliseconds"
        )

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        entry = {key: log_data[key] for key in FIELDS if log_data.get(key) is not None}
        if "exception" in entry:
            entry["exception"] = str(entry["exception"]).rstrip()
        return entry


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


def native_line(line: str) -> None:
    """Log one line a native library wrote to descriptor 2 (JSON lines pass through)."""
    text = line.rstrip("\r\n")
    if not text.strip():
        return
    if text.startswith("{"):
        with contextlib.suppress(ValueError):
            if isinstance(json.loads(text), dict):
                sys.stderr.write(text + "\n")
                sys.stderr.flush()
                return
    match = _GLOG.match(text)
    if match:
        letter, where, message = match.groups()
        logging.getLogger("grpc.core").log(_GLOG_LEVELS[letter], "%s (%s)", message, where)
    else:
        logging.getLogger("native").warning("%s", text)


@contextlib.contextmanager
def native_stderr_as_json() -> Iterator[None]:
    """Turn everything written to descriptor 2 by native code into JSON log lines.

    Only when ``sys.stderr`` is descriptor 2 itself (a real process, not a test runner's
    captured stream). Python's ``sys.stderr`` is pointed at the original descriptor, so
    ``logging`` output goes straight out; descriptor 2 becomes a pipe read by one thread.
    """
    try:
        real_fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        real_fd = -1
    if real_fd != 2:
        yield
        return
    sys.stderr.flush()
    saved_fd = os.dup(2)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    saved_stream = sys.stderr
    sys.stderr = open(  # noqa: SIM115 - closed in the finally block below
        saved_fd, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False
    )

    def pump() -> None:
        with open(read_fd, "rb", closefd=True) as source:
            for raw in source:
                with contextlib.suppress(Exception):
                    native_line(raw.decode("utf-8", errors="replace"))

    reader = threading.Thread(target=pump, name="native-stderr", daemon=True)
    reader.start()
    try:
        yield
    finally:
        os.dup2(saved_fd, 2)  # the pipe's last writer is gone: the reader sees its end
        reader.join(5.0)
        stream, sys.stderr = sys.stderr, saved_stream
        stream.flush()
        stream.close()
        os.close(saved_fd)
