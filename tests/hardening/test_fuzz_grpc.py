"""Fuzzing every gRPC handler of a running appliance (real mutual TLS on loopback).

A masked round is held open while hypothesis sends: uploads built from mutated real
transcripts with fuzzed headers and chunk framing; polls with any wait (NaN, inf, negative);
downloads of any version; admin calls by a non-admin and by the admin; and raw random bytes
to every method of every service (so RPCs added later are covered without editing this file).
One-message uploads (SubmitMessage) and the wait for the next task in the header are fuzzed
with the chunked ones. Asserted: each call returns within its timeout with OK or a specific
status and a message (never UNKNOWN, which is what an unhandled exception in a handler
yields); afterwards the appliance still serves a good client. Example counts:
SEALAGG_FUZZ_EXAMPLES (default 25 per handler group).
"""

from __future__ import annotations

import json
import os
import threading
import tracemalloc

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sealagg_testkit.transcript import corpus

from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.kit import load_kit
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.connection import Connection

EXAMPLES = int(os.environ.get("SEALAGG_FUZZ_EXAMPLES", "25"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CORPUS = corpus()
#: What a refusal may be; UNKNOWN (an unhandled handler exception) is never acceptable.
REFUSALS = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.DEADLINE_EXCEEDED,  # the upload stalled / the client's own deadline
}


@pytest.fixture
def held_round(deployment, running):
    """An appliance with a secagg round open in its first phase, and three clients in it."""
    dep = deployment(clients=4)
    dep.configure(
        aggregation={"mode": "secagg", "min_clients": 3},
        deadlines={"advertise_keys": 600},
    )
    admin = load_kit(add_client(FederationFolder.load(dep.folder), "admin"))
    app = running(dep.folder)
    conns = {n: Connection(dep.kits[n], address=dep.address, timeout=10) for n in dep.kits}
    admin_conn = Connection(admin, address=dep.address, timeout=10)
    starts = {}

    def wait(name: str) -> None:
        for _ in range(60):
            task = conns[name].get_task(0.5)
            if task.WhichOneof("kind") == "round_start":
                starts[name] = task.round_start
                return

    threads = [threading.Thread(target=wait, args=(f"client{i}",)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(starts) == 3, starts
    yield dep, app, conns, admin_conn, starts["client0"].round_id
    for c in [*conns.values(), admin_conn]:
        c.close()


def _refusal(call) -> grpc.StatusCode:
    try:
        call()
        return grpc.StatusCode.OK
    except grpc.RpcError as error:
        code = error.code()
        assert code in REFUSALS, (code, error.details())
        assert error.details(), code
        return code


headers = st.builds(
    dict,
    round_id=st.sampled_from(["real", "other", "empty"]),
    phase=st.integers(0, 6),
    kind=st.sampled_from(["protocol", "plaintext_update", "", "x" * 300]),
    weight=st.floats(allow_nan=True, allow_infinity=True),
    metadata_json=st.sampled_from(["", "{}", '{"n": 3}', "[1]", "{", "x" * 5000]),
    declared=st.sampled_from(["exact", "less", "more", "huge", "max"]),
    framing=st.sampled_from(
        ["normal", "two_headers", "data_first", "header_only", "empty", "one_message"]
    ),
    wait_seconds=st.sampled_from([0.0, 0.0, 0.2, -1.0, float("nan"), float("inf")]),
)


def _payload(data) -> bytes:
    base = data.draw(st.sampled_from(CORPUS))
    raw = bytearray(base)
    for _ in range(data.draw(st.integers(0, 3))):
        if raw:
            raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        raw = bytearray(data.draw(st.binary(max_size=200)))
    return bytes(raw)


def test_every_handler_survives_fuzzing(held_round):
    """One held round serves every fuzzer (an open round costs a 10 s teardown)."""
    _, app, conns, admin_conn, round_id = held_round
    _huge_declared_upload_is_refused_before_allocation(conns, round_id)
    # Presence refuses a caller that takes no part in rounds before it reads (PERMISSION_DENIED,
    # tests/e2e/test_vanished_clients.py): its garbage goes through client3, a registered
    # client outside the held round (its stream ending cannot touch the round).
    _unparsable_requests_are_invalid_argument(admin_conn.channel, conns["client3"].channel)
    seen: dict[str, set] = {}

    @FUZZ
    @given(st.sampled_from(["client0", "client1", "client2"]), headers, st.data())
    def submit(who, h, data):
        payload = _payload(data)
        rid = {"real": round_id, "other": os.urandom(32), "empty": b""}[h["round_id"]]
        declared = {
            "exact": len(payload),
            "less": max(len(payload) - 1, 0),
            "more": len(payload) + 7,
            "huge": 2**40,
            "max": 2**64 - 1,
        }[h["declared"]]
        header = pb.UploadHeader(
            round_id=rid,
            phase=h["phase"],
            total_bytes=declared,
            kind=h["kind"],
            weight=h["weight"],
            metadata_json=h["metadata_json"],
            wait_seconds=h["wait_seconds"],
        )
        if h["framing"] == "one_message":
            message = pb.UploadMessage(header=header, data=payload)
            code = _refusal(lambda: conns[who].stub.SubmitMessage(message, timeout=10))
            seen.setdefault("SubmitMessage", set()).add(code.name)
            return
        chunks = {
            "normal": [pb.UploadChunk(header=header), pb.UploadChunk(data=payload)],
            "two_headers": [pb.UploadChunk(header=header)] * 2,
            "data_first": [pb.UploadChunk(data=payload), pb.UploadChunk(header=header)],
            "header_only": [pb.UploadChunk(header=header)],
            "empty": [],
        }[h["framing"]]
        code = _refusal(lambda: conns[who].stub.Submit(iter(chunks), timeout=10))
        seen.setdefault("Submit", set()).add(code.name)

    @FUZZ
    @given(
        st.sampled_from(["client0", "client1", "client2", "admin"]),
        st.floats(allow_nan=True, allow_infinity=True),
    )
    def poll(who, wait):
        conn = admin_conn if who == "admin" else conns[who]
        req = pb.TaskRequest(wait_seconds=wait)
        code = _refusal(lambda: conn.stub.GetTask(req, timeout=1.5))
        seen.setdefault("GetTask", set()).add(code.name)

    @FUZZ
    @given(st.integers(0, 2**64 - 1) | st.integers(0, 3))
    def download(version):
        def call():
            for _ in conns["client1"].stub.DownloadModel(
                pb.ModelRequest(version=version), timeout=10
            ):
                pass

        seen.setdefault("DownloadModel", set()).add(_refusal(call).name)

    @FUZZ
    @given(st.booleans(), st.integers(0, 2**64 - 1), st.booleans(), st.text(max_size=300))
    def admin_calls(as_admin, number, approve, reason):
        from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc

        conn = admin_conn if as_admin else conns["client2"]
        stub = pb_grpc.AdminStub(conn.channel)
        code = _refusal(lambda: stub.Status(pb.StatusRequest(), timeout=10))
        if as_admin:
            assert code == grpc.StatusCode.OK
            json.loads(stub.Status(pb.StatusRequest(), timeout=10).json)
        request = pb.DecisionRequest(round_number=number, approve=approve, reason=reason)
        code = _refusal(lambda: stub.Decide(request, timeout=10))
        assert code == (grpc.StatusCode.OK if as_admin else grpc.StatusCode.PERMISSION_DENIED)
        if as_admin:
            assert not stub.Decide(request, timeout=10).ok  # nothing awaits a decision

    methods = [
        (f"/{service.full_name}/{method.name}", method)
        for service in pb.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]

    @FUZZ
    @given(st.sampled_from(methods), st.binary(max_size=300), st.booleans())
    def raw(target, body, as_admin):
        path, method = target
        channel = (admin_conn if as_admin else conns["client0"]).channel
        identity = lambda b: b  # noqa: E731  (bytes go out as they are)
        if method.client_streaming:
            call = channel.stream_unary(path, identity, identity)
            args = iter([body, body])
        else:
            call = channel.unary_unary(path, identity, identity)
            args = body
        if method.server_streaming:  # both ways streaming (Presence) takes the iterator
            kind = channel.stream_stream if method.client_streaming else channel.unary_stream
            call = kind(path, identity, identity)

            def go():
                for _ in call(args, timeout=3):
                    pass
        else:

            def go():
                call(args, timeout=3)

        try:
            go()
            code = grpc.StatusCode.OK
        except grpc.RpcError as error:
            code = error.code()
            # Bytes that are not the request message: INVALID_ARGUMENT from the appliance's
            # MalformedRequestInterceptor (grpc.aio alone would answer UNKNOWN).
            assert code in REFUSALS, (path, code, error.details())
            assert error.details(), (path, code)
        seen.setdefault(path, set()).add(code.name)

    submit()
    poll()
    download()
    admin_calls()
    raw()

    # Still serving: the fourth client polls, downloads a verified model, the loop lives.
    good = conns["client3"]
    assert good.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
    version, data = good.download_model(0)
    assert version == 1 and data
    assert app.error is None and app.thread.is_alive()
    assert app.app.metrics.total("sealagg_refused_uploads_total") > 0
    print(json.dumps({k: sorted(v) for k, v in seen.items()}, indent=1))


def _huge_declared_upload_is_refused_before_allocation(conns, round_id) -> None:
    """total_bytes = 2^63 on a real upload: RESOURCE_EXHAUSTED, and the appliance (in this
    process) allocates nothing near it."""
    header = pb.UploadHeader(round_id=round_id, phase=0, total_bytes=2**63, kind="protocol")
    tracemalloc.start()
    try:
        with pytest.raises(grpc.RpcError) as info:
            conns["client0"].stub.Submit(iter([pb.UploadChunk(header=header)]), timeout=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "exceeds" in info.value.details()
    assert peak < 4 * 1024 * 1024, peak


def _unparsable_requests_are_invalid_argument(
    channel: grpc.Channel, participant: grpc.Channel
) -> None:
    """Bytes no protobuf parser accepts (a truncated varint), to every method of every
    service: INVALID_ARGUMENT naming the method (appliance/interceptors.py), never UNKNOWN.
    Methods only round participants may call go through ``participant``'s channel."""
    identity = lambda b: b  # noqa: E731
    garbage = b"\x08\xff"
    for service in pb.DESCRIPTOR.services_by_name.values():
        for method in service.methods:
            path = f"/{service.full_name}/{method.name}"
            via = participant if method.name == "Presence" else channel
            with pytest.raises(grpc.RpcError) as info:
                if method.client_streaming:
                    via.stream_unary(path, identity, identity)(iter([garbage]), timeout=5)
                elif method.server_streaming:
                    list(via.unary_stream(path, identity, identity)(garbage, timeout=5))
                else:
                    via.unary_unary(path, identity, identity)(garbage, timeout=5)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, info.value)
            assert path in info.value.details()
