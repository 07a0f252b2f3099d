"""A served secagg / secagg+ round whose sum is held by Ray stripes (``[scale]``, issue 22).

:class:`StripedMaskedRound` is the appliance's :class:`~appliance.rounds.MaskedRound` with
its server side replaced by a :class:`~appliance.scale.coordinator.StripedRound`: the
transport, deadlines, audit and publication are the one-process appliance's own, and the
clients cannot tell the difference (the same messages, the same RoundStart).

* Every upload is parsed as :meth:`MaskedRound._accept` parses it (a masked input as a view
  into the received bytes, never copied whole). A masked input's vector goes to the stripes
  in ``chunk_words`` pieces; only its blames reach the protocol's state machine, at the
  phase's close, in id order (so an accused client is excluded then, not on arrival).
* Closing the masked-input phase commits one survivor list to every stripe; closing
  unmasking has every stripe remove its range of the masks; :meth:`aggregate` has every
  stripe dequantize its range (bit-identical to :func:`crypto.decode_sum`) and keeps the
  range check of the one-process round.
* A stripe lost at any point aborts the round: the call that noticed refuses, no member is
  waited for any longer, the phase's close reports why, nothing is assembled or published,
  and the appliance goes on to its next round (:mod:`.runtime` replaces the lost actors).

Ray's ``get`` blocks the calling thread: the orchestrator runs ``close_phase`` and
``aggregate`` in a worker thread already, and runs ``accept`` in one for rounds that say
:attr:`accept_off_loop` (this one), so the event loop keeps serving other clients' polls
and presence streams while chunks travel to the stripes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from sealagg.appliance.rounds import (
    Aggregate,
    MaskedRound,
    Member,
    UploadRefusedError,
    _status_for,
    check_in_range,
)
from sealagg.appliance.scale.coordinator import StripedRound, StripeLostError, StripeRange
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto import Phase, QuantizationSpec, RoundConfig, decode
from sealagg.crypto.errors import SecAggError
from sealagg.crypto.messages import masked_input_view


class StripedMaskedRound(MaskedRound):
    """A masked round summed by stripes (see the module doc); DP decoders are refused."""

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
    ) -> None:
        super().__init__(number, round_id, members, config, spec)
        try:
            self.striped = StripedRound(
                config, stripes, ranges, chunk_words=chunk_words, timeout=timeout
            )
        except StripeLostError as error:  # a setup failure: the round is aborted before it runs
            raise ValueError(f"the stripes could not begin the round: {error}") from None
        self.server = self.striped.server  # blames, survivors: the one state machine
        self.stripe_count = len(ranges)
        self.lost: str | None = None  # why the round was aborted by a lost stripe

    def _accept(self, member: Member, header: pb.UploadHeader, payload: bytes) -> None:
        if self.lost is not None:  # the shim then waits for the round's end, told why
            raise UploadRefusedError("FAILED_PRECONDITION", self.lost)
        try:
            message = (
                masked_input_view(payload, self.round_id, 4 * self.config.vector_length)
                if self.phase_index == Phase.MASKED_INPUT
                else None
            ) or decode(payload, max_bytes=self.upload_limit(header))
            if self.phase_index != message.PHASE:
                raise UploadRefusedError(
                    "FAILED_PRECONDITION",
                    f"{message.TYPE} does not belong to phase {self.phase_name}",
                )
            self.striped.receive(member.index, message)
        except SecAggError as error:
            raise UploadRefusedError(_status_for(error), f"{error.reason.value}: {error}") from None
        except StripeLostError as error:
            self._lose(error)
            raise UploadRefusedError("FAILED_PRECONDITION", self.lost or str(error)) from None
        self._note_blames()

    def _lose(self, error: StripeLostError) -> None:
        """The round cannot finish: wait for nobody (the phase closes at once and aborts)."""
        if self.lost is None:
            self.lost = str(error)
        self.expected = set()

    def close_phase(self) -> dict[str, pb.Task]:
        try:
            out = self.striped.close_phase()  # SecAggError (e.g. below threshold): round aborts
        except StripeLostError as error:
            self._lose(error)
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
        ``ValueError`` (the orchestrator aborts the round and publishes nothing)."""
        if self.decoder is not None:
            raise ValueError("[scale] rounds do not decode differential privacy yet")
        outcome = self.striped.outcome
        if outcome is None:
            raise ValueError(self.lost or "the striped round did not finish")
        try:
            mean, total_weight = self.striped.decode(self.spec)
        except StripeLostError as error:
            self._lose(error)
            raise ValueError(str(error)) from None
        check_in_range(mean, total_weight, self.spec, len(outcome.survivors))
        contributors = tuple(self.by_index[i].name for i in outcome.survivors)
        dropped = tuple(sorted(set(self.members) - set(contributors)))
        return Aggregate(mean.astype(np.float32), total_weight, contributors, dropped)

    def total_digest_source(self) -> bytes:
        """The assembled sum (the stripes' ranges in order), as the one-process round hashes."""
        if self.striped.outcome is None:
            raise ValueError(self.lost or "the striped round did not finish")
        return self.striped.outcome.total.tobytes()
