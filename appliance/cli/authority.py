"""``sealagg authority ...``: the federation authority's commands (run OFF the appliance).

The security team keeps the authority folder on its own machine. It decides who takes part:
``approve`` adds enrolment requests to the roster, ``sign-roster`` signs a new version
(removals, policy). The signed ``roster.json`` is then installed on the appliance with
``sealagg roster install``; clients verify it against the authority key in their kits.
``sign-kit`` countersigns a kit the appliance issued, so the client trusts its CA, server
name and policies on the authority's word, not the appliance's. The policy may set a DP
floor (``--min-noise-multiplier``, ``--require-privacy``): every client then refuses a round
whose noise is below it, whatever the appliance's ``[privacy]`` says.

The passphrase comes from ``$SEALAGG_AUTHORITY_PASSPHRASE`` or a prompt, never an argument.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from sealagg.appliance import authority as auth
from sealagg.appliance.cli._common import CLIError, console
from sealagg.crypto.errors import RosterError
from sealagg.crypto.roster import Role

PASSPHRASE_ENV = "SEALAGG_AUTHORITY_PASSPHRASE"  # noqa: S105 - the variable name, not a secret

AuthorityDir = Annotated[
    Path, typer.Option("--dir", "-d", help="The authority folder (never on the appliance).")
]

MinNoise = Annotated[
    float | None,
    typer.Option(
        "--min-noise-multiplier",
        min=0.0,
        help="DP floor: every client refuses a round whose noise multiplier z is below it "
        "(and any round without DP); 0 removes the floor.",
    ),
]
RequirePrivacy = Annotated[
    list[str] | None,
    typer.Option(
        "--require-privacy",
        help="DP mode every round must use: client or distributed (repeat for either); "
        "none removes the requirement.",
    ),
]

app = typer.Typer(
    help="The federation authority: sign the roster and its policy, DP floor included "
    "(off the appliance)."
)


def _passphrase(*, confirm: bool = False) -> bytes:
    value = os.environ.get(PASSPHRASE_ENV)
    if value is None:
        value = typer.prompt("authority passphrase", hide_input=True, confirmation_prompt=confirm)
    if not value:
        raise CLIError("the authority passphrase is empty")
    return value.encode()


@app.command("init")
def init(
    out: Annotated[Path, typer.Option("--out", help="New folder for the authority key.")],
    federation: Annotated[str, typer.Option("--federation", help="The federation's name.")],
    colluders: Annotated[int | None, typer.Option("--colluders", min=0)] = None,
    minimum_sum: Annotated[int | None, typer.Option("--minimum-sum", min=1)] = None,
    mode: Annotated[list[str] | None, typer.Option("--mode", help="Allowed mode.")] = None,
    min_noise_multiplier: MinNoise = None,
    require_privacy: RequirePrivacy = None,
) -> None:
    """Create the authority key (passphrase-protected) and an empty roster (version 1),
    with the federation policy every client will enforce (c, m, allowed modes, DP floor)."""
    policy = auth.policy_with(
        {},
        colluders=colluders,
        minimum_sum=minimum_sum,
        modes=mode,
        min_noise_multiplier=min_noise_multiplier,
        required_privacy=require_privacy,
    )
    signer = auth.init_authority(
        out, _passphrase(confirm=True), federation=federation, policy=policy
    )
    console.print(f"[green]created federation authority[/] in {escape(str(out))}")
    console.print(f"  public key: [bold]{signer.public_key().hex()}[/]", soft_wrap=True)
    console.print(
        "  give it to every client out of band (sealagg-enrol --authority-key) and pin it on "
        "the appliance (sealagg roster install --authority-key)",
        soft_wrap=True,
    )


@app.command("approve")
def approve(
    requests: Annotated[list[Path], typer.Argument(help="Enrolment requests (one or more).")],
    folder: AuthorityDir,
    role: Annotated[
        str, typer.Option("--role", help="data_owner, vendor or key_holder (for all of them).")
    ] = Role.DATA_OWNER.value,
    days: Annotated[int, typer.Option("--days", min=1, help="Validity of the entries.")] = 365,
) -> None:
    """Admit enrolment requests: add them to the roster and sign the next version."""
    signer = auth.FileSigner.load(folder, _passphrase())
    try:
        chosen = Role(role)
    except ValueError:
        raise CLIError(f"unknown role {role!r}") from None
    roster, _ = auth.approve_all(
        folder,
        signer,
        [(request.read_bytes(), chosen) for request in requests],
        validity=timedelta(days=days),
    )
    console.print(
        f"[green]approved[/]: roster version {roster.version} with {len(roster.entries)} "
        f"entries: {escape(str(folder / auth.ROSTER_FILE))}",
        soft_wrap=True,
    )


@app.command("sign-roster")
def sign_roster_command(
    folder: AuthorityDir,
    remove: Annotated[list[str] | None, typer.Option("--remove", help="Drop a client.")] = None,
    colluders: Annotated[int | None, typer.Option("--colluders", min=0)] = None,
    minimum_sum: Annotated[int | None, typer.Option("--minimum-sum", min=1)] = None,
    mode: Annotated[list[str] | None, typer.Option("--mode", help="Allowed mode.")] = None,
    min_noise_multiplier: MinNoise = None,
    require_privacy: RequirePrivacy = None,
) -> None:
    """Sign the next roster version: remove clients and/or change the federation policy
    (c, m, allowed modes, the DP floor)."""
    signer = auth.FileSigner.load(folder, _passphrase())
    roster = auth.current_roster(folder, signer)
    removed = set(remove or [])
    if unknown := removed - {e.name for e in roster.entries}:
        raise CLIError(f"not on the roster: {', '.join(sorted(unknown))}")
    policy = auth.policy_with(
        roster.policy,
        colluders=colluders,
        minimum_sum=minimum_sum,
        modes=mode,
        min_noise_multiplier=min_noise_multiplier,
        required_privacy=require_privacy,
    )
    try:
        roster = dataclasses.replace(
            roster,
            version=roster.version + 1,
            issued_at=datetime.now(UTC).replace(microsecond=0),
            entries=tuple(e for e in roster.entries if e.name not in removed),
            policy=policy,
        )
    except RosterError as error:
        raise CLIError(f"not signing: {error}") from None
    auth.publish(folder, roster, signer)
    console.print(f"[green]signed roster version {roster.version}[/]")


@app.command("sign-kit")
def sign_kit(
    kits: Annotated[list[Path], typer.Argument(help="Kits the appliance issued.")],
    folder: AuthorityDir,
    new_identity: Annotated[
        bool,
        typer.Option(
            "--new-identity",
            help="Accept a CA or server name other than the one recorded at the first kit.",
        ),
    ] = False,
) -> None:
    """Countersign issued kits: the client then trusts their CA, server name and policies
    because the authority vouched for them (checked against the roster first). The current
    signed roster goes into each kit: its client refuses any older one from the start."""
    signer = auth.FileSigner.load(folder, _passphrase())
    for path in kits:
        vouched = auth.sign_kit(folder, signer, path, new_identity=new_identity)
        console.print(
            f"[green]countersigned[/] {escape(str(path))}: client {escape(vouched['client'])}, "
            f"server {escape(vouched['tls_server_name'])} at {escape(vouched['address'])}, "
            f"CA sha256 {vouched['ca_sha256']}, roster version {vouched['roster_version']}",
            soft_wrap=True,
        )


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="authority")
