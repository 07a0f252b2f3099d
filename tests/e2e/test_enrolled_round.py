"""Enrolled clients in a real masked round (issue 17, item 1; README "Threat model").

The clients made their own keys (``sealagg-enrol``), the federation authority approved them
into a signed roster and countersigned their kits, the appliance installed the roster and
certified their CSRs: it never held a client's private key. A secagg round over mutual TLS
then publishes the exact weighted mean. An appliance that substitutes a client's identity
key (it holds the substitute's private half) is stopped twice: the honest appliance's own
roster check leaves that client out (``client_not_on_roster``), and when the appliance skips
that check, every client refuses the round before sending anything
(``round_refused_by_client``).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from sealagg_testkit.audit import audit_details
from sealagg_testkit.clients import FAST, expected_bias_and_weight, join, published_flat
from sealagg_testkit.clients import run_clients as run_threads
from sealagg_testkit.enrolled import make_enrolled_deployment

from sealagg.appliance import pki
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.roster_gate import RosterGate
from sealagg.appliance.testing import Deployment
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant
from sealagg.crypto import IdentityKey
from sealagg.crypto.errors import RosterMembershipError

pytestmark = [pytest.mark.timeout(120)]
NAMES = [f"client{i}" for i in range(4)]
SUBSTITUTED = "client3"


@pytest.fixture
def enrolled(tmp_path: Path) -> Deployment:
    return make_enrolled_deployment(tmp_path, NAMES)


def _substitute_identity_key(dep: Deployment, name: str) -> bytes:
    """The operator replaces ``name``'s recorded identity key with one it holds."""
    federation = FederationFolder.load(dep.folder)
    record = federation.client_record(name)
    assert record is not None
    substitute = IdentityKey.generate().verify_key_bytes
    forged = dataclasses.replace(record, identity_public_key=substitute)
    pki.write_file_atomic(federation.paths.client_record(name), forged.to_json(), mode=0o644)
    return substitute


def test_enrolled_clients_publish_the_exact_mean(enrolled, running, accepted):
    dep = enrolled
    for kit in dep.kits.values():
        assert kit.enrolled and kit.authority_signed
        assert kit.authority_public_key == dep.authority.public_key()
    dep.configure(aggregation={"mode": "secagg", "min_clients": 4, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    threads, reports, errors = run_threads(dep, NAMES)
    app.wait(90)
    join(threads)
    assert not errors, errors
    assert all(r[0].outcome == "published" for r in reports.values()), reports
    _, flat, _ = published_flat(dep)
    np.testing.assert_allclose(flat, expected_bias_and_weight(range(4)), atol=2e-6)
    assert audit_details(dep, "client_not_on_roster") == []
    assert audit_details(dep, "round_refused_by_client") == []
    # Every client verified (and recorded) the roster the authority signed.
    for kit in dep.kits.values():
        record = kit.source.with_name(kit.source.name + ".roster").read_text().split()
        assert int(record[0]) == dep.roster_version == 2


def _poll_without_a_round(dep: Deployment, name: str, out: dict) -> threading.Thread:
    """``name`` polls for a round it must never be offered; records what it got."""

    def work() -> None:
        conn = Connection(dep.kits[name], address=dep.address, timeout=10, retry_seconds=2)
        try:
            Participant(conn, poll_seconds=0.5).wait_for_round(max_polls=20)
            out["offered"] = True
        except (TimeoutError, grpc.RpcError):  # no round before the appliance stopped
            out["offered"] = False
        finally:
            conn.close()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread


def test_the_appliance_leaves_out_a_client_whose_key_was_substituted(enrolled, running):
    """The record of client3 names a key the operator holds: the appliance's roster check
    audits it and never selects it; the other three publish their exact mean."""
    dep = enrolled
    _substitute_identity_key(dep, SUBSTITUTED)
    dep.configure(aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    seen: dict = {}
    outsider = _poll_without_a_round(dep, SUBSTITUTED, seen)
    deadline = time.monotonic() + 30
    while SUBSTITUTED not in app.app.orchestrator._not_on_roster:
        assert time.monotonic() < deadline, "the appliance never considered client3"
        time.sleep(0.1)
    threads, _, errors = run_threads(dep, NAMES[:3])
    app.wait(90)
    join([*threads, outsider])
    assert not errors, errors
    assert seen == {"offered": False}
    _, flat, _ = published_flat(dep)
    np.testing.assert_allclose(flat, expected_bias_and_weight(range(3)), atol=2e-6)
    (entry,) = audit_details(dep, "client_not_on_roster")
    assert entry["client"] == SUBSTITUTED
    assert "identity key this appliance holds for 'client3'" in entry["reason"]
    participants = audit_details(dep, "participants")
    assert all(SUBSTITUTED not in p["clients"] for p in participants)


def test_every_client_refuses_a_round_with_a_substituted_key(
    enrolled, running, accepted, monkeypatch
):
    """A malicious appliance skips its own check and announces client3 with the substitute
    key: every client (client3 too) refuses before sending anything, and says why."""
    dep = enrolled
    monkeypatch.setattr(RosterGate, "refusal", lambda self, name, **kw: None)
    _substitute_identity_key(dep, SUBSTITUTED)
    dep.configure(
        aggregation={"mode": "secagg", "min_clients": 4, "rounds": 1},
        deadlines={**FAST, "advertise_keys": 30},
    )
    app = running(dep.folder)
    threads, _, errors = run_threads(dep, NAMES)
    app.wait(90)
    join(threads)
    assert set(errors) == set(NAMES), errors
    for error in errors.values():
        assert isinstance(error, RosterMembershipError)
        assert "announces 'client3' with an identity key that is not the one" in str(error)
    assert accepted == [], "a client sent something in a round with a substituted key"
    refusals = audit_details(dep, "round_refused_by_client")
    assert sorted(r["client"] for r in refusals) == NAMES
    assert {r["code"] for r in refusals} == {"roster_membership"}
    assert app.app.orchestrator.history[-1].outcome == "aborted"
    # The phase's drop record names every member and why (issue 25): refused, not "deadline".
    assert audit_details(dep, "clients_dropped") == [
        {"round": 1, "phase": "advertise_keys", "clients": dict.fromkeys(NAMES, "refused")}
    ]
