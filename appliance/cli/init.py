"""``sealagg init``: create a federation folder and the administrator's credentials."""

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from sealagg.appliance.cli._common import (
    ADMIN_KIT_DIRNAME,
    ADMIN_NAME,
    DEFAULT_FOLDER,
    CLIError,
    FolderOption,
    PassphraseFileOption,
    console,
    read_passphrase,
)
from sealagg.appliance.errors import ApplianceError
from sealagg.appliance.federation import DEFAULT_PORT, add_client, init_federation


def init(
    name: Annotated[str, typer.Option("--name", help="Federation name (A-Z a-z 0-9 . _ -).")],
    host: Annotated[
        list[str],
        typer.Option(
            "--host",
            help="Name or address clients dial; repeat for each (the first concrete one is "
            "what kits use).",
        ),
    ],
    folder: FolderOption = DEFAULT_FOLDER,
    port: Annotated[
        int, typer.Option("--port", min=1, max=65535, help="TCP port of the appliance.")
    ] = DEFAULT_PORT,
    passphrase_file: PassphraseFileOption = None,
) -> None:
    """Create a federation: CA, server certificate, audit key, config and the admin kit."""
    passphrase = read_passphrase(passphrase_file)
    federation = init_federation(folder, name=name, hosts=host, passphrase=passphrase, port=port)
    admin_kit = folder / ADMIN_KIT_DIRNAME
    try:
        add_client(federation, ADMIN_NAME, out=admin_kit)
    except ApplianceError as error:
        raise CLIError(
            f"federation {federation.name!r} was created in {folder}, but not the administrator "
            f"kit: {error}. Issue it with `sealagg add-client {ADMIN_NAME} --admin --out "
            f"{admin_kit}`"
        ) from None
    paths = federation.paths
    e = escape
    console.print(f"[green]created federation[/] [bold]{e(federation.name)}[/] in {e(str(folder))}")
    rows = [
        ("configuration", paths.config, "listens on loopback only: edit [server].listen"),
        ("CA certificate", paths.ca_cert, ""),
        (
            "CA key",
            paths.ca_key,
            "passphrase-protected"
            if passphrase
            else "NOT encrypted: --passphrase-file protects it",
        ),
        ("server certificate", paths.server_cert, f"for {', '.join(host)}"),
        ("audit public key", paths.audit_public_key, "give it to your auditors"),
        ("admin kit", admin_kit, "administrator credentials: keep them secret"),
    ]
    for label, path, note in rows:
        suffix = f"  [dim]({e(note)})[/]" if note else ""
        console.print(f"  {label:<19} {e(str(Path(path)))}{suffix}", soft_wrap=True)
    console.print(
        f"  clients dial {e(federation.public_address)} and check the server name "
        f"{e(federation.tls_server_name)}",
        soft_wrap=True,
    )
    console.print(
        "next: [bold]sealagg add-client NAME[/], [bold]sealagg model import FILE[/], "
        "[bold]sealagg serve[/]",
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("init")(init)
