"""Federated evaluation over mutual TLS on loopback: every ready client evaluates on its own
data; the appliance keeps only the mean weighted by example counts, never one client's
metrics; bad, duplicate, late and unasked reports are refused; masked modes need an opt-in."""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import grpc
import pytest
from sealagg_testkit.raw_clients import RawClient, train_until_run_end

from sealagg.appliance.cli._admin import AdminClient
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.server import open_store
from sealagg.appliance.wire import sealagg_pb2 as pb

#: Distinctive per-client values: none of them may appear anywhere after the evaluation.
REPORTS = {
    "client0": (10, {"loss": 0.1234567891, "accuracy": 0.8765432101}),
    "client1": (30, {"loss": 0.2345678912, "accuracy": 0.7654321012}),
    "client2": (60, {"loss": 0.3456789123, "accuracy": 0.6543210123}),
}


def _setup(deployment, running, mode: str = "plaintext", clients: int = 4):
    dep = deployment(clients=clients)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(
        aggregation={"mode": mode, "min_clients": 3, "rounds": 0, "ready_window": 30.0},
        deadlines={"advertise_keys": 5},
    )
    running(dep.folder)
    admin = AdminClient(dep.folder, address=dep.address, timeout=15)
    # No rounds in these tests: the implicit run of [aggregation] rounds is paused first.
    ok, detail, _ = admin.control_run("run-1", "pause", "evaluation only")
    assert ok, detail
    return dep, admin


def _report(task: pb.Evaluate, count: int, metrics: dict) -> pb.UploadHeader:
    meta = {
        "evaluation_id": bytes(task.evaluation_id).hex(),
        "model_version": task.model_version,
        "num_examples": count,
        "metrics": metrics,
    }
    return pb.UploadHeader(
        kind="evaluation", round_id=task.evaluation_id, metadata_json=json.dumps(meta)
    )


