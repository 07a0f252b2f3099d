"""The coordinator of a striped round: the protocol state machine, stripes for the sum.

One :class:`StripedRound` per round. It runs :class:`crypto.striped_server.StripedSecAggServer`
(key directory, coins, shares, blame judging, consistency check, Shamir reconstruction,
dropout decisions: the one-process server's own code) and never holds a client vector:
a masked input's coordinates go to the stripes that own them, chunk by chunk, and only its
blames reach the state machine.

Closing the masked-input phase: every stripe reports the clients whose chunks cover its
whole range; a client whose message arrived *and* who is complete on every stripe is handed
to the state machine (in id order, as the one-process server would see them); the survivor
list it closes with is committed to every stripe, which adds exactly those clients and drops
the rest. Unmasking: the plan (mask keys and signs) goes to every stripe, each removes its
range, and the ranges are assembled in order.

A stripe lost mid-round (its Ray node gone, :class:`ray.exceptions.RayError`) aborts the
round: the remaining stripes drop what they staged or summed, nothing is assembled or
published, and :class:`StripeLostError` says which stripe. A protocol abort
(:class:`crypto.errors.SecAggError`) aborts the stripes the same way and re-raises.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError, RayTaskError

from sealagg.appliance.scale.stripe import Stripe
from sealagg.crypto.config import RoundConfig
from sealagg.crypto.encoding import QuantizationSpec
from sealagg.crypto.errors import (
    DuplicateMessageError,
    MalformedMessageError,
    SecAggError,
    UnknownSenderError,
)
from sealagg.crypto.messages import MaskedInput, Message, Phase
from sealagg.crypto.striped_server import StripedResult, StripedSecAggServer
from sealagg.kernels import dequantize

#: Coordinates per chunk forwarded to a stripe (1 MiB): uploads stream, nothing holds a
#: whole vector on the way.
CHUNK_WORDS = 1 << 18


class StripeLostError(RuntimeError):
    """A stripe's actor died mid-round: the round is aborted, nothing is published."""


@dataclasses.dataclass(frozen=True)
class StripeRange:
    start: int
    length: int

    @property
    def stop(self) -> int:
        return self.start + self.length


def plan_stripes(dimension: int, weights: Sequence[float]) -> tuple[StripeRange, ...]:
    """Cut ``[0, dimension)`` into ``len(weights)`` contiguous ranges proportional to
    ``weights`` (unequal stripes are fine: each only needs its own offset)."""
    if not weights or any(w <= 0 for w in weights):
        raise ValueError("every stripe needs a positive weight")
    if dimension < len(weights):
        raise ValueError("more stripes than coordinates")
    total = float(sum(weights))
    edges = [0]
    acc = 0.0
    for w in weights[:-1]:
        acc += w
        edges.append(max(edges[-1] + 1, round(dimension * acc / total)))
    edges.append(dimension)
    if any(b <= a for a, b in itertools.pairwise(edges)):
        raise ValueError("the weights leave a stripe empty")
    return tuple(StripeRange(a, b - a) for a, b in itertools.pairwise(edges))


def stripe_actor_class(**options: Any) -> Any:
    """``Stripe`` as a Ray actor class; ``options`` go to ``.options()`` (resources, placement)."""
    remote = ray.remote(num_cpus=0, max_restarts=0, max_task_retries=0)(Stripe)
    return remote.options(**options) if options else remote


@dataclasses.dataclass(frozen=True)
class StripedOutcome:
    """The assembled sum and who counted (keys of the plan are not kept here)."""

    total: np.ndarray
    survivors: tuple[int, ...]
    dropped_before_masking: tuple[int, ...]
    dropped_after_masking: tuple[int, ...]


