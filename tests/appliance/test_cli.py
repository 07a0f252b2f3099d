"""The sealagg admin CLI, driven through typer's CliRunner against real federation folders."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import logging
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from typer.testing import CliRunner, Result

from sealagg.appliance.cli import app
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.cli.serve import JsonFormatter
from sealagg.appliance.cli.status import render_status
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.kit import load_kit
from sealagg.appliance.server import ADMIN_NAMES, Appliance, open_store
from sealagg.appliance.store import default_state_path

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def sealagg(*args: object, env: dict[str, str] | None = None) -> Result:
    """Run the CLI; a wide virtual terminal keeps rich tables from folding the text we check."""
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def init(folder: Path, port: int = 50051) -> None:
    result = sealagg(
        "init", "-f", folder, "--name", "clifed", "--host", "localhost", "--host", "127.0.0.1",
        "--port", port,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "federation"
    init(path)
    return path


def weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    return {
        "layer.weight": rng.normal(size=(5, 3)).astype(np.float32),
        "layer.bias": rng.normal(size=3).astype(np.float64),
        "head.scale": np.array(1.5, dtype=np.float16),
    }


def write_model(path: Path, tensors: dict[str, np.ndarray]) -> Path:
    safetensors.numpy.save_file(tensors, str(path))
    return path


def assert_clean_error(result: Result, *needles: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    for needle in needles:
        assert needle in result.output, result.output


# ------------------------------------------------------------------------------ provisioning


def test_admin_name_matches_the_appliance() -> None:
    assert {ADMIN_NAME} == set(ADMIN_NAMES)


def test_init_creates_the_federation_and_the_admin_kit(tmp_path: Path) -> None:
    folder = tmp_path / "fed"
    result = sealagg(
        "init", "--folder", folder, "--name", "clifed", "--host", "localhost",
        "--host", "127.0.0.1", "--port", 50123,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "admin-kit" in result.output and "clifed" in result.output
    federation = FederationFolder.load(folder)
    assert federation.public_address == "localhost:50123"
    kit = load_kit(folder / ADMIN_KIT_DIRNAME, trusted_signer=federation.signer_public_key)
    assert kit.name == ADMIN_NAME
    assert federation.client_record(ADMIN_NAME) is not None


def test_init_uses_the_folder_from_the_environment(tmp_path: Path) -> None:
    folder = tmp_path / "from-env"
    result = sealagg(
        "init", "--name", "envfed", "--host", "localhost", env={"SEALAGG_FOLDER": str(folder)}
    )
    assert result.exit_code == 0, result.output
    assert (folder / "sealagg.toml").is_file()


def test_init_twice_fails_clearly(folder: Path) -> None:
    result = sealagg("init", "-f", folder, "--name", "again", "--host", "localhost")
    assert_clean_error(result, "already holds a federation")
    assert FederationFolder.load(folder).name == "clifed"  # untouched


def test_init_refuses_a_bad_host_and_leaves_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "fed"
    result = sealagg("init", "-f", folder, "--name", "clifed", "--host", "bad host")
    assert_clean_error(result, "bad host")
    assert not folder.exists()


def test_init_with_a_passphrase_file(tmp_path: Path) -> None:
    secret = tmp_path / "pass.txt"
    secret.write_text("correct horse battery staple\n")
    folder = tmp_path / "fed"
    result = sealagg(
        "init", "-f", folder, "--name", "clifed", "--host", "localhost",
        "--passphrase-file", secret,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert b"ENCRYPTED" in (folder / "ca.key").read_bytes()
    # issuing needs the passphrase: refused without it, accepted with it
    assert_clean_error(sealagg("add-client", "alice", "-f", folder))
    result = sealagg("add-client", "alice", "-f", folder, "--passphrase-file", secret)
    assert result.exit_code == 0, result.output


def test_add_client_writes_a_kit_load_kit_accepts(folder: Path, tmp_path: Path) -> None:
    result = sealagg("add-client", "alice", "-f", folder)
    assert result.exit_code == 0, result.output
    signer = FederationFolder.load(folder).signer_public_key
    kit = load_kit(folder / "kits" / "alice", trusted_signer=signer)
    assert kit.name == "alice" and kit.federation == "clifed"

    archive = tmp_path / "bob.tar.gz"
    result = sealagg("add-client", "bob", "-f", folder, "--archive", "--out", archive)
    assert result.exit_code == 0, result.output
    assert load_kit(archive, trusted_signer=signer).name == "bob"

    assert_clean_error(sealagg("add-client", "alice", "-f", folder), "already has a kit")
    assert_clean_error(sealagg("add-client", "bad/name", "-f", folder), "invalid")


def test_add_client_refuses_the_reserved_admin_name(folder: Path) -> None:
    assert_clean_error(sealagg("add-client", ADMIN_NAME, "-f", folder), "reserved")
    assert_clean_error(sealagg("add-client", "carol", "--admin", "-f", folder), "--admin")


def test_revoke_marks_the_client_revoked(folder: Path) -> None:
    assert sealagg("add-client", "alice", "-f", folder).exit_code == 0
    result = sealagg("revoke", "alice", "-f", folder)
    assert result.exit_code == 0, result.output
    assert "next call" in result.output
    federation = FederationFolder.load(folder)
    record = federation.client_record("alice")
    assert record is not None and record.revoked
    assert record.serial in federation.revocations()
    assert "alice" not in federation.client_names()
    listing = sealagg("clients", "-f", folder)
    assert listing.exit_code == 0 and "revoked" in listing.output
    assert_clean_error(sealagg("revoke", "nobody", "-f", folder), "nobody")


def test_commands_on_a_missing_folder_fail_clearly(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for args in (("add-client", "x"), ("revoke", "x"), ("rounds",), ("serve",)):
        assert_clean_error(sealagg(*args, "-f", missing), "no federation")
    assert_clean_error(sealagg("audit", "verify", "-f", missing), "audit public key")


# ------------------------------------------------------------------------------ models, rounds


def test_model_import_rounds_and_export_round_trip(folder: Path, tmp_path: Path) -> None:
    original = weights()
    result = sealagg("model", "import", write_model(tmp_path / "base.safetensors", original),
                     "-f", folder)  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "version 1" in result.output

    store = open_store(FederationFolder.load(folder))
    try:
        model = store.current_model()
        assert model is not None and (model.version, model.parent, model.status) == (
            1,
            None,
            "accepted",
        )
        number = store.open_round("secagg+", bytes(range(32)))
        store.record_phase(number, "advertise_keys", 4, dropped=["client3"])
        store.set_round_status(number, "aborted", "too few clients")
    finally:
        store.close()

    result = sealagg("rounds", "-f", folder)
    assert result.exit_code == 0, result.output
    assert "aborted" in result.output and "too few clients" in result.output
    assert "advertise_keys" not in result.output
    verbose = sealagg("rounds", "-f", folder, "--verbose")
    assert verbose.exit_code == 0, verbose.output
    assert "advertise_keys" in verbose.output and "client3" in verbose.output

    listing = sealagg("model", "list", "-f", folder)
    assert listing.exit_code == 0 and "current" in listing.output

    out = tmp_path / "exported.safetensors"
    result = sealagg("export", "1", "--out", out, "-f", folder)
    assert result.exit_code == 0, result.output
    exported = safetensors.numpy.load_file(str(out))
    assert exported.keys() == original.keys()
    for name, array in original.items():
        assert exported[name].dtype == array.dtype
        np.testing.assert_array_equal(exported[name], array)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == model.sha256

    assert_clean_error(sealagg("export", "1", "--out", out, "-f", folder), "already exists")
    again = sealagg("model", "export", "current", "--out", out, "--force", "-f", folder)
    assert again.exit_code == 0, again.output
    assert_clean_error(sealagg("export", "9", "--out", tmp_path / "x", "-f", folder), "9")


def test_model_import_refuses_non_float_tensors_and_other_files(
    folder: Path, tmp_path: Path
) -> None:
    ints = write_model(
        tmp_path / "ints.safetensors",
        {"w": np.ones(3, np.float32), "num_batches_tracked": np.array(3, np.int64)},
    )
    assert_clean_error(sealagg("model", "import", ints, "-f", folder), "num_batches_tracked")
    pickle = tmp_path / "model.pt"
    pickle.write_bytes(b"\x80\x02}q\x00(X\x01\x00\x00\x00wq\x01" * 8)
    assert_clean_error(sealagg("model", "import", pickle, "-f", folder), "not a safetensors")
    assert_clean_error(
        sealagg("model", "import", tmp_path / "missing.safetensors", "-f", folder), "missing"
    )
    assert not default_state_path(folder).exists()  # nothing was registered


def test_export_refuses_the_torch_format_without_importing_torch(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """safetensors is the only export format: ``--format torch`` is a usage error (typer's
    choice check), written nowhere, and torch is never imported to say so."""
    model = write_model(tmp_path / "base.safetensors", weights())
    assert sealagg("model", "import", model, "-f", folder).exit_code == 0
    monkeypatch.setitem(sys.modules, "torch", None)  # `import torch` would now raise
    out = tmp_path / "model.pt"
    result = sealagg("export", "1", "--out", out, "--format", "torch", "-f", folder)
    assert result.exit_code == 2, result.output
    assert "torch" in result.output and "safetensors" in result.output
    assert "Traceback" not in result.output
    assert not out.exists()
    explicit = tmp_path / "model.safetensors"
    result = sealagg("export", "1", "--out", explicit, "--format", "safetensors", "-f", folder)
    assert result.exit_code == 0, result.output
    assert explicit.read_bytes() == model.read_bytes()


def test_bench_and_demo_are_not_appliance_commands() -> None:
    """The benchmark suite is ``./run bench`` and the demo the client shim's ``sealagg-demo``."""
    for command in ("bench", "demo"):
        result = sealagg(command, "--help")
        assert result.exit_code == 2, result.output
        assert "No such command" in result.output


