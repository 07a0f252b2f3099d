"""CLI fixes of issue 19, through typer's CliRunner (stdout is not a terminal there) against
real federation folders and a real appliance on loopback.

- ``sealagg audit export -`` wrote a file named ``-``; it now writes to standard output.
- ``sealagg status --watch`` printed nothing without a TTY (rich's live view redraws only on
  a terminal); it now prints a plain snapshot each interval.
- ``sealagg rounds -v`` showed "clients in 0" for every phase but the last: the display was
  right, the stored count was read after the phase's bookkeeping was reset (orchestrator).
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.serialization import load_pem_public_key
from sealagg_testkit.clients import FAST, join, run_clients
from typer.testing import CliRunner, Result

from sealagg.appliance.audit import verify_jsonl
from sealagg.appliance.cli import app
from sealagg.appliance.testing import free_port

runner = CliRunner()


def sealagg(*args: object) -> Result:
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


def _init(folder: Path, port: int) -> None:
    result = sealagg(
        "init", "-f", folder, "--name", "fixfed", "--host", "localhost", "--host", "127.0.0.1",
        "--port", port,
    )  # fmt: skip
    assert result.exit_code == 0, result.output


def test_audit_export_dash_writes_to_stdout_not_a_file(tmp_path: Path, deployment, monkeypatch):
    folder = deployment(clients=3).folder  # a state database with audited entries
    monkeypatch.chdir(tmp_path)
    result = sealagg("audit", "export", "-", "-f", folder)
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "-").exists()
    lines = result.stdout.splitlines()
    entries = [json.loads(line) for line in lines]  # stdout is the export and nothing else
    assert "audit_head" in entries[-1] and len(entries) >= 2
    assert "exported" in result.stderr and "standard output" in result.stderr
    # The piped export verifies like a file export, against the folder's public key.
    saved = tmp_path / "piped.jsonl"
    saved.write_text(result.stdout)
    key = load_pem_public_key((folder / "audit_public_key.pem").read_bytes())
    report = verify_jsonl(saved, key)
    assert report.count == entries[-1]["audit_head"]["count"]
    # A file export still works, and its bytes are the same.
    assert sealagg("audit", "export", tmp_path / "file.jsonl", "-f", folder).exit_code == 0
    assert (tmp_path / "file.jsonl").read_text() == result.stdout


def test_status_watch_without_a_tty_prints_a_snapshot_each_interval(tmp_path: Path, running):
    folder = tmp_path / "federation"
    _init(folder, free_port())
    appliance = running(folder)
    address = f"127.0.0.1:{appliance.port}"
    watch = ["status", "--watch", "-f", folder, "--address", address, "--interval", "0.1"]
    result = sealagg(*watch, "--count", "3")
    assert result.exit_code == 0, result.output
    stamps = [line for line in result.stdout.splitlines() if line.startswith("--- ")]
    assert len(stamps) == 3
    assert result.stdout.count("sealagg status") == 3 and "fixfed" in result.stdout
    assert "\x1b[" not in result.stdout  # plain text: no cursor movement, no colour codes
    as_json = sealagg(*watch, "--count", "2", "--json")
    assert as_json.exit_code == 0, as_json.output
    snapshots = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert len(snapshots) == 2 and all("at" in s and "mode" in s["status"] for s in snapshots)
    appliance.stop()  # an unreachable appliance is one line per snapshot; the watch goes on
    gone = sealagg(*watch, "--count", "2", "--timeout", "0.5")
    assert gone.exit_code == 0, gone.output
    assert gone.stdout.count("unreachable") == 2


def test_rounds_verbose_shows_how_many_clients_finished_each_phase(deployment, running):
    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1}, deadlines=FAST)
    appliance = running(dep.folder)
    threads, reports, errors = run_clients(dep, sorted(dep.kits))
    appliance.wait(60)
    join(threads)
    assert not errors, errors
    assert reports["client0"][0].outcome == "published"
    result = sealagg("rounds", "-v", "-f", dep.folder)
    assert result.exit_code == 0, result.output
    rows = [
        line.split("│")
        for line in result.stdout.splitlines()
        if line.count("│") >= 4 and any(p in line for p in ("advertise", "share", "masked"))
    ]
    assert rows, result.stdout
    clients_in = {cells[1].strip(): cells[3].strip() for cells in rows}
    assert clients_in and all(count == "3" for count in clients_in.values()), clients_in
