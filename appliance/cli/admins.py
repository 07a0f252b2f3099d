"""``sealagg admins ...``: filled in by issue 19 (operations)."""

import typer


def register(app: typer.Typer) -> None:
    """Adds this module's commands to the ``sealagg`` app (none yet)."""
    del app