# --------------------------------------------------------------------------------------- audit


def test_audit_verify_ok_then_broken_after_tampering(folder: Path, tmp_path: Path) -> None:
    assert_clean_error(sealagg("audit", "verify", "-f", folder), "no state database")
    model = write_model(tmp_path / "base.safetensors", weights())
    assert sealagg("model", "import", model, "-f", folder).exit_code == 0

    store = open_store(FederationFolder.load(folder))
    head = store.audit.head()
    store.close()
    result = sealagg("audit", "verify", "-f", folder)
    assert result.exit_code == 0, result.output
    assert f"audit verify: OK ({head.count} entries, head {head.hash})" in result.output

    good = sealagg("audit", "verify", "-f", folder,
                   "--expected-count", head.count, "--expected-hash", head.hash)  # fmt: skip
    assert good.exit_code == 0, good.output
    wrong = sealagg("audit", "verify", "-f", folder,
                    "--expected-count", head.count, "--expected-hash", "ab" * 32)  # fmt: skip
    assert wrong.exit_code == 1 and "BROKEN" in wrong.output

    export = tmp_path / "audit.jsonl"
    assert sealagg("audit", "export", export, "-f", folder).exit_code == 0
    lines = export.read_text().splitlines()
    assert len(lines) == head.count + 1 and "audit_head" in lines[-1]
    offline = sealagg("audit", "verify", "--file", export, "-f", folder)
    assert offline.exit_code == 0, offline.output

    with sqlite3.connect(default_state_path(folder)) as conn:
        (entry,) = conn.execute("SELECT entry FROM audit_log WHERE seq = 1").fetchone()
        edited = bytes(entry).replace(b'"status":"accepted"', b'"status":"rejected"')
        assert edited != bytes(entry)
        conn.execute("UPDATE audit_log SET entry = ? WHERE seq = 1", (edited,))
    result = sealagg("audit", "verify", "-f", folder)
    assert result.exit_code == 1, result.output
    assert "audit verify: BROKEN at entry 1:" in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------------------- serve


