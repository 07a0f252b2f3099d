"""One round's aggregation logic, per mode, independent of transport and scheduling.

A round object knows which clients still owe a message in the current phase,
accepts (or refuses) their uploads, and closes a phase into the next step for
each client. :class:`MaskedRound` drives the secure-aggregation server of
``crypto/`` and holds only a running sum; :class:`PlainRound` accumulates a
weighted float64 sum of plaintext updates (the aggregator sees every update).

Each round kind also describes itself to the orchestrator, which never asks what
kind it holds: its phase deadlines (:meth:`ActiveRound.phase_deadlines`), the
public parameters it puts into the RoundStart (:meth:`~ActiveRound.describe`) and
the one each member receives (:meth:`~ActiveRound.round_start_for`), and what it
adds to the audit log once aggregated (:meth:`~ActiveRound.result_audit`).
"""

from __future__ import annotations

import abc
import dataclasses
import json
from collections.abc import Callable, Sequence, Sized
from typing import Protocol

import numpy as np

from sealagg.appliance.config import DeadlinesSection
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto import (
    Phase,
    QuantizationSpec,
    RoundConfig,
    SecAggServer,
    decode,
    decode_sum,
)
from sealagg.crypto.errors import SecAggError
from sealagg.crypto.messages import (
    MAX_BLAME_BYTES,
    Message,
    masked_input_prefix,
    masked_input_view,
)

#: Protocol messages other than the masked vector are small; this bounds them.
SMALL_MESSAGE_BYTES = 4 * 1024 * 1024
_MSGPACK_OVERHEAD = 64


