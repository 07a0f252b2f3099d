"""One authenticated client must not stop a round or grow the appliance's memory by uploading.

Issue 17, item 7. Found by review: four uploads sending a byte every 5 s held all four
large-upload slots (the idle timer was per chunk, not per upload) and the round aborted; 200
uploads declaring ≤ 1 MiB each took the appliance's RSS from 289 to 533 MB. Here a round member
(``client3``) does both over real mutual TLS; the honest clients of the same round must still
publish, and every refusal reaches the attacker with its reason and lands in the audit log
under its name (``[uploads]`` in sealagg.toml, appliance/upload_limits.py).
"""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np
import pytest
from sealagg_testkit.clients import FAST, join, run_clients

from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import make_deployment
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

HONEST = ["client0", "client1", "client2"]
ATTACKER = "client3"


def _model(values: int) -> dict[str, np.ndarray]:
    return {"w": np.zeros(values, dtype=np.float32)}


def _delta(i: int, values: int) -> np.ndarray:
    return np.random.default_rng(900 + i).uniform(-0.2, 0.2, values).astype(np.float32)


def _weight(i: int) -> float:
    return 0.3 + 0.2 * i


def _deployment(tmp_path, values: int, uploads: dict):
    dep = make_deployment(tmp_path, clients=4, model=_model(values))
    dep.configure(
        aggregation={"mode": "plaintext", "min_clients": 4, "rounds": 1},
        deadlines={**FAST, "advertise_keys": 12},
        uploads=uploads,
    )
    return dep


def _honest(dep, values: int):
    def compute(start, tensors):
        i = int(threading.current_thread().name)
        return _delta(i, values), _weight(i), {}

    return run_clients(dep, HONEST, compute=compute, timeout=30)


def _check_published(dep, app, values: int) -> None:
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published", outcome
    assert outcome.contributors == tuple(HONEST)
    assert outcome.dropped == (ATTACKER,)
    store = open_store(FederationFolder.load(dep.folder))
    try:
        tensors = store.load_model(store.current_model().version)
    finally:
        store.close()
    expected = np.average(
        np.stack([_delta(i, values) for i in range(3)]),
        axis=0,
        weights=[_weight(i) for i in range(3)],
    )
    np.testing.assert_allclose(flatten(tensors, Layout.of(tensors)), expected, atol=1e-6)


def _refusals(dep) -> list[dict]:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        return [e.details for e in store.audit.entries() if e.event == "upload_refused"]
    finally:
        store.close()


