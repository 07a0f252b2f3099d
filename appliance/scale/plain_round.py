"""A served plaintext / attested round whose updates are held by Ray stripes (``[scale]``).

:class:`StripedPlainRound` behaves as the one-process :class:`~appliance.rounds.PlainRound`
(rule ``mean``) or :class:`~appliance.robust.RobustPlainRound` (every other rule): the same
refusals with the same reasons (wrong length, weight outside (0, 1], NaN/Inf), the same
:class:`~appliance.rounds.Aggregate`, the same ``robust_aggregation`` audit record and
aggregate digest. What differs is where the updates live: "no process ever holds a whole
client vector" (issue 22).

* A whole-vector upload (its size says so) is streamed: the gRPC handler feeds a
  :class:`PlainUploadSink` that cuts the bytes at chunk borders (``chunk_words``, aligned
  inside each stripe, so a chunk belongs to one stripe), refuses a chunk holding NaN/Inf
  before it is forwarded, and sends each chunk to its stripe with Ray's async API, a
  bounded number in flight: the appliance holds at most one chunk (two while one is cut).
  An upload received whole (``SubmitMessage``: small models) is checked as
  :class:`WeightedSum` checks it, forwarded in the same chunks, and dropped.
* A client counts once its every chunk is staged. The phase's close commits the one member
  list to every stripe (arrival order for ``mean``, as :class:`WeightedSum` adds; sorted
  names for robust rules, as :class:`RobustPlainRound` stacks); each stripe keeps exactly
  those ranges and drops every other chunk staged (a broken or refused upload).
* :meth:`aggregate` runs the rule inside the stripes (:mod:`.plain_stripe`): ``mean``,
  ``median`` and ``trimmed_mean`` per range; Krum and Multi-Krum add the stripes' partial
  squared-distance matrices, score them with :func:`kernels._krum.krum_scores_from_distances`
  and ask for the chosen rows' mean; the geometric median runs Weiszfeld steps whose
  per-client distances are sums of the stripes' partials. The coordinator holds the
  aggregate (O(d), as the one-process round) and O(n^2) distances, never a client's vector.
* Bit for bit equal to the one-process round: ``mean`` (same additions, same order per
  coordinate), ``median``, ``trimmed_mean``, Krum's row and Multi-Krum's mean once the
  choice is the same (per-coordinate kernels). The distances are sums over stripes instead
  of over one matrix, so the kernel's own rounding (float32 dot products over 256-coordinate
  blocks, added in float64) falls on other block borders: measured 2e-8 relative at d=3001,
  which can change a Krum choice only between clients whose scores tie to that precision.
  The geometric median's per-client distances differ by float64 reassociation only; its
  result came out bit for bit equal in every case tested (the test allows 1e-6 relative).
* A stripe lost at any point aborts the round: the call that noticed refuses, no member is
  waited for any longer, the close reports why, nothing is published; :mod:`.runtime`
  replaces the lost actor before the next round.

Trust. Plaintext mode: a stripe's operator sees the clients' plaintext updates on its
range, which is what the appliance itself sees in that mode; the Ray nodes must be the
appliance's own machines (:mod:`sealagg.appliance.scale`). Attested mode promises each
client that only the attested machine sees its update; a stripe on another machine would
see plaintext outside that attestation, so ``[scale]`` runs attested rounds only on the
local cluster (no ``address``): its nodes are processes of the same (confidential) machine,
started by the appliance from its own installation, their traffic TLS on loopback.
``appliance/config.py`` refuses attested mode with an ``address``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError, RayTaskError

from sealagg import kernels
from sealagg.appliance.robust import _robust_audit, check_feasible
from sealagg.appliance.rounds import (
    ActiveRound,
    Aggregate,
    Member,
    PlainRound,
    UploadRefusedError,
    WeightedSum,
)
from sealagg.appliance.scale.coordinator import StripeLostError, StripeRange
from sealagg.appliance.scale.plain_stripe import PlainStripeRefusedError
from sealagg.appliance.scale.sink import ChunkSink, StreamedUpload
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.kernels._krum import krum_scores_from_distances

#: Weiszfeld as :func:`kernels.geometric_median` runs it (its defaults).
WEISZFELD_NU, WEISZFELD_MAX_ITER, WEISZFELD_FTOL = 1e-6, 100, 1e-6


class StripeRefusedCallError(Exception):
    """A stripe refused a call (``cause``: its reason); the stripe itself is fine."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclasses.dataclass
