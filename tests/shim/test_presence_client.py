"""The client's Presence stream (issue 25), against scripted appliances on loopback (real gRPC).

Before issue 25 the shim opened no stream at all: every test here failed on the old code
(no ``Participant.presence``, no heartbeat reached the server). Nothing is timed from above:
each test waits on a recorded condition with a generous timeout.
"""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import textwrap
import time

import grpc
import numpy as np
import pytest
from sealagg_testkit.attested import HARDWARE, MEASUREMENT, attested_federation
from sealagg_testkit.fake_aggregator import FakeAggregator
from sealagg_testkit.presence_server import PresenceAggregator

from sealagg.appliance.testing import TcpProxy, base_model, free_port, make_deployment
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout
from sealagg.client_shim.connection import INSECURE_NAME_HEADER, Connection
from sealagg.client_shim.errors import HyperparametersError
from sealagg.client_shim.presence import DropNotice, PresenceKeeper
from sealagg.client_shim.session import Participant

MODEL = {1: {"w": np.zeros((2, 3), np.float32)}, 2: {"w": np.ones((2, 3), np.float32)}}
WAIT = 30.0


@pytest.fixture
def kit(tmp_path):
    return make_deployment(tmp_path, clients=3, authority=False).kits["client0"]


@pytest.fixture
def servers():
    started: list[FakeAggregator] = []

    def make(kind=PresenceAggregator, **options):
        server = kind(MODEL, **options)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def connections():
    opened: list[Connection] = []

    def make(kit, server) -> Connection:
        connection = Connection(kit, address=server.address, insecure=True, timeout=5)
        connection.backoff = {"wait_initial": 0.05, "wait_max": 0.5, "wait_jitter": 0.05}
        opened.append(connection)
        return connection

    yield make
    for connection in opened:
        connection.close()


def _start(server: FakeAggregator, **fields: object) -> pb.RoundStart:
    participants = [
        pb.Participant(index=i + 1, name=f"client{i}", identity_key=bytes(32)) for i in range(3)
    ]
    return pb.RoundStart(
        round_number=1,
        round_id=os.urandom(16),
        mode="plaintext",
        model_version=1,
        client_index=1,
        participants=participants,
        threshold=2,
        minimum_survivors=2,
        submit_deadline_unix=time.time() + 60,
        model_sha256=server.sha256(1),
        **fields,
    )


def _compute(start, tensors):
    return np.full(6, 0.5, np.float32), 1.0, {}


def _end_round_on_upload(server: FakeAggregator, seen: dict[str, bool] | None = None) -> None:
    """Publish version 2 when the upload arrives; first note whether a heartbeat named the
    round while the client held its state (``seen["declared"]``)."""

    def on_upload(message: pb.UploadMessage) -> None:
        rid = bytes(message.header.round_id)
        if seen is not None:
            seen["declared"] = server.wait_until(lambda: rid in server.round_ids())
        server.put(
            round_end=pb.RoundEnd(round_id=rid, outcome=pb.RoundEnd.PUBLISHED, model_version=2)
        )

    server.on_upload = on_upload


def test_heartbeats_follow_the_beat_and_name_the_round_only_while_taking_part(
    kit, servers, connections
):
    server = servers(beat_seconds=0.2)
    connection = connections(kit, server)
    participant = Participant(connection, poll_seconds=0.2)
    keeper = participant.presence
    assert isinstance(keeper, PresenceKeeper) and connection.presence is keeper
    assert keeper.connected.wait(WAIT) and keeper.supported is True
    assert keeper.beat_seconds == 0.2 and keeper.silence_seconds == 1.0
    # Idle: beats keep coming, empty, at the appliance's cadence (never faster: no busy loop).
    assert server.wait_until(lambda: len(server.heartbeats) >= 6)
    times = [t for _, t, _ in server.heartbeats[:6]]
    assert times[5] - times[1] >= 4 * 0.2 * 0.9
    assert set(server.round_ids()) == {b""}
    # Insecure mode names the client in the same header as every other call.
    assert server.metadata[0][INSECURE_NAME_HEADER] == kit.name

    start = _start(server)
    seen: dict[str, bool] = {}
    _end_round_on_upload(server, seen)
    server.put(round_start=start)
    report = participant.run_round(_compute)
    assert report.outcome == "published" and seen["declared"] is True
    assert keeper.round_id == b""
    # After the round's end the heartbeats are empty again.
    count = len(server.heartbeats)
    assert server.wait_until(
        lambda: len(server.heartbeats) > count + 1 and server.heartbeats[-1][2] == b""
    )
    assert server.opened == [1]  # one stream throughout


def test_a_refused_round_is_left_at_once(kit, servers, connections):
    server = servers()
    participant = Participant(connections(kit, server), poll_seconds=0.2)
    start = _start(server, hyperparameters_json="[1, 2]")
    server.put(round_start=start)
    entered = participant.wait_for_round(max_polls=50)
    assert participant.presence.round_id == bytes(start.round_id)
    assert server.wait_until(lambda: bytes(start.round_id) in server.round_ids())
    with pytest.raises(HyperparametersError):
        participant.run_round(_compute, start=entered)
    assert participant.presence.round_id == b""
    assert server.wait_until(lambda: server.heartbeats[-1][2] == b"")
    assert [bytes(r.round_id) for r in server.refusals] == [bytes(start.round_id)]


