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

A future masked buffer is one secure-aggregation instance over the first K clients that
register for it; this class is then its plaintext/attested sibling, with the same
``number``/``round_id``/``aggregate`` surface.
"""

from __future__ import annotations

import dataclasses
import json

from sealagg.appliance.rounds import Aggregate, UploadRefusedError, WeightedSum

__all__ = ["AsyncBuffer", "Contribution", "Lease"]


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
