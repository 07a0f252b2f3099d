"""Presence: one live stream per client process, so the appliance notices a vanished client at once.

The client holds ``Aggregator.Presence`` open while it runs and sends a :class:`Heartbeat`
every ``beat_seconds`` naming the round it holds protocol state for (empty when idle). A
closed stream (process died, connection reset) or a silent one tells the appliance that the
client vanished, so no phase waits out its deadline for it (issue 25). A stream that reopens
with a heartbeat naming the current round is taken back; a restarted process has no state
and sends an empty round id, so it is not.

Why it is safe to be best effort: presence only lets the appliance stop waiting earlier. The
protocol itself still runs over polls and uploads; an appliance without ``Presence``
(UNIMPLEMENTED, an older version) leaves the client polling as before, bound by deadlines.
Nothing secret travels on this stream: a round id and the appliance's timing wishes.

One daemon thread per :class:`~sealagg.client_shim.connection.Connection` reads the
appliance's notices; gRPC's own request thread sends the heartbeats from a generator that
sleeps between beats (no busy loop). The stream has a channel of its own, with the trust of
the connection's (``Connection.presence_channel``): a reset of the connection carrying an
upload, which resubmission survives, is not a vanished client. The keeper holds its
connection weakly: a connection dropped without ``close()`` ends its stream at the next beat
instead of leaking it.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import random
import threading
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING

import grpc

from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc

if TYPE_CHECKING:
    from sealagg.client_shim.connection import Connection

#: The heartbeat cadence before the appliance says otherwise (its first notice does).
DEFAULT_BEAT_SECONDS = 1.0
#: The appliance's wish is bounded: a hostile or misconfigured appliance can neither make the
#: client spin (a beat of 0) nor stretch the beats past any sensible silence limit.
MIN_BEAT_SECONDS, MAX_BEAT_SECONDS = 0.2, 10.0
#: How long a channel switch (pinning an attested certificate) waits for the first heartbeat
#: on the new channel before the old one closes: make before break, so the appliance never
#: sees this client without a stream while it merely changes channels.
HANDOVER_SECONDS = 2.0
#: How long :meth:`PresenceKeeper.stop` waits for the thread (it is a daemon: never a hang).
STOP_JOIN_SECONDS = 2.0
#: Reconnect backoff when the connection gives none (its ``backoff`` dict is used otherwise).
_BACKOFF = {"wait_initial": 0.25, "wait_max": 5.0, "wait_jitter": 0.5}
#: The appliance refuses this client: no retry can help, and polls will say so clearly.
_REFUSED = frozenset({grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED})
#: Appliance-supplied text is bounded before it reaches a log line.
_MAX_TEXT = 120

_log = logging.getLogger("sealagg.client")
_live: weakref.WeakSet[PresenceKeeper] = weakref.WeakSet()


@dataclasses.dataclass(frozen=True)
class DropNotice:
    """The appliance counted this client as dropped from a round (its word, not verified:
    it only explains why a round went on without us)."""

    round_id: bytes
    phase: str
    reason: str


class _Stream:
    """One Presence call: its heartbeat generator's wake-up and its end."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.call: grpc.Call | None = None
        self.wake = threading.Event()  # a new round id or beat, or the end: beat now
        self.ended = threading.Event()
        self.answered = False  # the appliance sent at least one notice on it
        #: A channel switch reads the first notice itself: set once it did (or the call ended).
        self.first: threading.Event | None = None
        self.failure: grpc.StatusCode | None = None  # how the call ended while reading it


