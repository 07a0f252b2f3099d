"""One buffer of an asynchronous run (issue 21): K staleness-weighted updates, summed in place.

A buffer is what a synchronous round is to the publish path: it has a round number and id
(a ``rounds`` row of its run), gathers updates until K distinct clients contributed, and then
yields an :class:`~appliance.rounds.Aggregate` that the orchestrator publishes exactly as a
round's (optimizer, quality gate, vendor gate, approvals, audit, model version). Memory is
one float64 vector of the model's dimension (:class:`~appliance.rounds.WeightedSum`), never
one per update.

Each update counts with ``w * s(tau)``: ``w`` the client's own weight in (0, 1], ``s`` the run's
staleness function (:mod:`crypto.staleness`), ``tau`` the versions published since the
update's base version, fixed when the update is accepted. The buffer's audit record lists,
per member, its base version, ``tau`` and ``s(tau)``: in an asynchronous run the appliance
learns (and records) which base versions contributed to each published version, which a
synchronous round (every member on the one current version) does not reveal.

In masked modes (secagg, secagg+) a buffer is one secure-aggregation round over the first K
clients that *register* for it (:class:`MaskedBuffer`: names and base versions, no vector):
each member's base version enters the round's transcript and the member's signed
advertisement (:mod:`crypto.buffer_context`), every member folds ``w * s(tau)`` into its own
masked vector, and :class:`BufferRound` (a :class:`~appliance.rounds.MaskedRound`) audits
which base versions the unmasked sum covers. The appliance cannot check inside a masked
vector that a member applied ``s(tau)``: a malicious client can skip it, exactly as it can
misstate its own weight ``w``.
"""

from __future__ import annotations

import dataclasses
import json

from sealagg.appliance.rounds import Aggregate, MaskedRound, UploadRefusedError, WeightedSum
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto.buffer_context import BufferContext
from sealagg.crypto.staleness import StalenessPolicy

__all__ = [
    "AsyncBuffer",
    "BufferPlan",
    "BufferRound",
    "Contribution",
    "Lease",
    "MaskedBuffer",
    "Registration",
]


@dataclasses.dataclass(frozen=True)
class Lease:
    """A task the appliance handed one client: train on ``version``, submit under ``lease_id``.

    The lease binds the base version to the client that downloaded it: a submission names its
    lease, and the appliance takes the base version from the lease, never from the client's
    word alone, so no client can claim a fresher base (a higher weight) than it trained on.
    """

    lease_id: bytes
    client: str
    version: int
    issued_at: float


@dataclasses.dataclass(frozen=True)
class Contribution:
    """One accepted update's bookkeeping (no update values)."""

    client: str
    base_version: int
    staleness: int
    staleness_weight: float
    client_weight: float

    @property
    def weight(self) -> float:
        return self.client_weight * self.staleness_weight


class AsyncBuffer:
    """The updates of one published version of an asynchronous run."""

    def __init__(
        self, *, number: int, round_id: bytes, run_id: str, index: int, size: int, dimension: int
    ) -> None:
        self.number = number  # its round's number (``rounds`` row)
        self.round_id = round_id
        self.run_id = run_id
        self.index = index  # 1-based buffer index within the run
        self.size = size  # K
        self.sum = WeightedSum(dimension)
        self.members: dict[str, Contribution] = {}
        self.metadata: dict[str, dict] = {}  # what clients declared (example counts): audited
        self.publishing = False

    @property
    def full(self) -> bool:
        return len(self.members) >= self.size

    def add(
        self, client: str, update_bytes: bytes | bytearray, contribution: Contribution, meta: str
    ) -> None:
        """Add one update in place with weight ``client_weight * s(tau)``; refuses a second
        update of the same client, an update to a full buffer, and malformed updates."""
        if client in self.members:
            raise UploadRefusedError(
                "ALREADY_EXISTS",
                f"{client} already contributed to buffer {self.index} of run {self.run_id}: one "
                "update per client per buffer (wait for the next model version)",
            )
        if self.full or self.publishing:
            raise UploadRefusedError(
                "FAILED_PRECONDITION", f"buffer {self.index} of run {self.run_id} is full"
            )
        update = self.sum.check(update_bytes, contribution.client_weight)
        self.sum.add(update, contribution.weight)
        self.members[client] = contribution
        if meta:
            self.metadata[client] = json.loads(meta)

    def aggregate(self) -> Aggregate:
        contributors = tuple(sorted(self.members))
        return Aggregate(self.sum.mean(), self.sum.total_weight, contributors, ())

    def total_digest_source(self) -> bytes:
        return self.sum.weighted_sum.tobytes()

    def result_audit(self) -> dict[str, dict]:
        """Who contributed from which base version, with which staleness weight."""
        return {
            "async_buffer": {
                "round": self.number,
                "run": self.run_id,
                "buffer": self.index,
                "buffer_size": self.size,
                "members": {
                    name: {
                        "base_version": c.base_version,
                        "staleness": c.staleness,
                        "staleness_weight": round(c.staleness_weight, 12),
                        "client_weight": round(c.client_weight, 12),
                    }
                    for name, c in sorted(self.members.items())
                },
            }
        }