class StripedRound:
    """One round over ``stripes`` (Ray actor handles, one per range; see the module doc)."""

    def __init__(
        self,
        config: RoundConfig,
        stripes: Sequence[Any],
        ranges: Sequence[StripeRange],
        *,
        chunk_words: int = CHUNK_WORDS,
        timeout: float = 120.0,
        alongside: Sequence[bytes] = (),
    ) -> None:
        """``alongside``: the round ids of the rounds the stripes keep running beside this
        one (the other groups of a grouped round, appliance/grouped_round.py); every other
        round a stripe held is forgotten when this one begins."""
        if len(stripes) != len(ranges) or not stripes:
            raise ValueError("one stripe per range")
        if (
            ranges[0].start != 0
            or ranges[-1].stop != config.vector_length
            or any(a.stop != b.start for a, b in itertools.pairwise(ranges))
        ):
            raise ValueError("the ranges must tile the vector in order")
        self.config = config
        self.server = StripedSecAggServer(config)
        self.stripes = list(stripes)
        self.ranges = tuple(ranges)
        self.chunk_words = chunk_words
        self.timeout = timeout
        self.outcome: StripedOutcome | None = None
        self.aborted: BaseException | None = None
        self.lost_reason: str | None = None  # why a stripe loss aborted the round
        self._blames: dict[int, MaskedInput] = {}
        self._begun: set[int] = set()  # clients whose masked input began (one attempt)
        self._begin_lock = threading.Lock()  # streams begin on the loop, payloads in threads
        keep = [bytes(r) for r in alongside]
        self._get(
            [s.begin.remote(config.round_id, r.start, r.length, keep) for s, r in self._pairs()]
        )

    @property
    def phase(self) -> Phase | None:
        return self.server.phase

    def receive(self, sender: int, msg: Message) -> None:
        """A client's message (``sender`` from its TLS identity). A masked input's vector is
        forwarded to the stripes; everything else goes to the state machine."""
        if self.aborted is not None:
            raise StripeLostError(self.lost_reason or "the round was aborted") from self.aborted
        if not isinstance(msg, MaskedInput) or self.server.phase is not Phase.MASKED_INPUT:
            self.server.receive(sender, msg)
            return
        if msg.round_id != self.config.round_id:
            self.server.receive(sender, msg)  # the state machine names the replay
        self.begin_input(sender)
        if len(msg.vector) != 4 * self.config.vector_length:
            self._begun.discard(sender)  # nothing was staged: it may send a well-formed one
            raise MalformedMessageError(
                f"client {sender} sent {len(msg.vector)} bytes; the round expects "
                f"{4 * self.config.vector_length}"
            )
        view = memoryview(msg.vector).cast("B")
        calls = []
        for lo, hi in self.pieces(0, self.config.vector_length):
            calls.extend(self.put_range(sender, lo, bytes(view[4 * lo : 4 * hi])))
        try:
            ray.get(calls, timeout=self.timeout)
        except RayError as error:
            raise self.refusal(sender, error) from None
        self.finish_input(sender, msg.blames)

    # A masked input in three steps, shared by :meth:`receive` (a whole payload) and the
    # appliance's streamed uploads (appliance/scale/masked_round.py): begin, put ranges as
    # they arrive, finish. A client that began and never finished is never complete on
    # every stripe, so the masked-input close leaves it out.

    def begin_input(self, sender: int) -> None:
        """Check ``sender`` may send its masked input now, before any chunk is staged."""
        if self.aborted is not None:
            raise StripeLostError(self.lost_reason or "the round was aborted") from self.aborted
        if self.server.phase is not Phase.MASKED_INPUT:
            raise MalformedMessageError("the round is not taking masked inputs")
        with self._begin_lock:
            if sender in self._blames or sender in self._begun:
                raise DuplicateMessageError(f"client {sender} already sent its masked input")
            if sender not in self.server.waiting_for:  # before any chunk is staged anywhere
                raise UnknownSenderError(
                    f"client {sender} is not expected to send a masked input in this round"
                )
            self._begun.add(sender)  # one attempt: a retry would overlap what was staged

    def pieces(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """``[lo, hi)`` cut at stripe borders and on each stripe's ``chunk_words`` grid."""
        out = []
        for rng in self.ranges:
            a, b = max(lo, rng.start), min(hi, rng.stop)
            while a < b:
                grid = rng.start + ((a - rng.start) // self.chunk_words + 1) * self.chunk_words
                end = min(b, grid)
                out.append((a, end))
                a = end
        return out

    def boundary_after(self, word: int) -> int:
        """The first chunk border (stripe border or ``chunk_words`` grid) after ``word``."""
        for rng in self.ranges:
            if rng.start <= word < rng.stop:
                step = (word - rng.start) // self.chunk_words + 1
                return min(rng.stop, rng.start + step * self.chunk_words)
        return self.config.vector_length

    def put_range(self, sender: int, lo: int, data: bytes) -> list[Any]:
        """Send coordinates ``[lo, lo + len(data)/4)`` of ``sender``'s vector to the stripes
        owning them (one call per stripe crossed); the Ray refs, not awaited."""
        if self.aborted is not None:
            raise StripeLostError(self.lost_reason or "the round was aborted") from self.aborted
        hi = lo + len(data) // 4
        view = memoryview(data).cast("B")
        calls = []
        for stripe, rng in self._pairs():
            a, b = max(lo, rng.start), min(hi, rng.stop)
            if a < b:
                chunk = data if (a, b) == (lo, hi) else bytes(view[4 * (a - lo) : 4 * (b - lo)])
                calls.append(stripe.put.remote(self.config.round_id, sender, a, chunk))
        return calls

    def refusal(self, sender: int, error: BaseException) -> Exception:
        """What a failed chunk call means: a stripe refused it (refuse the client, go on),
        or a stripe is gone or silent past the timeout (abort the round)."""
        if isinstance(error, RayTaskError):
            return MalformedMessageError(f"client {sender}'s upload was refused: {error.cause!r}")
        reason = (
            f"a stripe was lost while client {sender} uploaded ({type(error).__name__}); "
            "the round is aborted and nothing is published"
        )
        if self.aborted is None:  # later calls (other streams) then say the same
            self.lost_reason = reason
        self._abort(error)
        lost = StripeLostError(reason)
        lost.__cause__ = error
        return lost

    def finish_input(self, sender: int, blames: Any) -> None:
        """Every chunk of ``sender``'s vector was staged: keep its blames for the close."""
        self._blames[sender] = MaskedInput(self.config.round_id, b"", blames)

    def close_phase(self) -> dict[int, Message]:
        """End the current phase; at masked input, commit one survivor list to all stripes;
        at unmasking, unmask every stripe and assemble the sum (:attr:`outcome`)."""
        if self.aborted is not None:
            raise StripeLostError(self.lost_reason or "the round was aborted") from self.aborted
        phase = self.server.phase
        try:
            if phase is Phase.MASKED_INPUT:
                return self._close_masked_input()
            out = self.server.close_phase()
            if self.server.phase is None:
                self._unmask(self.server.striped_result)
            return out
        except SecAggError as error:
            self._abort(error)
            raise

    def _close_masked_input(self) -> dict[int, Message]:
        rid = self.config.round_id
        complete = self._get([s.complete.remote(rid) for s in self.stripes])
        everywhere = set.intersection(*(set(c) for c in complete))
        for u in sorted(self._blames):
            if u not in everywhere:
                continue  # a chunk is missing on some stripe: a dropout, on every stripe
            try:
                self.server.receive(u, self._blames[u])
            except SecAggError:
                continue  # refused (a false blame, an excluded sender): not a survivor
        out = self.server.close_phase()
        survivors = next(iter(out.values())).survivors if out else ()
        self._get([s.commit.remote(rid, list(survivors)) for s in self.stripes])
        self._blames.clear()
        self._begun.clear()
        return out

    def _unmask(self, result: StripedResult) -> None:
        rid = self.config.round_id
        masks = list(result.masks)
        parts = self._get([s.unmask.remote(rid, masks) for s in self.stripes])
        total = np.concatenate([np.frombuffer(p, dtype="<u4") for p in parts]).astype(np.uint32)
        self.outcome = StripedOutcome(
            total=total,
            survivors=result.survivors,
            dropped_before_masking=result.dropped_before_masking,
            dropped_after_masking=result.dropped_after_masking,
        )

    def decode(self, spec: QuantizationSpec) -> tuple[np.ndarray, float]:
        """The weighted mean and Σw, as :func:`crypto.decode_sum` gives them: every stripe
        dequantizes its own range; the weight rides in the last coordinate."""
        if self.outcome is None:
            raise StripeLostError("no assembled sum: the round did not finish")
        rid = self.config.round_id
        parts = self._get([s.dequantized.remote(rid, spec.scale, spec.bits) for s in self.stripes])
        total_weight = float(dequantize(self.outcome.total[-1:], spec.weight_scale, spec.bits)[0])
        if total_weight <= 0:
            raise ValueError("the aggregated weight is not positive: nothing to average")
        return np.concatenate(parts)[:-1] / total_weight, total_weight

    def memory(self) -> list[dict[str, int]]:
        """Each stripe's traced peak and current allocation this round."""
        return self._get([s.memory.remote() for s in self.stripes])

    def _pairs(self) -> list[tuple[Any, StripeRange]]:
        return list(zip(self.stripes, self.ranges, strict=True))

    def _get(self, refs: list[Any]) -> list[Any]:
        try:
            return ray.get(refs, timeout=self.timeout)
        except RayTaskError as error:  # a stripe refused or failed: no sum from this round
            self._abort(error)
            raise StripeLostError(
                f"a stripe failed mid-round ({error.cause!r}); the round is aborted and "
                "nothing is published"
            ) from error
        except RayError as error:
            self._abort(error)
            raise StripeLostError(
                f"a stripe was lost mid-round ({type(error).__name__}); the round is aborted "
                "and nothing is published"
            ) from error

    def _abort(self, error: BaseException) -> None:
        """Every reachable stripe forgets the round; unreachable ones are gone already."""
        if self.aborted is not None:
            return
        self.aborted, self.outcome = error, None
        refs = [s.abort.remote(self.config.round_id) for s in self.stripes]
        for ref in refs:
            with contextlib.suppress(RayError):
                ray.get(ref, timeout=self.timeout)
