"""Shim clients that break a streamed masked input on purpose, shared by the one-process
(tests/e2e/test_stream_masked.py) and the striped (tests/scale/test_stream_striped.py)
streaming tests: one cancels halfway, one forges the prefix."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import ClassVar

import grpc

from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.session import Participant
from sealagg.crypto import Phase
from sealagg.crypto.messages import masked_input_prefix


class StoppedError(Exception):
    """A test client stops after its masked input went wrong (on purpose)."""


class CancelsHalfway(Participant):
    """Sends its header and half its masked input, then cancels the call and leaves once
    :meth:`took_part` says the appliance handled part of it (a subclass names where to look)."""

    def took_part(self, name: str) -> bool:
        raise NotImplementedError

    def _send(self, start, phase, message, meta, deadline_unix):
        if phase != Phase.MASKED_INPUT:
            return super()._send(start, phase, message, meta, deadline_unix)
        data = b"".join(bytes(p) for p in message.encode_parts())
        header = pb.UploadHeader(
            round_id=start.round_id,
            phase=phase,
            kind="protocol",
            metadata_json=meta,
            total_bytes=len(data),
        )
        hold = threading.Event()

        def body():
            yield pb.UploadChunk(header=header)
            yield pb.UploadChunk(data=data[: len(data) // 2])
            hold.wait(30)  # the stream stays open, unfinished, until cancelled

        call = self.connection.stub.Submit.future(body(), timeout=30)
        name = self.connection.kit.name
        _wait_until(lambda: self.took_part(name), seconds=20)
        call.cancel()
        hold.set()
        self.connection.close()
        raise StoppedError("cancelled its masked input halfway")


class WrongPrefix(Participant):
    """Sends a masked input whose prefix names another round (same length)."""

    refusal: ClassVar[list[str]] = []

    def _send(self, start, phase, message, meta, deadline_unix):
        if phase != Phase.MASKED_INPUT:
            return super()._send(start, phase, message, meta, deadline_unix)
        prefix, vector = message.encode_parts()
        other = bytes(b ^ 0xFF for b in start.round_id)
        forged = masked_input_prefix(other, len(vector))
        assert len(forged) == len(prefix) and forged != bytes(prefix)
        try:
            self._send_encoded(start, phase, [forged, vector], meta, deadline_unix)
        except grpc.RpcError as error:
            self.refusal.append(f"{error.code().name}: {error.details()}")
        self.connection.close()
        raise StoppedError("its masked input was refused")


def _wait_until(done: Callable[[], bool], *, seconds: float) -> None:
    until = time.monotonic() + seconds
    while time.monotonic() < until and not done():
        time.sleep(0.05)
