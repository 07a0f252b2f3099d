"""Issue 17, item 2: a real appliance sends weak round parameters; the shim refuses first.

The appliance is made malicious by patching its orchestrator (it skips its own policy check
and picks weak parameters); the clients' kits carry the federation policy, written by
``kit_issue`` as a real issue would. Each client must refuse with the policy's reason
*before sending anything*: the appliance accepts no message of the round.
"""

from __future__ import annotations

import pytest
from sealagg_testkit.clients import FAST, join, run_clients

import sealagg.appliance.orchestrator as orchestrator
from sealagg.appliance import kit_issue
from sealagg.client_shim.errors import RoundRefusedError
from sealagg.crypto.policy import FederationPolicy

pytestmark = [pytest.mark.timeout(90)]
CLIENTS = [f"client{i}" for i in range(5)]


@pytest.fixture
def policy_kits(monkeypatch):
    """Kits issued with the default policy (c = 1, m = 3, masked modes only)."""
    original = kit_issue.build_kit

    def build_kit(**kwargs):
        kwargs.setdefault("policy", FederationPolicy())
        return original(**kwargs)

    monkeypatch.setattr(kit_issue, "build_kit", build_kit)


def _refusals(dep, running, accepted, config: dict) -> dict:
    dep.configure(aggregation={**config, "min_clients": 5, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    threads, _, errors = run_clients(dep, CLIENTS)
    join(threads)
    assert getattr(app, "error", None) is None, app.error
    assert accepted == [], "a client sent something in a round its policy forbids"
    return errors


def test_weak_quorum_and_threshold_are_refused_before_anything_is_sent(
    policy_kits, deployment, running, accepted, monkeypatch
):
    """n=5, t=2, majority quorum 3: one colluder could equivocate (before: accepted)."""
    monkeypatch.setattr(orchestrator, "choose_graph", lambda *a, **k: (None, 2, "weak"))
    monkeypatch.setattr(orchestrator, "default_minimum_survivors", lambda n, t, c=0: n // 2 + 1)
    monkeypatch.setattr(orchestrator, "check_round_against_policy", lambda *a, **k: None)
    dep = deployment(clients=5)
    errors = _refusals(dep, running, accepted, {"mode": "secagg"})
    assert set(errors) == set(CLIENTS)
    for error in errors.values():
        assert isinstance(error, RoundRefusedError)
        assert "equivocation" in str(error)


def test_plaintext_is_refused_when_the_policy_forbids_it(
    policy_kits, deployment, running, accepted
):
    """The appliance switches to plaintext; the kit's policy allows masked modes only."""
    dep = deployment(clients=5)
    errors = _refusals(dep, running, accepted, {"mode": "plaintext"})
    assert set(errors) == set(CLIENTS)
    for error in errors.values():
        assert isinstance(error, RoundRefusedError)
        assert "'plaintext' is not allowed" in str(error)


def test_the_authority_signed_policy_governs_not_the_appliance_written_kit(
    deployment, running, accepted
):
    """The kits (written by the appliance) carry no policy, the authority's roster forbids
    plaintext: the signed policy wins, and nothing is uploaded."""
    dep = deployment(clients=5)
    dep.sign_roster(policy={"colluders": 1, "minimum_sum": 3, "allowed_modes": ["secagg+"]})
    errors = _refusals(dep, running, accepted, {"mode": "plaintext"})
    assert set(errors) == set(CLIENTS)
    for error in errors.values():
        assert isinstance(error, RoundRefusedError)
        assert "'plaintext' is not allowed" in str(error)