class _Done:
    """An in-process stripe call, already run: its value or its refusal."""

    value: Any = None
    error: BaseException | None = None


class StripeCalls:
    """How a round calls its stripes: Ray actor handles (a call returns a ref, awaited with
    ``timeout``) or in-process :class:`PlainStripe` objects (run at once: the fast tests).
    Failures come out as :class:`StripeRefusedCallError` (the stripe said no) or
    :class:`StripeLostError` (gone, or silent past ``timeout``)."""

    def __init__(self, stripes: Sequence[Any], ranges: Sequence[StripeRange], timeout: float):
        if len(stripes) != len(ranges) or not stripes:
            raise ValueError("one stripe per range, at least one")
        self.stripes = list(stripes)
        self.ranges = tuple(ranges)
        self.timeout = timeout
        self.remote = isinstance(self.stripes[0], ray.actor.ActorHandle)

    def submit(self, i: int, method: str, *args: Any) -> Any:
        if self.remote:
            return getattr(self.stripes[i], method).remote(*args)
        try:
            return _Done(getattr(self.stripes[i], method)(*args))
        except PlainStripeRefusedError as error:
            return _Done(error=error)

    def each(self, method: str, *args: Any) -> list[Any]:
        """``method(*args)`` on every stripe, in stripe order."""
        return self.get([self.submit(i, method, *args) for i in range(len(self.stripes))])

    def get(self, refs: list[Any]) -> list[Any]:
        if not self.remote:
            for done in refs:
                if done.error is not None:
                    raise StripeRefusedCallError(done.error)
            return [done.value for done in refs]
        try:
            return ray.get(refs, timeout=self.timeout)
        except RayTaskError as error:
            raise StripeRefusedCallError(
                error.cause if error.cause is not None else error
            ) from None
        except RayError as error:
            raise _lost(error) from None

    async def wait(self, ref: Any) -> None:
        if not self.remote:
            self.get([ref])
            return
        try:
            await asyncio.wait_for(asyncio.wrap_future(ref.future()), self.timeout)
        except RayTaskError as error:
            raise StripeRefusedCallError(
                error.cause if error.cause is not None else error
            ) from None
        except (RayError, TimeoutError) as error:
            raise _lost(error) from None


def _lost(error: BaseException) -> StripeLostError:
    return StripeLostError(
        f"a stripe was lost mid-round ({type(error).__name__}); the round is aborted and "
        "nothing is published"
    )


