"""``sealagg demo``: a whole federation on this machine, end to end, in about half a minute.

Provisions a federation, starts the appliance and one process per client (each training a
small MLP on its own non-IID shard of scikit-learn's bundled digits), shows the rounds live,
then reports the accuracy of every published model next to centralized training, the bytes
each client sent, and the audit chain's verification. Needs the client extra (torch,
scikit-learn); nothing is downloaded. The work is in :mod:`client_shim.demo.runner`, imported
only when the command runs (``sealagg --help`` stays fast and torch-free).
"""

import enum
from pathlib import Path
from typing import Annotated

import typer

from sealagg.appliance.cli._common import console, fail


class DemoMode(enum.StrEnum):
    plaintext = "plaintext"
    secagg = "secagg"
    secagg_plus = "secagg+"
    ckks = "ckks"


def demo(
    clients: Annotated[
        int, typer.Option("--clients", min=3, max=50, help="Client processes to start.")
    ] = 5,
    rounds: Annotated[int, typer.Option("--rounds", min=1, max=100, help="Rounds to run.")] = 5,
    mode: Annotated[
        DemoMode, typer.Option("--mode", help="What the aggregator may see.")
    ] = DemoMode.secagg_plus,
    dp: Annotated[
        bool,
        typer.Option(
            "--dp/--no-dp",
            help="Client-level DP: each client clips its update (L2) and adds Gaussian noise.",
        ),
    ] = False,
    dropout: Annotated[
        float,
        typer.Option(
            "--dropout",
            min=0.0,
            max=0.99,
            help="Fraction of the clients that vanish at a random protocol phase in each "
            "round (their process exits; it is started again for the next round).",
        ),
    ] = 0.0,
    seed: Annotated[
        int, typer.Option("--seed", help="Seeds the initial model, the split and the plan.")
    ] = 0,
    epochs: Annotated[
        int, typer.Option("--epochs", min=1, max=100, help="Local epochs per round.")
    ] = 5,
    folder: Annotated[
        Path | None,
        typer.Option(
            "--folder",
            "-f",
            help="New or empty folder for the demo federation (kept afterwards). "
            "Default: a temporary folder, deleted afterwards unless --keep.",
        ),
    ] = None,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temporary folder (logs, store, kits).")
    ] = False,
) -> None:
    """Run a demo federation on this machine: provisioning, rounds, accuracy, audit."""
    try:
        from sealagg.client_shim.demo.runner import DemoConfig, render_report, run_demo
    except ImportError as error:
        fail(
            f"the demo needs the client extra ({error.name} is missing): install torch (CPU "
            "build) first, then `pip install 'sealagg[client]'`"
        )
    try:
        config = DemoConfig(
            clients=clients,
            rounds=rounds,
            mode=mode.value,
            dp=dp,
            dropout=dropout,
            seed=seed,
            epochs=epochs,
            folder=folder,
            keep=keep,
        )
        config.plan()  # refuses a dropout the rounds could not survive, before any work
    except ValueError as error:
        fail(str(error))
    result = run_demo(config, console)
    render_report(result, console)
    if not result.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("demo")(demo)
