"""``sealagg add-client``, ``sealagg revoke``, ``sealagg clients`` (list) and
``sealagg clients readmit NAME``: client credentials, and exclusions after proven blames."""

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from sealagg.appliance.admins import Action, Actor, AdminDirectory, Role, remove_admin
from sealagg.appliance.cli._actor import AsKitOption, AsOption, record_now, resolve_actor
from sealagg.appliance.cli._common import (
    ADMIN_NAME,
    DEFAULT_FOLDER,
    CLIError,
    FolderOption,
    PassphraseFileOption,
    check_federation,
    console,
    open_state_readonly,
    open_state_writable,
    read_passphrase,
    state_exists,
)
from sealagg.appliance.federation import (
    ClientRecord,
    FederationFolder,
    add_client,
    add_enrolled_client,
    install_roster,
    pin_authority,
    revoke_client,
)
from sealagg.appliance.kit import parse_authority_key


def add_client_command(
    name: Annotated[
        str | None, typer.Argument(help="Client name (development kits; see --request).")
    ] = None,
    folder: FolderOption = DEFAULT_FOLDER,
    request: Annotated[
        Path | None,
        typer.Option(
            "--request",
            help="An enrolment request the authority approved (sealagg-enrol): certify the "
            "client's own TLS key; the kit holds no private key.",
        ),
    ] = None,
    insecure_dev_keys: Annotated[
        bool,
        typer.Option(
            "--insecure-dev-keys",
            help="With NAME in a federation that pins an authority: let the appliance make "
            "the client's keys anyway. INSECURE against a malicious appliance (it could "
            "impersonate the client); development only.",
        ),
    ] = False,
    archive: Annotated[
        bool, typer.Option("--archive", help="Write one .tar.gz instead of a folder.")
    ] = False,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Where to write the kit (default: <folder>/kits/NAME)."),
    ] = None,
    admin: Annotated[
        bool,
        typer.Option(
            "--admin",
            help=f"Issue administrator credentials (only for the reserved name {ADMIN_NAME!r}).",
        ),
    ] = False,
    passphrase_file: PassphraseFileOption = None,
    as_name: AsOption = None,
    as_kit: AsKitOption = None,
) -> None:
    """Issue a signed client kit: for an approved enrolment request (--request), or a
    development kit whose keys the appliance makes (NAME). Audited at once (who, when)."""
    if request is not None:
        if name is not None:
            raise CLIError("give NAME or --request, not both (the request names the client)")
        check_federation(folder)
        actor = resolve_actor(folder, Action.ADD_CLIENT, as_name, as_kit)
        data = request.read_bytes()
        requested = _requested_name(data)
        if requested is not None:
            _refuse_admin_name(folder)(requested)
        federation = FederationFolder.load(folder, passphrase=read_passphrase(passphrase_file))
        path = add_enrolled_client(federation, data, out=out, archive=archive)
        record = None if requested is None else federation.client_record(requested)
        if record is not None:
            _record_issue(folder, record, actor, admin=False)
        console.print(
            f"[green]issued enrolled kit[/] (no private keys): {escape(str(path))}",
            soft_wrap=True,
        )
        console.print("  the client installs it with `sealagg-enrol install`", soft_wrap=True)
        return
    if name is None:
        raise CLIError("give the client NAME, or --request FILE for an enrolled client")
    if (name == ADMIN_NAME) != admin:
        if admin:
            raise CLIError(f"--admin issues credentials for {ADMIN_NAME!r} only, not {name!r}")
        raise CLIError(
            f"the name {ADMIN_NAME!r} is reserved for administration (it never takes part in "
            f"rounds and may call the Admin service); add --admin to issue those credentials"
        )
    check_federation(folder)
    actor = resolve_actor(
        folder, Action.MANAGE_ADMINS if admin else Action.ADD_CLIENT, as_name, as_kit
    )
    if not admin:
        _refuse_admin_name(folder)(name)
    federation = FederationFolder.load(folder, passphrase=read_passphrase(passphrase_file))
    if federation.authority_public_key is not None and not (admin or insecure_dev_keys):
        raise CLIError(
            "this federation pins an authority: clients enrol (sealagg-enrol, then "
            "`sealagg add-client --request FILE`); --insecure-dev-keys lets the appliance make "
            "the keys, which is insecure against a malicious appliance"
        )
    path = add_client(federation, name, out=out, archive=archive)
    record = federation.client_record(name)
    if record is not None:
        _record_issue(folder, record, actor, admin=admin)
    serial = f" (certificate serial {record.serial:x})" if record is not None else ""
    what = "administrator kit" if admin else "kit"
    console.print(
        f"[green]issued {what} for[/] [bold]{escape(name)}[/]{escape(serial)}: {escape(str(path))}",
        soft_wrap=True,
    )
    console.print(
        "  it holds the client's private keys: hand it over through a secure channel, then delete "
        "this copy",
        soft_wrap=True,
    )


