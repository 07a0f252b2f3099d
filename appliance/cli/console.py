"""``sealagg console``: a one-time login link to the appliance's web console.

The link comes from the Admin service's ``OpenConsole`` over the administrator kit's mutual
TLS, so the session it opens belongs to the kit's administrator (the console checks roles per
action, like every other front-end). The URL is printed alone on stdout (scripts and the demo
read it); what it is and how long it lives go to stderr. The link works once, within its
lifetime (``[console] token_seconds``); treat it like a password until then.
"""

from typing import Annotated

import typer

from sealagg.appliance.cli._admin import (
    AddressOption,
    AdminClient,
    InsecureOption,
    KitOption,
    TimeoutOption,
)
from sealagg.appliance.cli._common import DEFAULT_FOLDER, FolderOption


def console_command(
    folder: FolderOption = DEFAULT_FOLDER,
    address: AddressOption = None,
    kit: KitOption = None,
    timeout: TimeoutOption = 5.0,
    insecure: InsecureOption = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Print only the URL (no note on stderr).")
    ] = False,
) -> None:
    """Print a one-time login link to the web console (needs console.enabled in sealagg.toml)."""
    with AdminClient(
        folder, kit_path=kit, address=address, timeout=timeout, insecure=insecure
    ) as client:
        url, expires = client.open_console()
        name = client.name
    typer.echo(url)
    if not quiet:
        typer.echo(
            f"one-time link for {name}: open it in a browser within {expires:.0f} s; it "
            "works once and starts a console session (do not share it)",
            err=True,
        )


def register(app: typer.Typer) -> None:
    app.command("console")(console_command)
