"""The JSON log lines of ``sealagg serve`` (python-json-logger) and native stderr lines."""

from __future__ import annotations

import io
import json
import logging
import sys

from sealagg.appliance.logs import JsonFormatter, json_logging, native_line


def _format(record: logging.LogRecord) -> dict:
    line = JsonFormatter().format(record)
    assert "\n" not in line
    return json.loads(line)


def test_only_the_named_fields_are_written_never_extra_or_dict_messages():
    record = logging.LogRecord("sealagg.test", logging.INFO, __file__, 1, "%d clients", (3,), None)
    record.update = [0.25, 0.5]  # an ``extra`` field
    line = _format(record)
    assert list(line) == ["time", "level", "logger", "message"]
    assert line["message"] == "3 clients" and line["logger"] == "sealagg.test"
    secret = logging.LogRecord(
        "sealagg.test", logging.INFO, __file__, 1, {"key": "s3cret"}, None, None
    )
    assert "s3cret" not in json.dumps(_format(secret))


def test_an_exception_becomes_one_field():
    try:
        raise ValueError("broken\nacross lines")
    except ValueError:
        record = logging.LogRecord(
            "sealagg.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    line = _format(record)
    assert line["message"] == "failed" and "ValueError: broken" in line["exception"]


def test_native_lines_become_json_records(monkeypatch):
    out = io.StringIO()
    monkeypatch.setattr(sys, "stderr", out)
    with json_logging("debug"):
        native_line(
            "I1205 09:07:11.470477   22489 ssl_transport_security.cc:2563] Handshake failed "
            "with error SSL_ERROR_SSL: PEER_DID_NOT_RETURN_A_CERTIFICATE\n"
        )
        native_line("E1205 09:07:11.470477   22489 server.cc:12] bad thing\n")
        native_line("something a library printed\n")
        native_line('{"already": "json"}\n')
    with json_logging("info"):
        native_line("I1205 09:07:11.470477   22489 chttp2.cc:1] chatter\n")
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(r.get("logger"), r.get("level")) for r in records] == [
        ("grpc.core", "DEBUG"),
        ("grpc.core", "ERROR"),
        ("native", "WARNING"),
        (None, None),
    ]
    assert records[0]["message"].startswith("Handshake failed")
    assert records[3] == {"already": "json"}
