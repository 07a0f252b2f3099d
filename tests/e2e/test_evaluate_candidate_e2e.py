"""Federated evaluation of a candidate waiting for approval, over mutual TLS on loopback.

With ``[gates] require_approval = true`` a round's sum is a *pending* candidate: no client may
download it (it is not the federation's model yet). An administrator may still ask every ready
client to evaluate it before deciding (``Admin.Evaluate(model_version=candidate)``): exactly the
asked clients may then fetch exactly that version, and only while the evaluation is open. A
rejected version is never handed out again, not even for evaluation.
"""

from __future__ import annotations

import hashlib
import json
import threading

import grpc
import pytest
from sealagg_testkit.raw_clients import RawClient
from typer.testing import CliRunner

from sealagg.appliance.cli._admin import AdminClient
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.server import open_store
from sealagg.appliance.wire import sealagg_pb2 as pb

PLAIN = {"mode": "plaintext", "min_clients": 3, "rounds": 0, "ready_window": 30.0}
REPORTS = {
    "client0": (10, {"loss": 0.5, "accuracy": 0.25}),
    "client1": (30, {"loss": 0.75, "accuracy": 0.5}),
    "client2": (60, {"loss": 1.25, "accuracy": 0.125}),
}
TOTAL = sum(n for n, _ in REPORTS.values())
EXPECTED = {
    name: sum(n * m[name] for n, m in REPORTS.values()) / TOTAL for name in ("loss", "accuracy")
}


def _download(client: RawClient, version: int) -> str:
    """SHA-256 of what DownloadModel streams for ``version`` (raises grpc.RpcError if refused)."""
    chunks = list(client.stub.DownloadModel(pb.ModelRequest(version=version), timeout=15))
    return hashlib.sha256(
        b"".join(c.data for c in chunks if c.WhichOneof("kind") == "data")
    ).hexdigest()


def _refused(call) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


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


def _one_round(client: RawClient) -> threading.Thread:
    """Poll until this client's RoundStart, answer it with an update, stop."""

    def work() -> None:
        for _ in range(400):
            task = client.poll()
            if task.WhichOneof("kind") == "round_start":
                client.submit_update(task.round_start, value=1.0)
                return

    thread = threading.Thread(target=work, daemon=True, name=client.name)
    thread.start()
    return thread


def _evaluator(client: RawClient, seen: dict, while_open) -> threading.Thread:
    """Poll until an Evaluate arrives; download the version it names; report."""

    def work() -> None:
        while (task := client.poll()).WhichOneof("kind") != "evaluate":
            pass
        request = task.evaluate
        seen[client.name] = (request, _download(client, request.model_version))
        while_open(client, request)
        count, metrics = REPORTS[client.name]
        client.submit(_report(request, count, metrics))

    thread = threading.Thread(target=work, daemon=True, name=client.name)
    thread.start()
    return thread


def _wait_for(condition, timeout: float = 60.0) -> None:
    pause = threading.Event()
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        pause.wait(0.1)
    raise AssertionError("condition not met in time")


def _pending(dep):
    store = open_store(FederationFolder.load(dep.folder))
    try:
        return (
            [r for r in store.rounds() if r.status == "pending_approval"],
            [m for m in store.model_versions() if m.status == "pending"],
            store.current_model(),
        )
    finally:
        store.close()


