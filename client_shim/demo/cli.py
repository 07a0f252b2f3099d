"""``sealagg-demo``: a whole federation on this machine, end to end, in about half a minute.

Provisions a federation with the ``sealagg`` CLI, starts the appliance and one process per
client (each training a small MLP on its own non-IID shard of scikit-learn's bundled
digits), shows the rounds live, then reports the accuracy of every published model next to
centralized training, the bytes each client sent, and the audit chain's verification. Needs
the client extra (torch, scikit-learn); nothing is downloaded.

    sealagg-demo [--clients N] [--rounds R] [--mode secagg+] [--dp] [--dropout F] [--console] ...
    python -P -m sealagg.client_shim.demo.cli ...   (the same, without the console script)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TextIO

from rich.console import Console
from rich.markup import escape

from sealagg.client_shim.demo.config import MODES, DemoConfig


def _bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], float]:
    """An argparse type: ``kind(text)`` within [low, high]."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{text} is not in the range {low:g} to {high:g}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="sealagg-demo",
        description="Run a demo federation on this machine: provisioning, rounds, accuracy, audit.",
    )
    p.add_argument(
        "--clients", type=_bounded(int, 3, 50), default=5, help="client processes to start"
    )
    p.add_argument("--rounds", type=_bounded(int, 1, 100), default=5, help="rounds to run")
    p.add_argument("--mode", choices=MODES, default="secagg+", help="what the aggregator may see")
    p.add_argument(
        "--dp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="client-level DP: each client clips its update (L2) and adds Gaussian noise",
    )
    p.add_argument(
        "--dropout",
        type=_bounded(float, 0.0, 0.99),
        default=0.0,
        help="fraction of the clients that vanish at a random protocol phase in each round "
        "(their process exits; it is started again for the next round)",
    )
    p.add_argument(
        "--seed", type=int, default=0, help="seeds the initial model, the split and the plan"
    )
    p.add_argument("--epochs", type=_bounded(int, 1, 100), default=5, help="local epochs per round")
    p.add_argument(
        "--folder",
        "-f",
        type=Path,
        default=None,
        help="new or empty folder for the demo (kept afterwards; the federation goes to "
        "FOLDER/federation). Default: a temporary folder, deleted afterwards unless --keep",
    )
    p.add_argument(
        "--keep", action="store_true", help="keep the temporary folder (logs, store, kits)"
    )
    p.add_argument(
        "--console",
        action="store_true",
        help="serve the appliance's web console on loopback and print its address and a "
        "one-time login link (on a terminal, the rounds start when you press Enter)",
    )
    return p


def main(
    argv: Sequence[str] | None = None,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Parse the options, run the demo, print the report; 0 when every round published."""
    args = build_parser().parse_args(argv)
    console = Console(file=stdout, highlight=False)
    errors = Console(file=stderr if stderr is not None else sys.stderr, highlight=False)
    try:
        import sklearn  # noqa: F401 - the client extra, checked before any work
        import torch  # noqa: F401

        from sealagg.client_shim.demo.report import render_report
        from sealagg.client_shim.demo.runner import run_demo
    except ImportError as error:
        errors.print(
            f"[bold red]error:[/] the demo needs the client extra ({escape(str(error.name))} "
            "is missing): install torch (CPU build) first, then `pip install 'sealagg[client]'`",
            soft_wrap=True,
        )
        return 1
    try:
        config = DemoConfig(
            clients=args.clients,
            rounds=args.rounds,
            mode=args.mode,
            dp=args.dp,
            dropout=args.dropout,
            seed=args.seed,
            epochs=args.epochs,
            folder=args.folder,
            keep=args.keep,
            console=args.console,
        )
        config.plan()  # refuses a dropout the rounds could not survive, before any work
        if args.folder is not None and args.folder.is_dir() and any(args.folder.iterdir()):
            raise ValueError(f"{args.folder} is not empty: give a new or empty folder")
    except ValueError as error:
        errors.print(f"[bold red]error:[/] {escape(str(error))}", soft_wrap=True)
        return 1
    result = run_demo(config, console)
    render_report(result, console)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
