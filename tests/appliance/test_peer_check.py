"""The per-call identity check reuses a verdict only while nothing that decides it changed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from sealagg.appliance import kit as kits
from sealagg.appliance.errors import CertificateError
from sealagg.appliance.federation import (
    FederationFolder,
    add_client,
    init_federation,
    revoke_client,
)
from sealagg.appliance.peer_check import CachedPeerCheck

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def federation(tmp_path) -> FederationFolder:
    return init_federation(tmp_path / "fed", name="demo", hosts=["localhost"], now=T0)


def _der(federation: FederationFolder, name: str, tmp_path: Path) -> bytes:
    path = add_client(federation, name, out=tmp_path / f"kit-{name}", now=T0)
    kit = kits.load_kit(path, trusted_signer=federation.signer_public_key)
    return kit.certificate.public_bytes(serialization.Encoding.DER)


@pytest.fixture
def counted(federation, monkeypatch) -> list[bytes]:
    """Every full check the cache falls through to."""
    calls: list[bytes] = []
    full = federation.check_peer_certificate

    def check(der, *, now=None):
        calls.append(der)
        return full(der, now=now)

    monkeypatch.setattr(federation, "check_peer_certificate", check)
    return calls


def test_a_known_certificate_is_checked_once_and_each_client_keeps_its_name(
    federation, counted, tmp_path
):
    alice, bob = _der(federation, "alice", tmp_path), _der(federation, "bob", tmp_path)
    check = CachedPeerCheck(federation, clock=Clock())
    assert [check(alice) for _ in range(5)] == ["alice"] * 5
    assert [check(bob) for _ in range(3)] == ["bob"] * 3
    assert counted == [alice, bob]


def test_a_revocation_applies_at_the_next_call(federation, counted, tmp_path):
    alice = _der(federation, "alice", tmp_path)
    check = CachedPeerCheck(federation, clock=Clock())
    assert check(alice) == "alice"
    revoke_client(federation, "alice", now=T0)
    with pytest.raises(CertificateError, match="revoked"):
        check(alice)
    with pytest.raises(CertificateError, match="revoked"):  # refusals are never cached
        check(alice)
    assert len(counted) == 3


def test_a_new_client_does_not_keep_stale_verdicts_of_others(federation, counted, tmp_path):
    alice = _der(federation, "alice", tmp_path)
    check = CachedPeerCheck(federation, clock=Clock())
    check(alice)
    _der(federation, "carol", tmp_path)  # provisioning changed: verdicts are re-derived
    assert check(alice) == "alice"
    assert len(counted) == 2


def test_expiry_applies_to_a_cached_verdict(federation, counted, tmp_path):
    alice = _der(federation, "alice", tmp_path)
    clock = Clock()
    check = CachedPeerCheck(federation, clock=clock)
    assert check(alice) == "alice"
    clock.now = T0 + timedelta(days=3650)
    with pytest.raises(CertificateError, match="expired"):
        check(alice)


def test_unknown_bytes_are_refused_and_the_memo_stays_bounded(federation, tmp_path):
    alice = _der(federation, "alice", tmp_path)
    check = CachedPeerCheck(federation, max_entries=1, clock=Clock())
    with pytest.raises(CertificateError, match="not a DER"):
        check(b"\x30\x03garbage")
    bob = _der(federation, "bob", tmp_path)
    assert check(alice) == "alice" and check(bob) == "bob" and check(alice) == "alice"
    assert len(check._verdicts) == 1
