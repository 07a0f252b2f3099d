"""Masked inputs streamed into the one-process running sum as they arrive (no Ray): a real
appliance, real shim clients over gRPC and mutual TLS, one secagg+ round of six clients
sending in small gRPC chunks (so a masked input is many chunks):

- four stream their masked inputs: the published model is the exact FedAvg of those four,
  and no sink ever held more than about one gRPC chunk of the upload (measured by the sink,
  far below the vector's size);
- one sends its header and half of its masked input, then cancels the call: what it added
  is taken back out, it is not a survivor and the round completes over the others;
- one sends a masked input whose prefix names another round: refused before anything is
  added.

And with d = 200,000 coordinates, the round's sink takes 800 kB masked inputs fed in 64 KiB
pieces, holding at most one piece (plus a cut word), and the sum is exact.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

import numpy as np
import pytest
from sealagg_testkit.audit import audit_details
from sealagg_testkit.clients import expected_bias_and_weight, join, published_flat, run_clients
from sealagg_testkit.streaming import CancelsHalfway, StoppedError, WrongPrefix

from sealagg.appliance.masked_stream import MaskedInputSink
from sealagg.appliance.rounds import MaskedRound, Member
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim import connection as shim_connection
from sealagg.client_shim.session import Participant
from sealagg.crypto import Phase, QuantizationSpec, SecAggClient
from sealagg.crypto.messages import decode
from sealagg.crypto.testing import make_round

N = 6
#: The shim's gRPC chunk in this test: a masked input (137 words, 548 bytes) is 14 chunks.
CLIENT_CHUNK = 40
DEADLINES = dict.fromkeys(
    ("advertise_keys", "share_keys", "masked_input", "consistency_check", "unmasking"), 60
)


class Truncates(CancelsHalfway):
    """Cancels once the appliance added part of its masked input into the running sum."""

    sinks: ClassVar[list[MaskedInputSink]] = []

    def took_part(self, name: str) -> bool:
        sink = next((s for s in self.sinks if s.member.name == name), None)
        return sink is not None and sink.added > 0


@pytest.fixture
def sinks(monkeypatch) -> list[MaskedInputSink]:
    """Every masked-input sink the appliance created (observed only)."""
    seen: list[MaskedInputSink] = []
    original = MaskedInputSink.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self)

    monkeypatch.setattr(MaskedInputSink, "__init__", init)
    monkeypatch.setattr(Truncates, "sinks", seen)
    monkeypatch.setattr(WrongPrefix, "refusal", [])
    return seen


def test_masked_inputs_stream_into_the_running_sum(deployment, running, sinks, monkeypatch) -> None:
    monkeypatch.setattr(shim_connection, "CHUNK_BYTES", CLIENT_CHUNK)  # the clients' setting
    dep = deployment(clients=N)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": N, "max_clients": N, "rounds": 1},
        deadlines=DEADLINES,
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

    streams = {s.member.name: s for s in sinks}
    assert set(streams) == {f"client{i}" for i in range(N)}  # every masked input streamed
    vector_bytes = 4 * sinks[0].words
    for i in members:  # streamed whole through the sink, straight into the sum
        sink = streams[f"client{i}"]
        assert sink.outcome == "complete" and sink.added == vector_bytes, sink.outcome
    truncated = streams["client4"]
    assert truncated.outcome == "aborted" and truncated.begun
    assert 0 < truncated.added < vector_bytes  # part of it was in the sum, then taken out
    forged = streams["client5"]
    assert forged.outcome == "refused" and forged.added == 0 and not forged.begun
    (refusal,) = WrongPrefix.refusal
    assert refusal.startswith("INVALID_ARGUMENT") and "nothing was added" in refusal
    # The most any sink held at once: one gRPC chunk (plus a cut word), far below 4*d
    # (client4 sent half its upload as one gRPC message: that message, nothing more).
    peak = max(streams[f"client{i}"].peak_held for i in members)
    assert 0 < peak <= CLIENT_CHUNK + 3 < 2 * CLIENT_CHUNK < vector_bytes
    assert truncated.peak_held <= truncated.received + 3 < vector_bytes


def test_the_sink_streams_a_large_vector_in_bounded_memory() -> None:
    """d = 200,000 (800 kB masked inputs), three clients: each masked input is fed in
    64 KiB pieces at odd offsets (as gRPC would hand them over, a word cut between two
    pieces), the sink never holds more than one piece plus a cut word, and the unmasked
    sum is exactly the sum of the inputs."""
    d, piece = 200_000, (64 << 10) + 1
    kit = make_round(3, dimension=d, threshold=2, seed=3)
    config = kit.config
    members = [Member(u, f"client{u}", config.identities[u]) for u in sorted(kit.identities)]
    served = MaskedRound(
        1, config.round_id, members, config, QuantizationSpec(clip=1.0, max_clients=3)
    )
    clients = {u: SecAggClient(config, u, kit.identities[u]) for u in kit.identities}
    made: list[MaskedInputSink] = []

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
        assert isinstance(sink, MaskedInputSink)
        made.append(sink)
        longer = pb.UploadHeader()  # a masked input with blames: another size, received whole
        longer.CopyFrom(header)
        longer.total_bytes += 1
        assert served.stream_sink(f"client{u}", longer) is None

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

    result = served.server.result
    assert result.survivors == (1, 2, 3)
    assert np.array_equal(result.total, kit.expected_sum(result.survivors))
    assert len(made) == 3 and {s.outcome for s in made} == {"complete"}
    assert all(s.added == 4 * d for s in made)
    assert 0 < max(s.peak_held for s in made) <= piece + 3  # 64 KiB against 800 kB
