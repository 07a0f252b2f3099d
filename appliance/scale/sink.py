"""What the streamed uploads of ``[scale]`` rounds share: a client's bytes cut at chunk
borders and forwarded to the stripes as they arrive (plaintext updates:
:class:`~.plain_round.PlainUploadSink`; masked inputs: :class:`~.masked_round.StripeUploadSink`).

Why the appliance's memory stays bounded: a sink holds the bytes short of the next chunk
border, plus one chunk while it is cut (:attr:`ChunkSink.peak_held` records the most), and
has at most :data:`MAX_IN_FLIGHT` chunk calls in flight before it waits for the oldest. A
chunk never crosses a stripe (the round's ``boundary_after``). What a chunk is checked for
before it leaves, and what a refusal means, is each sink's own (its module says why).
"""

from __future__ import annotations

import abc
import collections
import dataclasses
from collections.abc import Callable
from typing import Any, NoReturn

from sealagg.appliance.rounds import Member, UploadRefusedError
from sealagg.appliance.scale.coordinator import StripeLostError

#: Chunk calls a streamed upload may have in flight before it waits for the oldest.
MAX_IN_FLIGHT = 8


@dataclasses.dataclass(frozen=True)
class StreamedUpload:
    """What a finished stream hands the orchestrator in place of a payload: every chunk is
    staged on its stripe; ``len()`` is the bytes received (the header's ``total_bytes``)."""

    sink: ChunkSink

    def __len__(self) -> int:
        return self.sink.received


class ChunkSink(abc.ABC):
    """One client's upload, forwarded to the stripes chunk by chunk as it arrives.

    ``round_`` is the striped round (it has ``lost``, ``stream_peak`` and ``lose``);
    ``words`` the upload's length in 4-byte words after any prefix; ``wake`` has the
    orchestrator look again whether the phase is done (a lost stripe: nobody is waited for).
    """

    #: The upload as refusals name it ("the update", "the masked input").
    what: str

    def __init__(
        self, round_: Any, member: Member, words: int, wake: Callable[[], None] | None
    ) -> None:
        self.round = round_
        self.member = member
        self.words = words
        self.wake = wake  # a lost stripe: the phase waits for nobody, it closes now
        self._pending = bytearray()  # bytes short of the next chunk border
        self._word = 0  # the next coordinate to forward
        self._refs: collections.deque[Any] = collections.deque()
        self.received = 0
        self.peak_held = 0  # the most bytes this sink held at once (pending + a cut chunk)
        self.outcome = "streaming"

    @abc.abstractmethod
    def _boundary_after(self, word: int) -> int:
        """The next chunk border after coordinate ``word``."""

    @abc.abstractmethod
    def _stage(self, chunk: bytes) -> None:
        """Check ``chunk`` (at ``self._word``) and send it to its stripe, the calls kept in
        ``self._refs`` (awaited by :meth:`_wait`)."""

    @abc.abstractmethod
    async def _wait(self, ref: Any) -> None:
        """Wait for one chunk call; a refusal or a lost stripe refuses the upload."""

    async def _forward(self, rest: memoryview) -> None:
        """Cut ``rest`` (after the bytes pending) at chunk borders and stage every whole
        chunk; keep the remainder pending."""
        while rest:
            border = self._boundary_after(self._word)
            need = 4 * (border - self._word) - len(self._pending)
            if len(rest) < need:
                self._pending += rest
                self._note(len(self._pending))
                return
            if self._pending:
                self._pending += rest[:need]
                chunk = bytes(self._pending)
                self._pending = bytearray()
            else:
                chunk = bytes(rest[:need])
            self._note(len(chunk))
            rest = rest[need:]
            self._stage(chunk)
            self._word = border
            del chunk
            while len(self._refs) > MAX_IN_FLIGHT:
                await self._wait(self._refs.popleft())

    async def finish(self) -> StreamedUpload:
        """Every byte arrived: wait for the stripes to stage the last chunks."""
        if self._word != self.words or self._pending:
            raise UploadRefusedError("INVALID_ARGUMENT", f"{self.what} ended early")
        while self._refs:
            await self._wait(self._refs.popleft())
        self.outcome = "complete"
        return StreamedUpload(self)

    def _note(self, held: int) -> None:
        self.peak_held = max(self.peak_held, held)
        self.round.stream_peak = max(self.round.stream_peak, held)

    def _lost(self, error: StripeLostError) -> NoReturn:
        """A stripe is gone: the round cannot finish (it waits for nobody, the phase closes
        now) and this upload is refused with the reason."""
        self.outcome = "refused"
        self.round.lose(error)
        if self.wake is not None:
            self.wake()
        raise UploadRefusedError("FAILED_PRECONDITION", self.round.lost or str(error)) from None
