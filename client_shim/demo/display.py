"""The live view while the federation runs: a rich panel on a terminal, one line per change
otherwise (logs, CI, tests)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from typing import Any

from rich.console import Console, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table


@dataclasses.dataclass
class Progress:
    """What the live view shows; the supervisor updates it as the federation runs."""

    rounds: int
    mode: str
    started: float
    status: dict[str, Any] | None = None
    vanished: int = 0
    restarts: int = 0
    stage: str = "starting"

    def render(self) -> RenderableType:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        elapsed = time.monotonic() - self.started
        table.add_row("sealagg demo", f"{escape(self.mode)} · {elapsed:5.1f} s · {self.stage}")
        status = self.status or {}
        history = status.get("history") or []
        current = status.get("round")
        done = len(history)
        if isinstance(current, dict):
            members = current.get("members") or []
            waiting = current.get("waiting_for") or []
            deadline = current.get("phase_deadline")
            left = f", deadline in {deadline - time.time():.0f} s" if deadline else ""
            table.add_row("round", f"{current.get('number')}/{self.rounds}")
            table.add_row("phase", f"{escape(str(current.get('phase')))}{left}")
            table.add_row(
                "clients",
                f"{len(members) - len(waiting)} in, {len(waiting)} waiting"
                + (f" ({escape(', '.join(waiting))})" if waiting else ""),
            )
        elif done >= self.rounds:
            table.add_row("round", f"all {self.rounds} rounds done")
        else:
            table.add_row("round", f"{done}/{self.rounds} done; next opens when clients are ready")
            ready = status.get("ready_clients") or []
            table.add_row("clients ready", str(len(ready)))
        published = sum(1 for h in history if h.get("outcome") == "published")
        table.add_row("published", f"{published} (model version {status.get('model_version')})")
        dropped = sum(len(h.get("dropped") or []) for h in history)
        table.add_row(
            "dropouts so far",
            f"{self.vanished} vanished mid-protocol, {self.restarts} restarted; "
            f"{dropped} update(s) left out of an aggregate",
        )
        return table

    def line(self) -> str:
        status = self.status or {}
        current = status.get("round")
        if not isinstance(current, dict):
            return f"waiting for clients ({len(status.get('ready_clients') or [])} ready)"
        members = current.get("members") or []
        waiting = current.get("waiting_for") or []
        return (
            f"round {current.get('number')}/{self.rounds} phase {current.get('phase')}: "
            f"{len(members) - len(waiting)} in, {len(waiting)} waiting, "
            f"{self.vanished} vanished so far"
        )


@contextlib.contextmanager
def live_view(console: Console, progress: Progress) -> Iterator[Callable[[], None]]:
    """A refresh function: rich Live on a terminal, one line per change otherwise."""
    if console.is_terminal:
        with Live(progress.render(), console=console, refresh_per_second=8, transient=False) as lv:
            yield lambda: lv.update(progress.render())
    else:
        last = [""]

        def refresh() -> None:
            line = progress.line()
            if line != last[0] and progress.status is not None:
                console.print(f"  [{time.monotonic() - progress.started:5.1f} s] {line}")
                last[0] = line

        yield refresh
