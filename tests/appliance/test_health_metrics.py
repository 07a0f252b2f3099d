"""Health service, state gauges and named refusals of a running appliance, over real mTLS."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from sealagg.appliance import pki
from sealagg.appliance.federation import (
    FederationFolder,
    add_client,
    init_federation,
    revoke_client,
)
from sealagg.appliance.kit import ClientKit, load_kit
from sealagg.appliance.metrics import CertificateExpiry, StateCollector
from sealagg.appliance.testing import base_model, free_port
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc
from sealagg.appliance.wire.modelcodec import Layout
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant

DIM = Layout.of(base_model()).dimension
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _channel(kit: ClientKit, address: str) -> grpc.Channel:
    """What appliance/cli/_admin.py's AdminClient builds from a kit: mutual TLS."""
    ca, key, cert = kit.channel_credentials_material()
    return grpc.secure_channel(
        address,
        grpc.ssl_channel_credentials(ca, key, cert),
        options=[("grpc.ssl_target_name_override", kit.server_name)],
    )


def _admin_kit(dep) -> ClientKit:
    return load_kit(add_client(FederationFolder.load(dep.folder), "admin"))


def _scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# ---- health ---------------------------------------------------------------------------------


def test_health_is_serving_over_mtls_and_not_serving_at_shutdown(deployment, running):
    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 3})
    admin = _admin_kit(dep)
    app = running(dep.folder)
    channel = _channel(admin, dep.address)
    health = health_pb2_grpc.HealthStub(channel)
    for service in ("", "sealagg.v1.Aggregator"):
        reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert reply.status == SERVING, service
    with pytest.raises(grpc.RpcError) as unknown:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"), timeout=10)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    # Without a client certificate: no answer at all (mutual TLS stays required).
    bare = grpc.secure_channel(
        dep.address,
        grpc.ssl_channel_credentials(admin.ca_cert_pem),
        options=[("grpc.ssl_target_name_override", admin.server_name)],
    )
    with pytest.raises(grpc.RpcError) as anonymous:
        health_pb2_grpc.HealthStub(bare).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert anonymous.value.code() == grpc.StatusCode.UNAVAILABLE
    bare.close()

    seen: list[int] = []
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
    reader = threading.Thread(target=lambda: seen.extend(r.status for r in _until_error(watch)))
    reader.start()
    _wait(lambda: seen, 10, "the first Watch answer")
    app.stop()
    reader.join(30)
    assert seen[0] == SERVING and seen[-1] == NOT_SERVING, seen
    channel.close()


def _until_error(stream):
    try:
        yield from stream
    except grpc.RpcError:
        return


def test_health_is_not_serving_when_the_store_fails(deployment, running):
    """The store stops answering under a running appliance: a Watch sees NOT_SERVING before
    anything else happens to its connection."""
    dep = deployment(clients=3)
    admin = _admin_kit(dep)
    app = running(dep.folder)
    channel = _channel(admin, dep.address)
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest(), timeout=10).status == SERVING
    seen: list[int] = []
    watch = health.Watch(health_pb2.HealthCheckRequest(service="sealagg.v1.Aggregator"))
    reader = threading.Thread(target=lambda: seen.extend(r.status for r in _until_error(watch)))
    reader.start()
    _wait(lambda: seen, 10, "the first Watch answer")
    app.loop.call_soon_threadsafe(app.app.store.close)
    _wait(lambda: seen[-1] == NOT_SERVING, 30, "NOT_SERVING")
    watch.cancel()
    reader.join(10)
    channel.close()


def test_check_probes_the_store_at_each_call(deployment):
    """``Check`` itself asks the store (no waiting for the periodic probe)."""
    import asyncio

    from sealagg.appliance.health import ApplianceHealth
    from sealagg.appliance.server import open_store

    dep = deployment(clients=3)
    store = open_store(dep.federation)
    health = ApplianceHealth(store.federation)

    async def check() -> int:
        reply = await health.Check(health_pb2.HealthCheckRequest(), None)
        return reply.status

    async def scenario() -> list[int]:
        before = await check()  # nothing listens yet
        await health.listening()
        serving = await check()
        store.close()
        broken = await check()
        return [before, serving, broken]

    assert asyncio.run(scenario()) == [NOT_SERVING, SERVING, NOT_SERVING]