class PresenceKeeper:
    """Holds this client's Presence stream open in one daemon thread (see the module doc).

    ``round_id`` is set by the session when it enters a round and cleared when it leaves.
    ``supported`` is None until the appliance answers, True once it sent a notice, False
    after UNIMPLEMENTED (an older appliance: the keeper stops for good, polling goes on).
    """

    def __init__(self, connection: Connection) -> None:
        self._connection = weakref.ref(connection)
        self.name = connection.kit.name
        self._lock = threading.Lock()
        self._round_id = b""
        self._beat = DEFAULT_BEAT_SECONDS
        #: The appliance's silence limit (from its first notice); None before any.
        self.silence_seconds: float | None = None
        self.supported: bool | None = None
        #: True once the appliance refused this client on the stream (PERMISSION_DENIED...).
        self.refused = False
        #: The last notice saying this client was counted as dropped from a round.
        self.last_drop: DropNotice | None = None
        #: Streams opened so far (a reconnect or a channel switch adds one).
        self.streams_opened = 0
        #: Set while a stream is answered (the appliance's first notice arrived on it).
        self.connected = threading.Event()
        self._streams: set[_Stream] = set()
        self._next: _Stream | None = None  # opened by a channel switch, read next
        self._channel: grpc.Channel | None = None  # the stream's own (made when first needed)
        self._stub: pb_grpc.AggregatorStub | None = None
        self._stopped = threading.Event()
        self._kick = threading.Event()  # ends a backoff sleep early
        self._thread = threading.Thread(
            target=self._run, name=f"sealagg-presence-{self.name}", daemon=True
        )

    # -- the session's side ------------------------------------------------------------

    @property
    def round_id(self) -> bytes:
        """The round this process holds protocol state for (b"" when idle)."""
        return self._round_id

    @round_id.setter
    def round_id(self, value: bytes) -> None:
        value = bytes(value)
        with self._lock:
            changed, self._round_id = value != self._round_id, value
            streams = list(self._streams)
        if changed:  # tell the appliance now, not at the next beat
            for stream in streams:
                stream.wake.set()

    @property
    def beat_seconds(self) -> float:
        """The heartbeat cadence in use (the appliance's wish, clamped)."""
        return self._beat

    @property
    def running(self) -> bool:
        return self._thread.is_alive() and not self._stopped.is_set()

    def start(self) -> PresenceKeeper:
        if not self._thread.is_alive() and not self._stopped.is_set():
            _live.add(self)
            self._thread.start()
        return self

    def stop(self, timeout: float = STOP_JOIN_SECONDS) -> None:
        """End the stream now (the appliance sees it close) and wait briefly for the thread."""
        with self._lock:
            self._stopped.set()
            self._kick.set()
            streams = list(self._streams) + ([self._next] if self._next else [])
        for stream in streams:
            _end(stream)
        self._close_channel()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    def handover(self, timeout: float = HANDOVER_SECONDS) -> None:
        """Move the stream to a channel with the connection's current trust (it pinned or
        unpinned a certificate): open the new stream, wait (up to ``timeout``) until the
        appliance answered on it, and only then close the old channel. The appliance has
        seen the new stream open before the old one ends (make before break), so it never
        counts this client as vanished for a channel switch."""
        with self._lock:
            connection = self._connection()
            if (
                self._stopped.is_set()
                or not self._thread.is_alive()
                or self.supported is False
                or connection is None
            ):
                return
            old = self._channel
            self._channel = connection.presence_channel()
            self._stub = pb_grpc.AggregatorStub(self._channel)
            del connection
            if self._next is not None:
                _end(self._next)
            stream = self._open_locked(wait_for_ready=False)  # unreachable: fail, not wait
            if stream is not None and stream.call is not None:
                stream.first = threading.Event()
                self._next = stream
            else:
                stream = None  # the keeper's own reconnect takes the new channel
        if stream is not None and stream.first is not None:
            # The keeper thread still reads the old stream: a short-lived reader takes the
            # new stream's first notice; the keeper reads the rest once the old one ended.
            threading.Thread(
                target=self._read_first,
                args=(stream,),
                name=f"{self._thread.name}-switch",
                daemon=True,
            ).start()
            stream.first.wait(timeout)
        self._kick.set()
        if old is not None:
            old.close()  # ends the old stream: the keeper goes on with the new one

    def _read_first(self, stream: _Stream) -> None:
        try:
            self._on_notice(stream, next(stream.call))
        except StopIteration:
            stream.failure = grpc.StatusCode.OK
        except grpc.RpcError as error:
            stream.failure = _code(error)
        except Exception:  # the keeper must outlive any surprise
            stream.failure = grpc.StatusCode.UNKNOWN
        finally:
            if stream.first is not None:
                stream.first.set()

    # -- the thread --------------------------------------------------------------------

    def _run(self) -> None:
        failures = 0
        while not self._stopped.is_set():
            with self._lock:
                stream, self._next = self._next, None
                if stream is None:
                    stream = self._open_locked()
            if stream is None:
                break  # stopped, or the connection is closed or gone
            code = self._read(stream)
            if self._stopped.is_set():
                break
            if code == grpc.StatusCode.UNIMPLEMENTED:
                self.supported = False
                _log.info(
                    "%s: the appliance has no presence stream (an older version); "
                    "taking part by polling only",
                    self.name,
                )
                break
            if code in _REFUSED:
                self.refused = True
                _log.warning(
                    "%s: the appliance refused the presence stream (%s)", self.name, code.name
                )
                break
            if self._next is not None:
                continue  # a channel switch: its stream is open already
            failures = 1 if stream.answered else failures + 1
            (_log.info if failures == 1 and stream.answered else _log.debug)(
                "%s: presence stream lost (%s); reconnecting", self.name, code.name
            )
            self._kick.wait(self._backoff(failures))
            self._kick.clear()
        self._stopped.set()
        self.connected.clear()
        self._close_channel()

    def _close_channel(self) -> None:
        with self._lock:
            channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            channel.close()

    def _open_locked(self, *, wait_for_ready: bool = True) -> _Stream | None:
        """A new call on the keeper's own channel (caller holds the lock); None once the
        keeper is stopped or its connection closed or gone. ``wait_for_ready``: an
        unreachable appliance holds the call until gRPC's own reconnect succeeds (no
        failure to retry, and the stream opens as soon as the appliance is back)."""
        connection = self._connection()
        if self._stopped.is_set() or connection is None or connection.closed:
            return None
        if self._channel is None or self._stub is None:
            self._channel = connection.presence_channel()
            self._stub = pb_grpc.AggregatorStub(self._channel)
        stream = _Stream(self._channel)
        try:
            stream.call = self._stub.Presence(
                self._beats(stream), metadata=connection._metadata, wait_for_ready=wait_for_ready
            )
        except ValueError:  # the channel was closed under us: the next attempt makes one
            self._channel = self._stub = None
            stream.ended.set()
            return stream
        self._streams.add(stream)
        self.streams_opened += 1
        return stream

    def _read(self, stream: _Stream) -> grpc.StatusCode:
        """Read the appliance's notices until the call ends; its final status code."""
        if stream.call is None:
            return grpc.StatusCode.UNAVAILABLE
        try:
            if stream.first is not None:  # a switch's stream: its first notice was read
                stream.first.wait()  # bounded by the call: it ends on stop() or failure
                if stream.failure is not None:
                    return stream.failure
            for notice in stream.call:
                self._on_notice(stream, notice)
            return grpc.StatusCode.OK  # the appliance ended it (e.g. shutting down)
        except grpc.RpcError as error:
            return _code(error)
        except Exception as error:  # the keeper must outlive any surprise
            _log.warning("%s: presence stream failed: %s", self.name, type(error).__name__)
            return grpc.StatusCode.UNKNOWN
        finally:
            stream.ended.set()
            stream.wake.set()  # the generator returns instead of sleeping a beat
            with self._lock:
                self._streams.discard(stream)
                if not self._streams:
                    self.connected.clear()

    def _on_notice(self, stream: _Stream, notice: pb.PresenceNotice) -> None:
        self.supported = True
        stream.answered = True
        if notice.beat_seconds > 0:
            beat = min(MAX_BEAT_SECONDS, max(MIN_BEAT_SECONDS, float(notice.beat_seconds)))
            if beat != self._beat:
                self._beat = beat
                stream.wake.set()
        if notice.silence_seconds > 0:
            self.silence_seconds = float(notice.silence_seconds)
        if notice.dropped_round_id:
            drop = DropNotice(
                bytes(notice.dropped_round_id),
                notice.dropped_phase[:_MAX_TEXT],
                notice.dropped_reason[:_MAX_TEXT],
            )
            self.last_drop = drop
            _log.warning(
                "%s: the appliance counted this client as dropped from round %s in phase %r (%r)",
                self.name,
                drop.round_id.hex()[:16],
                drop.phase,
                drop.reason,
            )
        self.connected.set()

    def _beats(self, stream: _Stream) -> Iterator[pb.Heartbeat]:
        """Heartbeats for one call, run by gRPC's request thread: one now, then one per beat
        (or at once when the round id changes) until the call or the keeper ends."""
        while True:
            yield pb.Heartbeat(round_id=self._round_id)
            stream.wake.wait(self._beat)
            stream.wake.clear()
            if stream.ended.is_set() or self._stopped.is_set():
                return
            connection = self._connection()
            if connection is None or connection.closed:
                del connection
                self.stop(timeout=0)  # dropped without close(): end the stream, not leak it
                return
            del connection

    def _backoff(self, failures: int) -> float:
        """Capped exponential backoff with jitter (clients that lost the appliance together
        do not all come back in the same instant); the connection's settings if it has them."""
        connection = self._connection()
        settings = getattr(connection, "backoff", None) or _BACKOFF
        initial = float(settings.get("wait_initial", _BACKOFF["wait_initial"]))
        cap = float(settings.get("wait_max", _BACKOFF["wait_max"]))
        jitter = float(settings.get("wait_jitter", _BACKOFF["wait_jitter"]))
        spread = random.uniform(0, jitter)  # noqa: S311 - timing jitter, not a secret
        return min(cap, initial * 2 ** min(failures - 1, 16)) + spread


def _code(error: grpc.RpcError) -> grpc.StatusCode:
    return error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN


def _end(stream: _Stream) -> None:
    stream.ended.set()
    stream.wake.set()
    if stream.call is not None:
        stream.call.cancel()


@atexit.register
def _stop_all() -> None:
    """At interpreter exit, end every stream first: a blocked gRPC read in a daemon thread
    must never delay or hang the exit (os._exit needs nothing: the socket just closes)."""
    for keeper in list(_live):
        keeper.stop(timeout=0.5)
