"""``sealagg serve`` in plaintext mode with ``[scale]``: a robust rule run inside Ray stripes,
real shim clients over gRPC and mutual TLS (issue 22).

One round, seven clients, rule = median, three stripes of unequal sizes ([1, 2, 1], several
chunks each: the model has 136 values, ``chunk_words`` = 16):

- client0 is Byzantine (a huge constant update with the largest weight): the published
  model is the base plus the one-process coordinate median of the seven updates, bit for bit
  (the aggregate equals :func:`kernels.coordinate_median` of the stacked updates), and the
  audit says which rule ran over whom and names the stripes;
- client6 streams its update chunk by chunk through ``Submit`` (the stripes' streaming
  path; the shim's small uploads take the unary path, received whole): first with a NaN,
  refused with the one-process round's reason while the round goes on, then a good one;
- the stripes are plain stripes (:mod:`appliance.scale.plain_stripe`) on worker nodes.

Refusals at load ([scale] with attested mode and an ``address``; robust rules in masked
modes or with DP) and what loads ([scale] plaintext with any rule, attested on a local
cluster) are checked without a cluster.

The Ray cluster is the session's (tests/scale/conftest.py), joined through ``address``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import grpc
import numpy as np
import pytest
import ray
from ray.exceptions import RayActorError
from sealagg_testkit.audit import audit_details
from sealagg_testkit.clients import DIM, delta, join, published_flat, weight

from sealagg import kernels
from sealagg.appliance.config import load_config
from sealagg.appliance.errors import ConfigError
from sealagg.appliance.robust import RobustPlainRound
from sealagg.appliance.rounds import Member, PlainRound, UploadRefusedError
from sealagg.appliance.scale.cluster import stripe_options
from sealagg.appliance.scale.coordinator import plan_stripes
from sealagg.appliance.scale.plain_round import StripedPlainRound
from sealagg.appliance.scale.plain_stripe import plain_stripe_actor_class
from sealagg.appliance.testing import base_model
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant
from sealagg.client_shim.testing import start_participants

N = 7
SCALE = {"stripes": [1, 2, 1], "chunk_words": 16}
DEADLINES = {"advertise_keys": 60}  # bounds a hang only: the round closes when all answered
BYZANTINE = "client0"
STREAMER = "client6"


def _update(name: str) -> np.ndarray:
    i = int(name.removeprefix("client"))
    return np.full(DIM, 50.0, np.float32) if name == BYZANTINE else delta(i)


def _weight(name: str) -> float:
    return 1.0 if name == BYZANTINE else weight(int(name.removeprefix("client")))


def _stream(conn: Connection, start: pb.RoundStart, update: np.ndarray) -> pb.SubmitAck:
    """The update through ``Submit`` as a chunk stream (odd-sized chunks, cut mid-float)."""
    data = update.tobytes()
    header = pb.UploadHeader(
        round_id=start.round_id,
        phase=0,
        kind="plaintext_update",
        weight=_weight(STREAMER),
        total_bytes=len(data),
    )
    chunks = [pb.UploadChunk(header=header)]
    chunks += [pb.UploadChunk(data=data[a : a + 90]) for a in range(0, len(data), 90)]
    return conn.stub.Submit(iter(chunks), timeout=30)


def test_a_plaintext_median_round_runs_in_ray_stripes(
    cluster, deployment, running, monkeypatch
) -> None:
    seen: list[tuple[StripedPlainRound, object, list[str]]] = []
    original = StripedPlainRound.aggregate

    def aggregate(self):  # observed, nothing changed: the result and where the stripes ran
        result = original(self)
        seen.append((self, result, ray.get([s.node_id.remote() for s in self.calls.stripes])))
        return result

    monkeypatch.setattr(StripedPlainRound, "aggregate", aggregate)
    dep = deployment(clients=N)
    dep.configure(
        aggregation={"mode": "plaintext", "min_clients": N, "rounds": 1, "rule": "median"},
        deadlines=DEADLINES,
        scale={**SCALE, "address": cluster.cluster.address},
    )
    app = running(dep.folder)
    runtime = app.app.orchestrator.scale

    names = [f"client{i}" for i in range(N)]
    honest = [n for n in names if n != STREAMER]
    threads, _, errors = start_participants(
        dep.kits,
        dep.address,
        honest,
        lambda name: lambda start, tensors: (_update(name), _weight(name), {}),
    )
    conn = Connection(dep.kits[STREAMER], address=dep.address, timeout=30)
    try:
        start = Participant(conn, poll_seconds=0.5).wait_for_round(max_polls=60)
        poisoned = _update(STREAMER)
        poisoned[DIM - 3] = np.nan  # in the last stripe: earlier chunks were forwarded
        with pytest.raises(grpc.RpcError) as refused:
            _stream(conn, start, poisoned)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "update contains NaN or Inf; refused"
        _stream(conn, start, _update(STREAMER))  # the round went on: accepted now
    finally:
        conn.close()
    app.wait(150)
    join(threads, 30)
    assert not errors, errors

    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published", outcome
    assert outcome.contributors == tuple(names)
    ((active, result, nodes),) = seen
    assert active.calls.remote and active.stripe_count == 3
    head = ray.get_runtime_context().get_node_id()  # this driver runs on the head node
    assert head not in nodes and set(nodes) <= {w.node_id for w in cluster.workers}
    assert 0 < active.stream_peak <= 4 * SCALE["chunk_words"]  # one chunk held, at most
    want = kernels.coordinate_median(np.stack([_update(n) for n in names]))  # sorted names
    assert np.array_equal(result.mean_update, want)  # the one-process median, bit for bit
    version, flat, _ = published_flat(dep)
    base = base_model()
    assert version == 2
    np.testing.assert_allclose(flat, flatten(base, Layout.of(base)) + want, atol=1e-6)
    assert np.abs(flat - flatten(base, Layout.of(base))).max() < 0.5  # not pulled to 50

    (robust,) = audit_details(dep, "robust_aggregation")
    assert robust == {"round": 1, "rule": "median", "clients": N}
    (parameters,) = audit_details(dep, "round_parameters")
    assert parameters["stripes"] == 3 and parameters["stripe_weights"] == [1.0, 2.0, 1.0]
    assert parameters["n"] == N and parameters["dimension"] == DIM
    assert runtime.stripes == []  # the appliance stopped: its stripes are gone, the cluster not


@pytest.fixture(scope="module")
def plain_stripes(cluster) -> Iterator[list[Any]]:
    """Three plain stripe actors on the worker nodes, killed afterwards."""
    actor = plain_stripe_actor_class(**stripe_options())
    pool = [actor.remote() for _ in range(3)]
    yield pool
    for stripe in pool:
        ray.kill(stripe, no_restart=True)


def _ray_round(
    stripes: list[Any], rule: str, n: int = 8, missing: tuple[str, ...] = ()
) -> tuple[StripedPlainRound, Any]:
    """The same uploads (received whole) of n clients but ``missing`` to a striped round on
    ``stripes`` and to the one-process round (returned in this order)."""
    members = [Member(i + 1, f"client{i}", bytes([i]) * 32) for i in range(n)]
    rid = bytes([len(rule)]) * 32
    updates = {m.name: _update(m.name) for m in members}
    reference = (
        PlainRound(1, rid, members, DIM)
        if rule == "mean"
        else RobustPlainRound(1, rid, members, DIM, rule=rule, f=2, beta=0.25)
    )
    striped = StripedPlainRound(
        1,
        rid,
        members,
        DIM,
        rule=rule,
        f=2,
        beta=0.25,
        stripes=stripes,
        ranges=plan_stripes(DIM, SCALE["stripes"]),
        chunk_words=SCALE["chunk_words"],
        timeout=30.0,
    )
    for name in sorted(set(updates) - set(missing), reverse=True):
        header = pb.UploadHeader(round_id=rid, kind="plaintext_update", weight=_weight(name))
        header.total_bytes = 4 * DIM
        reference.accept(name, header, updates[name].tobytes())
        striped.accept(name, header, updates[name].tobytes())
    return striped, reference


@pytest.mark.parametrize("rule", ["mean", "trimmed_mean", "krum", "multi_krum", "geometric_median"])
def test_every_rule_on_ray_stripes_equals_the_one_process_round(plain_stripes, rule) -> None:
    """The rules' Ray paths (results from the object store, arrays as arguments): as
    tests/scale/test_robust_striped.py in process, bit for bit."""
    striped, reference = _ray_round(plain_stripes, rule)
    striped.close_phase(), reference.close_phase()
    got, want = striped.aggregate(), reference.aggregate()
    assert np.array_equal(got.mean_update, want.mean_update)
    assert got.total_weight == want.total_weight and got.contributors == want.contributors
    assert striped.result_audit() == reference.result_audit()
    assert striped.total_digest_source() == reference.total_digest_source()
    if rule in ("krum", "multi_krum"):
        assert BYZANTINE not in striped.robust_report["selected"]


def test_a_lost_plain_stripe_aborts_the_round(cluster) -> None:
    """A stripe actor killed mid-round: the next upload is refused with the reason, nobody
    is waited for any longer, the close aborts the round and nothing is aggregated."""
    actor = plain_stripe_actor_class(**stripe_options())
    pool = [actor.remote() for _ in range(3)]
    try:
        striped, _ = _ray_round(pool, "median", n=8, missing=("client7",))
        ray.kill(pool[1], no_restart=True)
        with pytest.raises(RayActorError):  # the kill has landed (it is not synchronous)
            for _ in range(60):
                ray.get(pool[1].node_id.remote(), timeout=30)
                time.sleep(0.5)
        header = pb.UploadHeader(round_id=striped.round_id, kind="plaintext_update", weight=0.5)
        header.total_bytes = 4 * DIM
        with pytest.raises(UploadRefusedError) as refused:
            striped.accept("client7", header, delta(7).tobytes())
        assert refused.value.code == "FAILED_PRECONDITION"
        assert "a stripe was lost mid-round" in refused.value.detail
        assert striped.waiting_for == set()  # the phase closes now
        with pytest.raises(UploadRefusedError) as aborted:
            striped.close_phase()
        assert aborted.value.code == "ABORTED" and "nothing is published" in aborted.value.detail
        assert not striped.finished
    finally:
        for stripe in pool:
            ray.kill(stripe, no_restart=True)


@pytest.mark.parametrize(
    ("sections", "words"),
    [
        (
            {"aggregation": {"mode": "attested"}, "attestation": {"provider": "software"}},
            "outside the attested appliance",
        ),
        ({"aggregation": {"rule": "median", "min_clients": 6}}, "bucketed robust rounds"),
        (
            {"aggregation": {"mode": "plaintext", "rule": "krum"}, "privacy": {"mode": "client"}},
            "not combined with DP",
        ),
        ({"aggregation": {"mode": "ckks"}}, "not aggregation.mode = ckks"),
    ],
)
def test_what_scale_refuses_at_load(deployment, sections, words) -> None:
    dep = deployment(clients=3)
    dep.configure(**{"scale": {"stripes": 2, "address": "127.0.0.1:6379"}, **sections})
    with pytest.raises(ConfigError, match="scale") as refused:
        load_config(dep.folder / "sealagg.toml")
    assert words in str(refused.value)


@pytest.mark.parametrize(
    "sections",
    [
        {"aggregation": {"mode": "plaintext", "rule": "geometric_median"}},
        {"aggregation": {"mode": "plaintext"}, "privacy": {"mode": "client"}},
        {
            "aggregation": {"mode": "attested", "rule": "krum", "f": 1, "min_clients": 5},
            "attestation": {"provider": "software"},
        },
    ],
)
def test_plaintext_and_local_attested_rounds_load_with_scale(deployment, sections) -> None:
    dep = deployment(clients=3)
    dep.configure(**{"scale": {"stripes": 2}, **sections})
    config = load_config(dep.folder / "sealagg.toml")
    assert config.scale_enabled and config.aggregation.mode == sections["aggregation"]["mode"]
