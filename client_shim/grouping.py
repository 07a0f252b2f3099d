"""A client's check of the group it is put in (issue 22, grouped secure rounds).

A grouped round (``RoundStart.grouping``, appliance/grouped_round.py) runs this client in
one of several independent secure groups; the appliance sees every group's sum. The
appliance's word on the split is not taken: before anything leaves this client,
:func:`check_grouping` recomputes the public rule (:func:`sealagg.crypto.groups.verify_group`)
and refuses the round unless

* every member of the whole round is admitted by the signed roster (the split is computed
  over that list: ghosts in it would change who lands with whom), and the group this
  client is asked to run in is exactly its members, with their roster keys;
* the split's ``minimum_sum`` is at least the one of the policy this client enforces (a
  smaller one would allow smaller groups, i.e. revealed sums over fewer clients);
* the group's round id (its transcript's, in every signature) is the one derived from the
  round id, the group's index and its members: a group's messages cannot be replayed into
  another group, and clients shown different splits never share a transcript.

The group's own parameters (n, t, k, quorum) are checked against the policy as in any
round (:func:`sealagg.client_shim.session.check_policy`), over the group's members.
A RoundStart without ``grouping`` is an ordinary round (:func:`check_grouping` returns None).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.crypto.groups import GroupingRefusedError, verify_group
from sealagg.crypto.policy import FederationPolicy
from sealagg.crypto.roster import Roster, members_from_roster

__all__ = ["GroupingRefusedError", "check_grouping"]


def check_grouping(
    start: pb.RoundStart,
    policy: FederationPolicy,
    roster: Roster | None,
    *,
    now: datetime | None = None,
) -> bytes | None:
    """The round id this client's protocol must run under: the group's, once the split is
    checked (module doc), or None for an ordinary round. Raises
    :class:`~sealagg.crypto.groups.GroupingRefusedError` (a policy refusal, reported as
    ``parameters``) or a roster error (``roster_membership``); nothing has been sent then."""
    if not start.HasField("grouping"):
        return None
    grouping = start.grouping
    if bytes(grouping.round_id) != bytes(start.round_id):
        raise GroupingRefusedError("the grouping names another round than the RoundStart")
    if grouping.minimum_sum < policy.minimum_sum:
        raise GroupingRefusedError(
            f"the groups are sized for sums over {grouping.minimum_sum} clients, below the "
            f"policy's minimum_sum {policy.minimum_sum}; nothing was sent"
        )
    whole = _members(grouping.members, "the whole round")
    if roster is not None:  # a development kit trusts the appliance's list anyway
        members_from_roster(roster, grouping.members, now=now or datetime.now(UTC))
    _members(start.participants, "the group")  # no one twice, so no whole index twice
    by_identity = {identity: index for index, identity in whole.items()}
    mine = []
    for participant in start.participants:
        identity = (participant.name, bytes(participant.identity_key))
        if identity not in by_identity:
            raise GroupingRefusedError(
                f"group member {participant.name!r} is not a member of the whole round "
                "(or is announced with another key); nothing was sent"
            )
        mine.append(by_identity[identity])
    group_round_id = verify_group(
        bytes(grouping.round_id),
        whole,
        grouping.max_group_size,
        grouping.minimum_sum,
        grouping.group_index,
        mine,
    )
    if bytes(grouping.group_round_id) != group_round_id:
        raise GroupingRefusedError(
            f"the group's round id is not the one derived for group {grouping.group_index} "
            "of this round; nothing was sent"
        )
    return group_round_id


def _members(participants: Iterable[pb.Participant], what: str) -> dict[int, tuple[str, bytes]]:
    """index -> (name, key); refused when an index, a name or a key appears twice."""
    out: dict[int, tuple[str, bytes]] = {}
    names, keys = set(), set()
    for p in participants:
        index, name, key = int(p.index), str(p.name), bytes(p.identity_key)
        if index < 1 or index in out or name in names or key in keys:
            raise GroupingRefusedError(f"{what} lists member {index} / {name!r} twice")
        out[index] = (name, key)
        names.add(name)
        keys.add(key)
    return out
