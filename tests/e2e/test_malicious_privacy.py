"""A malicious appliance weakens the round's differential privacy; every client refuses.

The DP parameters reach the clients from the appliance (``RoundStart.privacy``). Before the
federation's signed policy carried a DP floor, an appliance could shrink every client's noise
share (z = 1e-6), coarsen a discrete mechanism's grid until rounding outweighed the noise, or
drop DP altogether, and every client took part: the sum it unmasked carried almost no noise.
Now the authority signs ``min_noise_multiplier`` / ``required_privacy`` into the roster
(:func:`crypto.policy.check_privacy_against_policy`); each client refuses such a round
before anything of its own leaves, reports it (code ``privacy``) and the appliance audits
it. Each test runs a real appliance over mutual TLS and the real client shim; the appliance
is made malicious by patching what it sends (:meth:`RoundPlan.params`) or by switching off
its own check, which otherwise refuses first.
"""

from __future__ import annotations

import dataclasses
import threading

import pytest
from sealagg_testkit.async_runs import SeededUpdates, run_rounds_in_threads, start_async_run
from sealagg_testkit.audit import audit_details
from sealagg_testkit.clients import FAST, join, run_clients

from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.errors import ConfigError
from sealagg.appliance.federation import add_client
from sealagg.appliance.privacy import PrivacyController, RoundPlan
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.errors import PrivacyRefusedError
from sealagg.client_shim.session import Participant

pytestmark = [pytest.mark.timeout(60)]
CLIENTS = [f"client{i}" for i in range(4)]
FLOOR = 1.0
POLICY = {"min_noise_multiplier": FLOOR, "required_privacy": ["distributed"]}
DP = {"mode": "distributed", "mechanism": "discrete_gaussian", "clip": 1.0}


def _federation(deployment, privacy: dict):
    """Four enrolled-style clients pinning the test authority, whose roster carries the
    floor; the appliance's ``[privacy]`` as given (secagg, one round)."""
    dep = deployment(clients=len(CLIENTS))
    dep.sign_roster(policy={"colluders": 1, "minimum_sum": 3, **POLICY})
    dep.configure(
        aggregation={"mode": "secagg", "min_clients": len(CLIENTS), "rounds": 1},
        deadlines=FAST,
        privacy=privacy,
    )
    return dep


def _tamper(monkeypatch, **changes) -> None:
    """The appliance plans an honest round, then sends the clients other DP parameters."""
    honest = RoundPlan.params

    def params(self):
        out = honest(self)
        for name, value in changes.items():
            setattr(out, name, value(getattr(out, name)) if callable(value) else value)
        return out

    monkeypatch.setattr(RoundPlan, "params", params)


def _all_refuse(dep, running, accepted, reason: str) -> None:
    app = running(dep.folder)
    threads, reports, errors = run_clients(dep, CLIENTS)
    join(threads)
    app.stop()
    assert getattr(app, "error", None) is None, app.error
    assert set(errors) == set(CLIENTS), (reports, errors)
    for error in errors.values():
        assert isinstance(error, PrivacyRefusedError), error
        assert reason in str(error) and "nothing was sent" in str(error)
    assert accepted == [], "a client sent something in a round below the signed DP floor"
    refusals = audit_details(dep, "round_refused_by_client")
    assert sorted(r["client"] for r in refusals) == CLIENTS
    assert {r["code"] for r in refusals} == {"privacy"}
    assert all(reason in r["detail"] for r in refusals)
    assert all(o.outcome != "published" for o in app.app.orchestrator.history)


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"noise_std": lambda s: s * 1e-6}, "below the federation's signed floor 1"),
        # A tiny clip shrinks the noise sigma = z·C with it; z (the ratio) is what is checked.
        ({"clip": lambda c: c * 1e-3, "noise_std": lambda s: s * 1e-4}, "signed floor 1"),
        # A coarse grid: rounding outweighs the noise (sensitivity ~1.07 C at d = 136).
        ({"range_bits": 8}, "grid rounds the update to a sensitivity"),
    ],
    ids=["tiny_noise", "tiny_clip_and_noise", "coarse_grid"],
)
def test_weakened_noise_is_refused_by_every_client_before_anything_is_sent(
    deployment, running, accepted, monkeypatch, changes, reason
):
    """Old code: all four took part and the unmasked sum carried z = 1e-6 (published)."""
    dep = _federation(deployment, {**DP, "noise_multiplier": FLOOR})
    _tamper(monkeypatch, **changes)
    _all_refuse(dep, running, accepted, reason)


def test_a_round_without_privacy_is_refused_when_the_policy_requires_it(
    deployment, running, accepted, monkeypatch
):
    """The appliance runs without DP and skips its own check (old code: published)."""
    monkeypatch.setattr(PrivacyController, "use_policy", lambda self, policy: None)
    dep = _federation(deployment, {"mode": "none"})
    _all_refuse(dep, running, accepted, "requires differential privacy")


