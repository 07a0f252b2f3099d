"""A client's check of its group in a grouped round (client_shim/grouping.py, issue 22).

The RoundStarts are the ones the appliance's grouped round hands its members
(appliance/grouped_round.py), then tampered with as a malicious appliance would: move a
client into another group, name a wrong group round id, size the groups for a smaller
``m``, slip a ghost into the whole round or into a group. Each is refused, with its reason,
before the client sends anything; an honest one yields the group's derived round id.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from sealagg.appliance.grouped_round import build_grouped_round
from sealagg.appliance.rounds import Member
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.grouping import check_grouping
from sealagg.client_shim.session import refusal_code
from sealagg.crypto import IdentityKey, encoded_length
from sealagg.crypto.errors import RosterMembershipError
from sealagg.crypto.groups import GroupingRefusedError, plan_groups
from sealagg.crypto.policy import FederationPolicy
from sealagg.crypto.refusal import RefusalCode
from sealagg.crypto.roster import Role, Roster, RosterEntry

N = 10
ROUND_ID = bytes(range(100, 132))
POLICY = FederationPolicy(colluders=1, minimum_sum=3, allowed_modes=frozenset({"secagg+"}))
KEYS = {f"c{i}": IdentityKey.generate().verify_key_bytes for i in range(1, N + 2)}
MEMBERS = [Member(i, f"c{i}", KEYS[f"c{i}"]) for i in range(1, N + 1)]
NOW = datetime.now(UTC)


def _entry(name: str) -> RosterEntry:
    return RosterEntry(
        name=name,
        identity_key=KEYS[name],
        tls_key_sha256=bytes(32),
        role=Role.DATA_OWNER,
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=1),
    )


ROSTER = Roster(
    federation="testfed",
    version=1,
    issued_at=NOW,
    entries=tuple(_entry(m.name) for m in MEMBERS),
)


def _starts(max_group_size: int = 4) -> dict[str, pb.RoundStart]:
    """What every member receives from an honest appliance."""
    active, _ = build_grouped_round(
        number=1,
        round_id=ROUND_ID,
        members=MEMBERS,
        mode="secagg+",
        vector_length=encoded_length(8),
        clip=1.0,
        max_group_size=max_group_size,
        policy=POLICY,
        dropout_rate=0.1,
        corrupt_fraction=0.05,
    )
    common = pb.RoundStart(round_id=ROUND_ID, mode="secagg+", max_clients=N)
    active.describe(common)
    return {m.name: active.round_start_for(m.name, common) for m in MEMBERS}


def _refused(start: pb.RoundStart, match: str, *, roster: Roster | None = ROSTER) -> None:
    with pytest.raises(GroupingRefusedError, match=match) as caught:
        check_grouping(start, POLICY, roster, now=NOW)
    assert refusal_code(caught.value) is RefusalCode.PARAMETERS  # as the client reports it


def test_an_honest_split_gives_each_member_its_groups_derived_round_id():
    plan = plan_groups(ROUND_ID, range(1, N + 1), 4, 3)
    for name, start in _starts().items():
        index = start.grouping.group_index
        got = check_grouping(start, POLICY, ROSTER, now=NOW)
        assert got == plan.round_id_of(index) == bytes(start.grouping.group_round_id)
        assert {int(name[1:])} <= set(plan.groups[index])
        assert [p.name for p in start.participants] == [f"c{u}" for u in plan.groups[index]]


def test_an_ordinary_round_has_no_grouping_to_check():
    assert check_grouping(pb.RoundStart(round_id=ROUND_ID), POLICY, ROSTER, now=NOW) is None


def test_a_client_moved_into_another_group_refuses():
    starts = _starts()
    victim = starts["c1"]
    mine = victim.grouping.group_index
    donor = next(s for s in starts.values() if s.grouping.group_index != mine)
    # The appliance puts c1 with the other group's members, under that group's index and id.
    moved = pb.RoundStart()
    moved.CopyFrom(donor)
    del moved.participants[:]
    me = victim.participants[victim.client_index - 1]
    chosen = sorted([*donor.participants[1:], me], key=lambda p: int(p.name[1:]))
    for i, p in enumerate(chosen, start=1):
        moved.participants.add(index=i, name=p.name, identity_key=p.identity_key)
    _refused(moved, "is not the group the round id and client list give")
    # Or only the group index changes: the same members under another group's name.
    relabelled = pb.RoundStart()
    relabelled.CopyFrom(victim)
    relabelled.grouping.group_index = donor.grouping.group_index
    relabelled.grouping.group_round_id = donor.grouping.group_round_id
    _refused(relabelled, "is not the group the round id and client list give")


def test_a_wrong_group_round_id_is_refused():
    start = _starts()["c2"]
    start.grouping.group_round_id = ROUND_ID  # the whole round's: shared by every group
    _refused(start, "round id is not the one derived")


def test_a_smaller_minimum_sum_than_the_policy_is_refused():
    # m = 2 in the split: groups could hold 2 clients, whose sum reveals each to the other.
    start = _starts()["c3"]
    start.grouping.minimum_sum = 2
    _refused(start, "below the policy's minimum_sum 3")


def test_the_grouping_must_name_the_round_it_arrives_in():
    start = _starts()["c4"]
    start.grouping.round_id = bytes(32)
    _refused(start, "names another round")


def test_every_whole_round_member_must_be_on_the_signed_roster():
    start = _starts()["c5"]
    # A ghost the appliance holds the key of joins the whole round (it changes the split).
    start.grouping.members.add(index=N + 1, name=f"c{N + 1}", identity_key=KEYS[f"c{N + 1}"])
    with pytest.raises(RosterMembershipError) as caught:
        check_grouping(start, POLICY, ROSTER, now=NOW)
    assert refusal_code(caught.value) is RefusalCode.ROSTER_MEMBERSHIP
    # A member announced with another key than the roster's is refused the same way.
    swapped = _starts()["c5"]
    swapped.grouping.members[0].identity_key = KEYS[f"c{N + 1}"]
    with pytest.raises(RosterMembershipError, match="identity key"):
        check_grouping(swapped, POLICY, ROSTER, now=NOW)


def test_a_group_member_outside_the_whole_round_is_refused():
    start = _starts()["c6"]
    start.participants[-1].identity_key = KEYS[f"c{N + 1}"]  # same name, a ghost's key
    _refused(start, "not a member of the whole round")
    twice = _starts()["c6"]
    twice.grouping.members[1].name = twice.grouping.members[0].name
    _refused(twice, "twice", roster=None)  # a development kit still refuses a repeated member
