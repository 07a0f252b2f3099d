"""How the demo starts programs: the environment every child gets, and the ``sealagg`` CLI.

The demo administers its federation the way an operator does, through the ``sealagg``
command installed beside this interpreter, so it needs nothing of the appliance's internals.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


class SealaggCommandError(RuntimeError):
    """A ``sealagg`` command exited with an error; the message holds its last output lines."""


def child_env(*, single_threaded: bool = False) -> dict[str, str]:
    """Our environment, minus anything that would put a source folder on ``sys.path``."""
    env = dict(os.environ)
    # sealagg is installed: no PYTHONPATH, and never the working directory first on sys.path.
    env.pop("PYTHONPATH", None)
    env["PYTHONSAFEPATH"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if single_threaded:
        # Several clients share a small machine and their tensors are tiny: worker threads
        # (torch's and numba's OpenMP pools) would only spin and steal each other's cores.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("NUMBA_NUM_THREADS", "1")
    return env


def sealagg_executable() -> Path:
    """The ``sealagg`` console script of the environment this interpreter belongs to."""
    return Path(sys.executable).parent / "sealagg"


def sealagg_argv(*args: str, federation: Path) -> list[str]:
    """``sealagg ARGS --folder FEDERATION``."""
    return [str(sealagg_executable()), *args, "--folder", str(federation)]


def run_sealagg(*args: str, federation: Path, cwd: Path, timeout: float = 120.0) -> str:
    """Run one ``sealagg`` command to completion; its standard output, or SealaggCommandError."""
    return _run(sealagg_argv(*args, federation=federation), args, cwd=cwd, timeout=timeout)


def run_authority(*args: str, passphrase: str, cwd: Path, timeout: float = 120.0) -> str:
    """Run one ``sealagg authority ...`` command (the security team's, off the appliance: no
    federation folder), the passphrase in its environment, never on its command line."""
    argv = [str(sealagg_executable()), "authority", *args]
    env = {"SEALAGG_AUTHORITY_PASSPHRASE": passphrase}
    return _run(argv, ("authority", *args), cwd=cwd, timeout=timeout, extra_env=env)


def _run(
    argv: list[str],
    args: Sequence[str],
    *,
    cwd: Path,
    timeout: float,
    extra_env: dict[str, str] | None = None,
) -> str:
    # A wide virtual terminal: rich wraps the CLI's lines at 80 columns when not told otherwise.
    env = {**child_env(), "COLUMNS": "200", **(extra_env or {})}
    try:
        done = subprocess.run(  # noqa: S603 - our own console script
            argv,
            capture_output=True,
            text=True,
            env=env,
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SealaggCommandError(f"`sealagg {' '.join(args)}` failed: {error}") from None
    if done.returncode != 0:
        output = (done.stderr.strip() or done.stdout.strip()).splitlines()[-6:]
        raise SealaggCommandError(
            f"`sealagg {' '.join(args)}` exited with code {done.returncode}: " + " | ".join(output)
        )
    return done.stdout


def run_sealagg_each(
    commands: Sequence[Sequence[str]], *, federation: Path, cwd: Path, workers: int = 4
) -> list[str]:
    """Run independent ``sealagg`` commands side by side (each one is mostly Python start-up);
    their outputs in order, or the first SealaggCommandError."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [
            pool.submit(run_sealagg, *args, federation=federation, cwd=cwd) for args in commands
        ]
        return [future.result() for future in futures]
