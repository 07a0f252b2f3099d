"""A masked input without blames, streamed into the one-process round's running sum.

The gRPC handler feeds a :class:`MaskedInputSink` (:meth:`MaskedRound.stream_sink
<sealagg.appliance.rounds.MaskedRound.stream_sink>`) the upload's bytes as they arrive:
the fixed prefix (message type, round id, vector length) is compared byte for byte before
anything reaches the sum, then each piece's whole words are added into the server's
running sum at once (:meth:`SecAggServer.add_masked_range
<sealagg.crypto.server.SecAggServer.add_masked_range>`). The appliance holds at most one
received piece of the upload plus three bytes of a word cut between pieces, instead of the
whole upload: memory stays O(d) (one running sum) however many clients upload at once.

Why this is as safe as the whole-payload path: the header already passed ``check_upload``
(member, phase, size, duplicate) and the upload budget; the prefix is the one
:func:`~sealagg.crypto.messages.masked_input_view` requires of a whole message; the server
re-checks the sender when the stream begins (expected, not excluded, once); a stream that
stops, is refused or is never accepted is subtracted back out of the sum exactly (Z_2^32)
and its client is not a survivor; and the sender counts only when the orchestrator accepts
the finished stream (:meth:`MaskedRound._accept`). This module imports no Ray (the
``[scale]`` sinks of appliance/scale/sink.py do).
"""

from __future__ import annotations

import dataclasses
import hmac
from collections.abc import Callable
from typing import TYPE_CHECKING

from sealagg.appliance.rounds import Member, UploadRefusedError, _status_for
from sealagg.crypto import Phase
from sealagg.crypto.errors import SecAggError
from sealagg.crypto.messages import masked_input_prefix

if TYPE_CHECKING:
    from sealagg.appliance.rounds import MaskedRound


class PrefixGate:
    """A streamed masked input's fixed prefix (message type, round id, vector length),
    compared byte for byte in constant time before any byte of the vector is used: an
    upload naming another round, type or length is refused with nothing added or forwarded.
    ``round_id`` is the transcript's (a grouped round's group id, not the transport's).
    Shared by this module's sink and the ``[scale]`` one (appliance/scale/masked_round.py)."""

    def __init__(self, round_id: bytes, words: int, nothing_done: str) -> None:
        self.prefix = masked_input_prefix(round_id, 4 * words)
        self.passed = False
        self._head = bytearray()  # the prefix as received, until it is checked
        self._nothing_done = nothing_done  # e.g. "nothing was added"

    def take(self, rest: memoryview) -> memoryview | None:
        """The bytes after the prefix once all of it arrived and matched (the first call that
        completes it returns the rest of its piece), None while it is incomplete;
        :class:`UploadRefusedError` on a mismatch."""
        take = len(self.prefix) - len(self._head)
        self._head += rest[:take]
        if len(self._head) < len(self.prefix):
            return None
        if not hmac.compare_digest(bytes(self._head), self.prefix):
            raise UploadRefusedError(
                "INVALID_ARGUMENT",
                "the masked input does not start as this round's masked input "
                f"(another round, type or length); {self._nothing_done}",
            )
        self.passed = True
        return rest[take:]


@dataclasses.dataclass(frozen=True)
class StreamedMaskedInput:
    """What a finished stream hands the orchestrator in place of a payload: every word is
    in the running sum, not yet counted; ``len()`` is the bytes received."""

    sink: MaskedInputSink

    def __len__(self) -> int:
        return self.sink.received


class MaskedInputSink:
    """One client's masked input (no blames), added into the running sum as it arrives."""

    what = "the masked input"

    def __init__(
        self, round_: MaskedRound, member: Member, wake: Callable[[], None] | None = None
    ) -> None:
        self.round = round_
        self.member = member
        self.wake = wake  # unused: a refusal here never leaves the phase waiting for nobody
        self.words = round_.config.vector_length
        self.gate = PrefixGate(round_.config.round_id, self.words, "nothing was added")
        self._tail = bytearray()  # 0-3 bytes of a word cut between two pieces
        self._word = 0  # the next coordinate to add
        self.begun = False
        self.received = 0
        self.added = 0  # vector bytes added into the running sum
        self.peak_held = 0  # the most upload bytes this sink held at once
        self.outcome = "streaming"

    async def feed(self, data: bytes) -> None:
        """Take the next bytes of the upload (the caller checked they fit its header)."""
        self.received += len(data)
        self._note(len(data) + len(self._tail))
        rest: memoryview | None = memoryview(data).cast("B")
        if not self.gate.passed:
            try:
                rest = self.gate.take(rest)
            except UploadRefusedError:
                self.outcome = "refused"
                raise
            if rest is None:
                return
            self._begin()
        if self._tail:
            take = min(4 - len(self._tail), len(rest))
            self._tail += rest[:take]
            rest = rest[take:]
            if len(self._tail) < 4:
                return
            self._add(bytes(self._tail))
            self._tail = bytearray()
        whole = len(rest) - len(rest) % 4
        if whole:
            self._add(rest[:whole])
        self._tail += rest[whole:]

    async def finish(self) -> StreamedMaskedInput:
        """Every byte arrived; the sender counts once the round accepts what this returns."""
        if self._word != self.words or self._tail or not self.begun:
            self.abort()
            raise UploadRefusedError("INVALID_ARGUMENT", f"{self.what} ended early")
        self.outcome = "complete"
        return StreamedMaskedInput(self)

    def abort(self) -> None:
        """The stream ended early or was refused: take it back out of the sum (idempotent)."""
        if self.outcome == "complete":
            return  # counted or left to the phase's close, which undoes what is not counted
        if self.begun:
            self.round.server.abort_masked_input(self.member.index)
        if self.outcome == "streaming":
            self.outcome = "aborted"
        self._tail = bytearray()

    def _begin(self) -> None:
        """The prefix checked: the server may take ranges from this sender."""
        round_, member = self.round, self.member
        if round_.phase_index != Phase.MASKED_INPUT or member.name not in round_.waiting_for:
            self.outcome = "refused"
            raise UploadRefusedError(
                "FAILED_PRECONDITION", f"{member.name} is not expected in phase {round_.phase_name}"
            )
        self._call(round_.server.begin_masked_input, member.index)
        self.begun = True

    def _add(self, data: bytes | memoryview) -> None:
        self._call(self.round.server.add_masked_range, self.member.index, self._word, data)
        self._word += len(data) // 4
        self.added += len(data)

    def _call(self, step: Callable[..., object], *args: object) -> None:
        """A refusal by the server (it already undid the stream) refuses the upload."""
        try:
            step(*args)
        except SecAggError as error:
            self.outcome = "refused"
            raise UploadRefusedError(_status_for(error), f"{error.reason.value}: {error}") from None

    def _note(self, held: int) -> None:
        self.peak_held = max(self.peak_held, held)