def _attack(dep, streams: int, body) -> list[dict]:
    """client3 joins the round, then opens ``streams`` uploads at once, each fed by ``body``."""
    conn = Connection(dep.kits[ATTACKER], address=dep.address, timeout=30)
    start = Participant(conn, poll_seconds=0.5).wait_for_round(max_polls=40)
    header = pb.UploadHeader(
        round_id=start.round_id,
        kind="plaintext_update",
        weight=0.5,
        total_bytes=4 * start.vector_length,
    )
    results: list[dict] = [{} for _ in range(streams)]

    def upload(k: int) -> None:
        began = time.monotonic()
        try:
            conn.stub.Submit(body(header), timeout=40)
            results[k]["code"] = grpc.StatusCode.OK
        except grpc.RpcError as error:
            results[k]["code"], results[k]["detail"] = error.code(), error.details()
        results[k]["held"] = time.monotonic() - began

    threads = [threading.Thread(target=upload, args=(k,), daemon=True) for k in range(streams)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(45)
    conn.close()
    return results


@pytest.mark.timeout(120)
def test_slow_drip_uploads_are_cut_off_and_honest_clients_publish(tmp_path, running):
    """client3 opens four uploads of a 1.2 MB update (over one chunk: the "large upload" path)
    and sends one byte every 0.4 s on each. Before: the four held every large-upload slot, the
    honest uploads queued behind them until the phase deadline, the round aborted. Now: two
    are refused at once (one client, at most ``per_client`` uploads in flight), the other two
    are cut off when the whole-upload deadline (grace + declared size / minimum rate) passes,
    long before the phase deadline; the honest three publish their exact weighted mean."""
    values = 300_000
    dep = _deployment(
        tmp_path, values, {"grace_seconds": 1.0, "min_rate": 1 << 20, "per_client": 2}
    )
    app = running(dep.folder)
    stop = threading.Event()

    def drip(header):
        yield pb.UploadChunk(header=header)
        for _ in range(100):
            if stop.wait(0.4):
                return
            yield pb.UploadChunk(data=b"\x00")

    threads, _, errors = _honest(dep, values)
    results = _attack(dep, 4, drip)
    stop.set()
    join(threads)
    app.wait(60)
    assert not errors, errors
    codes = sorted(r["code"].name for r in results)
    assert codes == ["DEADLINE_EXCEEDED"] * 2 + ["RESOURCE_EXHAUSTED"] * 2, results
    for r in results:
        if r["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED:
            assert "2 uploads in flight" in r["detail"] and r["held"] < 2, r
        else:
            assert "too slow" in r["detail"] and r["held"] < 6, r
    _check_published(dep, app, values)
    limits = {(d["client"], d["limit"]) for d in _refusals(dep)}
    assert {(ATTACKER, "per_client"), (ATTACKER, "upload_deadline")} <= limits


@pytest.mark.timeout(120)
def test_a_flood_of_uploads_is_refused_beyond_the_client_cap_and_memory_stays_bounded(
    tmp_path, running
):
    """client3 opens 60 uploads declaring 1 MiB each (one chunk: before, these took no slot and
    each allocated its 1 MiB buffer at once) and sends nothing more. Now: at most two are in
    flight, 58 are refused with RESOURCE_EXHAUSTED at once, and the appliance's accounted
    in-flight bytes never exceed the two attacker uploads plus the three honest ones; the
    honest clients publish."""
    values = 1 << 18  # 1 MiB of float32
    dep = _deployment(tmp_path, values, {"grace_seconds": 2.0, "per_client": 2})
    app = running(dep.folder)
    stop = threading.Event()

    def hold(header):
        yield pb.UploadChunk(header=header)
        stop.wait(30)

    threads, _, errors = _honest(dep, values)
    results = _attack(dep, 60, hold)
    stop.set()
    join(threads)
    app.wait(60)
    assert not errors, errors
    refused = [r for r in results if r["code"] == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert len(refused) == 58, [r.get("detail") for r in results]
    assert all("in flight" in r["detail"] for r in refused)
    budget = app.app.upload_budget
    assert budget.client_peak[ATTACKER] == 2 * (1 << 20)
    assert budget.peak_bytes <= 5 * (1 << 20)
    assert budget.in_flight_bytes == 0  # every reservation released
    _check_published(dep, app, values)
    entries = [d for d in _refusals(dep) if d["client"] == ATTACKER]
    assert {d["limit"] for d in entries} >= {"per_client"}
    assert len(entries) <= 3  # one entry per client, limit and phase: the log is no flood target


def test_the_memory_bound_is_shared_first_come_first_served_and_waits_end_at_the_deadline():
    """The total bound without the network: uploads that do not fit wait in arrival order (no
    overtaking by smaller ones), one upload larger than the whole bound is admitted alone,
    a wait ends with RESOURCE_EXHAUSTED at its deadline, and every byte is given back."""
    import asyncio

    from sealagg.appliance.config import UploadsSection
    from sealagg.appliance.upload_limits import UploadBudget, UploadLimitError

    K = 1024

    async def scenario() -> list[str]:
        budget = UploadBudget(
            UploadsSection(total_bytes=100 * K, client_bytes=100 * K, per_client=3, min_rate=1024)
        )
        order: list[str] = []
        release = {k: asyncio.Event() for k in ("a", "b", "c", "d")}

        async def upload(key: str, name: str, size: int, wait: float | None = None) -> None:
            until = None if wait is None else asyncio.get_running_loop().time() + wait
            try:
                with budget.stream(name):
                    async with budget.hold(name, size, until):
                        order.append(f"+{key}")
                        await release[key].wait()
            except UploadLimitError as error:
                order.append(f"!{key}:{error.limit}:{error.code}")

        tasks = [asyncio.create_task(upload("a", "x", 60 * K))]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(upload("b", "y", 60 * K)))  # waits: 60 + 60 > 100
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(upload("c", "z", 10 * K)))  # fits, but behind b
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(upload("d", "w", 50 * K, wait=0.05)))  # gives up
        await asyncio.sleep(0.1)
        assert budget.in_flight_bytes == 60 * K
        release["a"].set()
        await asyncio.sleep(0.01)
        assert budget.in_flight_bytes == 70 * K  # b and c, in that order
        release["b"].set()
        release["c"].set()
        await asyncio.gather(*tasks)
        assert budget.in_flight_bytes == 0 and budget.peak_bytes == 70 * K
        big = asyncio.create_task(upload("a", "x", 500 * K))  # alone: admitted whatever its size
        release["a"] = asyncio.Event()
        await asyncio.sleep(0.01)
        assert budget.in_flight_bytes == 500 * K
        release["a"].set()
        await big
        assert budget.in_flight_bytes == 0
        return order

    order = asyncio.run(scenario())
    assert order[:4] == ["+a", "!d:total_bytes:RESOURCE_EXHAUSTED", "+b", "+c"], order


def test_one_clients_bounds_count_open_streams_and_declared_bytes():
    """per_client counts a stream from its first byte (a flood of headerless streams is
    refused too); client_bytes bounds one client's declared bytes, yet one upload of any size
    is always allowed; other clients are unaffected."""
    import asyncio
    import contextlib

    from sealagg.appliance.config import UploadsSection
    from sealagg.appliance.upload_limits import UploadBudget, UploadLimitError

    async def scenario() -> None:
        budget = UploadBudget(UploadsSection(per_client=2, client_bytes=4096, total_bytes=8192))
        with contextlib.ExitStack() as open_streams:
            open_streams.enter_context(budget.stream("x"))
            open_streams.enter_context(budget.stream("x"))
            with pytest.raises(UploadLimitError, match="2 uploads in flight") as info:
                open_streams.enter_context(budget.stream("x"))
            assert (info.value.limit, info.value.code) == ("per_client", "RESOURCE_EXHAUSTED")
            with budget.stream("y"):  # another client: its own bounds
                async with budget.hold("y", 10_000, None):  # alone: any size
                    assert budget.in_flight_bytes == 10_000
        with budget.stream("x"):
            async with budget.hold("x", 3000, None):
                with budget.stream("x"):
                    with pytest.raises(UploadLimitError, match="client_bytes") as info:
                        async with budget.hold("x", 2000, None):
                            pass
                    assert info.value.limit == "client_bytes"
        assert budget.in_flight_bytes == 0 and budget.client_peak["x"] == 3000

    asyncio.run(scenario())
