"""The server's state machine for a striped round: every rule kept, no vector held.

:class:`StripedSecAggServer` is :class:`~crypto.server.SecAggServer` with two phases
changed, and nothing else: the key directory, coins, share checks, blame judging,
consistency signatures, Shamir reconstruction with its commitment checks and every abort
are the one-process server's own code.

* Masked input: the message handed to :meth:`receive` carries the client's blames and an
  *empty* vector; the vector's coordinates went to the stripes that own them (a transport
  concern, ``sealagg.appliance.scale``). The caller hands a client's message over only
  once every stripe holds all of that client's chunks, so the survivor list this server
  closes the phase with is the one list all stripes commit: a client is a survivor
  everywhere or nowhere. Different survivor sets across stripes would let the server ask
  for a client's self-mask share on one stripe's account and its mask-key share on
  another's, and so remove both masks of one client.
* Unmasking: instead of a sum, the result carries the unmask plan (each mask key and its
  sign, the same list the one-process server applies), and an empty ``total``; each
  stripe removes its range of every listed mask (:mod:`crypto.mask_slice`). The plan
  holds exactly what the one-process server derives: self-mask keys of survivors and
  pairwise keys of survivors with dropped peers, never both for one client.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from sealagg.crypto.errors import ExcludedSenderError, MalformedMessageError, OutOfPhaseError
from sealagg.crypto.messages import MaskedInput, Message
from sealagg.crypto.server import (
    AggregateResult,
    SecAggServer,
    _CollectMaskedInputs,
    _CollectUnmaskShares,
    _State,
)


@dataclasses.dataclass(frozen=True)
class StripedResult(AggregateResult):
    """A striped round's outcome: who survived, and the masks every stripe removes.

    ``total`` is empty (the stripes hold the sum). ``masks`` is left out of ``repr`` so a
    log line of the result never prints a key.
    """

    masks: tuple[tuple[bytes, int], ...] = dataclasses.field(default=(), repr=False)


class _CountMaskedInputs(_CollectMaskedInputs):
    """Masked input without the vector: blames are judged, survivors counted, nothing summed."""

    def __init__(self, state: _CollectMaskedInputs) -> None:
        _State.__init__(self, state.config, state.expected)
        self.facts = state.facts
        self.total = np.zeros(0, dtype=np.uint32)  # the stripes hold the sum

    def check(self, sender: int, msg: Message) -> None:
        assert isinstance(msg, MaskedInput)
        if sender in self.facts.excluded:
            raise ExcludedSenderError(
                f"client {sender} is excluded from this round: a neighbour proved that it "
                "sent a sealed share that does not open"
            )
        if len(msg.vector) != 0:
            raise MalformedMessageError(
                "a striped round's coordinator takes blames only; the vector goes to the stripes"
            )
        self._judged = {v: self._judge(sender, v, blame) for v, blame in msg.blames.items()}

    def receive(self, sender: int, msg: Message) -> None:
        _State.receive(self, sender, msg)
        for v, (record, mask_key) in self._judged.items():
            self.facts.blames.append(record)
            self.facts.unmasked_pairs[(sender, v)] = mask_key
            self.facts.excluded.add(v)
        self.received[sender] = None


class _PlanUnmask(_CollectUnmaskShares):
    """Unmasking that ends in a plan for the stripes instead of a sum."""

    def close(self) -> tuple[dict[int, Message], AggregateResult]:
        masks = tuple(self.masks_to_remove())  # raises (the round aborts) like the original
        base = self.result_with(np.zeros(0, dtype=np.uint32))
        return {}, StripedResult(
            total=base.total,
            survivors=base.survivors,
            dropped_before_masking=base.dropped_before_masking,
            dropped_after_masking=base.dropped_after_masking,
            masks=masks,
        )


class StripedSecAggServer(SecAggServer):
    """:class:`SecAggServer` whose masked inputs are summed elsewhere (see the module doc)."""

    def close_phase(self) -> dict[int, Message]:
        out = super().close_phase()
        state = self._state
        if type(state) is _CollectMaskedInputs:
            self._state = _CountMaskedInputs(state)
        elif type(state) is _CollectUnmaskShares:
            self._state = _PlanUnmask(
                state.config,
                state.expected,
                state.facts,
                state.survivors,
                state.dropped,
                state.total,
            )
        return out

    @property
    def striped_result(self) -> StripedResult:
        result = self.result
        if not isinstance(result, StripedResult):
            raise OutOfPhaseError("the round has no unmask plan")
        return result