def _refuse_admin_name(folder: Path) -> Callable[[str], None]:
    """A name check: an administrator's name never becomes a participant's."""
    directory = AdminDirectory.load(folder, current_only=False)

    def check(name: str) -> None:
        if directory.entry(name) is not None:
            raise CLIError(
                f"{name!r} is a named administrator: an administrator is never a participant "
                "(see `sealagg admins list`)"
            )

    return check


def _requested_name(request: bytes) -> str | None:
    """The name an enrolment request asks for (None: unreadable; issuing then says why)."""
    from sealagg.crypto.errors import RosterError
    from sealagg.crypto.roster import verify_enrolment_request

    try:
        name = verify_enrolment_request(request)["name"]
    except (RosterError, KeyError, TypeError, ValueError):
        return None
    return name if isinstance(name, str) else None


def _record_issue(folder: Path, record: ClientRecord, actor: Actor, *, admin: bool) -> None:
    from sealagg.appliance.participant_sync import record_admin_event, record_client_added

    if admin:  # the owner's administrator kit: never a participant
        record_now(
            folder,
            f"issuing {record.name}",
            lambda store: record_admin_event(
                store,
                "admin_added",
                {
                    "name": record.name,
                    "roles": sorted(r.value for r in Role),
                    "cert_serial": format(record.serial, "x"),
                },
                by=actor,
                time=record.issued_at,
            ),
        )
        return
    record_now(
        folder,
        f"issuing {record.name}",
        lambda store: record_client_added(store, record, by=actor),
    )


def revoke(
    name: Annotated[str, typer.Argument(help="Client to revoke.")],
    folder: FolderOption = DEFAULT_FOLDER,
    as_name: AsOption = None,
    as_kit: AsKitOption = None,
) -> None:
    """Revoke a client's certificate; the appliance refuses it from its next call on.
    Audited at once, with the revocation's time and who did it."""
    from sealagg.appliance.admin_ops import record_revocation, revoked_time
    from sealagg.appliance.participant_sync import record_admin_event

    check_federation(folder)
    directory = AdminDirectory.load(folder, current_only=False)
    named_admin = directory.entry(name) is not None
    actor = resolve_actor(
        folder,
        Action.MANAGE_ADMINS if named_admin or name == ADMIN_NAME else Action.REVOKE_CLIENT,
        as_name,
        as_kit,
    )
    federation = FederationFolder.load(folder)
    if named_admin:
        remove_admin(federation, name)
    else:
        revoke_client(federation, name)
    record = federation.client_record(name)
    if record is not None:
        revoked_at = revoked_time(federation, record)
        if named_admin or name == ADMIN_NAME:
            record_now(
                folder,
                f"revoking {name}",
                lambda store: record_admin_event(
                    store,
                    "admin_removed",
                    {"name": name, "cert_serial": format(record.serial, "x")},
                    by=actor,
                    time=revoked_at,
                ),
            )
        else:  # the same record as a revocation through the Admin service (admin_ops.py)
            record_now(
                folder,
                f"revoking {name}",
                lambda store: record_revocation(store, federation, record, by=actor),
            )
    console.print(f"[yellow]revoked[/] [bold]{escape(name)}[/]", soft_wrap=True)
    console.print(
        "  a running appliance re-reads the revocation list and refuses this client at its "
        "next call; no restart needed",
        soft_wrap=True,
    )
    if name == ADMIN_NAME:
        console.print(
            f"  issue new administrator credentials with `sealagg add-client {ADMIN_NAME} "
            "--admin --out PATH`",
            soft_wrap=True,
        )