class UploadRefusedError(Exception):
    """An upload was refused; ``code`` names the gRPC status the transport should return."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclasses.dataclass(frozen=True)
class Member:
    """A participant of one round: its index (Shamir x), certificate name and identity key."""

    index: int
    name: str
    identity_key: bytes


@dataclasses.dataclass(frozen=True)
class Aggregate:
    """What a finished round yields: the weighted mean update and who is in it."""

    mean_update: np.ndarray
    total_weight: float
    contributors: tuple[str, ...]
    dropped: tuple[str, ...]
    #: DP rounds: what the DP decoder learned besides the mean (noisy clip count, wrap share).
    privacy: dict = dataclasses.field(default_factory=dict)


class UploadSink(Protocol):
    """Takes an upload's bytes as they arrive instead of one buffer holding them all; what
    :meth:`finish` returns goes to :meth:`ActiveRound.accept` in place of the payload (its
    ``len()`` is the bytes received)."""

    async def feed(self, data: bytes) -> None: ...

    async def finish(self) -> Sized: ...

    def abort(self) -> None: ...


class ActiveRound(abc.ABC):
    """Common bookkeeping: members, the phase, who has answered."""

    phase_names: tuple[str, ...]

    def __init__(self, number: int, round_id: bytes, members: list[Member]) -> None:
        self.number = number
        self.round_id = round_id
        self.members = {m.name: m for m in members}
        self.by_index = {m.index: m for m in members}
        self.phase_index = 0
        self.expected: set[str] = set(self.members)
        self.answered: set[str] = set()
        self.metadata: dict[str, dict] = {}

    @property
    def phase_name(self) -> str:
        return self.phase_names[self.phase_index]

    # ------------------------------------------------------- how the round describes itself

    @abc.abstractmethod
    def phase_deadlines(self, deadlines: DeadlinesSection) -> tuple[float, ...]:
        """Seconds each phase waits for clients, one per phase name."""

    @abc.abstractmethod
    def describe(self, start: pb.RoundStart) -> None:
        """Write this round's public parameters into the RoundStart its members receive."""

    def round_start_for(self, name: str, common: pb.RoundStart) -> pb.RoundStart:
        """The RoundStart member ``name`` receives; by default the common one."""
        return common

    def result_audit(self) -> dict[str, dict]:
        """Audit records (kind -> record) about how the aggregate was formed; none by default."""
        return {}

    def pending_audit(self) -> list[tuple[str, dict]]:
        """Audit records (kind, record) gathered during the phase (e.g. exclusions); none."""
        return []

    @property
    def waiting_for(self) -> set[str]:
        return self.expected - self.answered

    def check_header(self, name: str, header: pb.UploadHeader) -> int:
        """Validate an upload header before any data is read; returns the byte limit."""
        if bytes(header.round_id) != self.round_id:
            raise UploadRefusedError(
                "FAILED_PRECONDITION", "the upload names another round (replayed or late)"
            )
        if name not in self.members:
            raise UploadRefusedError(
                "PERMISSION_DENIED", f"{name} is not a participant of this round"
            )
        if header.phase != self.phase_index:
            raise UploadRefusedError(
                "FAILED_PRECONDITION",
                f"the round is in phase {self.phase_name}, the upload is for phase {header.phase}",
            )
        if name not in self.expected:
            raise UploadRefusedError(
                "FAILED_PRECONDITION", f"{name} is not expected in phase {self.phase_name}"
            )
        if name in self.answered:
            raise UploadRefusedError(
                "ALREADY_EXISTS", f"{name} already submitted in phase {self.phase_name}"
            )
        limit = self.upload_limit(header)
        if header.total_bytes > limit:
            raise UploadRefusedError(
                "RESOURCE_EXHAUSTED",
                f"declared size {header.total_bytes} exceeds {limit} bytes "
                f"for phase {self.phase_name}",
            )
        if header.metadata_json:
            try:
                meta = json.loads(header.metadata_json)
            except ValueError:
                raise UploadRefusedError("INVALID_ARGUMENT", "metadata_json is not JSON") from None
            if not isinstance(meta, dict) or len(header.metadata_json) > 4096:
                raise UploadRefusedError(
                    "INVALID_ARGUMENT", "metadata_json must be a small JSON object"
                )
        return limit

    def accept(
        self, name: str, header: pb.UploadHeader, payload: bytes | bytearray | Sized
    ) -> None:
        self.check_header(name, header)
        if len(payload) != header.total_bytes:
            raise UploadRefusedError(
                "INVALID_ARGUMENT",
                f"received {len(payload)} bytes, header declared {header.total_bytes}",
            )
        self._accept(self.members[name], header, payload)
        if header.metadata_json:
            self.metadata[name] = json.loads(header.metadata_json)
        self.answered.add(name)

    def stream_sink(
        self, name: str, header: pb.UploadHeader, wake: Callable[[], None] | None = None
    ) -> UploadSink | None:
        """A sink taking this upload's bytes as they arrive (``feed``, ``finish``, ``abort``;
        appliance/scale/masked_round.py), asked after :meth:`check_header` passed; None (the
        default): the upload is received whole, then accepted. ``wake`` (on the event loop)
        has the orchestrator look again whether the phase is done, e.g. after a refusal
        that leaves nobody to wait for."""
        return None

    @abc.abstractmethod
    def upload_limit(self, header: pb.UploadHeader) -> int:
        """Largest upload the current phase accepts."""

    @abc.abstractmethod
    def _accept(self, member: Member, header: pb.UploadHeader, payload: bytes) -> None:
        """Take one validated upload (raise UploadRefusedError to refuse it)."""

    @abc.abstractmethod
    def close_phase(self) -> dict[str, pb.Task]:
        """End the phase; the next task for each client still in the round (empty at the end)."""

    @property
    @abc.abstractmethod
    def finished(self) -> bool:
        """True once the aggregate is available."""

    @abc.abstractmethod
    def aggregate(self) -> Aggregate:
        """The result of a finished round."""