def test_client_level_dp_is_refused_where_distributed_dp_is_required(
    deployment, running, accepted, monkeypatch
):
    """Client mode adds only a Gaussian share before masking; the policy asks for the
    secure sum to be the mechanism. The appliance skips its own check."""
    monkeypatch.setattr(PrivacyController, "use_policy", lambda self, policy: None)
    dep = _federation(deployment, {"mode": "client", "noise_multiplier": 2.0, "clip": 1.0})
    _all_refuse(dep, running, accepted, "not one the federation's policy requires")


def test_the_honest_round_at_the_floor_is_accepted_and_published(deployment, running, accepted):
    dep = _federation(deployment, {**DP, "noise_multiplier": FLOOR})
    app = running(dep.folder)
    threads, reports, errors = run_clients(dep, CLIENTS)
    join(threads)
    app.wait(30)
    assert errors == {}
    assert all(r[0].outcome == "published" for r in reports.values()), reports
    history = app.app.orchestrator.history
    assert history[-1].outcome == "published" and len(history[-1].contributors) == 4
    assert audit_details(dep, "round_refused_by_client") == []
    (record,) = audit_details(dep, "privacy")
    # The effective multiplier over the rounded sensitivity stays within the allowed slack.
    assert FLOOR / (1 + 2**-10) <= record["effective_noise_multiplier"] <= FLOOR * 1.5


def test_the_honest_appliance_refuses_to_start_below_the_signed_floor(deployment, running):
    dep = _federation(deployment, {**DP, "noise_multiplier": 0.5})
    with pytest.raises(ConfigError, match=r"noise multiplier 0\.5 .*below the federation's"):
        running(dep.folder)
    dep.configure(privacy={"mode": "none"})
    with pytest.raises(ConfigError, match="requires differential privacy"):
        running(dep.folder)


def test_a_plan_below_the_floor_aborts_the_round_on_the_appliance_first(
    deployment, running, accepted, monkeypatch
):
    """A roster with a higher floor installed while serving: the appliance's per-round check
    (the clients' rule on the numbers it is about to send) aborts the round, so no client
    is even asked."""
    dep = _federation(deployment, {**DP, "noise_multiplier": FLOOR})
    app = running(dep.folder)
    dep.sign_roster(policy={"colluders": 1, "minimum_sum": 3, "min_noise_multiplier": 2.0})
    offered: list[pb.RoundStart] = []
    threads = [threading.Thread(target=_wait_for_a_round, args=(dep, n, offered)) for n in CLIENTS]
    for t in threads:
        t.start()
    app.wait(20)  # its one round was aborted: the appliance is done
    join(threads, timeout=15)
    assert accepted == [] and offered == []
    (outcome,) = app.app.orchestrator.history
    assert outcome.outcome == "aborted", dataclasses.asdict(outcome)
    assert "is below the federation's signed floor 2" in outcome.reason


def _wait_for_a_round(dep, name: str, offered: list) -> None:
    """Poll for a round (that must never come) until the appliance has gone."""
    conn = Connection(dep.kits[name], address=dep.address, timeout=5, retry_seconds=1)
    try:
        offered.append(Participant(conn, poll_seconds=0.5).wait_for_round())
    except Exception:  # the appliance stopped after its aborted round
        pass
    finally:
        conn.close()


def test_a_masked_asynchronous_run_at_the_floor_publishes(deployment, running):
    """A masked lease carries no DP (its buffer's round does): under a floor the lease is
    taken and the buffer's round, checked against the floor, publishes."""
    dep = deployment(clients=3)
    dep.sign_roster(policy={"colluders": 1, "minimum_sum": 3, "min_noise_multiplier": FLOOR})
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": 3, "rounds": 0, "ready_window": 30.0},
        privacy={"mode": "client", "noise_multiplier": FLOOR, "clip": 1.0},
        deadlines=dict.fromkeys(FAST, 30),
    )
    running(dep.folder)
    start_async_run(dep, {"buffer_size": 3, "max_staleness": 2}, name="floor")
    names = CLIENTS[:3]
    connections = {n: Connection(dep.kits[n], address=dep.address) for n in names}
    try:
        p = {n: Participant(connections[n], poll_seconds=0.5) for n in names}
        leases = {n: p[n].wait_for_round(max_polls=40) for n in names}
        assert all(not lease.HasField("privacy") for lease in leases.values())
        updates = SeededUpdates(3, std=0.03)
        reports, errors = run_rounds_in_threads(
            {n: (p[n], leases[n], updates.compute(n)) for n in names}, timeout=30
        )
    finally:
        for conn in connections.values():
            conn.close()
    assert not errors, errors
    assert {r.outcome for r in reports.values()} == {"published"}
    assert audit_details(dep, "round_refused_by_client") == []
