"""``sealagg status`` shows the live run and certificate warnings.

The view (render_status) and, against a real appliance over mutual TLS, ``sealagg status`` and
``sealagg status --json`` on a folder whose client certificate expires within 30 days.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from rich.console import Console
from typer.testing import CliRunner

from sealagg.appliance.cli._admin import AdminClient
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.cli.status import render_status
from sealagg.appliance.federation import add_client, init_federation
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment, base_model, free_port


def _text(renderable) -> str:
    console = Console(width=200, record=True, color_system=None)
    console.print(renderable)
    return console.export_text()


def _line(text: str, label: str) -> str:
    """The one line of the view whose row is ``label``."""
    (line,) = [ln for ln in text.splitlines() if ln.strip(" │").startswith(f"{label} ")]
    return line


def test_render_status_shows_the_run_and_the_warnings_first() -> None:
    status = {
        "mode": "plaintext",
        "model_version": 3,
        "ready_clients": ["a", "b"],
        "run": {"id": "run-7", "name": "tuning", "status": "paused", "rounds": 5, "rounds_done": 2},
    }
    warning = "client certificate 'soon' expires in 12.0 days (2027-01-01T00:00:00Z): renew"
    text = _text(render_status(status, address="h:1", federation="fed", warnings=[warning]))
    assert "run-7 (tuning): paused, 2 of 5 rounds" in _line(text, "run")
    assert f"warning: {warning}" in text
    assert text.index("warning:") < text.index("federation")  # shown before everything else

    unbounded = {**status, "run": {**status["run"], "rounds": 0, "status": "running"}}
    assert "running, 2 of unbounded rounds" in _line(
        _text(render_status(unbounded, address="h:1", federation="fed")), "run"
    )
    no_run = _text(render_status({"mode": "plaintext"}, address="h:1", federation="fed"))
    assert not [ln for ln in no_run.splitlines() if ln.strip(" │").startswith("run ")]
    assert "warning:" not in no_run


def test_status_names_a_client_certificate_expiring_within_30_days(tmp_path, running) -> None:
    # A federation made 350 days ago: its 365-day certificates have about 15 days left.
    made = datetime.now(UTC) - timedelta(days=350)
    port = free_port()
    folder = tmp_path / "federation"
    fed = init_federation(
        folder, name="statusfed", hosts=["localhost", "127.0.0.1"], port=port, now=made
    )
    add_client(fed, "soon", now=made + timedelta(minutes=1))
    add_client(fed, "fresh")  # issued today: no warning
    add_client(fed, ADMIN_NAME, out=folder / ADMIN_KIT_DIRNAME)
    store = open_store(fed)
    store.add_model_version(base_model(0), parent=None, status="accepted")
    store.close()
    dep = Deployment(folder, port, fed, {}, authority=None)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 2, "rounds": 0})
    running(dep.folder)
    with AdminClient(dep.folder, address=dep.address, timeout=15) as admin:
        ok, detail, run = admin.create_run(name="tuning", rounds=4)
        assert ok, detail
        ok, detail, _ = admin.control_run(run["id"], "start")
        assert ok, detail
    from sealagg.appliance.cli import app

    base = ["status", "-f", str(dep.folder), "--address", dep.address]
    result = CliRunner().invoke(app, [*base, "--json"], env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    (warning,) = [w for w in status["certificate_warnings"] if "'soon'" in w]
    assert warning.startswith("client certificate 'soon' expires in 1")
    assert not [w for w in status["certificate_warnings"] if "'fresh'" in w]
    assert status["run"]["id"] == run["id"] and status["run"]["name"] == "tuning"

    result = CliRunner().invoke(app, base, env={"COLUMNS": "300"})
    assert result.exit_code == 0, result.output
    assert "warning: client certificate 'soon' expires in" in result.output
    run_line = _line(result.output, "run")
    assert f"{run['id']} (tuning):" in run_line and "of 4 rounds" in run_line