class MaskedRound(ActiveRound):
    """SecAgg / SecAgg+: the appliance sees only the sum over survivors."""

    phase_names = tuple(p.name.lower() for p in Phase)

    def __init__(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        config: RoundConfig,
        spec: QuantizationSpec,
        decoder: Callable[[np.ndarray], tuple[np.ndarray, float, dict]] | None = None,
    ) -> None:
        super().__init__(number, round_id, members)
        self.config = config
        self.spec = spec
        self.decoder = decoder  # DP rounds: (mean, count, extras) from the ring sum
        self.server = SecAggServer(config)
        self._done = False
        self._blames_seen = 0
        self._audit: list[tuple[str, dict]] = []

    def phase_deadlines(self, deadlines: DeadlinesSection) -> tuple[float, ...]:
        return (
            deadlines.advertise_keys,
            deadlines.share_keys,  # revealing the graph coins: as quick as sharing keys
            deadlines.share_keys,
            deadlines.masked_input,
            deadlines.consistency_check,
            deadlines.unmasking,
        )

    def describe(self, start: pb.RoundStart) -> None:
        """Vector length, threshold, degree (0: complete) and minimum survivors of the config."""
        config = self.config
        start.vector_length = config.vector_length
        start.threshold = config.threshold
        start.degree = 0 if config.is_complete else config.degree
        start.minimum_survivors = config.minimum_survivors

    def upload_limit(self, header: pb.UploadHeader) -> int:
        if header.kind != "protocol":
            raise UploadRefusedError(
                "INVALID_ARGUMENT", f"masked rounds take protocol messages, not {header.kind!r}"
            )
        if self.phase_index == Phase.MASKED_INPUT:
            blames = len(self.members) * MAX_BLAME_BYTES  # evidence against bad share senders
            return 4 * self.config.vector_length + _MSGPACK_OVERHEAD + blames
        return SMALL_MESSAGE_BYTES

    def stream_sink(
        self, name: str, header: pb.UploadHeader, wake: Callable[[], None] | None = None
    ) -> UploadSink | None:
        """A sink adding a masked input without blames into the running sum as it arrives
        (appliance/masked_stream.py); None otherwise (the whole-payload path). The rule is
        :class:`~appliance.scale.masked_round.StripedMaskedRound`'s: the header's size is
        exactly the prefix plus the vector, which only a message without blames has."""
        from sealagg.appliance.masked_stream import MaskedInputSink  # it imports this module

        vector_bytes = 4 * self.config.vector_length
        if (
            self.phase_index != Phase.MASKED_INPUT
            or not self.server.streams_masked_inputs
            or name not in self.members
            or header.total_bytes
            != len(masked_input_prefix(self.config.round_id, vector_bytes)) + vector_bytes
        ):
            return None
        return MaskedInputSink(self, self.members[name], wake)

    def _accept(self, member: Member, header: pb.UploadHeader, payload: bytes) -> None:
        from sealagg.appliance.masked_stream import StreamedMaskedInput

        try:
            if isinstance(payload, StreamedMaskedInput):  # every word is in the sum already
                if payload.sink.round is not self or payload.sink.member is not member:
                    raise UploadRefusedError("FAILED_PRECONDITION", "a stream of another upload")
                self.server.finish_masked_input(member.index, {})
            else:
                self.server.receive(member.index, self._parse(header, payload))
        except SecAggError as error:
            raise UploadRefusedError(_status_for(error), f"{error.reason.value}: {error}") from None
        self._note_blames()

    def _parse(self, header: pb.UploadHeader, payload: bytes) -> Message:
        """The protocol message of this phase (a masked input's vector is a view into
        ``payload``, not a copy); SecAggError when malformed, refused for another phase.

        A masked input must name the transcript's round id (``config.round_id``): the same
        as ``round_id`` except in a grouped round's group, whose transport (upload headers,
        steps) names the whole round and whose transcript names the group
        (appliance/grouped_round.py)."""
        message = (
            masked_input_view(payload, self.config.round_id, 4 * self.config.vector_length)
            if self.phase_index == Phase.MASKED_INPUT
            else None
        ) or decode(payload, max_bytes=self.upload_limit(header))
        if self.phase_index != message.PHASE:
            raise UploadRefusedError(
                "FAILED_PRECONDITION", f"{message.TYPE} does not belong to phase {self.phase_name}"
            )
        return message

    def _note_blames(self) -> None:
        """Report each new proven misbehaviour; its client is excluded (no upload awaited).

        Every blame the server records is proven (the evidence is signed by the accused
        or checked against what it signed, :class:`~sealagg.crypto.server.BlameRecord`);
        a blame that does not hold up refuses the blamer's message instead. The
        orchestrator makes each ``client_excluded`` durable: the client stays out of
        later rounds until an operator readmits it.
        """
        for blame in self.server.blames[self._blames_seen :]:
            accused, accuser = self.by_index[blame.accused].name, self.by_index[blame.accuser].name
            record = {"round": self.number, "client": accused, "blamed_by": accuser}
            self._audit.append(("client_excluded", {**record, "reason": blame.reason}))
            self.expected.discard(accused)
        self._blames_seen = len(self.server.blames)

    def pending_audit(self) -> list[tuple[str, dict]]:
        """Audit records gathered while the phase ran (blames), handed over once."""
        out, self._audit = self._audit, []
        return out

    def close_phase(self) -> dict[str, pb.Task]:
        out = self.server.close_phase()  # raises SecAggError (e.g. below threshold): round aborts
        if self.server.phase is None:
            self._done = True
            return {}
        self.phase_index = int(self.server.phase)
        self.expected = {self.by_index[i].name for i in out}
        self.answered = set()
        return {self.by_index[i].name: self._step(m) for i, m in out.items()}

    def _step(self, message: Message) -> pb.Task:
        return pb.Task(
            step=pb.ProtocolStep(
                round_id=self.round_id, phase=self.phase_index, payload=message.encode()
            )
        )

    @property
    def finished(self) -> bool:
        return self._done

    def aggregate(self) -> Aggregate:
        result = self.server.result
        if self.decoder is not None:
            return self._decoded(result.total, result.survivors)
        mean, total_weight = decode_sum(result.total, self.spec)
        check_in_range(mean, total_weight, self.spec, len(result.survivors))
        return self._result(mean, total_weight, result.survivors)

    def _decoded(self, total: np.ndarray, survivors: Sequence[int]) -> Aggregate:
        """A DP round's aggregate: the plan's decoder on the unmasked ring sum (post-processing
        of what the protocol reveals anyway); striped rounds decode their assembled sum here."""
        assert self.decoder is not None
        mean, total_weight, extras = self.decoder(total)
        return self._result(mean, total_weight, survivors, extras)

    def _result(
        self,
        mean: np.ndarray,
        total_weight: float,
        survivors: Sequence[int],
        extras: dict | None = None,
    ) -> Aggregate:
        contributors = tuple(self.by_index[i].name for i in survivors)
        dropped = tuple(sorted(set(self.members) - set(contributors)))
        return Aggregate(mean.astype(np.float32), total_weight, contributors, dropped, extras or {})

    def total_digest_source(self) -> bytes:
        return self.server.result.total.tobytes()