def _refusal(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def _evaluator(client: RawClient, seen: dict, before_report=None) -> threading.Thread:
    """Poll until an Evaluate arrives; check and download the version; report."""

    def work() -> None:
        while (task := client.poll()).WhichOneof("kind") != "evaluate":
            pass
        request = task.evaluate
        chunks = list(client.stub.DownloadModel(pb.ModelRequest(version=request.model_version)))
        data = b"".join(c.data for c in chunks if c.WhichOneof("kind") == "data")
        seen[client.name] = (request, hashlib.sha256(data).hexdigest())
        if before_report is not None:
            before_report(client, request)
        count, metrics = REPORTS[client.name]
        client.submit(_report(request, count, metrics))

    thread = threading.Thread(target=work, daemon=True, name=client.name)
    thread.start()
    return thread


def test_every_client_evaluates_and_only_the_weighted_mean_is_kept(deployment, running):
    dep, admin = _setup(deployment, running)
    clients = {n: RawClient(dep.kits[n], dep.address) for n in sorted(dep.kits)}
    outsider = clients["client3"]  # never polls: not ready, not asked
    refusals: dict[str, grpc.RpcError] = {}

    def attacks(client: RawClient, request: pb.Evaluate) -> None:
        if client.name != "client0":
            return
        nan = _report(request, 5, {"loss": 1.0})
        nan.metadata_json = nan.metadata_json.replace("1.0", "NaN")
        refusals["nan"] = _refusal(lambda: client.submit(nan))
        refusals["unasked"] = _refusal(lambda: outsider.submit(_report(request, 5, {"loss": 1})))
        wrong = _report(request, 5, {"loss": 1.0})
        wrong.round_id = b"\x01" * 16
        refusals["unknown"] = _refusal(lambda: client.submit(wrong))

    seen: dict = {}
    for n in REPORTS:  # each polled once: ready
        assert clients[n].poll(0.1).WhichOneof("kind") == "idle"
    threads = [_evaluator(clients[n], seen, attacks) for n in REPORTS]
    ok, detail, result = admin.evaluate(deadline_seconds=60)
    for t in threads:
        t.join(30)
    assert ok, detail

    store = open_store(FederationFolder.load(dep.folder))
    current = store.current_model()
    for request, digest in seen.values():
        assert request.federated and request.run_id == "run-1"
        assert request.model_version == current.version and digest == current.sha256
    total = sum(n for n, _ in REPORTS.values())
    expected = {
        name: sum(n * m[name] for n, m in REPORTS.values()) / total for name in ("loss", "accuracy")
    }
    assert result["metrics"] == pytest.approx(expected, rel=1e-12)
    assert (result["clients"], result["asked"], result["num_examples"]) == (3, 3, total)

    # Duplicate and late reports are refused with their reason.
    request = seen["client1"][0]
    late = _refusal(lambda: clients["client1"].submit(_report(request, 30, {"loss": 0.5})))
    assert late.code() == grpc.StatusCode.FAILED_PRECONDITION and "closed" in late.details()
    assert refusals["nan"].code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "finite" in refusals["nan"].details()
    assert refusals["unasked"].code() == grpc.StatusCode.PERMISSION_DENIED
    assert refusals["unknown"].code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no evaluation is open" in refusals["unknown"].details()

    # What is kept: the mean, in the table and the audit entry; one client's values nowhere.
    with store.snapshot() as conn:
        (row,) = conn.execute("SELECT status, clients, num_examples, metrics FROM evaluations")
    assert row[:3] == ("done", 3, total)
    assert json.loads(row[3]) == pytest.approx(expected, rel=1e-12)
    (entry,) = [e.details for e in store.audit.entries() if e.event == "evaluation_result"]
    assert entry["metrics"] == pytest.approx(expected, rel=1e-12)
    (asked,) = [e.details for e in store.audit.entries() if e.event == "evaluation_requested"]
    assert asked["by"] == ADMIN_NAME
    status = json.dumps(admin.status())
    store.close()
    state = b"".join(p.read_bytes() for p in Path(dep.folder).rglob("*") if p.is_file())
    for _, metrics in REPORTS.values():
        for value in metrics.values():
            assert repr(value).encode() not in state
            assert repr(value) not in status
    for c in clients.values():
        c.close()
    admin.close()


def test_with_fewer_reports_than_m_nothing_but_the_count_is_kept(deployment, running):
    dep, admin = _setup(deployment, running, clients=3)
    clients = {n: RawClient(dep.kits[n], dep.address) for n in sorted(dep.kits)}
    silent = clients["client2"]  # ready (it polled), asked, never answers
    for c in clients.values():  # each polled once: ready
        assert c.poll(0.1).WhichOneof("kind") == "idle"
    threads = [_evaluator(clients[n], {}) for n in ("client0", "client1")]
    ok, detail, result = admin.evaluate(deadline_seconds=3)  # closes at its deadline
    for t in threads:
        t.join(30)
    assert not ok and "at least 3 are needed" in detail
    assert (result["status"], result["clients"], result["metrics"]) == ("failed", 2, None)
    store = open_store(FederationFolder.load(dep.folder))
    with store.snapshot() as conn:
        (row,) = conn.execute("SELECT status, clients, num_examples, metrics FROM evaluations")
    store.close()
    assert row == ("failed", 2, 0, None)
    assert silent.poll(0.2).WhichOneof("kind") != "evaluate"  # never delivered once closed
    for c in clients.values():
        c.close()
    admin.close()


def test_a_masked_run_needs_an_explicit_opt_in(deployment, running):
    dep, admin = _setup(deployment, running, mode="secagg+", clients=3)
    ok, detail, _ = admin.evaluate(run_id="run-1", deadline_seconds=5)
    assert not ok and '"evaluation_reveals_client_metrics": true' in detail
    ok, detail, _ = admin.create_run(name="x", hyperparameters_json='{"evaluate_every": 1}')
    assert not ok and "evaluate_every" in detail and "evaluation_reveals_client_metrics" in detail
    clients = {n: RawClient(dep.kits[n], dep.address) for n in sorted(dep.kits)}
    for c in clients.values():
        assert c.poll(0.2).WhichOneof("kind") == "idle"  # nobody was asked
    opted = json.dumps({"evaluation_reveals_client_metrics": True})
    ok, detail, run = admin.create_run(name="opted-in", hyperparameters_json=opted)
    assert ok, detail
    threads = [_evaluator(clients[n], {}) for n in REPORTS]
    ok, detail, result = admin.evaluate(run_id=run["id"], deadline_seconds=60)
    for t in threads:
        t.join(30)
    assert ok, detail
    assert result["clients"] == 3 and result["run"] == run["id"]
    for c in clients.values():
        c.close()
    admin.close()


def test_a_run_can_evaluate_after_every_round(deployment, running):
    dep, admin = _setup(deployment, running, clients=3)
    clients = {n: RawClient(dep.kits[n], dep.address) for n in sorted(dep.kits)}

    def answer(client: RawClient, task: pb.Task) -> None:
        if task.WhichOneof("kind") == "evaluate":
            count, metrics = REPORTS[client.name]
            client.submit(_report(task.evaluate, count, metrics))

    ok, detail, _ = admin.create_run(
        name="watched", rounds=2, hyperparameters_json='{"evaluate_every": 1}', start=True
    )
    assert ok, detail
    threads = [train_until_run_end(c, on_task=answer) for c in clients.values()]
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    store = open_store(FederationFolder.load(dep.folder))
    evaluations = [e.details for e in store.audit.entries() if e.event == "evaluation_result"]
    store.close()
    assert [(e["status"], e["clients"]) for e in evaluations] == [("done", 3), ("done", 3)]
    for c in clients.values():
        kinds = [k for k in c.kinds() if k != "idle"]
        assert kinds == ["round_start", "round_end", "evaluate"] * 2 + ["run_end"]
        c.close()
    admin.close()
