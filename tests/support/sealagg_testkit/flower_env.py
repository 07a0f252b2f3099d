"""Running a script in the pinned Flower environment (.venv-flower, scripts/flower_env.sh).

Flower 1.42 pins protobuf < 7, so it cannot live in .venv; the tests run its side by
subprocess and read a JSON report. A missing environment is a failure that says how to make
it, never a skip. Every run gets its own ``FLWR_HOME`` (the mod's sealing key lives there), so
no test writes into the user's home directory.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
FLOWER_BIN = REPO / ".venv-flower" / "bin"
FLOWER_PYTHON = FLOWER_BIN / "python"


def flower_environment() -> dict[str, str]:
    """This process's environment without Ray's settings: the scale tests' cluster sets
    ``RAY_*`` (token auth) for the whole pytest process, and Flower's simulation starts a
    Ray of its own, which must not inherit them (whatever order the tests run in)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}


def require_flower_env() -> None:
    assert FLOWER_PYTHON.exists(), (
        f"{FLOWER_PYTHON} is missing: run scripts/flower_env.sh (./run test does) to create "
        "the pinned Flower environment"
    )


def run_flower_script(script: Path, tmp: Path, *args: str, timeout: float) -> dict[str, Any]:
    """``script --out tmp/report.json *args`` in .venv-flower; its report."""
    return run_flower_script_printing(script, tmp, *args, timeout=timeout)[0]


def run_flower_script_printing(
    script: Path, tmp: Path, *args: str, timeout: float, out_flag: str = "--out"
) -> tuple[dict[str, Any], str]:
    """``script OUT_FLAG tmp/report.json *args`` in .venv-flower (``-P``: the repository root
    never shadows installed packages); (its report, what it printed)."""
    require_flower_env()
    out = tmp / "report.json"
    proc = subprocess.run(
        [str(FLOWER_PYTHON), "-P", str(script), out_flag, str(out), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**flower_environment(), "FLWR_HOME": str(tmp / "flwr-home")},
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return json.loads(out.read_text()), proc.stdout
