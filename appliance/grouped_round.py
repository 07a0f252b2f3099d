"""Grouped secure rounds in ``sealagg serve`` (issue 22, "many clients per round").

With ``[aggregation] max_group_size`` set and more members than it, a secagg/secagg+ round
with ``rule = mean`` is split by the public rule :func:`sealagg.crypto.groups.plan_groups`
(keyed by the round id, fixed before any key of the round exists) into groups of at least
``max(m, 3)``. Each group is its own secure-aggregation instance (a
:class:`~sealagg.appliance.rounds.MaskedRound`: its own round id ``plan.round_id_of(i)``
in its transcript and every signature, its own key directory, Shamir shares, survivor list
and consistency check), its members re-indexed 1..g like
:class:`~sealagg.appliance.robust.BucketedRound`'s buckets (both are a
:class:`~sealagg.appliance.rounds.LockstepRound`), its threshold and quorum chosen and
checked against the governing policy per group (all ``c`` colluders assumed in that group:
the check every member runs). :class:`GroupedRound` moves the
groups in lockstep, in one process or on Ray stripes (below).

What the server sees: **every group's sum** (each over at least ``m`` clients, which is
every client's condition), not only the total; the security argument is in
:mod:`sealagg.crypto.groups`. Every member checks its group before sending anything
(:mod:`sealagg.client_shim.grouping`): the whole round's members (on the signed roster),
the public split, its group's round id and ``m``.

Adding: the group sums are added in Z_(2^32) before one decode, so every member encodes
with the whole round's ``n`` as quantisation headroom (``RoundStart.max_clients``); the
modular sum of the group sums is then exactly the ring sum one round over the same
survivors would unmask, and one :func:`~sealagg.crypto.decode_sum` gives that round's mean
bit for bit (:mod:`sealagg.appliance.scale.groups` says why decoding per group would not).

Any group failing (below its quorum, a protocol abort) aborts **the whole round**: nothing
is published. Publishing the other groups' total would let a server that can silence one
group choose after the fact whose updates the model is made of
(:mod:`sealagg.appliance.scale.groups`, the same rule on Ray).

Transport: uploads, protocol steps, RoundEnd, refusals and heartbeats keep naming the
round's id (``RoundStart.round_id``), so the orchestrator's bookkeeping (purging a dead
round's tasks, refusals, presence) is that of any round; the group's id is the one in its
transcript (``RoundStart.grouping.group_round_id``, derived and checked by every member).
A client without the check (an older shim) signs under the round's id, so its group refuses
its messages ("belongs to another round"): it drops out, it never runs unchecked.

With ``[scale]`` (:func:`striped_groups`) every group is a striped round on the same Ray
stripes, which hold all the groups of the round side by side, each under its own round id
(appliance/scale/stripe.py), so the groups still move in lockstep; a stripe lost in any
group aborts the whole round like any other group failure.

Not combined (refused at config load): DP (a group's sum would carry only its members'
noise shares, less than the noise the round promises for what is revealed) and robust rules
(they bucket already); asynchronous buffers larger than ``max_group_size`` are refused when
built.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from typing import Any

import numpy as np

from sealagg.appliance.rounds import (
    Aggregate,
    LockstepRound,
    MaskedRound,
    Member,
    UploadRefusedError,
    check_in_range,
)
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto import QuantizationSpec, RoundConfig, decode_sum
from sealagg.crypto.config import check_round_parameters, default_minimum_survivors
from sealagg.crypto.errors import SecAggError
from sealagg.crypto.groups import GroupPlan, plan_groups
from sealagg.crypto.params import choose_graph
from sealagg.crypto.policy import FederationPolicy, check_round_against_policy
from sealagg.crypto.rules import require_masking_parties

__all__ = ["GroupedRound", "build_grouped_round", "needs_groups"]


def needs_groups(max_group_size: int, members: int) -> bool:
    """Whether a round of ``members`` is split: a size is set and the round exceeds it."""
    return max_group_size > 0 and members > max_group_size


class GroupedRound(LockstepRound):
    """Independent secure groups of one round, closed in lockstep; their sums are added in
    Z_(2^32) and decoded once. Any group failing aborts the round (module doc)."""

    def __init__(
        self,
        number: int,
        round_id: bytes,
        members: list[Member],
        plan: GroupPlan,
        groups: Sequence[MaskedRound],
        spec: QuantizationSpec,
    ) -> None:
        super().__init__(number, round_id, members, groups)
        if len(groups) != len(plan.groups):
            raise ValueError("one masked round per group of the plan")
        self.plan, self.spec = plan, spec
        self.groups, self.group_of = self.parts, self.part_of
        self._total: np.ndarray | None = None
        self._report: dict = {}

    # ------------------------------------------------------------- what members receive

    def describe(self, start: pb.RoundStart) -> None:
        """Common parameters; the group's own ones are written per member."""
        start.vector_length = self.groups[0].config.vector_length
        start.max_clients = len(self.members)  # headroom for the sum over the whole round

    def grouping(self, index: int) -> pb.Grouping:
        """The public split as group ``index``'s members receive it (they recompute it)."""
        return pb.Grouping(
            round_id=self.round_id,
            members=[
                pb.Participant(index=m.index, name=m.name, identity_key=m.identity_key)
                for m in sorted(self.members.values(), key=lambda m: m.index)
            ],
            max_group_size=self.plan.max_group_size,
            minimum_sum=self.plan.minimum_sum,
            group_index=index,
            group_round_id=self.groups[index].config.round_id,
        )

    def round_start_for(self, name: str, common: pb.RoundStart) -> pb.RoundStart:
        """This member's RoundStart: its group re-indexed 1..g with the group's threshold,
        degree and quorum, the whole round's n as headroom, and the split to check."""
        start = self.part_round_start(name, common, len(self.members))
        start.grouping.CopyFrom(self.grouping(self.group_of[name]))
        return start

    # ------------------------------------------------------------------------ uploads

    def upload_limit(self, header: pb.UploadHeader) -> int:
        return self.groups[0].upload_limit(header)

    def check_header(self, name: str, header: pb.UploadHeader) -> int:
        """The sender's group judges the header (its phase is the one that counts); a member
        the round no longer expects (it refused) is refused here too."""
        if (
            name in self.group_of
            and bytes(header.round_id) == self.round_id
            and name not in self.expected
        ):
            raise UploadRefusedError(
                "FAILED_PRECONDITION", f"{name} is not expected in phase {self.phase_name}"
            )
        return super().check_header(name, header)

    def accept(self, name: str, header: pb.UploadHeader, payload: bytes | Sized) -> None:
        super().accept(name, header, payload)
        group = self.groups[self.group_of[name]]
        # A proven blame excludes its client from its group: no phase waits for it.
        self.expected -= set(group.members) - group.expected

    @property
    def waiting_for(self) -> set[str]:
        """Nobody once a group lost a stripe: the round cannot finish, the phase closes now."""
        if any(getattr(group, "lost", None) for group in self.groups):
            return set()
        return self.expected - self.answered

    # ------------------------------------------------------------------------- phases

    def close_phase(self) -> dict[str, pb.Task]:
        """Close every group's phase; one group failing aborts the round (raised with the
        group named). A group whose graph is complete skips the coin reveal, so it may run
        one phase ahead and finish one close earlier; it then waits for the others."""
        tasks: dict[str, pb.Task] = {}
        for i, group in enumerate(self.groups):
            if group.finished:
                continue
            try:
                tasks.update(group.close_phase())
            except SecAggError as error:
                raise _whole_round_aborted(i, group, error) from error
            except UploadRefusedError as error:  # [scale]: a stripe of this group was lost
                raise UploadRefusedError(
                    "ABORTED", f"{_group_text(i, group)} aborted: {error.detail}; so {_WHOLE}"
                ) from error
        return self._advance([group for group in self.groups if not group.finished], tasks)

    def aggregate(self) -> Aggregate:
        """The modular sum of the group sums, decoded once (bit for bit one round's decode
        over the same survivors), refused when no honest inputs can produce it."""
        total = np.zeros(self.groups[0].config.vector_length, dtype=np.uint32)
        survivors: list[str] = []
        per_group = []
        for i, group in enumerate(self.groups):
            group_total, group_survivors = _unmasked(group)
            total += group_total  # wraps: Z_(2^32)
            names = [group.by_index[u].name for u in group_survivors]
            survivors += names
            per_group.append(
                {
                    "index": i,
                    "round_id": group.config.round_id.hex(),
                    "size": len(group.members),
                    "survivors": sorted(names, key=self._whole_index),
                    "dropped": sorted(set(group.members) - set(names), key=self._whole_index),
                }
            )
        self._total = total
        mean, total_weight = decode_sum(total, self.spec)
        check_in_range(mean, total_weight, self.spec, len(survivors))
        contributors = tuple(sorted(survivors, key=self._whole_index))
        dropped = tuple(sorted(set(self.members) - set(contributors), key=self._whole_index))
        self._report = {"round": self.number, "groups": per_group}
        return Aggregate(mean.astype(np.float32), total_weight, contributors, dropped)

    def _whole_index(self, name: str) -> int:
        return self.members[name].index

    def result_audit(self) -> dict[str, dict]:
        """Each group's round id, size, survivors and dropped members."""
        return {"grouped_round_survivors": self._report} if self._report else {}

    def total_digest_source(self) -> bytes:
        return b"" if self._total is None else self._total.tobytes()