def test_every_ready_client_evaluates_the_pending_candidate_and_only_while_asked(
    deployment, running
):
    dep = deployment(clients=4)
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    dep.configure(
        aggregation=PLAIN, deadlines={"advertise_keys": 5}, gates={"require_approval": True}
    )
    running(dep.folder)
    clients = {n: RawClient(dep.kits[n], dep.address) for n in sorted(dep.kits)}
    outsider = clients["client3"]  # never polls: not ready, never asked
    admin = AdminClient(dep.folder, address=dep.address, timeout=15)
    ok, detail, _ = admin.create_run(name="gated", rounds=2, start=True)
    assert ok, detail
    for t in [_one_round(clients[n]) for n in REPORTS]:
        t.join(60)
    _wait_for(lambda: bool(_pending(dep)[0]))
    (pending_round,), (candidate,), current = _pending(dep)
    assert current is not None and candidate.version != current.version
    # Pending: nobody may fetch it, not even the clients whose updates it sums.
    for client in (clients["client0"], outsider):
        refusal = _refused(lambda c=client: _download(c, candidate.version))
        assert refusal.code() == grpc.StatusCode.NOT_FOUND

    for n in REPORTS:  # each polls until idle: ready (its last poll handed it nothing)
        _wait_for(lambda n=n: clients[n].poll(0.1).WhichOneof("kind") == "idle")
    seen: dict = {}
    outsider_refusals: list[grpc.RpcError] = []

    def while_open(client: RawClient, request: pb.Evaluate) -> None:
        if client.name == "client0":  # the evaluation is open: the outsider still may not
            outsider_refusals.append(_refused(lambda: _download(outsider, candidate.version)))

    threads = [_evaluator(clients[n], seen, while_open) for n in REPORTS]
    ok, detail, result = admin.evaluate(version=candidate.version, deadline_seconds=60)
    for t in threads:
        t.join(30)
    assert ok, detail

    # Every ready client was asked about THE CANDIDATE and received exactly its bytes.
    assert sorted(seen) == sorted(REPORTS)
    for request, digest in seen.values():
        assert request.federated and request.model_version == candidate.version
        assert digest == candidate.sha256 != current.sha256
    (refusal,) = outsider_refusals
    assert refusal.code() == grpc.StatusCode.NOT_FOUND
    assert "no accepted model version" in refusal.details()

    # The weighted mean is recorded for the candidate, in the table and the audit chain.
    assert result["metrics"] == pytest.approx(EXPECTED, rel=1e-12)
    assert (result["clients"], result["asked"], result["num_examples"]) == (3, 3, TOTAL)
    store = open_store(FederationFolder.load(dep.folder))
    with store.snapshot() as conn:
        (row,) = conn.execute("SELECT version, status, clients, metrics FROM evaluations")
    assert row[:3] == (candidate.version, "done", 3)
    assert json.loads(row[3]) == pytest.approx(EXPECTED, rel=1e-12)
    (entry,) = [e.details for e in store.audit.entries() if e.event == "evaluation_result"]
    assert entry["metrics"] == pytest.approx(EXPECTED, rel=1e-12)
    # Evaluating decided nothing: the candidate still waits, the current model is unchanged.
    assert store.model_version(candidate.version).status == "pending"
    assert store.current_model().version == current.version
    store.close()

    # Closed: the clients that were asked can no longer fetch the candidate.
    for name in REPORTS:
        refusal = _refused(lambda n=name: _download(clients[n], candidate.version))
        assert refusal.code() == grpc.StatusCode.NOT_FOUND

    # Rejected: never evaluated (nor downloaded) again, with the reason, by API and CLI.
    ok, detail = admin.decide(pending_round.id, approve=False, reason="worse on site data")
    assert ok, detail
    ok, detail, _ = admin.evaluate(version=candidate.version, deadline_seconds=5)
    assert not ok
    assert f"model version {candidate.version} is rejected" in detail
    assert "only accepted versions and candidates pending approval are evaluated" in detail
    ok, detail, _ = admin.evaluate(version=candidate.version + 50, deadline_seconds=5)
    assert not ok and f"there is no model version {candidate.version + 50}" in detail
    from sealagg.appliance.cli import app

    cli = CliRunner().invoke(
        app,
        [
            *("evaluate", "--version", str(candidate.version), "-f", str(dep.folder)),
            *("--address", dep.address, "--deadline", "5"),
        ],
        env={"COLUMNS": "300"},
    )
    assert cli.exit_code == 1
    assert f"model version {candidate.version} is rejected" in " ".join(cli.output.split())
    refusal = _refused(lambda: _download(clients["client0"], candidate.version))
    assert refusal.code() == grpc.StatusCode.NOT_FOUND
    store = open_store(FederationFolder.load(dep.folder))
    with store.snapshot() as conn:
        assert conn.execute("SELECT count(*) FROM evaluations").fetchone()[0] == 1
    store.close()
    for c in clients.values():
        c.close()
    admin.close()
