"""Distributed DP in a masked (secagg+) asynchronous run, end to end over mutual TLS (issue 21).

Real appliance on loopback, real shim ``Participant`` objects; K = 3, noise z = 1, a per-client
budget of two contributions:

- buffer 1 aborts below its round's minimum (a member vanishes after advertising keys):
  nothing is published and its members' pending charges are released;
- buffers 2 and 3 publish; buffer 3 has two members one version stale: each published
  version is its parent plus the staleness-weighted mean of the members' updates plus noise
  of the size the round planned (each member's full share, whatever its staleness);
- the fast client (in buffers 2 and 3) is then refused, told why in a RunEnd, while three
  others publish buffer 4; every client's ε (reported per client, and in each buffer's audit
  entry) equals an independent dp-accounting composition of its own participations, the
  run-level controller records no round (no double count), and when fewer than K clients
  have budget left the run stops with the reason.
"""

from __future__ import annotations

import dp_accounting
import numpy as np
import pytest
from dp_accounting import rdp
from sealagg_testkit.async_runs import (
    SeededUpdates,
    flat_version,
    run_rounds_in_threads,
    start_async_run,
    wait_until,
)
from sealagg_testkit.async_runs import current_version as _current
from sealagg_testkit.async_runs import read_state as _state

from sealagg.appliance import admin_api
from sealagg.appliance.accounting import RoundPrivacy, epsilon
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import add_client
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.errors import RunEnded
from sealagg.client_shim.session import Participant
from sealagg.crypto.staleness import StalenessPolicy

K = 3
POLICY = StalenessPolicy(kind="polynomial", max_staleness=2, a=0.5)
ASYNC = {"buffer_size": K, "max_staleness": 2, "staleness": "polynomial", "a": 0.5}
DELTA = 1e-5
Z = 1.0
#: Two contributions at z ≈ 1 fit (combined multiplier >= 0.70), three do not (<= 1/√3).
TARGET = round(
    (epsilon([RoundPrivacy(0, 1.0, 0.70)], DELTA) + epsilon([RoundPrivacy(0, 1.0, 0.58)], DELTA))
    / 2,
    3,
)
PRIVACY = {"mode": "client", "noise_multiplier": Z, "clip": 1.0, "target_epsilon": TARGET}
DEADLINES = dict.fromkeys(
    ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking"), 60
)


class VanishAfter(Participant):
    """Closes its connection right after its first message of a buffer's round."""

    def _send(self, start, phase, message, meta, deadline_unix):
        sent = super()._send(start, phase, message, meta, deadline_unix)
        if start.async_buffer and phase == 0:
            self.connection.close()
            raise ConnectionAbortedError("vanished after advertising keys")
        return sent


@pytest.fixture
def masked_dp(deployment, running):
    dep = deployment(clients=6)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": 3, "rounds": 0, "ready_window": 30.0},
        privacy=PRIVACY,
        deadlines=DEADLINES,
    )
    app = running(dep.folder)
    connections: list[Connection] = []

    def participant(name: str, cls: type[Participant] = Participant) -> Participant:
        conn = Connection(dep.kits[name], address=dep.address)
        connections.append(conn)
        return cls(conn, poll_seconds=0.5)

    yield dep, app, participant
    for conn in connections:
        if not conn.closed:
            conn.close()


def _library_epsilon(multipliers: list[float]) -> float:
    acc = rdp.RdpAccountant()
    acc.compose(
        dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z) for z in multipliers])
    )
    return float(acc.get_epsilon(DELTA))


