"""``sealagg status``: the running appliance's state, from the Admin.Status RPC."""

import json
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from sealagg.appliance.cli._admin import (
    AddressOption,
    AdminClient,
    InsecureOption,
    KitOption,
    TimeoutOption,
)
from sealagg.appliance.cli._common import DEFAULT_FOLDER, CLIError, FolderOption, console, styled


def _names(names: Any, limit: int = 12) -> str:
    if not isinstance(names, list) or not names:
        return "-"
    shown = ", ".join(str(n) for n in names[:limit])
    more = f" … (+{len(names) - limit})" if len(names) > limit else ""
    return escape(f"{shown}{more}")


def _deadline(value: Any, now: float) -> str:
    if not isinstance(value, int | float):
        return "-"
    at = datetime.fromtimestamp(value).strftime("%H:%M:%S")
    left = value - now
    return f"{at} (in {left:.0f} s)" if left >= 0 else f"{at} ([red]{-left:.0f} s ago[/])"


def render_status(
    status: dict[str, Any],
    *,
    address: str,
    federation: str,
    now: float | None = None,
    warnings: list[str] | None = None,
) -> RenderableType:
    """A rich view of the Status JSON; tolerant of missing fields. ``warnings``: lines shown
    first (certificates expiring soon, a CA rotation in progress)."""
    now = time.time() if now is None else now
    overview = Table.grid(padding=(0, 2))
    overview.add_column(style="bold")
    overview.add_column()
    overview.add_row("federation", escape(federation))
    overview.add_row("appliance", escape(address))
    console_url = status.get("console")
    if isinstance(console_url, str) and console_url:
        overview.add_row("console", f"{escape(console_url)} (sign in: `sealagg console`)")
    overview.add_row("mode", escape(str(status.get("mode", "?"))))
    version = status.get("model_version")
    overview.add_row("model version", "none yet" if version is None else escape(str(version)))
    ready = status.get("ready_clients") or []
    count = len(ready) if isinstance(ready, list) else 0
    overview.add_row("ready clients", f"{count}: {_names(ready)}" if count else "0")
    run = status.get("run")
    if isinstance(run, dict):
        budget = run.get("rounds") or "unbounded"
        overview.add_row(
            "run",
            escape(
                f"{run.get('id', '?')} ({run.get('name', '?')}): {run.get('status', '?')}, "
                f"{run.get('rounds_done', 0)} of {budget} rounds"
            ),
        )

    parts: list[RenderableType] = [
        Text(f"warning: {line}", style="bold yellow") for line in warnings or ()
    ]
    parts.append(overview)
    current = status.get("round")
    if isinstance(current, dict):
        info = Table.grid(padding=(0, 2))
        info.add_column(style="bold")
        info.add_column()
        members = current.get("members") or []
        waiting = current.get("waiting_for") or []
        info.add_row("number", escape(str(current.get("number", "?"))))
        info.add_row("phase", escape(str(current.get("phase", "?"))))
        info.add_row("members", f"{len(members)}: {_names(members)}")
        info.add_row("waiting for", f"{len(waiting)}: {_names(waiting)}" if waiting else "-")
        vanished = current.get("vanished") or {}
        if isinstance(vanished, dict) and vanished:  # not waited for (issue 25)
            gone = [f"{name} ({why})" for name, why in sorted(vanished.items())]
            info.add_row("vanished", f"{len(gone)}: {_names(gone)}")
        info.add_row("phase deadline", _deadline(current.get("phase_deadline"), now))
        parts.append(Panel(info, title="current round", title_align="left"))
    else:
        parts.append(Text("no round running", style="dim"))

    history = status.get("history") or []
    if isinstance(history, list) and history:
        table = Table(title="last rounds", title_justify="left")
        for column in ("round", "outcome", "model", "contributors", "dropped", "reason"):
            table.add_column(column)
        for item in history[-10:]:
            if not isinstance(item, dict):
                continue
            model = item.get("model_version")
            table.add_row(
                escape(str(item.get("number", "?"))),
                styled(str(item.get("outcome", "?"))),
                "-" if model is None else escape(str(model)),
                str(len(item.get("contributors") or [])),
                str(len(item.get("dropped") or [])),
                escape(str(item.get("reason") or "")),
            )
        parts.append(table)
    return Panel(Group(*parts), title="sealagg status", title_align="left")