@dataclasses.dataclass(frozen=True)
class Registration:
    """A client whose update is ready on ``base_version`` (its lease's), waiting for its
    buffer's secure-aggregation round. No update byte reaches the appliance here."""

    client: str
    base_version: int
    staleness: int  # at registration (the round fixes the final one from its parent)


class MaskedBuffer:
    """A masked run's buffer: the first K registrations, then one secure-aggregation round
    among exactly them (:meth:`appliance.orchestrator.Orchestrator.run_buffer_round`)."""

    def __init__(self, *, number: int, round_id: bytes, run_id: str, index: int, size: int) -> None:
        self.number = number
        self.round_id = round_id  # the id its secure-aggregation round will carry
        self.run_id = run_id
        self.index = index
        self.size = size
        self.members: dict[str, Registration] = {}
        self.publishing = False

    @property
    def full(self) -> bool:
        return len(self.members) >= self.size

    def register(self, registration: Registration) -> None:
        """One registration per client per buffer; none into a full buffer."""
        client = registration.client
        if client in self.members:
            raise UploadRefusedError(
                "ALREADY_EXISTS",
                f"{client} already registered for buffer {self.index} of run {self.run_id}: one "
                "update per client per buffer (wait for the next model version)",
            )
        if self.full or self.publishing:
            raise UploadRefusedError(
                "FAILED_PRECONDITION", f"buffer {self.index} of run {self.run_id} is full"
            )
        self.members[client] = registration


@dataclasses.dataclass(frozen=True)
class BufferPlan:
    """What the orchestrator needs to run one masked buffer's round (its ``rounds`` row is
    already open and counted): members with their base versions, and the run's schedule."""

    number: int
    round_id: bytes
    run_id: str
    index: int
    size: int
    bases: dict[str, int]  # member -> the version it trained on (its lease's)
    policy: StalenessPolicy
    params: pb.AsyncParams

    def context(self, parent: int, indices: dict[str, int]) -> BufferContext:
        """The round's public context; refuses a member past the maximum staleness."""
        bases = {indices[name]: base for name, base in self.bases.items()}
        return BufferContext(parent, bases, self.policy)


class BufferRound(MaskedRound):
    """One masked buffer's secure-aggregation round: a masked round whose transcript carries
    the buffer's context, and whose audit says which base versions the published sum covers
    (what an asynchronous run reveals beyond a synchronous round)."""

    buffer_index = 0
    run_id = ""
    size = 0

    def result_audit(self) -> dict[str, dict]:
        context = self.config.buffer
        assert context is not None
        survivors = self.server.result.survivors
        return {
            "async_buffer": {
                "round": self.number,
                "run": self.run_id,
                "buffer": self.buffer_index,
                "buffer_size": self.size,
                "parent_version": context.parent_version,
                "masked": True,
                "members": {
                    self.by_index[u].name: _masked_member(context, u) for u in sorted(survivors)
                },
            }
        }


def _masked_member(context: BufferContext, index: int) -> dict:
    """A survivor's base version, staleness and the ``s(tau)`` it was to fold in (signed in
    its advertisement; whether it did is inside its masked vector, unseen)."""
    return {
        "base_version": context.base_versions[index],
        "staleness": context.staleness_of(index),
        "staleness_weight": round(context.weight_of(index), 12),
        "client_weight": "inside the masked vector",
    }