class _UpdateCheck(WeightedSum):
    """:meth:`WeightedSum.check` (size, weight, NaN/Inf: the same refusals, the same words)
    without the O(d) float64 sum a :class:`WeightedSum` allocates."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension


class PlainUploadSink(ChunkSink):
    """One client's plaintext update, forwarded to the stripes as it arrives.

    The header already passed ``check_upload`` (member, phase, size 4d, not answered) and
    :meth:`StripedPlainRound.stream_sink` the weight. Each chunk is checked for NaN/Inf
    before it leaves the appliance; a stream refused or broken midway has what it staged
    dropped (:meth:`abort`), and only a finished stream reaches :meth:`ActiveRound.accept`.
    """

    round: StripedPlainRound
    what = "the update"

    def __init__(
        self, round_: StripedPlainRound, member: Member, wake: Callable[[], None] | None
    ) -> None:
        super().__init__(round_, member, round_.dimension, wake)
        self._begun = False

    async def feed(self, data: bytes) -> None:
        """Take the next bytes of the upload (the caller checked they fit its header)."""
        if not self._begun:
            self._call(self.round.begin_upload, self.member)
            self._begun = True
        self.received += len(data)
        await self._forward(memoryview(data).cast("B"))

    def abort(self) -> None:
        """The stream ended early or was refused: what it staged is dropped."""
        self._refs.clear()
        self._pending = bytearray()
        if self.outcome in ("streaming", "refused"):
            self.outcome = "aborted"
        if self._begun:
            self.round.release(self.member)

    def _boundary_after(self, word: int) -> int:
        return self.round.boundary_after(word)

    def _stage(self, chunk: bytes) -> None:
        if not np.isfinite(np.frombuffer(chunk, dtype="<f4")).all():
            self.outcome = "refused"
            raise UploadRefusedError("INVALID_ARGUMENT", "update contains NaN or Inf; refused")
        self._refs.append(self._call(self.round.put_chunk, self.member.index, self._word, chunk))

    def _call(self, step: Callable[..., Any], *args: Any) -> Any:
        try:
            return step(*args)
        except StripeLostError as error:
            self._lost(error)
        except UploadRefusedError:
            self.outcome = "refused"
            raise

    async def _wait(self, ref: Any) -> None:
        try:
            await self.round.calls.wait(ref)
        except StripeRefusedCallError as refusal:
            self.outcome = "refused"
            raise UploadRefusedError(
                "INVALID_ARGUMENT", f"the update was refused: {refusal.cause}"
            ) from None
        except StripeLostError as error:
            self._lost(error)


class StripedPlainRound(ActiveRound):
    """A plaintext / attested round whose updates the stripes hold (see the module doc)."""

    #: Described as :class:`PlainRound` describes itself: one phase, its deadline, the vector
    #: length and the upload limit (4d bytes of plaintext update).
    phase_names = PlainRound.phase_names
    phase_deadlines = PlainRound.phase_deadlines
    describe = PlainRound.describe
    upload_limit = PlainRound.upload_limit
    #: Uploads are forwarded with blocking Ray calls: the orchestrator accepts them off the loop.
    accept_off_loop = True

    def __init__(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        dimension: int,
        *,
        rule: str,
        f: int,
        beta: float,
        stripes: Sequence[Any],
        ranges: Sequence[StripeRange],
        chunk_words: int,
        timeout: float,
    ) -> None:
        super().__init__(number, round_id, members)
        if ranges[-1].stop != dimension or ranges[0].start != 0:
            raise ValueError("the stripes' ranges must cover the model exactly")
        self.dimension = dimension
        self.rule, self.f, self.beta = rule, f, beta
        self.calls = StripeCalls(stripes, ranges, timeout)
        self.chunk_words = chunk_words
        self.stripe_count = len(ranges)
        self._check = _UpdateCheck(dimension)
        self.arrivals: list[tuple[str, float]] = []  # (name, weight) in acceptance order
        self.total_weight = 0.0  # summed in acceptance order, as WeightedSum sums it
        self.lost: str | None = None  # why a lost stripe aborted the round
        self.stream_peak = 0  # the most bytes any stream held at once (an observable bound)
        self.robust_report: dict = {}
        self._uploading: set[str] = set()  # an upload under way or accepted: no second one
        self._order: list[str] = []
        self._digest_source = b""
        self._done = False
        try:
            self.calls.get(
                [
                    self.calls.submit(i, "begin", round_id, r.start, r.length)
                    for i, r in enumerate(ranges)
                ]
            )
        except (StripeRefusedCallError, StripeLostError) as error:
            raise ValueError(f"the stripes could not begin the round: {error}") from None

    # ---------------------------------------------------------------------------- audit

    def result_audit(self) -> dict[str, dict]:
        """Which rule ran and which clients it chose (as :class:`RobustPlainRound`)."""
        return _robust_audit(self.number, self.robust_report)

    # ---------------------------------------------------------------------------- uploads

    def stream_sink(
        self, name: str, header: pb.UploadHeader, wake: Callable[[], None] | None = None
    ) -> PlainUploadSink | None:
        """A sink for a whole update (4d bytes); None otherwise (refused on the whole path
        with :meth:`WeightedSum.check`'s reason). A weight outside (0, 1] is refused here,
        before a byte of the update is read."""
        if (
            self.lost is not None
            or name not in self.members
            or header.kind != "plaintext_update"
            or header.total_bytes != 4 * self.dimension
        ):
            return None
        if not (np.isfinite(header.weight) and 0.0 < header.weight <= 1.0):
            raise UploadRefusedError(
                "INVALID_ARGUMENT", f"weight must lie in (0, 1], got {header.weight}"
            )
        return PlainUploadSink(self, self.members[name], wake)

    def begin_upload(self, member: Member) -> None:
        """``member`` starts sending: one upload at a time, and what an earlier refused one
        left staged is dropped first (Ray runs one caller's calls to an actor in order)."""
        if self.lost is not None:
            raise UploadRefusedError("FAILED_PRECONDITION", self.lost)
        self._require_open()
        if member.name in self._uploading or member.name not in self.waiting_for:
            raise UploadRefusedError(
                "FAILED_PRECONDITION", f"an upload of {member.name} is already under way or done"
            )
        self._uploading.add(member.name)
        for i in range(len(self.calls.stripes)):
            self.calls.submit(i, "discard", self.round_id, member.index)

    def release(self, member: Member) -> None:
        """An upload that will not count: drop what it staged (not awaited), allow another."""
        if member.name in self.answered or member.name not in self._uploading:
            return
        self._uploading.discard(member.name)
        if self.lost is None:
            for i in range(len(self.calls.stripes)):
                self.calls.submit(i, "discard", self.round_id, member.index)

    def boundary_after(self, word: int) -> int:
        """The next chunk border after coordinate ``word``: a chunk never crosses a stripe."""
        for rng in self.calls.ranges:
            if rng.start <= word < rng.stop:
                step = (word - rng.start) // self.chunk_words + 1
                return min(rng.stop, rng.start + step * self.chunk_words)
        return self.dimension

    def put_chunk(self, client: int, offset: int, chunk: bytes) -> Any:
        """Stage ``chunk`` (inside one stripe's range) on its stripe; the call, not awaited."""
        self._require_open()
        for i, rng in enumerate(self.calls.ranges):
            if rng.start <= offset < rng.stop:
                return self.calls.submit(i, "put", self.round_id, client, offset, chunk)
        raise UploadRefusedError("INVALID_ARGUMENT", "a chunk outside the model")

    def accept(self, name: str, header: pb.UploadHeader, payload: bytes | bytearray | Any) -> None:
        try:
            super().accept(name, header, payload)
        except BaseException:
            if isinstance(payload, StreamedUpload):  # e.g. the phase closed meanwhile
                payload.sink.round.release(payload.sink.member)
            raise

    def _accept(self, member: Member, header: pb.UploadHeader, payload: Any) -> None:
        if self.lost is not None:
            raise UploadRefusedError("FAILED_PRECONDITION", self.lost)
        if isinstance(payload, StreamedUpload):  # every chunk staged
            sink = payload.sink
            if sink.round is not self or sink.member is not member or sink.outcome != "complete":
                raise UploadRefusedError("FAILED_PRECONDITION", "a stream of another upload")
        else:
            self._forward(member, self._check.check(payload, header.weight))
        self.arrivals.append((member.name, header.weight))
        self.total_weight += header.weight

    def _forward(self, member: Member, update: np.ndarray) -> None:
        """An update received whole (and checked): to the stripes in chunks, then dropped."""
        self.begin_upload(member)
        data = memoryview(update).cast("B")
        refs, word = [], 0
        try:
            while word < self.dimension:
                border = self.boundary_after(word)
                refs.append(self.put_chunk(member.index, word, bytes(data[4 * word : 4 * border])))
                word = border
            self.calls.get(refs)
        except StripeRefusedCallError as refusal:
            self.release(member)
            raise UploadRefusedError(
                "INVALID_ARGUMENT", f"the update was refused: {refusal.cause}"
            ) from None
        except StripeLostError as error:
            self.lose(error)
            raise UploadRefusedError("FAILED_PRECONDITION", self.lost or str(error)) from None

    def _require_open(self) -> None:
        """A stream still running when the phase closed is refused (its chunks were dropped
        at the commit: it never counts)."""
        if self._done:
            raise UploadRefusedError("FAILED_PRECONDITION", "the update phase is closed")

    def lose(self, error: StripeLostError) -> None:
        """The round cannot finish: wait for nobody (the phase closes at once and aborts)."""
        if self.lost is None:
            self.lost = str(error)
            for i in range(len(self.calls.stripes)):  # the others forget it (not awaited)
                with contextlib.suppress(RayError):
                    self.calls.submit(i, "abort", self.round_id)
        self.expected = set()

    # ------------------------------------------------------------------- close, aggregate

    def close_phase(self) -> dict[str, pb.Task]:
        """Commit the one member list to every stripe (refusals as the one-process rounds)."""
        if self.lost is not None:
            raise UploadRefusedError("ABORTED", self.lost)
        if not self.answered:
            raise UploadRefusedError("ABORTED", "no client submitted an update before the deadline")
        if self.rule != "mean":
            try:
                check_feasible(self.rule, len(self.answered), self.f, self.beta, unit="updates")
            except ValueError as error:
                raise UploadRefusedError("ABORTED", f"robust rule: {error}") from None
        order = [n for n, _ in self.arrivals] if self.rule == "mean" else sorted(self.answered)
        try:
            self.calls.each("commit", self.round_id, [self.members[n].index for n in order])
        except (StripeRefusedCallError, StripeLostError) as error:
            self.lose(error if isinstance(error, StripeLostError) else StripeLostError(str(error)))
            raise UploadRefusedError("ABORTED", self.lost or str(error)) from None
        self._order = order
        self._done = True
        return {}

    @property
    def finished(self) -> bool:
        return self._done

    def aggregate(self) -> Aggregate:
        """The rule, run inside the stripes; a lost or failing stripe is a ``ValueError``
        (the orchestrator aborts the round and publishes nothing)."""
        dropped = tuple(sorted(set(self.members) - self.answered))
        try:
            if self.rule == "mean":
                parts = self.calls.each("mean", self.round_id, [w for _, w in self.arrivals])
                mean = np.concatenate([p[0] for p in parts])
                self._digest_source = b"".join(np.ascontiguousarray(p[1]).tobytes() for p in parts)
                return Aggregate(mean, self.total_weight, tuple(sorted(self.answered)), dropped)
            result, chosen = self._robust(len(self._order))
        except (StripeRefusedCallError, StripeLostError) as error:
            raise ValueError(f"striped {self.rule}: {error}") from None
        if "selected" in chosen:
            chosen = {"selected": [self._order[i] for i in chosen["selected"]]}
        self.robust_report = {"rule": self.rule, "clients": len(self._order), **chosen}
        self._digest_source = result.tobytes()
        return Aggregate(result, self.total_weight, tuple(self._order), dropped)

    def _robust(self, k: int) -> tuple[np.ndarray, dict]:
        """(float32 aggregate, what the rule chose) as :func:`appliance.robust.apply_rule`."""
        rid = self.round_id
        if self.rule == "median":
            return np.concatenate(self.calls.each("median", rid)), {}
        if self.rule == "trimmed_mean":
            parts = self.calls.each("trimmed_mean", rid, self.beta)
            return np.concatenate(parts), {"trimmed_per_side": kernels.trim_count(k, self.beta)}
        if self.rule in ("krum", "multi_krum"):
            scores = krum_scores_from_distances(self._summed("sq_distances"), self.f)
            if self.rule == "krum":  # as kernels.krum: the lowest score, lowest index on ties
                chosen = int(np.argmin(scores))
                return np.concatenate(self.calls.each("row", rid, chosen)), {"selected": [chosen]}
            # as kernels.multi_krum (m = n - f): the best scores, a 0/1-weighted mean
            best = np.argsort(scores, kind="stable")[: k - self.f]
            mask = np.zeros(k, dtype=np.float64)
            mask[best] = 1.0
            mean = np.concatenate(self.calls.each("weighted_mean", rid, mask))
            return mean, {"selected": sorted(int(i) for i in best)}
        if self.rule == "geometric_median":
            return self._geometric_median(k)
        raise ValueError(f"rule {self.rule} is not run on stripes")

    def _summed(self, method: str, *args: Any) -> np.ndarray:
        """The stripes' partials of ``method`` added in stripe order (float64)."""
        parts = self.calls.each(method, self.round_id, *args)
        total = np.array(parts[0], dtype=np.float64)
        for part in parts[1:]:
            total += part
        return total

    def _geometric_median(self, k: int) -> tuple[np.ndarray, dict]:
        """:func:`kernels.geometric_median`'s smoothed Weiszfeld loop (equal weights, its
        defaults), each step's distances summed from the stripes' partials: the loop is the
        kernel's, the passes over the matrix are the stripes'."""
        alpha = np.ones(k) / k
        dist = np.sqrt(self._summed("weiszfeld", alpha, False))
        objective = float(alpha @ dist)
        keep, steps = True, 0
        for steps in range(1, WEISZFELD_MAX_ITER + 1):  # noqa: B007 - the count is reported
            beta = alpha / np.maximum(WEISZFELD_NU, dist)
            dist_next = np.sqrt(self._summed("weiszfeld", beta, keep))
            obj_next = float(alpha @ dist_next)
            if not np.isfinite(obj_next):
                raise StripeRefusedCallError(ValueError("the geometric median is not finite"))
            improved = objective - obj_next
            keep = obj_next <= objective  # Weiszfeld never increases it, bar rounding
            if keep:
                dist, objective = dist_next, obj_next
            if improved <= WEISZFELD_FTOL * max(obj_next, np.finfo(np.float64).tiny):
                break
        z = np.concatenate(self.calls.each("weiszfeld_result", self.round_id, keep))
        return z, {"weiszfeld_steps": steps}

    def total_digest_source(self) -> bytes:
        """``mean``: the float64 weighted sum (as :class:`PlainRound`); else the result."""
        return self._digest_source
