"""A scripted Aggregator that also serves Presence (issue 25), for the shim's presence tests.

Real gRPC on loopback (insecure channel, the FakeAggregator's). Each Presence stream gets
the opening notice (beat and silence limit), then whatever the test pushes (e.g. a drop
notice); every heartbeat is recorded with its stream's number, and so is each stream's end.
Only for testing the client's side; the appliance's own presence is tested against it.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import grpc
import numpy as np

from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg_testkit.fake_aggregator import FakeAggregator


class PresenceAggregator(FakeAggregator):
    def __init__(
        self,
        models: Mapping[int, Mapping[str, np.ndarray]],
        *,
        port: int = 0,
        beat_seconds: float = 0.2,
        silence_seconds: float = 1.0,
    ) -> None:
        self.first = pb.PresenceNotice(beat_seconds=beat_seconds, silence_seconds=silence_seconds)
        self.changed = threading.Condition()
        #: (stream number, monotonic time, round id) for every heartbeat received.
        self.heartbeats: list[tuple[int, float, bytes]] = []
        self.opened: list[int] = []
        self.ended: list[int] = []
        self.metadata: list[dict[str, str]] = []
        #: ("open" | "beat" | "end", stream number) in the order the server saw them.
        self.events: list[tuple[str, int]] = []
        self._outboxes: dict[int, queue.Queue[pb.PresenceNotice | None]] = {}
        super().__init__(models, port=port)

    def Presence(
        self, request_iterator: Iterator[pb.Heartbeat], context: grpc.ServicerContext
    ) -> Iterator[pb.PresenceNotice]:
        outbox: queue.Queue[pb.PresenceNotice | None] = queue.Queue()
        with self.changed:
            number = len(self.opened) + 1
            self.opened.append(number)
            self.events.append(("open", number))
            self.metadata.append({k: str(v) for k, v in context.invocation_metadata()})
            self._outboxes[number] = outbox
            self.changed.notify_all()

        def ended() -> None:
            with self.changed:
                if number not in self.ended:
                    self.ended.append(number)
                    self.events.append(("end", number))
                self._outboxes.pop(number, None)
                self.changed.notify_all()
            outbox.put(None)

        def read() -> None:
            try:
                for beat in request_iterator:
                    with self.changed:
                        self.heartbeats.append((number, time.monotonic(), bytes(beat.round_id)))
                        self.events.append(("beat", number))
                        self.changed.notify_all()
            except grpc.RpcError:
                pass
            ended()

        context.add_callback(ended)
        threading.Thread(target=read, daemon=True).start()
        yield self.first
        while (notice := outbox.get()) is not None:
            yield notice

    def push(self, notice: pb.PresenceNotice) -> None:
        """Send ``notice`` on every open stream."""
        with self.changed:
            outboxes = list(self._outboxes.values())
        for outbox in outboxes:
            outbox.put(notice)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 20.0) -> bool:
        """Wait (generously) until ``condition()`` holds for the recorded state."""
        with self.changed:
            return self.changed.wait_for(condition, timeout=timeout)

    def round_ids(self, stream: int | None = None) -> list[bytes]:
        with self.changed:
            return [r for n, _, r in self.heartbeats if stream is None or n == stream]
