"""A malicious appliance invents the other members of a round (issue 17, item 1).

The appliance is the CA, so it can issue certificates and identity keys for names of its own
choosing ("ghosts") and list them in a round beside one honest victim. With n=3 and two
ghosts whose inputs the appliance picks, the "sum" is the victim's input. Each test runs a
real appliance over mutual TLS and the real client shim; the ghosts are ordinary shim
participants driven by the appliance (it holds their keys).

- Development kits (the appliance made every key, no authority pinned) cannot stop this:
  the first test shows the victim's vector recovered exactly, which is why those kits are
  for development only.
- A kit that pins the federation authority verifies the authority's signed roster in every
  round and refuses, before anything of its update is sent: a member not on the roster, a
  roster signed by another key, an older roster version.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sealagg_testkit.clients import DIM, FAST, delta, join, published_flat, run_clients, weight

from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.kit import load_kit
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment, base_model, make_deployment
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.session import Participant
from sealagg.crypto import IdentityKey
from sealagg.crypto.errors import (
    RosterMembershipError,
    RosterRollbackError,
    RosterSignatureError,
)
from sealagg.crypto.roster import IdentityKeySigner

pytestmark = [pytest.mark.timeout(90)]

VICTIM = "client0"
GHOSTS = ["client7", "client8"]  # names the appliance chose; it generated their keys
GHOST_WEIGHT = 1.0


def _add_ghosts(dep: Deployment) -> None:
    """The appliance (its operator) issues two kits of its own: it holds their keys."""
    federation = FederationFolder.load(dep.folder)
    for name in GHOSTS:
        dep.kits[name] = load_kit(add_client(federation, name))


def _puppet(conn) -> Participant:
    """A ghost: a shim participant that the appliance drives, so it checks nothing."""
    participant = Participant(conn, poll_seconds=0.5)
    participant.roster = None
    return participant


def _zeros(start, tensors):
    return np.zeros(DIM, dtype=np.float32), GHOST_WEIGHT, {}


def _ghost_round(dep: Deployment, running) -> tuple[object, dict, bool]:
    """One secagg round of the victim and the two ghosts; returns (outcome, victim errors,
    whether the victim's training ran)."""
    dep.configure(
        aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1},
        deadlines={**FAST, "advertise_keys": 4},
    )
    app = running(dep.folder)
    trained = []

    def victim_update(start, tensors):
        trained.append(True)
        return delta(0), weight(0), {}

    ghosts, _, ghost_errors = run_clients(dep, GHOSTS, make=_puppet, compute=_zeros)
    victim, _, errors = run_clients(dep, [VICTIM], compute=victim_update)
    app.wait(60)
    join(ghosts + victim)
    assert not ghost_errors, ghost_errors
    return app.app.orchestrator.history[-1], errors, bool(trained)


def _total_weight(dep: Deployment) -> float:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        records = [e.details for e in store.audit.entries() if e.event == "aggregate"]
    finally:
        store.close()
    return records[-1]["total_weight"]


def test_ghosts_recover_the_victim_with_a_development_kit(tmp_path: Path, running):
    """Without an authority (development kits), the victim takes part with two ghosts and the
    appliance reads its update from the published "mean": exact up to quantization."""
    dep = make_deployment(tmp_path, clients=1, authority=False)
    _add_ghosts(dep)
    outcome, errors, trained = _ghost_round(dep, running)
    assert not errors and trained
    assert outcome.outcome == "published" and set(outcome.contributors) == {VICTIM, *GHOSTS}
    _, flat, _ = published_flat(dep)
    base = base_model()
    mean = flat - flatten(base, Layout.of(base))
    total = _total_weight(dep)  # unmasked with the sum: the weight rides in the vector
    victim_weight = total - len(GHOSTS) * GHOST_WEIGHT
    recovered = mean * total / victim_weight
    np.testing.assert_allclose(victim_weight, weight(0), atol=1e-6)
    np.testing.assert_allclose(recovered, delta(0), atol=5e-5)


def _refused_before_sending(dep: Deployment, running, accepted, error_type, match: str):
    outcome, errors, trained = _ghost_round(dep, running)
    error = errors.get(VICTIM)
    assert isinstance(error, error_type), errors
    assert match in str(error)
    assert not trained, "the victim trained (and could have sent) before checking the roster"
    assert not [a for a in accepted if a[1] == VICTIM], "something of the victim's was accepted"
    assert outcome.outcome == "aborted"


def test_victim_refuses_ghosts_not_on_the_signed_roster(deployment, running, accepted):
    """The roster (signed by the authority, off the appliance) lists client0..client2; the
    appliance puts its own two ghosts in the round. The victim refuses before it trains or
    sends anything: RosterMembershipError naming the ghost."""
    dep = deployment(clients=3)
    _add_ghosts(dep)
    _refused_before_sending(
        dep, running, accepted, RosterMembershipError, "'client7' is not on the federation roster"
    )


def test_a_roster_signed_by_another_key_is_refused(deployment, running, accepted):
    """The appliance signs its own roster that lists the ghosts and serves it: the victim
    verifies it against the authority key pinned in its kit and refuses."""
    dep = deployment(clients=1)
    _add_ghosts(dep)
    impostor = IdentityKeySigner(IdentityKey.generate())
    forged = dep.sign_roster(signer=impostor, install=False)
    dep.federation.paths.roster.write_bytes(forged)  # the appliance writes its own file
    _refused_before_sending(dep, running, accepted, RosterSignatureError, "not signed by")


def test_an_older_roster_version_is_refused(deployment, running, accepted):
    """Version 2 (ghosts on it, say before the authority removed them) is superseded by
    version 3, which this client already accepted; the appliance serves version 2 again."""
    dep = deployment(clients=1)
    _add_ghosts(dep)
    old = dep.sign_roster(install=False)  # version 2: victim and ghosts
    current = dep.sign_roster([VICTIM])  # version 3: the ghosts are gone
    dep.federation.paths.roster.write_bytes(old)
    seen = {}

    def make(conn):
        participant = Participant(conn, poll_seconds=0.5)
        participant.roster.accept(current)  # what this client saw in an earlier round
        seen["p"] = participant
        return participant

    dep.configure(
        aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1},
        deadlines={**FAST, "advertise_keys": 4},
    )
    app = running(dep.folder)
    ghosts, _, _ = run_clients(dep, GHOSTS, make=_puppet, compute=_zeros)
    victim, _, errors = run_clients(dep, [VICTIM], make=make)
    app.wait(60)
    join(ghosts + victim)
    assert isinstance(errors.get(VICTIM), RosterRollbackError), errors
    assert "older than version 3" in str(errors[VICTIM])
    assert not [a for a in accepted if a[1] == VICTIM]
    assert seen["p"].roster.version == 3
    assert json.loads(old)["format"] == "sealagg-signed-roster/1"
