"""The signed roster (crypto/roster.py): format, signature, rollback, validity, membership."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta

import pytest

from sealagg.crypto import IdentityKey
from sealagg.crypto.errors import (
    MalformedRosterError,
    RosterMembershipError,
    RosterRollbackError,
    RosterSignatureError,
    RosterValidityError,
)
from sealagg.crypto.roster import (
    SIGNATURE_CONTEXT,
    IdentityKeySigner,
    Role,
    Roster,
    RosterEntry,
    RosterVerifier,
    members_from_roster,
    parse_signed_roster,
    sign_roster,
    verify_roster,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=10)


@dataclasses.dataclass
class Member:
    index: int
    name: str
    identity_key: bytes


def _entry(name: str, key: IdentityKey, role: Role = Role.DATA_OWNER) -> RosterEntry:
    return RosterEntry(
        name=name,
        identity_key=key.verify_key_bytes,
        tls_key_sha256=bytes(32),
        role=role,
        not_before=T0,
        not_after=T0 + timedelta(days=365),
    )


@pytest.fixture
def keys() -> dict[str, IdentityKey]:
    return {name: IdentityKey.generate() for name in ("alice", "bob", "carol", "holder")}


@pytest.fixture
def authority() -> IdentityKeySigner:
    return IdentityKeySigner(IdentityKey.generate())


def _roster(keys, version: int = 1, **policy) -> Roster:
    entries = [_entry(n, k) for n, k in keys.items() if n != "holder"]
    entries.append(_entry("holder", keys["holder"], Role.KEY_HOLDER))
    return Roster("fed", version, T0, tuple(entries), policy or {"colluders": 1})


def _members(keys, names) -> list[Member]:
    return [Member(i + 1, n, keys[n].verify_key_bytes) for i, n in enumerate(names)]


def test_round_trip_is_canonical_and_verifies(keys, authority):
    roster = _roster(keys, minimum_sum=4, allowed_modes=["secagg+"])
    signed = sign_roster(roster, authority)
    got = verify_roster(signed, authority_key=authority.public_key(), federation="fed")
    assert got == roster and got.encode() == roster.encode()
    body, _ = parse_signed_roster(signed)
    assert body == json.dumps(json.loads(body), sort_keys=True, separators=(",", ":")).encode()
    assert got.entry("alice").identity_key == keys["alice"].verify_key_bytes
    assert got.by_identity_key(keys["bob"].verify_key_bytes).name == "bob"


def test_another_key_an_edit_or_another_federation_is_refused(keys, authority):
    signed = sign_roster(_roster(keys), authority)
    other = IdentityKey.generate().verify_key_bytes
    with pytest.raises(RosterSignatureError, match="not signed by"):
        verify_roster(signed, authority_key=other, federation="fed")
    with pytest.raises(RosterSignatureError, match="federation 'fed', not 'other'"):
        verify_roster(signed, authority_key=authority.public_key(), federation="other")
    document = json.loads(signed)
    document["body"] = document["body"].replace('"version":1', '"version":9')
    with pytest.raises(RosterSignatureError):
        verify_roster(
            json.dumps(document).encode(), authority_key=authority.public_key(), federation="fed"
        )


def test_the_signature_is_domain_separated(keys, authority):
    """A signature over the bare body (e.g. made for another purpose) never verifies."""
    body = _roster(keys).encode()
    document = {
        "format": "sealagg-signed-roster/1",
        "body": body.decode(),
        "signature": authority.sign(body).hex(),
    }
    with pytest.raises(RosterSignatureError):
        verify_roster(
            json.dumps(document).encode(), authority_key=authority.public_key(), federation="fed"
        )
    assert SIGNATURE_CONTEXT.endswith(b"\x00")


@pytest.mark.parametrize("data", [b"", b"{}", b"not json", b'{"format":"x"}'])
def test_malformed_documents_are_refused(data, authority):
    with pytest.raises(MalformedRosterError):
        verify_roster(data, authority_key=authority.public_key(), federation="fed")


def test_rollback_and_same_version_equivocation_are_refused(keys, authority):
    verifier = RosterVerifier(authority.public_key(), "fed")
    v1, v2 = _roster(keys, 1), _roster(keys, 2)
    verifier.accept(sign_roster(v2, authority))
    with pytest.raises(RosterRollbackError, match="older than version 2"):
        verifier.accept(sign_roster(v1, authority))
    verifier.accept(sign_roster(v2, authority))  # the same roster again is fine
    twin = dataclasses.replace(v2, entries=v2.entries[:2])
    with pytest.raises(RosterRollbackError, match="two different rosters"):
        verifier.accept(sign_roster(twin, authority))
    restarted = RosterVerifier(authority.public_key(), "fed", minimum_version=2)
    with pytest.raises(RosterRollbackError):
        restarted.accept(sign_roster(v1, authority))


def test_members_on_the_roster_pass(keys):
    got = members_from_roster(_roster(keys), _members(keys, ["alice", "bob", "carol"]), now=NOW)
    assert [e.name for e in got.values()] == ["alice", "bob", "carol"]


def test_a_ghost_or_a_swapped_key_is_refused(keys):
    roster = _roster(keys)
    ghost = IdentityKey.generate()
    members = [*_members(keys, ["alice", "bob"]), Member(3, "ghost", ghost.verify_key_bytes)]
    with pytest.raises(RosterMembershipError, match="'ghost' is not on the federation roster"):
        members_from_roster(roster, members, now=NOW)
    swapped = [*_members(keys, ["alice", "bob"]), Member(3, "carol", ghost.verify_key_bytes)]
    with pytest.raises(RosterMembershipError, match="identity key that is not the one"):
        members_from_roster(roster, swapped, now=NOW)


def test_duplicates_are_refused(keys):
    roster = _roster(keys)
    twice = [*_members(keys, ["alice", "bob"]), Member(3, "alice", keys["alice"].verify_key_bytes)]
    with pytest.raises(RosterMembershipError, match="twice"):
        members_from_roster(roster, twice, now=NOW)
    with pytest.raises(MalformedRosterError, match="share an identity key"):
        Roster("fed", 1, T0, (_entry("a", keys["alice"]), _entry("b", keys["alice"])))


def test_validity_is_checked_at_the_given_time(keys):
    roster = _roster(keys)
    members = _members(keys, ["alice", "bob", "carol"])
    with pytest.raises(RosterValidityError, match="only from"):
        members_from_roster(roster, members, now=T0 - timedelta(seconds=1))
    with pytest.raises(RosterValidityError, match="expired"):
        members_from_roster(roster, members, now=T0 + timedelta(days=365))
    with pytest.raises(MalformedRosterError, match="timezone-aware"):
        members_from_roster(roster, members, now=datetime(2026, 2, 1))


def test_roles(keys):
    roster = _roster(keys)
    with_holder = _members(keys, ["alice", "bob", "carol", "holder"])
    with pytest.raises(RosterMembershipError, match="may not contribute"):
        members_from_roster(roster, with_holder, now=NOW)
    members_from_roster(roster, with_holder, now=NOW, key_holder=4, key_holder_contributes=False)
    with pytest.raises(RosterMembershipError, match="key holder is not one of its members"):
        members_from_roster(roster, with_holder[:3], now=NOW, key_holder=9)


def test_policy_fields_are_validated(keys):
    with pytest.raises(MalformedRosterError, match="unknown fields"):
        _roster(keys, threshold=3)
    with pytest.raises(MalformedRosterError, match="not an integer"):
        _roster(keys, colluders="1")
    with pytest.raises(MalformedRosterError, match="policy is invalid"):
        _roster(keys, colluders=3, minimum_sum=3)  # a sum over c+1 reveals an honest input
    policy = _roster(keys, colluders=2, minimum_sum=5, allowed_modes=["ckks"]).federation_policy()
    assert (policy.colluders, policy.minimum_sum) == (2, 5)
    assert policy.allowed_modes == frozenset({"ckks"})


def test_next_versions(keys):
    roster = _roster(keys)
    dave = IdentityKey.generate()
    added = roster.with_entry(_entry("dave", dave), issued_at=NOW)
    assert added.version == 2 and added.entry("dave").identity_key == dave.verify_key_bytes
    removed = added.without("alice", issued_at=NOW)
    assert removed.version == 3
    with pytest.raises(RosterMembershipError):
        removed.entry("alice")