def test_serve_with_a_bad_config_value_names_the_key(folder: Path) -> None:
    config = folder / "sealagg.toml"
    config.write_text(config.read_text().replace("min_clients = 3", "min_clients = 0"))
    result = sealagg("serve", "-f", folder)
    assert_clean_error(result, "aggregation.min_clients")


def test_json_log_formatter_writes_only_the_four_fields() -> None:
    record = logging.LogRecord(
        "sealagg.test", logging.WARNING, __file__, 1, "round %d aborted", (3,), None
    )
    record.update = [0.25, 0.5]  # an `extra` field must never reach the log
    line = json.loads(JsonFormatter().format(record))
    assert set(line) == {"time", "level", "logger", "message"}
    assert line["message"] == "round 3 aborted" and line["level"] == "WARNING"


class _Running:
    """An appliance on its own event loop in a background thread."""

    def __init__(self, folder: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.app = Appliance(folder)
        self.port = self.loop.run_until_complete(self.app.start())
        self.stop_event = asyncio.Event()
        self.thread = threading.Thread(
            target=self.loop.run_until_complete, args=(self.app.run(self.stop_event),), daemon=True
        )
        self.thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    port = free_port()
    folder = tmp_path / "served"
    init(folder, port)
    appliance = _Running(folder)
    try:
        yield folder, appliance.port
    finally:
        appliance.stop()


def test_status_and_decide_against_a_running_appliance(served: tuple[Path, int]) -> None:
    folder, port = served
    address = f"127.0.0.1:{port}"
    result = sealagg("status", "-f", folder, "--address", address)
    assert result.exit_code == 0, result.output
    assert "secagg+" in result.output and "no round running" in result.output

    raw = sealagg("status", "-f", folder, "--address", address, "--json")
    assert raw.exit_code == 0, raw.output
    assert json.loads(raw.stdout)["mode"] == "secagg+"

    refused = sealagg("approve", "1", "-f", folder, "--address", address)
    assert refused.exit_code == 1
    assert "no model waiting for approval" in refused.output

    assert sealagg("add-client", "alice", "-f", folder).exit_code == 0
    wrong_kit = sealagg("status", "-f", folder, "--address", address,
                        "--kit", folder / "kits" / "alice")  # fmt: skip
    assert_clean_error(wrong_kit, "not to the administrator")


def test_status_when_the_appliance_is_not_reachable(folder: Path) -> None:
    result = sealagg("status", "-f", folder, "--address", f"127.0.0.1:{free_port()}")
    assert_clean_error(result, "cannot reach the appliance")


def test_reject_needs_a_reason(folder: Path) -> None:
    result = sealagg("reject", "1", "-f", folder, "--reason", " ")
    assert result.exit_code == 2 and "reason" in result.output


def test_status_view_shows_the_current_round() -> None:
    from rich.console import Console

    status = {
        "mode": "secagg",
        "model_version": 4,
        "ready_clients": ["a", "b", "c"],
        "round": {
            "number": 12,
            "phase": "masked_input",
            "members": ["a", "b", "c"],
            "waiting_for": ["c"],
            "phase_deadline": 1_000_030.0,
        },
        "history": [{"number": 11, "outcome": "published", "model_version": 4,
                     "contributors": ["a", "b"], "dropped": ["c"], "reason": ""}],
    }  # fmt: skip
    console = Console(width=100, record=True, file=io.StringIO())
    console.print(render_status(status, address="x:1", federation="f", now=1_000_000.0))
    text = console.export_text()
    for needle in ("secagg", "masked_input", "waiting for", "in 30 s", "published", "12"):
        assert needle in text, text


def test_the_cli_never_imports_torch() -> None:
    code = (
        "import sys\n"
        "import sealagg.appliance.cli, sealagg.appliance.server\n"
        "from sealagg.appliance.cli import audit, clients, init, models, rounds, serve, status\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    # -P: the repository root (cwd) must not go first on sys.path.
    subprocess.run([sys.executable, "-P", "-c", code], check=True, cwd=REPO, timeout=60)


def test_authority_enrolment_round_trip_through_the_cli(folder: Path, tmp_path: Path) -> None:
    """The security team creates the authority off the appliance, the client enrols, the
    authority approves, the operator installs the roster and certifies the request; the
    installed kit is an enrolled kit and no private key of the client's is on the appliance."""
    from sealagg.client_shim import enrol

    env = {"SEALAGG_AUTHORITY_PASSPHRASE": "a long test passphrase"}
    inside = sealagg("authority", "init", "--out", folder / "authority", "--federation", "clifed",
                     env=env)  # fmt: skip
    assert_clean_error(inside, "off the appliance")
    authority = tmp_path / "authority"
    result = sealagg("authority", "init", "--out", authority, "--federation", "clifed", env=env)
    assert result.exit_code == 0, result.output
    key = (authority / "authority.pub").read_text().strip()
    client = tmp_path / "alice"
    request = tmp_path / "alice.request.json"
    assert enrol.main(["request", "--name", "alice", "--federation", "clifed",
                       "--authority-key", key, "--dir", str(client),
                       "--request-out", str(request)]) == 0  # fmt: skip
    result = sealagg("authority", "approve", request, "--dir", authority, env=env)
    assert result.exit_code == 0 and "version 2" in result.output, result.output
    roster = authority / "roster.json"
    result = sealagg("roster", "install", roster, "-f", folder, "--authority-key", key)
    assert result.exit_code == 0 and "version 2" in result.output, result.output
    assert_clean_error(sealagg("add-client", "bob", "-f", folder), "--insecure-dev-keys")
    result = sealagg("add-client", "-f", folder, "--request", request, "--out", tmp_path / "kit")
    assert result.exit_code == 0, result.output
    # Only the appliance signed it so far: the client refuses it until the authority does.
    assert enrol.main(["install", str(tmp_path / "kit"), "--dir", str(client)]) == 1
    result = sealagg("authority", "sign-kit", tmp_path / "kit", "--dir", authority, env=env)
    assert result.exit_code == 0 and "countersigned" in result.output, result.output
    assert enrol.main(["install", str(tmp_path / "kit"), "--dir", str(client)]) == 0
    kit = load_kit(client)
    assert kit.enrolled and kit.authority_public_key == bytes.fromhex(key)
    for path in folder.rglob("*"):
        if path.is_file():
            assert kit.identity_seed not in path.read_bytes(), path
            assert kit.client_key_pem not in path.read_bytes(), path
    result = sealagg("authority", "sign-roster", "--dir", authority, "--remove", "alice",
                     "--colluders", "1", env=env)  # fmt: skip
    assert result.exit_code == 0 and "version 3" in result.output, result.output
    assert sealagg("roster", "install", roster, "-f", folder).exit_code == 0
    assert FederationFolder.load(folder).roster().policy == {"colluders": 1}
