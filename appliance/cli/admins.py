"""``sealagg admins add|list|remove``: named administrators and their roles.

Each named administrator holds a kit (a client certificate with its name) and roles from
operator, approver, auditor (appliance/admins.py says what each allows). The legacy ``admin``
kit that ``sealagg init`` writes keeps every role. Every change is audited at once, with
who made it, when the state database exists.
"""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from sealagg.appliance.cli._actor import AsKitOption, AsOption, record_now, resolve_actor
from sealagg.appliance.cli._common import (
    DEFAULT_FOLDER,
    FolderOption,
    PassphraseFileOption,
    check_federation,
    console,
    read_passphrase,
)

admins_app = typer.Typer(help="Named administrators with roles (operator, approver, auditor).")


@admins_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="The administrator's name (its certificate's).")],
    role: Annotated[
        list[str],
        typer.Option("--role", help="operator, approver or auditor; repeat for several."),
    ],
    folder: FolderOption = DEFAULT_FOLDER,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the kit (default: <folder>/kits/NAME)."),
    ] = None,
    archive: Annotated[
        bool, typer.Option("--archive", help="Write one .tar.gz instead of a folder.")
    ] = False,
    passphrase_file: PassphraseFileOption = None,
    as_name: AsOption = None,
    as_kit: AsKitOption = None,
) -> None:
    """Issue an administrator kit for NAME and grant it the given roles."""
    from sealagg.appliance.admins import Action, issue_admin
    from sealagg.appliance.federation import FederationFolder
    from sealagg.appliance.participant_sync import record_admin_event

    check_federation(folder)
    actor = resolve_actor(folder, Action.MANAGE_ADMINS, as_name, as_kit)
    federation = FederationFolder.load(folder, passphrase=read_passphrase(passphrase_file))
    if out is None:
        out = federation.paths.kits / (f"{name}.tar.gz" if archive else name)
    path, entry = issue_admin(federation, name, role, out=out, archive=archive, added_by=str(actor))
    roles = sorted(r.value for r in entry.roles)
    record_now(
        folder,
        f"administrator {name}",
        lambda store: record_admin_event(
            store,
            "admin_added",
            {"name": name, "roles": roles, "cert_serial": format(entry.serial, "x")},
            by=actor,
            time=entry.added_at,
        ),
    )
    console.print(
        f"[green]issued administrator kit for[/] [bold]{escape(name)}[/] "
        f"(roles: {', '.join(roles)}): {escape(str(path))}",
        soft_wrap=True,
    )
    console.print(
        "  it holds the administrator's private key: hand it over through a secure channel, "
        "then delete this copy; use it with --kit on status, approve, reject",
        soft_wrap=True,
    )


@admins_app.command("list")
def list_admins(folder: FolderOption = DEFAULT_FOLDER) -> None:
    """List administrators, their roles and whether their certificate is current."""
    from sealagg.appliance.admins import LEGACY_ADMIN, AdminDirectory, Role
    from sealagg.appliance.federation import FederationFolder

    check_federation(folder)
    federation = FederationFolder.load(folder)
    current = AdminDirectory.load(folder)
    every = AdminDirectory.load(folder, current_only=False)
    table = Table(title=f"administrators of {federation.name}")
    for column in ("name", "roles", "serial", "added", "added by", "status"):
        table.add_column(column)
    legacy = federation.client_record(LEGACY_ADMIN)
    if legacy is not None:
        table.add_row(
            LEGACY_ADMIN,
            ", ".join(r.value for r in Role) + " (owner)",
            f"{legacy.serial:x}"[:16],
            legacy.issued_at.strftime("%Y-%m-%d"),
            "sealagg init",
            "[red]revoked[/]" if legacy.revoked else "[green]active[/]",
        )
    for entry in every.entries():
        status = "[green]active[/]" if current.is_admin(entry.name) else "[red]revoked[/]"
        table.add_row(
            escape(entry.name),
            ", ".join(sorted(r.value for r in entry.roles)),
            f"{entry.serial:x}"[:16],
            entry.added_at.strftime("%Y-%m-%d"),
            escape(entry.added_by),
            status,
        )
    console.print(table)


@admins_app.command("remove")
def remove(
    name: Annotated[str, typer.Argument(help="The administrator to remove.")],
    folder: FolderOption = DEFAULT_FOLDER,
    as_name: AsOption = None,
    as_kit: AsKitOption = None,
) -> None:
    """Revoke NAME's certificate (refused from its next call on) and drop its roles."""
    from sealagg.appliance.admins import Action, remove_admin
    from sealagg.appliance.federation import FederationFolder
    from sealagg.appliance.participant_sync import record_admin_event

    check_federation(folder)
    actor = resolve_actor(folder, Action.MANAGE_ADMINS, as_name, as_kit)
    federation = FederationFolder.load(folder)
    entry = remove_admin(federation, name)
    record = federation.client_record(name)
    serial = record.serial if record is not None else entry.serial
    revoked_at = next(
        (r.revoked_at for r in federation.revocations().entries if r.serial == serial), None
    )
    record_now(
        folder,
        f"removing administrator {name}",
        lambda store: record_admin_event(
            store,
            "admin_removed",
            {
                "name": name,
                "roles": sorted(r.value for r in entry.roles),
                "cert_serial": format(serial, "x"),
            },
            by=actor,
            time=revoked_at,
        ),
    )
    console.print(f"[yellow]removed administrator[/] [bold]{escape(name)}[/]", soft_wrap=True)
    console.print(
        "  its certificate is revoked: a running appliance refuses it at its next call",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.add_typer(admins_app, name="admins")