def test_close_ends_the_stream_and_the_thread(kit, servers, connections):
    server = servers()
    connection = connections(kit, server)
    keeper = Participant(connection, poll_seconds=0.2).presence
    assert keeper.connected.wait(WAIT)
    thread = keeper._thread
    connection.close()
    assert server.wait_until(lambda: server.ended == [1])
    thread.join(WAIT)
    assert not thread.is_alive() and not keeper.running
    assert server.opened == [1]


def test_an_appliance_without_presence_leaves_the_client_polling(kit, servers, connections, caplog):
    server = servers(kind=FakeAggregator)  # answers Presence with UNIMPLEMENTED
    caplog.set_level(logging.INFO, logger="sealagg.client")
    participant = Participant(connections(kit, server), poll_seconds=0.2)
    keeper = participant.presence
    keeper._thread.join(WAIT)
    assert keeper.supported is False and not keeper.running
    assert sum("no presence stream" in r.getMessage() for r in caplog.records) == 1
    _end_round_on_upload(server)
    server.put(round_start=_start(server))
    report = participant.run_round(_compute)
    assert report.outcome == "published" and report.model_version == 2
    assert [u.header.kind for u in server.uploads] == ["plaintext_update"]


def test_the_stream_comes_back_after_an_appliance_restart_naming_the_round(
    kit, servers, connections
):
    first = servers()
    participant = Participant(connections(kit, first), poll_seconds=0.2)
    keeper = participant.presence
    assert keeper.connected.wait(WAIT)
    round_id = os.urandom(16)
    keeper.round_id = round_id  # as the session does on entering a round
    assert first.wait_until(lambda: round_id in first.round_ids())
    first.stop()
    second = servers(port=first.port)
    assert second.wait_until(lambda: round_id in second.round_ids())
    assert keeper.streams_opened >= 2 and keeper.supported is True


def test_a_client_started_before_the_appliance_connects_when_it_comes_up(kit, servers):
    port = free_port()
    connection = Connection(kit, address=f"127.0.0.1:{port}", insecure=True, timeout=5)
    try:
        keeper = Participant(connection, poll_seconds=0.2).presence
        assert keeper.running and keeper.supported is None
        server = servers(port=port)
        assert keeper.connected.wait(WAIT) and keeper.supported is True
        assert server.wait_until(lambda: len(server.heartbeats) >= 2)
    finally:
        connection.close()


def test_a_drop_notice_is_kept_and_logged(kit, servers, connections, caplog):
    server = servers()
    caplog.set_level(logging.WARNING, logger="sealagg.client")
    keeper = Participant(connections(kit, server), poll_seconds=0.2).presence
    assert keeper.connected.wait(WAIT)
    dropped = os.urandom(16)
    server.push(
        pb.PresenceNotice(
            dropped_round_id=dropped, dropped_phase="share_keys", dropped_reason="silent"
        )
    )
    deadline = time.monotonic() + WAIT
    while keeper.last_drop is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert keeper.last_drop == DropNotice(dropped, "share_keys", "silent")
    assert any(
        "dropped from round" in r.getMessage() and dropped.hex()[:16] in r.getMessage()
        for r in caplog.records
    )
    assert keeper.beat_seconds == 0.2  # a notice without a beat keeps the cadence


def test_pinning_a_certificate_opens_the_new_stream_before_the_old_one_closes(
    kit, servers, connections
):
    server = servers()
    connection = connections(kit, server)
    keeper = Participant(connection, poll_seconds=0.2).presence
    assert keeper.connected.wait(WAIT)
    first_channel = keeper._channel
    # Attested mode pins the appliance's certificate: the calls get a new channel. (The test
    # server is insecure, so only the presence stream, insecure here too, is exercised.)
    connection.pin_server_certificate(kit.ca_cert_pem)
    assert server.wait_until(lambda: ("end", 1) in server.events)
    assert server.events.index(("open", 2)) < server.events.index(("end", 1))
    assert keeper._channel is not first_channel
    assert server.wait_until(lambda: len(server.round_ids(2)) >= 4)
    assert server.opened == [1, 2]  # the switch's stream is kept, no extra reconnect


def test_an_attested_client_keeps_its_presence_across_the_pin(tmp_path, running, caplog):
    """The real appliance over mutual TLS: the client pins the attested certificate at the
    round's start; its presence moves to the pinned trust and it is never seen vanished."""
    hardware = HARDWARE[sorted(HARDWARE)[0]]()
    dep = attested_federation(tmp_path, hardware, deadlines={"advertise_keys": 5})
    running(dep.folder, attester=hardware.attester(MEASUREMENT))
    caplog.set_level(logging.INFO)
    connection = Connection(dep.kits["client0"], address=dep.address)
    try:
        participant = Participant(connection, poll_seconds=0.5)
        keeper = participant.presence
        assert keeper.connected.wait(WAIT)
        dimension = Layout.of(base_model()).dimension
        report = participant.run_round(lambda s, t: (np.ones(dimension, np.float32), 1.0, {}))
        assert connection.pinned_certificate is not None
        assert keeper.supported is True and keeper.streams_opened == 2
        assert keeper.connected.is_set() and keeper.running
    finally:
        connection.close()
    assert report.outcome == "published"
    assert not [r for r in caplog.records if "client0 vanished" in r.getMessage()]


