"""The console in a real headless Chromium (the operating system's, driven by Playwright)
against a real appliance on loopback, with real clients running a secure round.

One appliance, one browser, one flow, as an administrator would use it: sign in with the
one-time link from the Admin service's ``OpenConsole``; watch the live phase change during a
round; approve the pending candidate from the Approvals page and see it become the current
version; revoke a client and see it shown as revoked; verify the audit log (OK), edit one
audit row on disk, verify again (the first broken entry). Screenshots of every page are saved
to ``build/console-screenshots/`` as artifacts.

Chromium comes from the OS (``scripts/install_chromium.sh``, run by ``./run test``); if it is
missing this test fails and says so: it never skips.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sealagg_testkit.rounds import FAST, run_clients
from typer.testing import CliRunner

from sealagg.appliance.admin_api import connect
from sealagg.appliance.cli import app as cli_app
from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.server import open_store
from sealagg.appliance.store import default_state_path
from sealagg.client_shim.session import Participant

CHROMIUM = os.environ.get("SEALAGG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "build" / "console-screenshots"
PHASE_PAUSE = 0.8
PAGES = (
    "federation",
    "runs",
    "participants",
    "versions",
    "approvals",
    "privacy",
    "attestations",
    "audit",
)


@contextlib.contextmanager
def chromium() -> Iterator[object]:
    """The system's Chromium, headless. Started after the appliance: Playwright's sync API
    runs an event loop in this thread, and the appliance's loop is started from here too."""
    if not Path(CHROMIUM).exists():
        pytest.fail(
            f"no Chromium at {CHROMIUM}: run scripts/install_chromium.sh (./run test does) "
            "or set SEALAGG_CHROMIUM; the console's browser tests never skip"
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class SlowParticipant(Participant):
    """Answers each protocol phase ``PHASE_PAUSE`` seconds late, so that every phase lasts
    long enough to be seen on screen (a loopback round is over in well under a second)."""

    def _send(self, start, phase, message, meta, deadline_unix):  # type: ignore[override]
        time.sleep(PHASE_PAUSE)
        return super()._send(start, phase, message, meta, deadline_unix)


def _current_version(folder: Path) -> int | None:
    store = open_store(FederationFolder.load(folder))
    try:
        model = store.current_model()
        return model.version if model else None
    finally:
        store.close()


def _open(page, name: str) -> None:
    """Show a page of the console and wait until its data is on screen."""
    page.evaluate(f"location.hash = '#{name}'")
    page.wait_for_selector(f"body[data-loaded='{name}']", timeout=10_000)


def _shoot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def test_the_console_in_chromium(deployment, running) -> None:
    started = time.monotonic()
    dep = deployment(clients=3)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": 3, "rounds": 0},  # keep serving
        deadlines=FAST,
        gates={"require_approval": True},
        console={"enabled": True},
    )
    add_client(FederationFolder.load(dep.folder), "admin", out=dep.folder / "admin-kit")
    app = running(dep.folder)
    console = app.app.console
    assert console is not None and console.url.startswith("https://127.0.0.1:")

    # The one-time link, through the Admin service: the Python admin API and `sealagg
    # console` (what an administrator runs) each get their own.
    with connect(dep.folder, address=dep.address, timeout=10) as admin:
        api_url, expires = admin.open_console()
        assert admin.status()["console"] == console.url  # `sealagg status` shows it
    assert api_url.startswith(console.url + "login?token=") and expires == 120.0
    printed = CliRunner().invoke(
        cli_app, ["console", "-f", str(dep.folder), "--address", dep.address, "--timeout", "10"]
    )
    assert printed.exit_code == 0, printed.output
    login_url = printed.stdout.strip()
    assert login_url.startswith(console.url + "login?token=") and login_url != api_url

    with chromium() as browser:
        context = browser.new_context(
            ignore_https_errors=True, viewport={"width": 1366, "height": 820}
        )
        page = context.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(login_url)
        page.wait_for_selector("body[data-loaded='federation']", timeout=10_000)
        assert page.url == console.url + "#federation" or page.url == console.url
        assert page.text_content("#who").startswith("admin (session")
        assert "testfed" in page.text_content("#fed-name")
        # The link was single use: a second browser is refused.
        other = browser.new_context(ignore_https_errors=True).new_page()
        assert other.goto(login_url).status == 403
        # Without signing in (loopback: anonymous reading is on) the pages show, read-only.
        other.goto(console.url + "#audit")
        other.wait_for_selector("body[data-loaded='audit']", timeout=10_000)
        assert other.text_content("#who") == "read-only viewer"
        assert other.is_visible("#banner") and "Read-only" in other.text_content("#banner")
        assert "administrators only" in other.text_content("#audit-table")

        # ---- the live phase changes on screen during a round ----------------------------------
        _open(page, "runs")
        assert page.text_content("#live-phase") == "idle"
        threads, reports, client_errors = run_clients(
            dep, sorted(dep.kits), participant_cls=SlowParticipant
        )
        seen: list[str] = []
        deadline = time.monotonic() + 40
        while any(t.is_alive() for t in threads) and time.monotonic() < deadline:
            phase = page.text_content("#live-phase")
            if not seen or seen[-1] != phase:
                seen.append(phase)
                if len(seen) == 3:
                    _shoot(page, "runs-live")
            time.sleep(0.05)
        for t in threads:
            t.join(10)
        assert not client_errors, client_errors
        assert all(r[0].outcome == "pending_approval" for r in reports.values()), reports
        phases = [p for p in seen if p != "idle"]
        assert len(set(phases)) >= 3, f"the live phase never changed on screen: {seen}"
        page.wait_for_selector("#live-phase[data-phase='idle']", timeout=10_000)
        _open(page, "runs")
        page.wait_for_selector("#rounds-table td.status-pending_approval", timeout=10_000)
        _shoot(page, "runs")

        # ---- a pending candidate is approved from the page and becomes current ----------------
        assert _current_version(dep.folder) == 1
        _open(other, "approvals")  # the anonymous viewer sees the candidate, cannot decide
        assert other.locator("#approvals-table button[data-action='approve']").is_disabled()
        other.context.close()
        _open(page, "approvals")
        row = page.locator("#approvals-table tbody tr").first
        row.locator("input.reason").fill("holdout accuracy fine")
        _shoot(page, "approvals")
        row.locator("button[data-action='approve']").click()
        page.wait_for_selector(".flash.ok", timeout=10_000)
        assert "published" in page.text_content("#flash") or "approve" in page.text_content(
            "#flash"
        )
        assert _current_version(dep.folder) == 2
        _open(page, "versions")
        current = page.locator("#versions-table tbody tr[data-key='v2']")
        assert "(current)" in current.text_content()
        assert "accepted" in current.text_content()
        _shoot(page, "versions")

        # ---- a revoked client shows as revoked ------------------------------------------------
        _open(page, "participants")
        client = page.locator("#clients-table tbody tr[data-key='client2']")
        assert "active" in client.locator("td").nth(1).text_content()
        client.locator("input.reason").fill("laptop stolen")
        client.locator("button[data-action='revoke']").click()
        page.wait_for_selector(".flash.ok", timeout=10_000)
        page.wait_for_selector(
            "#clients-table tr[data-key='client2'] td.state-revoked", timeout=10_000
        )
        assert "laptop stolen" in client.text_content()
        _shoot(page, "participants")

        # ---- the audit log verifies; after an edit on disk it shows the broken entry ----------
        _open(page, "audit")
        assert page.locator("#audit-table tbody tr").count() > 5
        page.click("#verify-audit")
        page.wait_for_selector("#audit-result.good", timeout=10_000)
        assert page.text_content("#audit-result").startswith("OK")
        _shoot(page, "audit")
        with sqlite3.connect(default_state_path(dep.folder)) as db:
            seq, entry = db.execute(
                "SELECT seq, entry FROM audit_log WHERE event = 'approval' ORDER BY seq LIMIT 1"
            ).fetchone()
            edited = bytes(entry).replace(b"holdout accuracy fine", b"holdout accuracy poor")
            assert edited != bytes(entry)
            db.execute("UPDATE audit_log SET entry = ? WHERE seq = ?", (edited, seq))
        db.close()
        page.click("#verify-audit")
        page.wait_for_selector("#audit-result.bad", timeout=10_000)
        broken = page.text_content("#audit-result")
        assert broken.startswith("BROKEN") and f"entry #{seq}" in broken, broken
        _shoot(page, "audit-broken")

        for name in ("federation", "privacy", "attestations"):
            _open(page, name)
            _shoot(page, name)
        assert {p.stem for p in SCREENSHOTS.glob("*.png")} >= set(PAGES)
        assert not errors, errors
        context.close()
        assert time.monotonic() - started < 90