_WHOLE = "the whole round is aborted and nothing is published"


def _group_text(index: int, group: MaskedRound) -> str:
    return f"group {index} ({len(group.members)} clients)"


def _unmasked(group: MaskedRound) -> tuple[np.ndarray, tuple[int, ...]]:
    """A finished group's unmasked ring sum and survivors (one process, or [scale]: the
    sum its stripes' ranges assembled)."""
    striped = getattr(group, "striped", None)
    if striped is None:
        result = group.server.result
        return np.asarray(result.total, dtype=np.uint32), tuple(result.survivors)
    if striped.outcome is None:
        raise ValueError(getattr(group, "lost", None) or "a group's striped round did not finish")
    return np.asarray(striped.outcome.total, dtype=np.uint32), tuple(striped.outcome.survivors)


def _whole_round_aborted(index: int, group: MaskedRound, error: SecAggError) -> SecAggError:
    """The group's error, of the same kind (the orchestrator reacts to some kinds, e.g. a
    withheld coin), saying that the whole round is aborted because of it."""
    text = f"{_group_text(index, group)} aborted: {error}; {_WHOLE}"
    try:
        return type(error)(text)
    except TypeError:  # a kind with another constructor: the reason is what counts
        plain = SecAggError(text)
        plain.reason = error.reason
        return plain