def status_command(
    folder: FolderOption = DEFAULT_FOLDER,
    address: AddressOption = None,
    kit: KitOption = None,
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Refresh until Ctrl-C. Without a terminal (a pipe, a log file), print a plain "
            "snapshot each interval instead.",
        ),
    ] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.1, help="Seconds between refreshes (--watch).")
    ] = 1.0,
    count: Annotated[
        int | None,
        typer.Option("--count", min=1, help="Stop after this many snapshots (--watch)."),
    ] = None,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print the raw status JSON (one line per snapshot with --watch)."
        ),
    ] = False,
    timeout: TimeoutOption = 5.0,
    insecure: InsecureOption = False,
) -> None:
    """Show the running appliance's state (Admin.Status over mutual TLS)."""
    with AdminClient(
        folder, kit_path=kit, address=address, timeout=timeout, insecure=insecure
    ) as client:
        if not watch:
            status = client.status()
            warnings = _certificate_warnings(folder)
            if as_json:
                status = {**status, "certificate_warnings": warnings}
                typer.echo(json.dumps(status, indent=2, sort_keys=True))
            else:
                console.print(
                    render_status(
                        status,
                        address=client.address,
                        federation=client.federation,
                        warnings=warnings,
                    )
                )
            return
        if as_json or not console.is_terminal:
            _snapshots(client, interval=interval, count=count, as_json=as_json)
        else:
            _watch(client, interval=interval, count=count)


def _snapshots(client: AdminClient, *, interval: float, count: int | None, as_json: bool) -> None:
    """--watch without a terminal: a live view would print nothing until it ends (rich
    redraws in place only on a terminal), so print each snapshot in full, in order, with
    the time it was taken; an unreachable appliance is one line, and the watch goes on."""
    shown = 0
    try:
        while count is None or shown < count:
            if shown:
                time.sleep(interval)
            taken = datetime.now().astimezone().isoformat(timespec="seconds")
            try:
                status = client.status()
            except CLIError as error:
                if as_json:
                    typer.echo(json.dumps({"at": taken, "error": str(error)}, sort_keys=True))
                else:
                    typer.echo(f"--- {taken}: unreachable: {error}")
            else:
                if as_json:
                    typer.echo(json.dumps({"at": taken, "status": status}, sort_keys=True))
                else:
                    typer.echo(f"--- {taken}")
                    console.print(
                        render_status(status, address=client.address, federation=client.federation)
                    )
            sys.stdout.flush()
            shown += 1
    except KeyboardInterrupt:
        return


def _watch(client: AdminClient, *, interval: float, count: int | None) -> None:
    from rich.live import Live

    def frame() -> RenderableType:
        try:
            status = client.status()
        except CLIError as error:
            return Panel(Text(str(error), style="red"), title="sealagg status (unreachable)")
        return render_status(status, address=client.address, federation=client.federation)

    shown = 1
    try:
        with Live(frame(), console=console, refresh_per_second=4) as live:
            while count is None or shown < count:
                time.sleep(interval)
                live.update(frame())
                shown += 1
    except KeyboardInterrupt:
        return


def register(app: typer.Typer) -> None:
    app.command("status")(status_command)


def _certificate_warnings(folder: Path) -> list[str]:
    """Certificates of the local federation folder expiring within 30 days (nothing when this
    machine holds no folder: the admin may run `status` from elsewhere with --kit)."""
    if not (folder / "sealagg.toml").is_file():
        return []
    from sealagg.appliance.cli.certs import expiry_warnings
    from sealagg.appliance.errors import ApplianceError

    try:
        return expiry_warnings(folder)
    except (OSError, ValueError, ApplianceError) as error:
        return [f"cannot read the certificates in {folder}: {error}"]
