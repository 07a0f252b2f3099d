"""Which clients hold a live Presence stream (issue 25): who vanished, and who came back.

Clients poll for tasks, so between two polls the appliance cannot tell a client that is
computing from one whose process died: without presence, every phase where someone vanished
cost every other client the phase's whole deadline. Each client (new shim) therefore holds one
``Presence`` stream open and sends a heartbeat every ``beat_seconds``; this board turns the
streams into events for the orchestrator:

- ``vanished(name, reason)``: the client's last stream closed (``connection_closed``: a dead
  process, a reset, a closed channel: seen as soon as the transport sees it) or fell silent for
  ``silence_seconds`` (``silent``: a network that went away without a reset).
- ``heartbeat(name, round_id)``: every heartbeat, with the round the client's process holds
  protocol state for. The orchestrator takes a vanished member back only when that round is
  the current one, so a restarted process (empty round id, no state) is never waited for.

A client that never opened a stream (an older shim) is ``unknown`` here, never ``vanished``:
it keeps working by polling, bound by deadlines. Nothing here decides protocol membership:
being vanished only means the phase stops waiting; whether a client survives a phase is still
decided when the phase closes, by the protocol's own rules.

One client may hold at most ``max_streams`` streams (a reconnect overlaps the stream whose end
the transport has not yet reported); more are refused, so no certificate holder can tie up
the appliance with streams.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
from collections.abc import Callable

from sealagg.appliance.wire import sealagg_pb2 as pb

CONNECTION_CLOSED = "connection_closed"
SILENT = "silent"

#: (name, reason) when a client's last live stream ends or falls silent.
VanishedHandler = Callable[[str, str], None]
#: (name, round id) on every heartbeat.
HeartbeatHandler = Callable[[str, bytes], None]
#: Notices queued for one stream and not yet written (a client that does not read them
#: keeps only the newest: the appliance never grows memory for a slow reader).
MAX_QUEUED_NOTICES = 8


class TooManyStreamsError(Exception):
    """The client already holds ``max_streams`` presence streams."""


@dataclasses.dataclass
class _Stream:
    name: str
    silent: bool = False
    notices: asyncio.Queue[pb.PresenceNotice] = dataclasses.field(default_factory=asyncio.Queue)


class PresenceBoard:
    """Open presence streams per client; reports transitions to the orchestrator."""

    def __init__(
        self,
        *,
        max_streams: int,
        on_vanished: VanishedHandler,
        on_heartbeat: HeartbeatHandler,
    ) -> None:
        self._max_streams = max_streams
        self._on_vanished = on_vanished
        self._on_heartbeat = on_heartbeat
        self._streams: dict[int, _Stream] = {}
        self._by_name: dict[str, set[int]] = {}  # name -> its open streams' tokens
        self._ids = itertools.count(1)
        self._ever: set[str] = set()  # clients that ever opened a stream (this process's life)
        self._why: dict[str, str] = {}  # name -> how its last live stream ended

    def open(self, name: str) -> int:
        """A new stream of ``name``; returns its token. Raises TooManyStreamsError."""
        held = len(self._by_name.get(name, ()))
        if held >= self._max_streams:
            raise TooManyStreamsError(
                f"{name} already holds {held} presence streams (at most {self._max_streams})"
            )
        token = next(self._ids)
        self._streams[token] = _Stream(name)
        self._by_name.setdefault(name, set()).add(token)
        self._ever.add(name)
        return token

    def notices(self, token: int) -> asyncio.Queue[pb.PresenceNotice]:
        """The notices to write on this stream (e.g. "you were dropped from round R")."""
        return self._streams[token].notices

    def notify_dropped(self, name: str, round_id: bytes, phase: str, reason: str) -> None:
        """Tell ``name`` (if it still holds a stream) that a phase closed without it: it stops
        working on that round instead of finding out at the round's end."""
        notice = pb.PresenceNotice(
            dropped_round_id=round_id, dropped_phase=phase, dropped_reason=reason
        )
        for stream in self._of(name):
            while stream.notices.qsize() >= MAX_QUEUED_NOTICES:
                stream.notices.get_nowait()
            stream.notices.put_nowait(notice)

    def polled(self, name: str) -> None:
        """A poll from a client that holds no presence stream: it is an older client (or one
        that turned presence off); from now on deadlines bound it, it is never "gone"."""
        if not self._by_name.get(name):
            self._ever.discard(name)

    def heartbeat(self, token: int, round_id: bytes) -> None:
        stream = self._streams.get(token)
        if stream is None:
            return
        stream.silent = False
        self._on_heartbeat(stream.name, round_id)

    def silent(self, token: int) -> None:
        """No heartbeat for ``silence_seconds`` on this stream (it stays open)."""
        stream = self._streams.get(token)
        if stream is None or stream.silent:
            return
        stream.silent = True
        if not self.is_live(stream.name):
            self._why[stream.name] = SILENT
            self._on_vanished(stream.name, SILENT)

    def close(self, token: int) -> None:
        """The stream ended (any way: the client closed it, reset, process death)."""
        stream = self._streams.pop(token, None)
        if stream is None:
            return
        tokens = self._by_name.get(stream.name, set())
        tokens.discard(token)
        if not tokens:
            self._by_name.pop(stream.name, None)
        if not stream.silent and not self.is_live(stream.name):
            self._why[stream.name] = CONNECTION_CLOSED
            self._on_vanished(stream.name, CONNECTION_CLOSED)

    def is_live(self, name: str) -> bool:
        """``name`` holds at least one open stream that is not silent."""
        return any(not s.silent for s in self._of(name))

    def is_gone(self, name: str) -> bool:
        """``name`` used presence and holds no live stream now (an older client never is)."""
        return name in self._ever and not self.is_live(name)

    def gone_reason(self, name: str) -> str:
        """How a gone client's last live stream ended (``connection_closed`` or ``silent``)."""
        return self._why.get(name, CONNECTION_CLOSED)

    def live_count(self) -> int:
        return sum(1 for name in self._by_name if self.is_live(name))

    def _of(self, name: str) -> list[_Stream]:
        return [self._streams[t] for t in self._by_name.get(name, ())]


__all__ = [
    "CONNECTION_CLOSED",
    "SILENT",
    "PresenceBoard",
    "TooManyStreamsError",
]
