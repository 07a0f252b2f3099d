"""``sealagg rounds`` (history from the store), ``sealagg approve`` / ``reject`` (Admin.Decide)."""

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from sealagg.appliance.cli._admin import (
    AddressOption,
    AdminClient,
    InsecureOption,
    KitOption,
    TimeoutOption,
)
from sealagg.appliance.cli._common import (
    DEFAULT_FOLDER,
    FolderOption,
    check_federation,
    console,
    err_console,
    open_state_readonly,
    short_time,
    state_exists,
    styled,
)

RoundArgument = Annotated[int, typer.Argument(min=1, help="Round number (see `sealagg rounds`).")]


def rounds_command(
    folder: FolderOption = DEFAULT_FOLDER,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Also show each round's phase transitions.")
    ] = False,
) -> None:
    """List the rounds recorded in the state database."""
    check_federation(folder)
    if not state_exists(folder):
        console.print("no rounds yet (the state database does not exist yet)")
        return
    store = open_state_readonly(folder)
    try:
        rounds = store.rounds()
        models = {m.round: m for m in store.model_versions() if m.round is not None}
        phases = {r.id: store.phases(r.id) for r in rounds} if verbose else {}
    finally:
        store.close()
    if not rounds:
        console.print("no rounds yet")
        return
    table = Table(title="rounds")
    for column in ("round", "mode", "status", "opened", "closed", "model", "reason"):
        table.add_column(column, overflow="fold")
    for r in rounds:
        model = models.get(r.id)
        table.add_row(
            str(r.id),
            escape(r.mode),
            styled(r.status),
            short_time(r.opened_at),
            short_time(r.closed_at),
            "-" if model is None else f"v{model.version} ({model.status})",
            escape(r.reason or ""),
        )
    console.print(table)
    for r in rounds if verbose else ():
        detail = Table(title=f"round {r.id}: phase transitions", title_justify="left")
        for column in ("phase", "at", "clients in", "dropped"):
            detail.add_column(column, overflow="fold")
        for p in phases[r.id]:
            dropped = ", ".join(str(d) for d in p.dropped) or "-"
            detail.add_row(escape(p.phase), short_time(p.at), str(p.clients_in), escape(dropped))
        if phases[r.id]:
            console.print(detail)
        else:
            console.print(f"round {r.id}: no phase transitions recorded", style="dim")


def _decide(
    folder: FolderOption,
    round_number: int,
    approve: bool,
    reason: str,
    address: str | None,
    kit: KitOption,
    timeout: float,
    insecure: bool,
) -> None:
    with AdminClient(
        folder, kit_path=kit, address=address, timeout=timeout, insecure=insecure
    ) as client:
        ok, detail = client.decide(round_number, approve=approve, reason=reason)
    if ok:
        console.print(f"[green]ok:[/] {escape(detail)}", soft_wrap=True)
        return
    err_console.print(f"[bold red]refused:[/] {escape(detail)}", soft_wrap=True)
    raise typer.Exit(1)


def approve(
    round_number: RoundArgument,
    folder: FolderOption = DEFAULT_FOLDER,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")] = "",
    address: AddressOption = None,
    kit: KitOption = None,
    timeout: TimeoutOption = 10.0,
    insecure: InsecureOption = False,
) -> None:
    """Publish the model a round produced (when it waits for approval)."""
    _decide(folder, round_number, True, reason, address, kit, timeout, insecure)


def reject(
    round_number: RoundArgument,
    reason: Annotated[str, typer.Option("--reason", help="Why (kept in the audit log).")],
    folder: FolderOption = DEFAULT_FOLDER,
    address: AddressOption = None,
    kit: KitOption = None,
    timeout: TimeoutOption = 10.0,
    insecure: InsecureOption = False,
) -> None:
    """Reject the model a round produced (when it waits for approval)."""
    if not reason.strip():
        raise typer.BadParameter("give the reason for the rejection", param_hint="--reason")
    _decide(folder, round_number, False, reason, address, kit, timeout, insecure)


def register(app: typer.Typer) -> None:
    app.command("rounds")(rounds_command)
    app.command("approve")(approve)
    app.command("reject")(reject)