class LockstepRound(ActiveRound):
    """One round made of several :class:`MaskedRound` parts (a robust rule's buckets,
    appliance/robust.py; a large round's groups, appliance/grouped_round.py), each member in
    exactly one, re-indexed 1..g there. Uploads go to the sender's part (by its certificate
    name); the parts close in lockstep. Subclasses close the parts and decide what a part's
    failure means (:meth:`close_phase`), then call :meth:`_advance`."""

    phase_names = MaskedRound.phase_names

    def __init__(
        self, number: int, round_id: bytes, members: list[Member], parts: Sequence[MaskedRound]
    ) -> None:
        super().__init__(number, round_id, members)
        self.parts = list(parts)
        self.part_of = {name: i for i, part in enumerate(self.parts) for name in part.members}
        self._done = False

    def phase_deadlines(self, deadlines: DeadlinesSection) -> tuple[float, ...]:
        return self.parts[0].phase_deadlines(deadlines)  # the parts move in lockstep

    def part_round_start(self, name: str, common: pb.RoundStart, max_clients: int) -> pb.RoundStart:
        """``name``'s RoundStart: only its part's members, re-indexed, with the part's
        parameters (threshold, degree, quorum: what the member checks) and ``max_clients``."""
        part = self.parts[self.part_of[name]]
        start = pb.RoundStart()
        start.CopyFrom(common)
        del start.participants[:]
        start.participants.extend(
            pb.Participant(index=m.index, name=m.name, identity_key=m.identity_key)
            for m in sorted(part.members.values(), key=lambda m: m.index)
        )
        start.client_index = part.members[name].index
        part.describe(start)
        start.max_clients = max_clients
        return start

    def pending_audit(self) -> list[tuple[str, dict]]:
        """Every part's records (e.g. a client excluded on a proven blame), handed over once."""
        return [record for part in self.parts for record in part.pending_audit()]

    def check_header(self, name: str, header: pb.UploadHeader) -> int:
        """The sender's part judges the header: its phase is the one that counts."""
        if name not in self.part_of:
            return super().check_header(name, header)  # refused: not a participant
        return self.parts[self.part_of[name]].check_header(name, header)

    def accept(
        self, name: str, header: pb.UploadHeader, payload: bytes | bytearray | Sized
    ) -> None:
        self.check_header(name, header)
        part = self.parts[self.part_of[name]]
        part.accept(name, header, payload)
        if header.metadata_json:
            self.metadata[name] = part.metadata[name]
        self.answered.add(name)

    def _accept(self, member: Member, header: pb.UploadHeader, payload: bytes) -> None:
        raise AssertionError("LockstepRound.accept dispatches to the parts")  # pragma: no cover

    @property
    def accept_off_loop(self) -> bool:
        """[scale] parts forward uploads with blocking Ray calls: accepted off the loop."""
        return any(getattr(part, "accept_off_loop", False) for part in self.parts)

    def stream_sink(
        self, name: str, header: pb.UploadHeader, wake: Callable[[], None] | None = None
    ) -> UploadSink | None:
        """The sender's part's sink (a masked input without blames, streamed into that part's
        running sum, or to the stripes with [scale]); None for anyone the round does not
        expect now."""
        if name not in self.part_of or name not in self.expected:
            return None
        return self.parts[self.part_of[name]].stream_sink(name, header, wake)

    def _advance(self, running: list[MaskedRound], tasks: dict[str, pb.Task]) -> dict[str, pb.Task]:
        """After the parts closed their phase: done when none is ``running``; else the round
        waits for the furthest phase still running (later phases wait longer) and everyone
        the running parts expect."""
        self._done = not running
        self.phase_index = max((part.phase_index for part in running), default=0)
        self.expected = set().union(*(part.expected for part in running))
        self.answered = set()
        return {} if self._done else tasks

    @property
    def finished(self) -> bool:
        return self._done