# ---- metrics --------------------------------------------------------------------------------


def test_state_gauges_are_scraped_from_the_metrics_endpoint(deployment, running, caplog):
    dep = deployment(clients=3)
    port = free_port()
    dep.configure(
        aggregation={"mode": "plaintext", "min_clients": 3},
        server={"metrics_listen": f"127.0.0.1:{port}"},
    )
    fed = FederationFolder.load(dep.folder)
    early = fed.ca_certificate.not_valid_before_utc + timedelta(seconds=1)
    add_client(fed, "older", now=early)  # issued before the others: the soonest to expire
    with caplog.at_level(logging.INFO, logger="sealagg.metrics"):
        app = running(dep.folder)
    assert f"metrics served at http://127.0.0.1:{port}/metrics" in caplog.text

    idle = _scrape(port)
    assert idle[("sealagg_state_up", ())] == 1
    assert idle[("sealagg_model_version", ())] == 1
    assert idle[("sealagg_ready_clients", ())] == 0
    assert idle[("sealagg_round_number", ())] == 0
    assert idle[("sealagg_round_phase", (("phase", "idle"),))] == 1
    now = datetime.now(UTC)
    fed = FederationFolder.load(dep.folder)
    older = fed.client_record("older")
    expiry = {
        ("server", ""): fed.server_certificate.not_valid_after_utc,
        ("ca", ""): fed.ca_certificate.not_valid_after_utc,
        ("client", "older"): older.not_after,
    }
    for (which, client), not_after in expiry.items():
        value = idle[
            ("sealagg_certificate_expiry_days", (("certificate", which), ("client", client)))
        ]
        assert abs(value - (not_after - now).total_seconds() / 86400) < 0.01, which

    hold = threading.Event()
    hold.set()
    inside = threading.Barrier(4)
    errors: list[Exception] = []

    def client(name: str) -> None:
        conn = Connection(dep.kits[name], address=dep.address, timeout=10)
        try:

            def compute(start, tensors):
                inside.wait(60)
                while hold.is_set():
                    time.sleep(0.05)
                return np.full(DIM, 0.01, np.float32), 1.0, {}

            Participant(conn, poll_seconds=0.5).run_round(compute)
        except Exception as error:
            errors.append(error)
        finally:
            conn.close()

    first_two = [threading.Thread(target=client, args=(f"client{i}",)) for i in (0, 1)]
    for t in first_two:
        t.start()
    _wait(lambda: _scrape(port)[("sealagg_ready_clients", ())] == 2, 30, "two ready clients")
    last = threading.Thread(target=client, args=("client2",))
    last.start()
    try:
        inside.wait(60)
        busy = _scrape(port)
        assert busy[("sealagg_round_number", ())] == 1
        assert busy[("sealagg_round_phase", (("phase", "update"),))] == 1
        assert ("sealagg_round_phase", (("phase", "idle"),)) not in busy
    finally:
        hold.clear()
        for t in [*first_two, last]:
            t.join(60)
    assert not errors, errors
    _wait(lambda: _scrape(port)[("sealagg_model_version", ())] == 2, 30, "version 2")
    assert app.error is None


def test_a_run_id_in_the_status_becomes_an_info_metric():
    """status()["run"] may carry the run (the runs feature); absent, no run metric."""
    from prometheus_client import CollectorRegistry, generate_latest

    def gauges(status: dict) -> str:
        registry = CollectorRegistry()
        registry.register(StateCollector(lambda: status, lambda: []))
        return generate_latest(registry).decode()

    base = {"model_version": 3, "ready_clients": ["a"], "round": None}
    assert "sealagg_run_info" not in gauges(base)
    assert 'sealagg_run_info{run_id="7"} 1.0' in gauges({**base, "run": {"id": 7}})
    assert 'sealagg_run_info{run_id="r-2"} 1.0' in gauges({**base, "run": "r-2"})

    def broken() -> dict:
        raise RuntimeError("the store is closed")

    registry = CollectorRegistry()
    soon = datetime.now(UTC) + timedelta(days=2)
    registry.register(StateCollector(broken, lambda: [CertificateExpiry("server", "", soon)]))
    text = generate_latest(registry).decode()
    assert "sealagg_state_up 0.0" in text and "sealagg_certificate_expiry_days" in text