#: Makes one group's masked round: (number, round id, the group's members re-indexed, the
#: group's config, the whole round's spec, the round ids of the groups made before it).
GroupFactory = Callable[
    [int, bytes, list[Member], RoundConfig, QuantizationSpec, list[bytes]], MaskedRound
]


def one_process_group(
    number: int,
    round_id: bytes,
    members: list[Member],
    config: RoundConfig,
    spec: QuantizationSpec,
    alongside: list[bytes],
) -> MaskedRound:
    """A group summed in this process (the default): ``round_id`` (transport: upload headers,
    steps) is the whole round's, ``config.round_id`` (transcript, signatures, messages) the
    group's."""
    return MaskedRound(number, round_id, members, config, spec)


def striped_groups(runtime: Any) -> GroupFactory:
    """``[scale]``: every group a :class:`~sealagg.appliance.scale.masked_round.StripedMaskedRound`
    on the same stripes, which hold all the groups side by side (keyed by each group's round
    id: appliance/scale/stripe.py), so the groups move in lockstep as in one process. The
    first group is made by the runtime (it checks its stripes and replaces lost ones; the
    stripes forget every earlier round); the others begin ``alongside`` the groups before
    (:meth:`~sealagg.appliance.scale.runtime.ScaleRuntime.round_for`). Each stripe then
    holds one accumulator of its range per group."""
    return runtime.round_for


def build_grouped_round(
    *,
    number: int,
    round_id: bytes,
    members: list[Member],
    mode: str,
    vector_length: int,
    clip: float,
    max_group_size: int,
    policy: FederationPolicy,
    dropout_rate: float,
    corrupt_fraction: float,
    roster_version: int = 0,
    make_group: GroupFactory = one_process_group,
) -> tuple[GroupedRound, dict]:
    """The grouped round and its audit record (``grouped_round``: the split, each group's
    size, round id and parameters). Raises ``GroupingRefusedError`` /
    ``InfeasibleParametersError`` when no split or no group's parameters meet ``policy``
    (the round is then aborted before anything is sent)."""
    c, m = policy.colluders, policy.minimum_sum
    plan = plan_groups(round_id, [u.index for u in members], max_group_size, m)
    by_index = {u.index: u for u in members}
    spec = QuantizationSpec(clip=clip, max_clients=len(members))  # the whole round's n
    made, params = [], []
    for i, indices in enumerate(plan.groups):
        local = [
            Member(j + 1, by_index[u].name, by_index[u].identity_key) for j, u in enumerate(indices)
        ]
        g = len(local)
        require_masking_parties(g, f"group {i} of a {mode} round")
        degree, threshold, note = choose_graph(
            g, mode, dropout_rate, corrupt_fraction, colluders=c, minimum_sum=m
        )
        config = RoundConfig.create(
            round_id=plan.round_id_of(i),
            identities={x.index: x.identity_key for x in local},
            threshold=threshold,
            vector_length=vector_length,
            degree=degree,
            minimum_survivors=max(default_minimum_survivors(g, threshold, c), m),
            roster_version=roster_version,
        )
        # The group's members run this very check: refuse here what they would refuse.
        check_round_against_policy(
            policy, mode, g, degree, config.threshold, config.minimum_survivors
        )
        check_round_parameters(
            participants=g, threshold=config.threshold, minimum_survivors=config.minimum_survivors
        )
        made.append((local, config))
        params.append(
            {
                "index": i,
                "round_id": config.round_id.hex(),
                "members": [by_index[u].name for u in indices],
                "size": g,
                "threshold": config.threshold,
                "degree": 0 if config.is_complete else config.degree,
                "minimum_survivors": config.minimum_survivors,
                "note": note,
            }
        )
    groups: list[MaskedRound] = []  # made once every group passed its checks
    for local, config in made:
        done = [group.config.round_id for group in groups]
        groups.append(make_group(number, round_id, local, config, spec, done))
    active = GroupedRound(number, round_id, members, plan, groups, spec)
    audit = {
        "round": number,
        "round_id": round_id.hex(),  # with the members: anyone can recompute the split
        "n": len(members),
        "max_group_size": max_group_size,
        "minimum_sum": m,
        "groups": params,
    }
    return active, audit