class WeightedSum:
    """A float64 running sum of weighted float32 updates, added in place: O(d) memory however
    many clients contribute. Plaintext and attested rounds and asynchronous buffers
    (appliance/async_buffer.py) share it, so they check and add updates identically."""

    def __init__(self, dimension: int) -> None:
        self.dimension = dimension
        self.weighted_sum = np.zeros(dimension, dtype=np.float64)
        self.total_weight = 0.0

    def check(self, payload: bytes | bytearray, weight: float) -> np.ndarray:
        """The update as float32 values; UploadRefusedError for a wrong size, a weight
        outside (0, 1] or a value that is NaN or Inf (nothing is added)."""
        if len(payload) != 4 * self.dimension:
            raise UploadRefusedError(
                "INVALID_ARGUMENT",
                f"update has {len(payload) // 4} float32 values, the model has {self.dimension}",
            )
        if not (np.isfinite(weight) and 0.0 < weight <= 1.0):
            raise UploadRefusedError("INVALID_ARGUMENT", f"weight must lie in (0, 1], got {weight}")
        update = np.frombuffer(payload, dtype="<f4")
        if not np.isfinite(update).all():
            raise UploadRefusedError("INVALID_ARGUMENT", "update contains NaN or Inf; refused")
        return update

    def add(self, update: np.ndarray, weight: float) -> None:
        """Add a checked update with its weight (in place)."""
        self.weighted_sum += weight * update.astype(np.float64)
        self.total_weight += weight

    def mean(self) -> np.ndarray:
        return (self.weighted_sum / self.total_weight).astype(np.float32)