# ---- refused calls --------------------------------------------------------------------------


def _forged_kit(dep, name: str) -> ClientKit:
    """A certificate the federation's CA issued but the federation never registered."""
    fed = FederationFolder.load(dep.folder)
    key = pki.generate_tls_key()
    cert = pki.issue_client_certificate(
        fed.ca_certificate, fed.ca_private_key(), key.public_key(), name=name, now=None
    )
    return dataclasses.replace(
        dep.kits["client0"],
        client_cert_pem=pki.certificate_pem(cert),
        client_key_pem=pki.private_key_pem(key, None),
    )


def test_refused_calls_name_the_client_and_are_counted_by_reason(deployment, running, caplog):
    """Before: a revoked client failed the TLS handshake (a bare UNAVAILABLE for it, an
    anonymous C-core line for the operator, refused_calls_total 0). Now the call is refused
    with PERMISSION_DENIED naming the client and the reason, counted and logged by name, and
    the refused client still gets nothing else."""
    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 3})
    app = running(dep.folder)
    revoke_client(FederationFolder.load(dep.folder), "client2")
    revoked = _channel(dep.kits["client2"], dep.address)
    stub = pb_grpc.AggregatorStub(revoked)
    with caplog.at_level(logging.WARNING, logger="sealagg.service"):
        with pytest.raises(grpc.RpcError) as refused:
            stub.GetTask(pb.TaskRequest(wait_seconds=0.1), timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "client 'client2' refused (revoked)" in refused.value.details()
        chunks = []
        with pytest.raises(grpc.RpcError) as download:
            chunks.extend(stub.DownloadModel(pb.ModelRequest(version=0), timeout=10))
        assert download.value.code() == grpc.StatusCode.PERMISSION_DENIED and chunks == []
        health = health_pb2_grpc.HealthStub(revoked)
        with pytest.raises(grpc.RpcError) as probe:
            health.Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert probe.value.code() == grpc.StatusCode.PERMISSION_DENIED

        stranger = _channel(_forged_kit(dep, "mallory"), dep.address)
        with pytest.raises(grpc.RpcError) as unknown:
            pb_grpc.AggregatorStub(stranger).GetTask(pb.TaskRequest(), timeout=10)
        assert unknown.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "client 'mallory' refused (unregistered)" in unknown.value.details()
        stranger.close()
    revoked.close()

    def refused_total(reason: str) -> float:
        value = app.app.metrics.registry.get_sample_value(
            "sealagg_refused_calls_total", {"reason": reason}
        )
        return value or 0.0

    assert refused_total("revoked") == 3
    assert refused_total("unregistered") == 1
    assert app.app.metrics.total("sealagg_refused_calls_total") == 4
    named = [r.getMessage() for r in caplog.records if "refused a call" in r.getMessage()]
    assert any("GetTask: client 'client2' refused (revoked)" in m for m in named), named
    # Three refusals counted, one logged: a client retrying in a loop cannot flood the log.
    assert sum("client 'client2' refused (revoked)" in m for m in named) == 1, named
    assert any("client 'mallory' refused (unregistered)" in m for m in named), named

    # Another federation's client: its CA is not ours, the handshake fails, nothing is named.
    other = init_federation(
        dep.folder.parent / "other", name="other", hosts=["localhost"], port=dep.port
    )
    foreign = _channel(load_kit(add_client(other, "client0")), dep.address)
    with pytest.raises(grpc.RpcError) as handshake:
        pb_grpc.AggregatorStub(foreign).GetTask(pb.TaskRequest(), timeout=5)
    assert handshake.value.code() == grpc.StatusCode.UNAVAILABLE
    foreign.close()
    assert app.app.metrics.total("sealagg_refused_calls_total") == 4
    # The others keep being served.
    good = Connection(dep.kits["client1"], address=dep.address, timeout=10)
    assert good.get_task(0.1).WhichOneof("kind") in ("idle", "round_start")
    good.close()