def test_masked_async_dp_accounts_per_client_refuses_the_spent_and_releases_aborts(masked_dp):
    dep, app, participant = masked_dp
    orch = app.app.orchestrator
    ledger = orch.privacy.clients
    run_id = start_async_run(dep, ASYNC, rounds=0, name="masked-dp")["id"]
    names = [f"client{i}" for i in range(6)]
    p = {n: participant(n) for n in names[:5]}
    p["client5"] = participant("client5", VanishAfter)
    updates = SeededUpdates(5, std=0.03)
    leases = {n: p[n].wait_for_round(max_polls=40) for n in names}
    # A masked lease carries no DP parameters: the buffer's round does, sized on its own.
    assert all(not lease.HasField("privacy") for lease in leases.values())

    def job(name: str):
        return p[name], leases[name], updates.compute(name)

    # Buffer 1: client5 vanishes after advertising keys; 2 left, the round needs 3.
    reports, errors = run_rounds_in_threads({n: job(n) for n in ("client1", "client2", "client5")})
    assert set(errors) == {"client5"}, errors
    assert {r.outcome for r in reports.values()} == {"aborted"}
    assert _current(dep) == 1
    wait_until(lambda: not ledger._pending)  # the aborted buffer's charges are released
    assert not ledger.clients
    # Buffer 2 (parent 1): client0, client1, client2 all fresh.
    for n in ("client1", "client2"):
        leases[n] = p[n].wait_for_round(max_polls=40)
    reports, errors = run_rounds_in_threads({n: job(n) for n in ("client0", "client1", "client2")})
    assert not errors, errors
    assert {r.outcome for r in reports.values()} == {"published"}
    assert _current(dep) == 2
    # Buffer 3 (parent 2): client0 on 2; client3 and client4 on 1 (tau 1, s = 1/√2).
    leases["client0"] = p["client0"].wait_for_round(max_polls=40)
    assert leases["client0"].model_version == 2
    reports, errors = run_rounds_in_threads({n: job(n) for n in ("client0", "client3", "client4")})
    assert not errors, errors
    assert {r.outcome for r in reports.values()} == {"published"}
    assert reports["client3"].staleness_weight == pytest.approx(2**-0.5)
    assert _current(dep) == 3
    # The fast client spent its budget: told so, no lease; the others go on.
    with pytest.raises(RunEnded) as ended:
        p["client0"].wait_for_round(max_polls=40)
    assert "privacy budget of client0 spent" in ended.value.reason
    for n in ("client1", "client2", "client3"):
        leases[n] = p[n].wait_for_round(max_polls=40)
    reports, errors = run_rounds_in_threads({n: job(n) for n in ("client1", "client2", "client3")})
    assert not errors, errors
    assert {r.outcome for r in reports.values()} == {"published"}
    assert _current(dep) == 4  # client1 and client2 were in buffers 1, 2 and 4 on a budget
    # of two: the aborted buffer 1 cost them nothing.

    # Noise is present, and of the size planned: the version minus its parent minus the
    # staleness-weighted mean of the updates is the summed noise over Σ s(tau).
    records = [
        e.details
        for e in _state(dep, lambda s: list(s.audit.entries()))
        if e.event == "privacy" and e.details.get("schedule") == "async"
    ]
    assert [r["buffer"] for r in records] == [2, 3, 4]
    for version, members in (
        (3, {"client0": (2, 1.0), "client3": (1, 2**-0.5), "client4": (1, 2**-0.5)}),
        (4, {"client1": (3, 1.0), "client2": (3, 1.0), "client3": (3, 1.0)}),
    ):
        record = records[version - 2]
        assert record["masked"] and record["min_survivors"] == K
        sigma_c = record["noise_std_per_client"]
        assert sigma_c == pytest.approx(Z * 1.0 / K**0.5)
        den = sum(s for _, s in members.values())
        signal = sum(s * updates.given[(n, base)][0] for n, (base, s) in members.items()) / den
        residual = flat_version(dep, version) - flat_version(dep, version - 1) - signal
        expected_std = K**0.5 * sigma_c / den  # every member's full share, unscaled
        assert 0.7 < np.std(residual) / expected_std < 1.35
        assert abs(np.mean(residual)) < 4 * expected_std / len(residual) ** 0.5
        assert record["staleness_weights"] == {n: pytest.approx(s) for n, (_, s) in members.items()}

    # Per-client ε, composed from each client's own participations, checked independently.
    z_of: dict[str, list[float]] = {}
    for record in records:
        z_b = record["effective_noise_multiplier"]
        assert Z * (1 - 1e-3) <= z_b <= Z  # 3 of 3 survived: exactly z, rounded down
        for name in record["epsilon_per_client"]:
            z_of.setdefault(name, []).append(z_b)
    assert {n: len(z) for n, z in z_of.items()} == {
        "client0": 2, "client1": 2, "client2": 2, "client3": 2, "client4": 1,
    }  # fmt: skip
    with admin_api.connect(dep.folder, address=dep.address, timeout=15) as admin:
        report = admin.privacy()  # what an operator reads, over the admin kit's mutual TLS
    per_client = report["clients"]["epsilon"]
    for name, zs in z_of.items():
        independent = _library_epsilon(zs)
        assert per_client[name] == pytest.approx(independent, rel=2e-3)
        assert per_client[name] >= independent * (1 - 1e-9)
    assert per_client["client0"] > per_client["client4"] > 0
    assert report["clients"]["participations"]["client0"] == 2
    # client0 was refused first (above); client1..3 ran out with buffer 4.
    assert report["clients"]["exhausted"] == ["client0", "client1", "client2", "client3"]
    assert records[-1]["epsilon_per_client"]["client3"] == pytest.approx(per_client["client3"])
    assert "client5" not in per_client  # only in the aborted buffer
    assert orch.privacy.rounds == []  # the run-level controller counted no buffer twice
    assert report["epsilon_cumulative"] == pytest.approx(max(per_client.values()), rel=1e-3)
    exhausted = [
        e.details
        for e in _state(dep, lambda s: list(s.audit.entries()))
        if e.event == "privacy_budget_exhausted"
    ]
    assert exhausted[0]["client"] == "client0"
    # Only client4 and client5 could still contribute: no buffer of 3 can fill, the run stops.
    wait_until(lambda: orch.runs.get(run_id).status == "stopped", 30)
    assert "only 2 client(s) can still contribute" in orch.runs.get(run_id).reason