clients_app = typer.Typer(
    help="List issued clients (with no sub-command), or readmit an excluded one.",
    invoke_without_command=True,
)


@clients_app.callback()
def list_clients(ctx: typer.Context, folder: FolderOption = DEFAULT_FOLDER) -> None:
    """List issued clients: active, revoked, or excluded after a proven blame."""
    if ctx.invoked_subcommand is not None:
        return
    check_federation(folder)
    federation = FederationFolder.load(folder)
    revoked_serials = federation.revocations()
    directory = AdminDirectory.load(folder, current_only=False)
    excluded = {}
    if state_exists(folder):
        with open_state_readonly(folder) as store:
            excluded = store.excluded_participants()
    table = Table(title=f"clients of {federation.name}")
    table.add_column("name")
    table.add_column("serial")
    table.add_column("issued")
    table.add_column("expires")
    table.add_column("status")
    for record in federation.client_records():
        revoked = record.revoked or record.serial in revoked_serials
        status = "[red]revoked[/]" if revoked else "[green]active[/]"
        if not revoked and record.name in excluded:
            why = excluded[record.name]
            status = f"[red]excluded[/] (round {why.round}: {escape(why.reason)})"
        if record.name == ADMIN_NAME:
            status += " (admin)"
        elif directory.entry(record.name) is not None:
            roles = ", ".join(sorted(r.value for r in directory.roles_of(record.name)))
            status += f" (admin: {roles or 'no current certificate'})"
        table.add_row(
            escape(record.name),
            f"{record.serial:x}"[:16],
            record.issued_at.strftime("%Y-%m-%d"),
            record.not_after.strftime("%Y-%m-%d"),
            status,
        )
    console.print(table)


@clients_app.command("readmit")
def readmit(
    name: Annotated[str, typer.Argument(help="The excluded client to take part again.")],
    folder: FolderOption = DEFAULT_FOLDER,
    as_name: AsOption = None,
    as_kit: AsKitOption = None,
) -> None:
    """End a client's exclusion after a proven blame: later rounds may select it again."""
    check_federation(folder)
    actor = resolve_actor(folder, Action.READMIT_CLIENT, as_name, as_kit)
    with open_state_writable(folder) as store:
        record = store.readmit_participant(name, by=str(actor))
    console.print(
        f"[green]readmitted[/] [bold]{escape(name)}[/] (excluded in round {record.round}: "
        f"{escape(record.reason)})",
        soft_wrap=True,
    )
    console.print(
        "  the proof against it stays in the audit log (client_excluded); a running appliance "
        "selects it again from its next round",
        soft_wrap=True,
    )


roster_app = typer.Typer(help="The authority's signed roster, as this appliance serves it.")


@roster_app.command("install")
def install_roster_command(
    roster: Annotated[Path, typer.Argument(help="roster.json signed by the authority.")],
    folder: FolderOption = DEFAULT_FOLDER,
    authority_key: Annotated[
        str | None,
        typer.Option("--authority-key", help="Pin the authority's public key (hex) first."),
    ] = None,
) -> None:
    """Install a signed roster (served in every RoundStart; clients verify it themselves)."""
    check_federation(folder)
    federation = FederationFolder.load(folder)
    if authority_key is not None:
        pin_authority(federation, parse_authority_key(authority_key.encode()))
    installed = install_roster(federation, roster.read_bytes())
    console.print(
        f"[green]installed roster version {installed.version}[/] ({len(installed.entries)} entries)"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(roster_app, name="roster")
    app.command("add-client")(add_client_command)
    app.command("revoke")(revoke)
    app.add_typer(clients_app, name="clients")
