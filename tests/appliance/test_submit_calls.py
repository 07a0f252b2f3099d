"""How uploads travel: one unary call up to a chunk, a chunk stream above; the next task
handed back with the acknowledgement (one call per phase instead of an upload and a poll)."""

from __future__ import annotations

import grpc
import numpy as np
import pytest

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import base_model
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.connection import CHUNK_BYTES, Connection, _chunks
from sealagg.client_shim.session import Participant
from sealagg.client_shim.testing import start_participants

DIM = Layout.of(base_model()).dimension


def _delta(i: int) -> np.ndarray:
    return np.random.default_rng(7 + i).normal(0, 0.05, DIM).astype(np.float32)


@pytest.mark.parametrize(
    "sizes", [[0], [5], [CHUNK_BYTES], [CHUNK_BYTES + 1], [40, 3 * CHUNK_BYTES - 7, 1, 9]]
)
def test_chunks_cross_part_borders_and_fill_every_chunk_but_the_last(sizes):
    rng = np.random.default_rng(len(sizes))
    parts = [memoryview(rng.integers(0, 256, n, dtype=np.uint8).tobytes()) for n in sizes]
    header = pb.UploadHeader(total_bytes=sum(sizes))
    chunks = list(_chunks(header, parts))
    assert chunks[0].WhichOneof("kind") == "header"
    data = [c.data for c in chunks[1:]]
    assert b"".join(data) == b"".join(parts)
    assert all(len(d) == CHUNK_BYTES for d in data[:-1])
    assert all(0 < len(d) <= CHUNK_BYTES for d in data)


class _Counting(Participant):
    """Counts polls and acknowledgements that brought a task; waits long for each."""

    def __init__(self, connection, poll_seconds):
        super().__init__(connection, poll_seconds=15.0)
        self.polls = 0
        self.handed_over = 0
        get_task, submit = connection.get_task, connection.submit

        def counted_poll(wait):
            self.polls += 1
            return get_task(wait)

        def counted_submit(header, payload, **kw):
            ack = submit(header, payload, **kw)
            self.handed_over += ack.HasField("next")
            return ack

        connection.get_task, connection.submit = counted_poll, counted_submit


def _compute_for(name: str):
    return lambda start, tensors: (_delta(int(name.removeprefix("client"))), 1.0, {})


def _secagg_round_of_three(deployment, running, participant_cls=Participant) -> None:
    """One secagg round of three client threads; it must publish the exact mean."""
    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "secagg", "min_clients": 3, "rounds": 1})
    app = running(dep.folder)
    threads, reports, errors = start_participants(
        dep.kits, dep.address, sorted(dep.kits), _compute_for, participant_cls=participant_cls
    )
    app.wait(60)
    for t in threads:
        t.join(30)
    assert not errors, errors
    assert all(r.outcome == "published" for r in reports.values()), reports
    base = base_model()
    mean = np.mean([_delta(i) for i in range(3)], axis=0)
    store = open_store(FederationFolder.load(dep.folder))
    try:
        got = flatten(store.load_model(store.current_model().version), Layout.of(base))
    finally:
        store.close()
    np.testing.assert_allclose(got, flatten(base, Layout.of(base)) + mean, atol=2e-6)


def test_each_acknowledgement_hands_over_the_next_task(deployment, running):
    """A secagg round of three: five uploads per client (advertise, share keys, masked input,
    consistency, unmask: a complete graph has no coin reveal) and no poll after the round start
    (each ack carries the next step, the last one the round's end); the mean is exact."""
    participants: dict[str, _Counting] = {}

    class Recorded(_Counting):
        def __init__(self, connection, poll_seconds):
            super().__init__(connection, poll_seconds)
            participants[connection.kit.name] = self

    _secagg_round_of_three(deployment, running, Recorded)
    assert len(participants) == 3
    for name, p in participants.items():
        assert p.handed_over == 5, (name, p.handed_over)
        assert p.polls <= 2, (name, p.polls)  # the round start (and at most one idle answer)


def test_a_one_message_upload_is_checked_like_a_stream(deployment, running):
    """SubmitMessage refuses a body that is not what its header declared (INVALID_ARGUMENT)
    and a declared size the phase does not take, as a stream would (RESOURCE_EXHAUSTED);
    no wait asked → no task in the ack; the round goes on."""
    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 3, "rounds": 1})
    app = running(dep.folder)
    others, _, errors = start_participants(
        dep.kits, dep.address, ["client1", "client2"], _compute_for
    )
    conn = Connection(dep.kits["client0"], address=dep.address)
    start = Participant(conn, poll_seconds=1.0).wait_for_round(max_polls=30)
    good = _delta(0).tobytes()

    def message(data: bytes, declared: int) -> pb.UploadMessage:
        header = pb.UploadHeader(
            round_id=start.round_id, kind="plaintext_update", weight=1.0, total_bytes=declared
        )
        return pb.UploadMessage(header=header, data=data)

    invalid, exhausted = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED
    for data, declared, code in [
        (good + bytes(4), len(good), invalid),  # longer than declared
        (good[:-4], len(good), invalid),  # shorter than declared
        (good, len(good) + 4, exhausted),  # declared more than the phase takes: as a stream
        (bytes(CHUNK_BYTES + 4), CHUNK_BYTES + 4, exhausted),
    ]:
        with pytest.raises(grpc.RpcError) as info:
            conn.stub.SubmitMessage(message(data, declared), timeout=10)
        assert info.value.code() == code, info.value.details()
    ack = conn.stub.SubmitMessage(message(good, len(good)), timeout=10)
    assert ack.accepted and not ack.HasField("next")
    app.wait(60)
    for t in others:
        t.join(30)
    conn.close()
    assert not errors, errors
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published"
    assert outcome.contributors == ("client0", "client1", "client2")


def test_a_client_falls_back_to_streaming_on_an_appliance_without_one_message_uploads(
    deployment, running, monkeypatch
):
    """Version skew: an appliance that predates SubmitMessage answers UNIMPLEMENTED; the
    client streams the same upload instead (and keeps doing so); the mean is exact."""
    from sealagg.appliance.service import AggregatorService
    from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc

    monkeypatch.setattr(
        AggregatorService, "SubmitMessage", pb_grpc.AggregatorServicer.SubmitMessage
    )
    _secagg_round_of_three(deployment, running)
