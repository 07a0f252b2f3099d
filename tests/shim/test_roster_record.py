"""The client's durable roster floor (client_shim/roster_record.py): rollback across restarts.

The end-to-end attack (a restarted client served an old roster over real gRPC) is in
tests/e2e/test_malicious_roster.py; these check the record itself.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sealagg.client_shim.roster_record import DurableRosterVerifier, read_record
from sealagg.crypto import IdentityKey
from sealagg.crypto.errors import (
    MalformedRosterError,
    RosterRollbackError,
    RosterSignatureError,
)
from sealagg.crypto.roster import IdentityKeySigner, Role, Roster, RosterEntry, sign_roster

NOW = datetime(2026, 12, 1, tzinfo=UTC)
SIGNER = IdentityKeySigner(IdentityKey.generate())


def _signed(version: int, names: list[str]) -> bytes:
    entries = tuple(
        RosterEntry(
            name=n,
            identity_key=IdentityKey.generate().verify_key_bytes,
            tls_key_sha256=bytes(32),
            role=Role.DATA_OWNER,
            not_before=NOW - timedelta(days=1),
            not_after=NOW + timedelta(days=1),
        )
        for n in names
    )
    return sign_roster(Roster("fed", version, NOW, entries), SIGNER)


def _verifier(path: Path) -> DurableRosterVerifier:
    return DurableRosterVerifier(SIGNER.public_key(), "fed", path)


def test_the_floor_survives_a_restart(tmp_path: Path):
    path = tmp_path / "kit.roster"
    old, new = _signed(2, ["a", "b", "ghost"]), _signed(3, ["a", "b"])
    assert _verifier(path).accept(new).version == 3
    assert read_record(path)[0] == 3
    restarted = _verifier(path)
    assert restarted.version == 3
    with pytest.raises(RosterRollbackError, match="older than version 3"):
        restarted.accept(old)
    # A different roster under the recorded version is refused as well.
    with pytest.raises(RosterRollbackError, match="two different rosters claim version 3"):
        restarted.accept(_signed(3, ["a", "ghost"]))
    assert restarted.accept(new).version == 3


def test_another_process_raising_the_floor_counts_at_once(tmp_path: Path):
    """Two participants sharing a kit: the one created first re-reads the record under the
    lock, so it cannot accept what the other already superseded."""
    path = tmp_path / "kit.roster"
    first, second = _verifier(path), _verifier(path)
    second.accept(_signed(5, ["a"]))
    with pytest.raises(RosterRollbackError, match="older than version 5"):
        first.accept(_signed(4, ["a"]))


@pytest.mark.parametrize("content", [b"", b"three abc\n", b"2 00\n", b"0 " + b"00" * 32])
def test_a_damaged_record_refuses_instead_of_forgetting(tmp_path: Path, content: bytes):
    path = tmp_path / "kit.roster"
    path.write_bytes(content)
    with pytest.raises(MalformedRosterError, match="is damaged"):
        _verifier(path)


def test_the_kit_roster_sets_the_floor_of_a_fresh_client(tmp_path: Path):
    """A freshly enrolled client has no record; the roster the authority put in its kit
    becomes the floor before any roster from the appliance is seen."""
    path = tmp_path / "kit.roster"
    old, kit_roster = _signed(2, ["a", "ghost"]), _signed(3, ["a"])
    verifier = _verifier(path)
    assert verifier.adopt_kit_roster(kit_roster).version == 3
    assert read_record(path)[0] == 3 and verifier.version == 3
    with pytest.raises(RosterRollbackError, match="older than version 3"):
        verifier.accept(old)
    with pytest.raises(RosterRollbackError, match="older than version 3"):
        _verifier(path).accept(old)  # a restarted client too


def test_an_older_kit_roster_never_lowers_the_floor(tmp_path: Path):
    """The client already accepted version 5 (from the appliance): its kit's version 3 is no
    news and is not an error either (the kit was signed before the roster moved on)."""
    path = tmp_path / "kit.roster"
    verifier = _verifier(path)
    verifier.accept(_signed(5, ["a"]))
    assert verifier.adopt_kit_roster(_signed(3, ["a"])).version == 3
    assert read_record(path)[0] == 5 and verifier.version == 5
    with pytest.raises(RosterRollbackError, match="two different rosters claim version 5"):
        verifier.adopt_kit_roster(_signed(5, ["a", "ghost"]))


def test_a_kit_roster_signed_by_another_key_sets_no_floor(tmp_path: Path):
    path = tmp_path / "kit.roster"
    impostor = IdentityKeySigner(IdentityKey.generate())
    forged = sign_roster(Roster("fed", 9, NOW, ()), impostor)
    with pytest.raises(RosterSignatureError, match="not signed by"):
        _verifier(path).adopt_kit_roster(forged)
    assert read_record(path) == (0, None)
