"""Grouped secure rounds in ``sealagg serve`` (issue 22): above ``max_group_size`` members a
secagg/secagg+ round runs as independent secure groups (crypto/groups.py's public split),
moved in lockstep in one process, whose sums are added in Z_(2^32) and decoded once; every
client checks its group (client_shim/grouping.py) before anything leaves it.

* In process, real protocol clients fed what the appliance tells them: the grouped round's
  mean is bit-identical to one ungrouped round's over the same survivors and encodings.
* Over real gRPC + mutual TLS with real shim clients: the published model is the mean over
  every group's survivors (a client dropping in one group is handled by its group), a group
  falling below its quorum aborts the whole round with nothing published, and a client
  shown a group round id that is not the derived one refuses, reports it, and is audited.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sealagg_testkit.clients import FAST, delta, index_of, join, published_flat, run_clients, weight

from sealagg.appliance.config import ApplianceConfig, ConfigError, parse_config
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.grouped_round import GroupedRound, build_grouped_round, needs_groups
from sealagg.appliance.rounds import MaskedRound, Member
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import base_model
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.grouping import check_grouping
from sealagg.client_shim.session import round_config_from
from sealagg.crypto import (
    IdentityKey,
    QuantizationSpec,
    RoundConfig,
    SecAggClient,
    decode,
    encode_update,
    encoded_length,
)
from sealagg.crypto.groups import GroupingRefusedError, plan_groups
from sealagg.crypto.policy import FederationPolicy

pytestmark = [pytest.mark.timeout(120)]
POLICY = FederationPolicy(colluders=1, minimum_sum=3, allowed_modes=frozenset({"secagg+"}))


# ----------------------------------------------------------------- in process, bit for bit


def _drive(active, clients: dict[str, SecAggClient], round_id: bytes) -> None:
    """Every client answers every step the round hands it; the round closes each phase."""
    outgoing = {name: (0, c.advertise_keys()) for name, c in clients.items()}
    while True:
        for name, (phase, message) in outgoing.items():
            payload = message.encode()
            header = pb.UploadHeader(
                round_id=round_id, phase=phase, kind="protocol", total_bytes=len(payload)
            )
            active.accept(name, header, payload)
        tasks = active.close_phase()
        if active.finished:
            return
        outgoing = {
            name: (t.step.phase, clients[name].handle(decode(t.step.payload)))
            for name, t in tasks.items()
        }


def test_grouped_mean_is_bit_identical_to_one_round_over_the_same_survivors():
    n, d, dropped = 11, 40, {"c4"}
    round_id = bytes(range(32))
    ids = {f"c{i}": IdentityKey.generate() for i in range(1, n + 1)}
    members = [Member(i, f"c{i}", ids[f"c{i}"].verify_key_bytes) for i in range(1, n + 1)]
    grouped, audit = build_grouped_round(
        number=1,
        round_id=round_id,
        members=members,
        mode="secagg+",
        vector_length=encoded_length(d),
        clip=1.0,
        max_group_size=4,
        policy=POLICY,
        dropout_rate=0.1,
        corrupt_fraction=0.05,
    )
    plan = plan_groups(round_id, range(1, n + 1), 4, 3)
    assert [len(g) for g in plan.groups] == [4, 4, 3]
    assert [g["round_id"] for g in audit["groups"]] == [plan.round_id_of(i).hex() for i in range(3)]
    spec = QuantizationSpec(clip=1.0, max_clients=n)  # the whole round's headroom
    rng = np.random.default_rng(7)
    encoded = {
        m.name: encode_update(
            rng.uniform(-0.5, 0.5, d).astype(np.float32), 0.5 + m.index / 40, spec
        )
        for m in members
    }
    # Each member is built from exactly what the appliance tells it, after its own check.
    common = pb.RoundStart(round_id=round_id, mode="secagg+", clip=1.0)
    grouped.describe(common)
    clients = {}
    for m in members:
        start = grouped.round_start_for(m.name, common)
        assert start.max_clients == n and start.round_id == round_id
        group_id = check_grouping(start, POLICY, None)
        assert group_id == plan.round_id_of(start.grouping.group_index) != round_id
        config = round_config_from(start, round_id=group_id)
        client = SecAggClient(config, start.client_index, ids[m.name])
        client.set_input(encoded[m.name])
        clients[m.name] = client
    live = {k: v for k, v in clients.items() if k not in dropped}
    _drive(grouped, live, round_id)
    got = grouped.aggregate()

    whole = RoundConfig.create(
        round_id=round_id,
        identities={m.index: m.identity_key for m in members},
        threshold=2,
        vector_length=encoded_length(d),
        minimum_survivors=3,
    )
    single = MaskedRound(1, round_id, members, whole, spec)
    one = {
        m.name: SecAggClient(whole, m.index, ids[m.name]) for m in members if m.name not in dropped
    }
    for name, client in one.items():
        client.set_input(encoded[name])
    _drive(single, one, round_id)
    want = single.aggregate()

    assert got.contributors == want.contributors and got.dropped == ("c4",)
    assert got.mean_update.tobytes() == want.mean_update.tobytes()
    assert got.total_weight == want.total_weight
    assert grouped.total_digest_source() == single.total_digest_source()
    survivors = grouped.result_audit()["grouped_round_survivors"]["groups"]
    assert sum(len(g["survivors"]) for g in survivors) == n - 1
    assert [g["dropped"] for g in survivors if g["dropped"]] == [["c4"]]


def test_config_refuses_what_groups_cannot_run():
    base = {"federation": {"name": "f"}, "aggregation": {"mode": "secagg+", "max_group_size": 5}}
    assert parse_config(base).aggregation.max_group_size == 5
    assert parse_config({**base, "scale": {"stripes": 2}}).scale_enabled  # groups on stripes
    # A round of at most max_group_size members (or 0: never split) is an ordinary round.
    assert not needs_groups(5, 5) and needs_groups(5, 6) and not needs_groups(0, 10_000)
    cases = {
        "below the policy's minimum_sum 6": {
            "policy": {"minimum_sum": 6},
            "aggregation": {"min_clients": 6},
        },
        "rule = mean only": {"aggregation": {"rule": "median"}},
        "with \\[privacy\\] is not supported": {"privacy": {"mode": "distributed"}},
    }
    for why, extra in cases.items():
        data = {k: dict(v) for k, v in base.items()}
        for section, values in extra.items():
            data.setdefault(section, {}).update(values)
        with pytest.raises(ConfigError, match=why):
            parse_config(data)
    assert isinstance(parse_config(base), ApplianceConfig)


# ------------------------------------------------------------ over gRPC + mutual TLS


def _audit(dep, kind: str) -> list[dict]:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        return [e.details for e in store.audit.entries() if e.event == kind]
    finally:
        store.close()


def _flat_base() -> np.ndarray:
    base = base_model()
    return flatten(base, Layout.of(base))


def _dropping(name: str):
    """Every client's update; ``name``'s process fails while training (it vanishes)."""

    def compute(start, tensors):
        i = int(threading.current_thread().name)
        if f"client{i}" == name:
            raise RuntimeError("this client crashes while training")
        return delta(i), weight(i), {}

    return compute


def test_groups_publish_the_mean_over_every_groups_survivors(deployment, running, monkeypatch):
    """10 clients in two groups of 5: client3 vanishes (its group goes on at its quorum 4),
    and the appliance hands one member of the other group a wrong group round id: that
    member refuses before sending anything, its refusal is audited, its group goes on."""
    names = [f"client{i}" for i in range(10)]
    dep = deployment(clients=10)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": 10, "rounds": 1, "max_group_size": 5},
        deadlines={**FAST, "advertise_keys": 20},
    )
    victims: list[str] = []
    honest = GroupedRound.round_start_for

    def malicious(self, name, common):
        start = honest(self, name, common)
        dropped = self.group_of["client3"]
        other = min(self.groups[1 - dropped].members, key=index_of)
        if name == other:  # a group round id the public rule does not give
            victims.append(name)
            start.grouping.group_round_id = bytes(32)
        return start

    monkeypatch.setattr(GroupedRound, "round_start_for", malicious)
    app = running(dep.folder)
    threads, reports, errors = run_clients(dep, names, compute=_dropping("client3"))
    app.wait(90)
    join(threads, timeout=60)
    [victim] = victims
    assert set(errors) == {"client3", victim}, errors
    assert isinstance(errors[victim], GroupingRefusedError)
    assert "group's round id is not the one derived" in str(errors[victim])
    survivors = sorted(set(names) - {"client3", victim}, key=index_of)
    assert all(reports[n][0].outcome == "published" for n in survivors), reports

    [setup] = _audit(dep, "grouped_round")
    plan = plan_groups(bytes.fromhex(setup["round_id"]), range(1, 11), 5, 3)
    assert [g["members"] for g in setup["groups"]] == [
        [f"client{u - 1}" for u in group] for group in plan.groups
    ]
    assert [g["round_id"] for g in setup["groups"]] == [plan.round_id_of(i).hex() for i in range(2)]
    assert [g["size"] for g in setup["groups"]] == [5, 5]
    assert [g["minimum_survivors"] for g in setup["groups"]] == [4, 4]
    [refused] = _audit(dep, "round_refused_by_client")
    assert (refused["client"], refused["code"]) == (victim, "parameters")
    [result] = _audit(dep, "grouped_round_survivors")
    assert sorted((n for g in result["groups"] for n in g["survivors"]), key=index_of) == survivors
    assert sorted(n for g in result["groups"] for n in g["dropped"]) == sorted(["client3", victim])
    [aggregate] = _audit(dep, "aggregate")
    assert aggregate["contributors"] == survivors

    # The mean over all 8 survivors of both groups, within the quantisation bound (stochastic
    # rounding: the bit-for-bit equality with one round is the in-process test above).
    idx = [index_of(n) for n in survivors]
    want = np.average(np.stack([delta(i) for i in idx]), axis=0, weights=[weight(i) for i in idx])
    version, flat, _ = published_flat(dep)
    assert version == reports[survivors[0]][0].model_version == 2  # the base model is 1
    np.testing.assert_allclose(flat - _flat_base(), want, atol=1e-6)


def test_a_group_below_its_quorum_aborts_the_whole_round(deployment, running):
    """9 clients in three groups of 3 (quorum 3 each): client3 vanishes, so its group cannot
    finish; the whole round is aborted, every member is told, nothing is published."""
    names = [f"client{i}" for i in range(9)]
    dep = deployment(clients=9)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": 9, "rounds": 1, "max_group_size": 4},
        deadlines={**FAST, "advertise_keys": 20},
    )
    app = running(dep.folder)
    threads, reports, errors = run_clients(dep, names, compute=_dropping("client3"))
    join(threads, timeout=60)
    app.stop()
    assert set(errors) == {"client3"}, errors
    others = [n for n in names if n != "client3"]
    assert all(reports[n][0].outcome == "aborted" for n in others), reports
    reason = reports["client0"][0].reason
    assert "the whole round is aborted and nothing is published" in reason, reason
    [setup] = _audit(dep, "grouped_round")
    assert [g["size"] for g in setup["groups"]] == [3, 3, 3]
    lost = next(i for i, g in enumerate(setup["groups"]) if "client3" in g["members"])
    assert f"group {lost} (3 clients) aborted" in reason, reason
    assert _audit(dep, "grouped_round_survivors") == [] and _audit(dep, "aggregate") == []
    version, _, _ = published_flat(dep)
    assert version == 1  # the base model: nothing was published
