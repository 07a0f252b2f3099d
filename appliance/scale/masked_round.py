"""A served secagg / secagg+ round whose sum is held by Ray stripes (``[scale]``, issue 22).

:class:`StripedMaskedRound` is the appliance's :class:`~appliance.rounds.MaskedRound` with
its server side replaced by a :class:`~appliance.scale.coordinator.StripedRound`: the
transport, deadlines, audit and publication are the one-process appliance's own, and the
clients cannot tell the difference (the same messages, the same RoundStart).

* An upload received whole is parsed as :meth:`MaskedRound._accept` parses it (a masked
  input as a view into the received bytes, never copied whole). A masked input's vector goes
  to the stripes in ``chunk_words`` pieces; only its blames reach the protocol's state
  machine, at the phase's close, in id order (so an accused client is excluded then, not on
  arrival).
* Closing the masked-input phase commits one survivor list to every stripe; closing
  unmasking has every stripe remove its range of the masks; :meth:`aggregate` has every
  stripe dequantize its range (bit-identical to :func:`crypto.decode_sum`) and keeps the
  range check of the one-process round. A differential-privacy round (``privacy.mode``
  client or distributed) is decoded by the privacy plan from the assembled ring sum, as
  the one-process round decodes it (the noise is in the clients' encodings; decoding is
  post-processing).
* A stripe lost at any point aborts the round: the call that noticed refuses, no member is
  waited for any longer, the phase's close reports why, nothing is assembled or published,
  and the appliance goes on to its next round (:mod:`.runtime` replaces the lost actors).
* A masked input without blames (a fixed prefix, then the vector) is streamed: the gRPC
  handler feeds a :class:`StripeUploadSink` (:meth:`StripedMaskedRound.stream_sink`) that
  checks the prefix byte for byte before forwarding anything, then sends each chunk to its
  stripe as the bytes arrive, with Ray's async API (``ObjectRef.future()`` awaited on the
  event loop, a bounded number in flight). It holds at most one chunk's worth of bytes
  (two while one is cut); :attr:`StripedMaskedRound.stream_peak` records the largest.

Ray's ``get`` blocks the calling thread: the orchestrator runs ``close_phase`` and
``aggregate`` in a worker thread already, and runs ``accept`` in one for rounds that say
:attr:`accept_off_loop` (this one), so the event loop keeps serving other clients' polls
and presence streams while chunks travel to the stripes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from ray.exceptions import RayError

from sealagg.appliance.masked_stream import PrefixGate
from sealagg.appliance.rounds import (
    Aggregate,
    MaskedRound,
    Member,
    UploadRefusedError,
    _status_for,
    check_in_range,
)
from sealagg.appliance.scale.coordinator import StripedRound, StripeLostError, StripeRange
from sealagg.appliance.scale.sink import ChunkSink, StreamedUpload
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto import Phase, QuantizationSpec, RoundConfig
from sealagg.crypto.errors import SecAggError
from sealagg.crypto.messages import masked_input_prefix


class StripeUploadSink(ChunkSink):
    """One client's masked input (no blames), forwarded to the stripes as it arrives.

    Why this is as safe as the whole-payload path: the header already passed
    ``check_upload`` (member, phase, size, duplicate) and the upload budget; the prefix
    (message type, round id, vector length) is compared in full before the first chunk is
    forwarded and :meth:`StripedRound.begin_input` re-checks the sender there (expected,
    not begun before); a stream that stops or is refused midway leaves chunks staged but is
    never complete on every stripe, so the masked-input close leaves the client out; and the
    state machine sees the sender only when the orchestrator accepts the finished stream.
    """

    round: StripedMaskedRound
    what = "the masked input"

    def __init__(
        self,
        round_: StripedMaskedRound,
        member: Member,
        total_bytes: int,
        wake: Callable[[], None] | None = None,
    ) -> None:
        super().__init__(round_, member, round_.config.vector_length, wake)
        self.total_bytes = total_bytes
        words = round_.config.vector_length
        self.gate = PrefixGate(round_.config.round_id, words, "nothing was forwarded")
        self.forwarded = 0  # vector bytes handed to the stripes

    async def feed(self, data: bytes) -> None:
        """Take the next bytes of the upload (the caller checked they fit its header)."""
        self.received += len(data)
        rest: memoryview | None = memoryview(data).cast("B")
        if not self.gate.passed:
            try:
                rest = self.gate.take(rest)
            except UploadRefusedError:
                self.outcome = "refused"
                raise
            if rest is None:
                return
            self._call(self.round.begin_stream, self.member)
        await self._forward(rest)

    def abort(self) -> None:
        """The stream ended early or was refused: what was staged stays staged, incomplete."""
        self._refs.clear()
        self._pending = bytearray()
        if self.outcome == "streaming":
            self.outcome = "aborted"

    def _boundary_after(self, word: int) -> int:
        return self.round.striped.boundary_after(word)

    def _stage(self, chunk: bytes) -> None:
        refs = self._call(self.round.striped.put_range, self.member.index, self._word, chunk)
        self._refs.extend(refs)
        self.forwarded += len(chunk)

    def _call(self, step: Any, *args: Any) -> Any:
        try:
            return step(*args)
        except SecAggError as error:
            self.outcome = "refused"
            raise UploadRefusedError(_status_for(error), f"{error.reason.value}: {error}") from None
        except StripeLostError as error:
            self._lost(error)

    async def _wait(self, ref: Any) -> None:
        striped = self.round.striped
        try:
            await asyncio.wait_for(asyncio.wrap_future(ref.future()), striped.timeout)
        except (RayError, TimeoutError) as error:
            # Off the loop: a lost stripe makes every other stripe drop the round (blocking).
            failure = await asyncio.to_thread(striped.refusal, self.member.index, error)
            self._call(_raise, failure)


def _raise(error: Exception) -> None:
    raise error


class StripedMaskedRound(MaskedRound):
    """A masked round summed by stripes (see the module doc); DP rounds decode the
    assembled sum as the one-process round does (:meth:`aggregate`)."""

    #: Uploads are forwarded with blocking Ray calls: the orchestrator accepts them off the loop.
    accept_off_loop = True

    def __init__(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        config: RoundConfig,
        spec: QuantizationSpec,
        *,
        stripes: Sequence[Any],
        ranges: Sequence[StripeRange],
        chunk_words: int,
        timeout: float,
        alongside: Sequence[bytes] = (),
    ) -> None:
        """``round_id`` names the round on the wire (upload headers, steps); ``config.round_id``
        is its transcript's (they differ for a grouped round's group, which the stripes run
        ``alongside`` the other groups: appliance/grouped_round.py)."""
        super().__init__(number, round_id, members, config, spec)
        try:
            self.striped = StripedRound(
                config,
                stripes,
                ranges,
                chunk_words=chunk_words,
                timeout=timeout,
                alongside=alongside,
            )
        except StripeLostError as error:  # a setup failure: the round is aborted before it runs
            raise ValueError(f"the stripes could not begin the round: {error}") from None
        self.server = self.striped.server  # blames, survivors: the one state machine
        self.stripe_count = len(ranges)
        self.lost: str | None = None  # why the round was aborted by a lost stripe
        self.streams: dict[str, StripeUploadSink] = {}  # the streamed masked inputs, by client
        self.stream_peak = 0  # the most bytes any stream held at once (an observable bound)

    def stream_sink(
        self, name: str, header: pb.UploadHeader, wake: Callable[[], None] | None = None
    ) -> StripeUploadSink | None:
        """A sink for a masked input without blames (its size says so); None otherwise: a
        masked input with blames, another phase's message, takes the whole-payload path."""
        vector_bytes = 4 * self.config.vector_length
        if (
            self.lost is not None
            or self.phase_index != Phase.MASKED_INPUT
            or name not in self.members
            or header.total_bytes
            != len(masked_input_prefix(self.config.round_id, vector_bytes)) + vector_bytes
        ):
            return None
        sink = StripeUploadSink(self, self.members[name], header.total_bytes, wake)
        self.streams[name] = sink
        return sink

    def begin_stream(self, member: Member) -> None:
        """The prefix checked: the sender may start staging chunks (as :meth:`_accept`)."""
        if self.lost is not None:
            raise UploadRefusedError("FAILED_PRECONDITION", self.lost)
        if self.phase_index != Phase.MASKED_INPUT or member.name not in self.waiting_for:
            raise UploadRefusedError(
                "FAILED_PRECONDITION", f"{member.name} is not expected in phase {self.phase_name}"
            )
        self.striped.begin_input(member.index)

    def _accept(self, member: Member, header: pb.UploadHeader, payload: bytes) -> None:
        if self.lost is not None:  # the shim then waits for the round's end, told why
            raise UploadRefusedError("FAILED_PRECONDITION", self.lost)
        if isinstance(payload, StreamedUpload):  # every chunk staged; only its blames left
            if payload.sink.round is not self or payload.sink.member is not member:
                raise UploadRefusedError("FAILED_PRECONDITION", "a stream of another upload")
            self.striped.finish_input(member.index, {})
            return
        try:
            self.striped.receive(member.index, self._parse(header, payload))
        except SecAggError as error:
            raise UploadRefusedError(_status_for(error), f"{error.reason.value}: {error}") from None
        except StripeLostError as error:
            self.lose(error)
            raise UploadRefusedError("FAILED_PRECONDITION", self.lost or str(error)) from None
        self._note_blames()

    def lose(self, error: StripeLostError) -> None:
        """The round cannot finish: wait for nobody (the phase closes at once and aborts)."""
        if self.lost is None:
            self.lost = str(error)
        self.expected = set()

    def close_phase(self) -> dict[str, pb.Task]:
        try:
            out = self.striped.close_phase()  # SecAggError (e.g. below threshold): round aborts
        except StripeLostError as error:
            self.lose(error)
            raise UploadRefusedError("ABORTED", self.lost or str(error)) from None
        self._note_blames()  # blames are judged at the masked-input close: audit them now
        if self.striped.phase is None:
            self._done = True
            return {}
        self.phase_index = int(self.striped.phase)
        self.expected = {self.by_index[i].name for i in out}
        self.answered = set()
        return {self.by_index[i].name: self._step(m) for i, m in out.items()}

    def aggregate(self) -> Aggregate:
        """Each stripe dequantizes its range; a lost stripe or an impossible sum is a
        ``ValueError`` (the orchestrator aborts the round and publishes nothing).

        A DP round (``decoder`` set by the orchestrator from the privacy plan) is decoded
        instead from the sum the coordinator assembled, by :meth:`MaskedRound._decoded`,
        the one-process round's own code path. Why this is sound: the stripes' ring sum is
        bit-identical to the one-process server's (same survivors, same masks removed, the
        ranges concatenated in order), the noise is the clients' (added inside their
        encodings, so the sum revealed is already the DP mechanism's output), and decoding
        (unrotate, rescale, divide by the count) is post-processing of that sum, so it
        changes neither the privacy nor the accounting. The coordinator holds the O(d)
        sum once, as the one-process server does; the rotation mixes every coordinate, so
        it cannot be undone range by range on the stripes.
        """
        outcome = self.striped.outcome
        if outcome is None:
            raise ValueError(self.lost or "the striped round did not finish")
        if self.decoder is not None:
            return self._decoded(outcome.total, outcome.survivors)
        try:
            mean, total_weight = self.striped.decode(self.spec)
        except StripeLostError as error:
            self.lose(error)
            raise ValueError(str(error)) from None
        check_in_range(mean, total_weight, self.spec, len(outcome.survivors))
        return self._result(mean, total_weight, outcome.survivors)

    def total_digest_source(self) -> bytes:
        """The assembled sum (the stripes' ranges in order), as the one-process round hashes."""
        if self.striped.outcome is None:
            raise ValueError(self.lost or "the striped round did not finish")
        return self.striped.outcome.total.tobytes()