class PlainRound(ActiveRound):
    """Plaintext FedAvg: the appliance sees every update (trusted sites, testing)."""

    phase_names = ("update",)

    def __init__(self, number: int, round_id: bytes, members: list[Member], dimension: int) -> None:
        super().__init__(number, round_id, members)
        self.dimension = dimension
        self.sum = WeightedSum(dimension)
        self._done = False

    def phase_deadlines(self, deadlines: DeadlinesSection) -> tuple[float, ...]:
        return (deadlines.advertise_keys,)  # one phase: local training and the upload

    def describe(self, start: pb.RoundStart) -> None:
        start.vector_length = self.dimension

    def upload_limit(self, header: pb.UploadHeader) -> int:
        if header.kind != "plaintext_update":
            raise UploadRefusedError(
                "INVALID_ARGUMENT", f"plaintext rounds take updates, not {header.kind!r}"
            )
        return 4 * self.dimension

    def _accept(self, member: Member, header: pb.UploadHeader, payload: bytes) -> None:
        self.sum.add(self.sum.check(payload, header.weight), header.weight)

    @property
    def weighted_sum(self) -> np.ndarray:
        return self.sum.weighted_sum

    @property
    def total_weight(self) -> float:
        return self.sum.total_weight

    def close_phase(self) -> dict[str, pb.Task]:
        if not self.answered:
            raise UploadRefusedError("ABORTED", "no client submitted an update before the deadline")
        self._done = True
        return {}

    @property
    def finished(self) -> bool:
        return self._done

    def aggregate(self) -> Aggregate:
        contributors = tuple(sorted(self.answered))
        dropped = tuple(sorted(set(self.members) - self.answered))
        return Aggregate(self.sum.mean(), self.total_weight, contributors, dropped)

    def total_digest_source(self) -> bytes:
        return self.weighted_sum.tobytes()


def check_in_range(
    mean: np.ndarray, total_weight: float, spec: QuantizationSpec, survivors: int
) -> None:
    """Refuse a sum no set of honest clients can produce (ValueError: the round aborts).

    Honest inputs are clipped to [-clip, clip] with weights in (0, 1], so their weighted mean
    lies in [-clip, clip] (plus the quantization error) and the total weight in (0, survivors].
    A client that put values outside the quantization range inside its mask breaks one of
    these; a smaller in-range shift cannot be told apart without range proofs.
    """
    slack = spec.error_bound(survivors)  # rounding error of the weighted sum
    weight_slack = survivors / spec.weight_scale  # rounding error of the total weight
    if not 0.0 < total_weight <= survivors + weight_slack:
        raise ValueError(
            f"aggregated weight {total_weight:.6g} is outside (0, {survivors}]: a client sent "
            "values outside the quantization range"
        )
    limit = spec.clip + (weight_slack * spec.clip + slack) / total_weight
    worst = float(np.max(np.abs(mean))) if mean.size else 0.0
    if not np.isfinite(worst) or worst > limit:
        raise ValueError(
            f"aggregated mean reaches {worst:.6g}, outside the clipping range ±{spec.clip:g}: "
            "a client sent values outside the quantization range"
        )


def _status_for(error: SecAggError) -> str:
    from sealagg.crypto.errors import AbortReason as R

    return {
        R.OUT_OF_PHASE: "FAILED_PRECONDITION",
        R.REPLAYED_MESSAGE: "FAILED_PRECONDITION",
        R.DUPLICATE_MESSAGE: "ALREADY_EXISTS",
        R.UNKNOWN_SENDER: "PERMISSION_DENIED",
        R.BAD_SIGNATURE: "UNAUTHENTICATED",
    }.get(error.reason, "INVALID_ARGUMENT")
