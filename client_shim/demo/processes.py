"""The demo's child processes: the appliance (``sealagg serve``) and one process per client.

Every child gets :func:`~sealagg.client_shim.demo.commands.child_env` and runs in the demo's
work folder; its output goes to a log file there.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from sealagg.client_shim.demo.commands import child_env, sealagg_argv
from sealagg.client_shim.demo.config import DemoConfig


def _stop(process: subprocess.Popen, grace: float) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


def tail(path: Path, lines: int = 6) -> str:
    """The last lines of a log, joined on one line (for a problem report)."""
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) if text else "(empty log)"


class ApplianceProcess:
    """``sealagg serve --folder FEDERATION``; it exits by itself after the configured rounds."""

    def __init__(self, federation: Path, log: Path) -> None:
        self.log = log
        with log.open("w") as out:
            self.process = subprocess.Popen(  # noqa: S603 - our own console script
                sealagg_argv("serve", federation=federation),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=child_env(),
                cwd=log.parent,
            )
        #: True once :meth:`stop` had to end it (it did not finish on its own).
        self.stopped_by_us = False

    def poll(self) -> int | None:
        return self.process.poll()

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    def stop(self) -> None:
        if self.process.poll() is None:
            self.stopped_by_us = True
            _stop(self.process, grace=10)


def client_argv(
    config: DemoConfig,
    name: str,
    *,
    kit: Path,
    shard_file: Path | None,
    result_file: Path,
    max_examples: int,
    plan: dict[int, dict[str, int]],
) -> list[str]:
    """The command line of one client process (``python -m sealagg.client_shim.demo.client``).

    ``shard_file`` None: the ckks key holder (``--key-holder``: no data, no update)."""
    data = ["--key-holder"] if shard_file is None else ["--shard-file", str(shard_file)]
    argv = [
        sys.executable,
        "-m",
        "sealagg.client_shim.demo.client",
        "--kit",
        str(kit),
        *data,
        "--rounds",
        str(config.rounds),
        "--epochs",
        str(config.epochs),
        "--lr",
        str(config.lr),
        "--momentum",
        str(config.momentum),
        "--batch-size",
        str(config.batch_size),
        "--seed",
        str(config.seed),
        "--max-examples",
        str(max_examples),
        "--result-file",
        str(result_file),
    ]
    if config.dp:
        argv += ["--dp", "--dp-clip", str(config.dp_clip), "--dp-noise", str(config.dp_noise)]
    for r, who in sorted(plan.items()):
        if name in who:
            argv += ["--vanish", f"{r}:{who[name]}"]
    return argv


class ClientProcess:
    """One client's process; started again after it vanished.

    A client planned to vanish gets a *standby*: a second process of the same client that
    loads everything (torch, its data, Opacus, the kernels) and waits, not connected, until
    it takes over. A vanished client is then back within about a second instead of the
    several seconds a cold start takes, as a client kept warm by its own supervisor would be;
    the rounds measure the appliance, not Python's start-up. It never connects while the
    process it replaces is alive (two processes of one client would share its tasks)."""

    def __init__(self, name: str, argv: list[str], log: Path, result: Path) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.result = result
        self.process: subprocess.Popen | None = None
        self.standby: subprocess.Popen | None = None
        self.starts = 0
        self.finished = False
        self.failed: str | None = None

    def start(self, *, wait_for_go: bool) -> None:
        argv = [*self.argv, "--wait-for-go"] if wait_for_go else self.argv
        self.process = self._spawn(argv, f"start {self.starts + 1}", piped=wait_for_go)
        self.starts += 1

    def prepare_standby(self) -> None:
        """Start the warm standby (if none is waiting): it prepares and waits for ``go``."""
        if self.standby is None or self.standby.poll() is not None:
            self.standby = self._spawn([*self.argv, "--standby"], "standby", piped=True)

    def restart(self) -> None:
        """Start the client again: the warm standby takes over if there is one."""
        standby, self.standby = self.standby, None
        if standby is None or standby.poll() is not None:
            self.start(wait_for_go=False)
            return
        self.process = standby
        with self.log.open("a") as log:
            log.write(f"--- start {self.starts + 1}: the standby takes over\n")
        self.go()
        self.starts += 1

    def _spawn(self, argv: list[str], what: str, *, piped: bool) -> subprocess.Popen:
        with self.log.open("a") as log:
            log.write(f"--- {what}: {' '.join(argv)}\n")
            log.flush()
            return subprocess.Popen(  # noqa: S603 - our own interpreter and module
                argv,
                stdin=subprocess.PIPE if piped else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env(single_threaded=True),
                cwd=self.log.parent,
            )

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    @property
    def ready(self) -> bool:
        return self.result.with_suffix(".ready").exists()

    def go(self) -> None:
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.write(b"go\n")
                self.process.stdin.close()

    def records(self) -> list[dict[str, Any]]:
        """The JSON lines the client appended to its result file, one per round."""
        if not self.result.exists():
            return []
        out = []
        for line in self.result.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def stop(self) -> None:
        if self.standby is not None:
            _stop(self.standby, grace=1)
            self.standby = None
        if self.process is not None:
            _stop(self.process, grace=5)
