"""Split a large round's clients into independent secure groups (issue 22, "many clients").

Above a configured size a round is run as several independent secure-aggregation
instances ("groups"), and the group sums are added. This module is the grouping rule
only: pure, transport-free, computable by every party from public data.

What the server learns, and why each client's condition still holds:

* Each group is its own secure-aggregation instance (own round id, own key directory,
  own Shamir shares, own survivor list and consistency check). The server therefore
  learns **every group's sum**, not only the round's total: strictly more than a single
  round over everyone would reveal. Group membership is public.
* Every group has at least ``max(m, MIN_MASKED_PARTIES)`` members (``m`` the policy's
  ``minimum_sum``), and each group's round is checked against the federation policy on
  its own (quorum >= m, threshold > c, no equivocation), with *all* ``c`` colluders
  assumed to sit in that group. So every revealed sum covers at least ``m`` clients, at
  least ``m - c >= 2`` of them honest: a client's privacy condition ("my input only ever
  appears in sums over at least m clients") holds per group, which is the only kind of
  sum the server sees.
* The assignment is a keyed permutation of the sorted client ids, keyed by the round id
  (SHA-256, domain separated): it is fixed before any key of the round exists, so the
  server cannot move a client after seeing keys or advertisements, and a client can
  recompute it (:func:`verify_group`) and refuse a group that does not match. Every client
  of a grouped round does, before it sends anything (:mod:`sealagg.client_shim.grouping`:
  the whole round's members on the signed roster, its group exactly the rule's, the
  group's round id the derived one, ``m`` at least its policy's); ``sealagg serve`` runs
  the groups in lockstep (:mod:`sealagg.appliance.grouped_round`, in one process or side
  by side on Ray stripes; :mod:`sealagg.appliance.scale.groups` runs them in turn). The
  server does choose the round id and could try many to place colluders; that gains it
  nothing the argument above does not already allow, because the per-group conditions are
  checked as if every colluder were in every group.
* Each group's round id is derived from the round id, the group's index and its members,
  so a message signed for one group cannot be replayed into another, and clients shown
  different splits of one round never share a transcript.

Not covered: across rounds, the same client lands in different groups, so the server
collects sums over different subsets over time, as it would from dropouts; bounding what
that reveals is differential privacy's job, not the grouping's.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

from sealagg.crypto.errors import PolicyRefusedError
from sealagg.crypto.messages import ROUND_ID_BYTES
from sealagg.crypto.rules import MIN_MASKED_PARTIES

__all__ = ["GroupPlan", "GroupingRefusedError", "plan_groups", "verify_group"]

_ORDER_DOMAIN = b"sealagg/groups/order/v1"
_ROUND_DOMAIN = b"sealagg/groups/round-id/v1"


class GroupingRefusedError(PolicyRefusedError):
    """The clients cannot be split into groups of at least ``m`` within the maximum size,
    or a group handed to a client is not the one the public rule gives."""


@dataclasses.dataclass(frozen=True)
class GroupPlan:
    """The public split of one round: ``groups[i]`` is group ``i``'s sorted members."""

    round_id: bytes
    max_group_size: int
    minimum_sum: int
    groups: tuple[tuple[int, ...], ...]

    def group_of(self, client: int) -> int:
        """The index of ``client``'s group."""
        for i, members in enumerate(self.groups):
            if client in members:
                return i
        raise KeyError(f"client {client} is in no group of this round")

    def round_id_of(self, index: int) -> bytes:
        """Group ``index``'s own round id: binds the round, the number of groups, the index
        and the members, so every group's transcript (and every signature in it) is its own,
        and two clients shown different splits of one round end up in different rounds."""
        if not 0 <= index < len(self.groups):
            raise IndexError(f"no group {index}")
        return group_round_id(self.round_id, len(self.groups), index, self.groups[index])


def group_round_id(round_id: bytes, count: int, index: int, members: Iterable[int]) -> bytes:
    """SHA-256 over a domain tag, the round id, the number of groups, the index and the
    sorted members (each a fixed 8 bytes, so the encoding is unambiguous)."""
    h = hashlib.sha256(_ROUND_DOMAIN + bytes(round_id))
    h.update(count.to_bytes(4, "big") + index.to_bytes(4, "big"))
    for u in sorted(members):
        h.update(u.to_bytes(8, "big"))
    digest = h.digest()
    assert len(digest) == ROUND_ID_BYTES
    return digest


def _order_key(round_id: bytes, client: int) -> bytes:
    return hashlib.sha256(_ORDER_DOMAIN + bytes(round_id) + client.to_bytes(8, "big")).digest()


def plan_groups(
    round_id: bytes, clients: Iterable[int], max_group_size: int, minimum_sum: int
) -> GroupPlan:
    """The groups of a round: as few as ``max_group_size`` allows, sizes differing by at
    most one, each at least ``max(minimum_sum, MIN_MASKED_PARTIES)``.

    Deterministic in (round id, client set, sizes); a different round id gives a different
    (pseudo-random) split. One group holding everyone when ``len(clients) <=
    max_group_size``. Raises :class:`GroupingRefusedError` when no split meets the bounds
    (the fewest groups give the largest smallest group, so if they fail every split does).
    """
    ids = sorted(set(clients))
    if len(bytes(round_id)) != ROUND_ID_BYTES:
        raise ValueError(f"round_id must be {ROUND_ID_BYTES} bytes")
    if any(type(u) is not int or u < 1 for u in ids):
        raise ValueError("client ids are positive integers")
    floor = max(minimum_sum, MIN_MASKED_PARTIES)
    if max_group_size < floor:
        raise GroupingRefusedError(
            f"a maximum group size of {max_group_size} is below the minimum sum {floor}: "
            "every group's sum is revealed, so every group needs at least that many clients"
        )
    n = len(ids)
    count = max(1, -(-n // max_group_size))
    if n // count < floor:
        raise GroupingRefusedError(
            f"{n} clients cannot form groups of at least {floor} (the policy's minimum sum): "
            "every group's sum is revealed to the server"
        )
    order = sorted(ids, key=lambda u: _order_key(round_id, u))
    small, extra = divmod(n, count)
    groups, at = [], 0
    for i in range(count):
        size = small + (1 if i < extra else 0)
        groups.append(tuple(sorted(order[at : at + size])))
        at += size
    return GroupPlan(bytes(round_id), max_group_size, minimum_sum, tuple(groups))


def verify_group(
    round_id: bytes,
    clients: Iterable[int],
    max_group_size: int,
    minimum_sum: int,
    index: int,
    members: Iterable[int],
) -> bytes:
    """A client's check of the group it is put in: recompute the public split and refuse
    (:class:`GroupingRefusedError`) unless group ``index`` is exactly ``members``.
    Returns the group's round id, the one the client must see in the group's config."""
    plan = plan_groups(round_id, clients, max_group_size, minimum_sum)
    if not 0 <= index < len(plan.groups) or plan.groups[index] != tuple(sorted(set(members))):
        raise GroupingRefusedError(
            f"group {index} as announced is not the group the round id and client list give"
        )
    return plan.round_id_of(index)