def test_a_cut_upload_connection_does_not_end_the_presence_stream(kit, servers):
    server = servers()
    proxy = TcpProxy(("127.0.0.1", server.port))
    connection = Connection(kit, address=proxy.address, insecure=True, timeout=5)
    connection.backoff = {"wait_initial": 0.05, "wait_max": 0.5, "wait_jitter": 0.05}
    try:
        keeper = Participant(connection, poll_seconds=0.2).presence
        assert keeper.connected.wait(WAIT)
        proxy.cut_after(100_000)  # inside the upload below
        header = pb.UploadHeader(round_id=b"r" * 16, phase=0, kind="plaintext_update")
        ack = connection.submit(header, bytes(300_000), deadline_unix=time.time() + 60)
        assert ack.accepted and proxy.cuts == 1
        beats = len(server.round_ids(1))
        # The stream's own connection was not the one cut: stream 1 goes on beating.
        assert server.wait_until(lambda: len(server.round_ids(1)) >= beats + 3)
        assert server.opened == [1] and server.ended == []
    finally:
        connection.close()
        proxy.close()


def test_a_connection_dropped_without_close_ends_its_stream(kit, servers):
    server = servers()
    connection = Connection(kit, address=server.address, insecure=True, timeout=5)
    keeper = Participant(connection, poll_seconds=0.2).presence
    assert keeper.connected.wait(WAIT)
    thread = keeper._thread
    del connection
    gc.collect()  # the keeper holds its connection weakly: no thread or stream is leaked
    assert server.wait_until(lambda: server.ended == [1])
    thread.join(WAIT)
    assert not thread.is_alive() and server.opened == [1]


class _RefusingAggregator(PresenceAggregator):
    def Presence(self, request_iterator, context):
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "revoked")


def test_a_refused_stream_stops_the_keeper(kit, servers, connections):
    server = servers(kind=_RefusingAggregator)
    keeper = Participant(connections(kit, server), poll_seconds=0.2).presence
    keeper._thread.join(WAIT)
    assert keeper.refused is True and not keeper.running


def test_presence_can_be_turned_off(kit, servers, connections):
    server = servers()
    connection = connections(kit, server)
    participant = Participant(connection, poll_seconds=0.2, presence=False)
    assert participant.presence is None and connection.presence is None
    _end_round_on_upload(server)
    server.put(round_start=_start(server))
    assert participant.run_round(_compute).outcome == "published"
    assert server.opened == []


_EXITING_CLIENT = textwrap.dedent(
    """
    import os, sys
    from pathlib import Path
    from sealagg.appliance.kit import load_kit
    from sealagg.client_shim.connection import Connection
    from sealagg.client_shim.session import Participant

    connection = Connection(load_kit(Path(sys.argv[1])), address=sys.argv[2], insecure=True)
    participant = Participant(connection, poll_seconds=0.2)
    participant.presence.round_id = b"r" * 16
    sys.stdin.readline()  # the test saw the round named in a heartbeat
    if sys.argv[3] == "os_exit":
        os._exit(0)
    # a normal exit with the stream open and nothing closed
    """
)


@pytest.mark.parametrize("how", ["return", "os_exit"])
def test_a_client_process_exits_promptly_and_its_stream_ends(kit, servers, how):
    server = servers()
    process = subprocess.Popen(
        [sys.executable, "-c", _EXITING_CLIENT, str(kit.source), server.address, how],
        stdin=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.wait_until(lambda: b"r" * 16 in server.round_ids(), timeout=120)
        assert server.ended == []
        _, stderr = process.communicate("exit\n", timeout=120)  # a hang at exit fails here
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-2000:]
    assert server.wait_until(lambda: server.ended == [1])


def test_the_pytorch_entry_point_holds_presence_unless_told_not_to(tmp_path, running):
    """``connect()`` (what the README's three-line loop uses) holds presence by default, and
    ``presence=False`` gives the old poll-only client."""
    from sealagg.client_shim.pytorch import connect

    dep = make_deployment(tmp_path, clients=2)
    running(dep.folder)
    with_presence = connect(dep.kits["client0"], ready_timeout=30)
    without = connect(dep.kits["client1"], ready_timeout=30, presence=False)
    try:
        keeper = with_presence.participant.presence
        assert isinstance(keeper, PresenceKeeper)
        assert keeper.connected.wait(30) and keeper.supported is True
        assert without.participant.presence is None
    finally:
        with_presence.participant.connection.close()
        without.participant.connection.close()
