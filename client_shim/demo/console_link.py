"""``--console``: the appliance's web console during the demo, reached through the CLI only.

The demo enables ``[console]`` in the federation's ``sealagg.toml`` (:mod:`.provision`); once
the appliance answers, ``sealagg console`` (a child process, with the administrator's kit in
the federation folder) prints a one-time login link. The console's address is that link's
origin. Nothing of the appliance is imported here: the demo stays on the CLI boundary.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import urlsplit

from sealagg.client_shim.demo.commands import SealaggCommandError, run_sealagg

#: How long the demo waits for the appliance to answer ``sealagg console``.
WAIT_SECONDS = 60.0


def console_login(federation: Path, cwd: Path, wait: float = WAIT_SECONDS) -> tuple[str, str]:
    """(the console's address, a one-time login URL), once the appliance answers; the last
    ``sealagg console`` error if it does not within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while True:
        try:
            out = run_sealagg(
                "console", "--quiet", "--timeout", "2", federation=federation, cwd=cwd, timeout=30
            )
            break
        except SealaggCommandError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith("https://")]
    if not lines:
        raise SealaggCommandError(f"`sealagg console` printed no login URL: {out.strip()!r}")
    url = lines[-1]
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/", url
