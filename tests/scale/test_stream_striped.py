"""Striped masked inputs streamed to the stripes as they arrive (issue 22): a real appliance
with ``[scale]``, real shim clients over gRPC and mutual TLS, the session's Ray cluster.

One secagg+ round, six clients sending in small gRPC chunks (so an upload is many chunks):

- four stream their masked inputs: the published model is the exact FedAvg of those four,
  and no stream ever held more than two forwarded chunks' worth of bytes (measured by the
  sink, far below the vector's size);
- one sends its header and half of its masked input, then cancels the call: its chunks are
  staged but it is not a survivor and the round completes over the others, exact sum;
- one sends a masked input whose prefix names another round: refused before any chunk
  reaches a stripe.

And with d = 200,000 coordinates, the appliance's round and sink on the cluster's stripes
stream 800 kB masked inputs fed in 64 KiB pieces, holding at most two 16 KiB chunks.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

import numpy as np
import pytest
import ray
from sealagg_testkit.audit import audit_details
from sealagg_testkit.clients import expected_bias_and_weight, join, published_flat, run_clients
from sealagg_testkit.streaming import CancelsHalfway, StoppedError, WrongPrefix
from sealagg_testkit.striped import two_rounds_with_a_stripe_killed

from sealagg.appliance.rounds import Member
from sealagg.appliance.scale.cluster import stripe_options
from sealagg.appliance.scale.coordinator import plan_stripes, stripe_actor_class
from sealagg.appliance.scale.masked_round import StripedMaskedRound
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim import connection as shim_connection
from sealagg.client_shim.session import Participant
from sealagg.crypto import Phase, QuantizationSpec, SecAggClient
from sealagg.crypto.messages import decode
from sealagg.crypto.testing import make_round

N = 6
CHUNK_WORDS = 16
#: The shim's gRPC chunk in this test: a masked input (137 words, 548 bytes) is 14 chunks.
CLIENT_CHUNK = 40
DEADLINES = dict.fromkeys(
    ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking"), 60
)


class Truncates(CancelsHalfway):
    """Cancels once the appliance forwarded part of its masked input to the stripes."""

    rounds: ClassVar[list[StripedMaskedRound]] = []

    def took_part(self, name: str) -> bool:
        sink = next((r.streams.get(name) for r in self.rounds), None)
        return sink is not None and sink.forwarded > 0


@pytest.fixture
def rounds(monkeypatch) -> list[StripedMaskedRound]:
    """Every striped round the appliance created (observed only)."""
    seen: list[StripedMaskedRound] = []
    original = StripedMaskedRound.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(StripedMaskedRound, "__init__", init)
    monkeypatch.setattr(Truncates, "rounds", seen)
    monkeypatch.setattr(WrongPrefix, "refusal", [])
    return seen


def test_masked_inputs_stream_to_the_stripes(
    cluster, deployment, running, rounds, monkeypatch
) -> None:
    monkeypatch.setattr(shim_connection, "CHUNK_BYTES", CLIENT_CHUNK)  # the clients' setting
    dep = deployment(clients=N)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": N, "max_clients": N, "rounds": 1},
        deadlines=DEADLINES,
        scale={"stripes": [3, 1], "chunk_words": CHUNK_WORDS, "address": cluster.cluster.address},
    )
    app = running(dep.folder)

    def make(conn):
        kind = {"client4": Truncates, "client5": WrongPrefix}.get(conn.kit.name, Participant)
        return kind(conn, poll_seconds=0.5)

    threads, _, errors = run_clients(dep, [f"client{i}" for i in range(N)], make=make)
    app.wait(150)
    join(threads, 30)
    assert set(errors) == {"client4", "client5"}, errors
    assert all(isinstance(e, StoppedError) for e in errors.values()), errors

    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published", outcome
    members = [0, 1, 2, 3]
    assert outcome.contributors == tuple(f"client{i}" for i in members)
    version, flat, _ = published_flat(dep)
    assert version == 2
    np.testing.assert_allclose(flat, expected_bias_and_weight(members), atol=2e-6)
    assert len(audit_details(dep, "aggregate")) == 1

    (served,) = rounds
    vector_bytes = 4 * served.config.vector_length
    streams = served.streams
    for i in members:  # streamed, whole, through the sink
        sink = streams[f"client{i}"]
        assert sink.outcome == "complete" and sink.forwarded == vector_bytes, sink.outcome
    truncated = streams["client4"]
    assert truncated.outcome == "aborted"
    assert 0 < truncated.forwarded < vector_bytes  # part of it was staged on the stripes
    forged = streams["client5"]
    assert forged.outcome == "refused" and forged.forwarded == 0  # nothing reached a stripe
    (refusal,) = WrongPrefix.refusal
    assert refusal.startswith("INVALID_ARGUMENT") and "nothing was forwarded" in refusal
    # The most any stream held at once: at most two chunks of the stripes, far below 4*d.
    assert 0 < served.stream_peak <= 2 * 4 * CHUNK_WORDS < vector_bytes
    assert served.stream_peak == max(s.peak_held for s in streams.values())


def test_the_sink_streams_a_large_vector_in_bounded_memory(cluster) -> None:
    """d = 200,000 (800 kB masked inputs), three clients, the appliance's round and sink on
    the cluster's stripes: each masked input is fed in 64 KiB pieces (as gRPC would hand
    them over), the sink never holds more than two 16 KiB chunks, and the assembled sum is
    exactly the sum of the inputs."""
    d, chunk_words, piece = 200_000, 4_096, 64 << 10
    kit = make_round(3, dimension=d, threshold=2, seed=3)
    config = kit.config
    ranges = plan_stripes(d, [3, 1])
    actor = stripe_actor_class(**stripe_options())
    stripes = [actor.remote() for _ in ranges]
    try:
        members = [Member(u, f"client{u}", config.identities[u]) for u in sorted(kit.identities)]
        served = StripedMaskedRound(
            1,
            config.round_id,
            members,
            config,
            QuantizationSpec(clip=1.0, max_clients=3),
            stripes=stripes,
            ranges=ranges,
            chunk_words=chunk_words,
            timeout=60,
        )
        clients = {u: SecAggClient(config, u, kit.identities[u]) for u in kit.identities}

        def send(u: int, message) -> None:
            payload = message.encode()
            header = pb.UploadHeader(
                round_id=config.round_id,
                phase=served.phase_index,
                kind="protocol",
                total_bytes=len(payload),
            )
            sink = served.stream_sink(f"client{u}", header)
            if served.phase_index != Phase.MASKED_INPUT:
                assert sink is None  # other phases: the whole-payload path
                served.accept(f"client{u}", header, payload)
                return
            assert sink is not None

            async def stream():
                for at in range(0, len(payload), piece):
                    await sink.feed(payload[at : at + piece])
                return await sink.finish()

            served.accept(f"client{u}", header, asyncio.run(stream()))

        for u, client in clients.items():
            client.set_input(kit.inputs[u])
            send(u, client.advertise_keys())
        tasks = served.close_phase()
        while tasks:
            for name, task in tasks.items():
                u = served.members[name].index
                send(u, clients[u].handle(decode(bytes(task.step.payload))))
            tasks = served.close_phase()

        outcome = served.striped.outcome
        assert outcome is not None and outcome.survivors == (1, 2, 3)
        assert np.array_equal(outcome.total, kit.expected_sum(outcome.survivors))
        assert {s.outcome for s in served.streams.values()} == {"complete"}
        assert all(s.forwarded == 4 * d for s in served.streams.values())
        assert 0 < served.stream_peak <= 2 * 4 * chunk_words  # 32 KiB against 800 kB
    finally:
        for stripe in stripes:
            ray.kill(stripe, no_restart=True)


def test_a_stripe_lost_under_a_stream_aborts_the_round_at_once(
    cluster, deployment, running, rounds, monkeypatch
) -> None:
    """As with whole uploads: the round aborts with the reason, nothing is published, and
    the next round (the lost stripe replaced) publishes."""
    monkeypatch.setattr(shim_connection, "CHUNK_BYTES", CLIENT_CHUNK)
    n = 4
    dep = deployment(clients=n)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": n, "max_clients": n, "rounds": 2},
        deadlines=DEADLINES,
        scale={"stripes": [3, 1], "chunk_words": CHUNK_WORDS, "address": cluster.cluster.address},
    )
    app = running(dep.folder)
    reports = two_rounds_with_a_stripe_killed(dep, app, n, monkeypatch)
    names = [f"client{i}" for i in range(n)]
    aborted, published = app.app.orchestrator.history[-2:]
    assert aborted.outcome == "aborted" and "stripe" in aborted.reason, aborted
    assert published.outcome == "published" and published.contributors == tuple(names)
    first = rounds[0]
    assert first.lost is not None and "stripe" in first.lost
    assert "refused" in {s.outcome for s in first.streams.values()}  # the stream saw the loss
    for name in names:
        assert reports[name][0].outcome == "aborted", reports[name]
    version, flat, _ = published_flat(dep)
    assert version == 2
    np.testing.assert_allclose(flat, expected_bias_and_weight(range(n)), atol=2e-6)
