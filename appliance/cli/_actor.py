"""Who runs an administrative command (``--as NAME``, ``--as-kit KIT``) and recording it.

The actor of every change is the operating-system account running the command (the host
vouches for it; it can write the federation folder, so it holds every power anyway). With
``--as NAME`` the command also acts as that named administrator, and refuses unless NAME's
roles allow the action (appliance/admins.py). ``--as-kit`` proves it: the command must hold
NAME's current kit, private key included; without it the name is a claim, recorded as such.
"""

from pathlib import Path
from typing import Annotated, Any

import typer

from sealagg.appliance.cli._common import err_console, open_state_writable

AsOption = Annotated[
    str | None,
    typer.Option(
        "--as",
        help="Act as this named administrator (its roles must allow the action); recorded "
        "in the audit entry with the OS user.",
    ),
]
AsKitOption = Annotated[
    Path | None,
    typer.Option(
        "--as-kit",
        help="The --as administrator's kit: proves the name (its key must match the current "
        "certificate) instead of only claiming it.",
    ),
]


def resolve_actor(folder: Path, action: Any, as_name: str | None, as_kit: Path | None) -> Any:
    """The :class:`~appliance.admins.Actor` of this command, after checking ``--as``."""
    from sealagg.appliance.admins import acting, prove_kit_holder
    from sealagg.appliance.cli._common import CLIError

    if as_kit is not None:
        if as_name is None:
            raise CLIError("--as-kit proves the administrator named by --as: give --as NAME too")
        prove_kit_holder(folder, as_name, as_kit)
    return acting(folder, action, as_name=as_name, proven=as_kit is not None)


def record_now(folder: Path, what: str, write: Any) -> bool:
    """Run ``write(store)`` on the state database now (creating it on first use, as
    ``model import`` does, so that the README's order init → add-client → serve audits the
    issue with its actor too); True when it ran.

    A database that cannot be written now (locked for longer than the busy timeout, a
    read-only folder) is reported, and the appliance's start records the change late, from
    the folder's records with their own time (without the actor).
    """
    from sealagg.appliance.errors import StoreError

    try:
        with open_state_writable(folder) as store:
            write(store)
    except StoreError as error:
        err_console.print(
            f"[yellow]warning:[/] {what} is done but not yet in the audit log ({error}); the "
            "appliance records it at its next start, with the time of the change",
            soft_wrap=True,
        )
        return False
    return True
