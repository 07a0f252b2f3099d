"""Runs end to end over mutual TLS on loopback: hyperparameters, pause/resume, stop, budget
end, approval siblings, persistence across a restart, and the stale-round regressions."""

from __future__ import annotations

import json
import threading

import pytest
from sealagg_testkit.raw_clients import RawClient, train_until_run_end

from sealagg.appliance.cli._admin import AdminClient
from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import FederationFolder, add_client
from sealagg.appliance.server import open_store
from sealagg.appliance.wire import sealagg_pb2 as pb

PLAIN = {"mode": "plaintext", "min_clients": 2, "rounds": 0, "ready_window": 30.0}


def with_admin(dep):
    """The administrator kit `sealagg init` writes (the testkit's deployments lack it)."""
    add_client(dep.federation, ADMIN_NAME, out=dep.folder / ADMIN_KIT_DIRNAME)
    return dep


def _entries(dep, event: str) -> list[dict]:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        return [e.details for e in store.audit.entries() if e.event == event]
    finally:
        store.close()


def _rounds(dep) -> list:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        return store.rounds()
    finally:
        store.close()


def _round_runs(dep) -> set[str]:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        with store.snapshot() as conn:
            rows = conn.execute(
                "SELECT runs.run_id FROM rounds JOIN runs ON runs.id = rounds.run"
            ).fetchall()
        return {row[0] for row in rows}
    finally:
        store.close()


def _wait_for(condition, timeout: float = 60.0) -> None:
    event = threading.Event()
    for _ in range(int(timeout / 0.1)):
        if condition():
            return
        event.wait(0.1)
    raise AssertionError("the condition never held")


def _join(threads, timeout: float = 60.0) -> None:
    for t in threads:
        t.join(timeout)
    assert not any(t.is_alive() for t in threads), "a client did not see its run end"


@pytest.fixture
def plain(deployment, running):
    dep = with_admin(deployment(clients=3))
    dep.configure(aggregation=PLAIN, deadlines={"advertise_keys": 5})
    app = running(dep.folder)
    admin = AdminClient(dep.folder, address=dep.address, timeout=15)
    clients = {n: RawClient(dep.kits[n], dep.address) for n in sorted(dep.kits)}
    yield dep, app, admin, clients
    for c in clients.values():
        c.close()
    admin.close()


def test_a_run_sends_its_hyperparameters_with_every_round_and_ends_with_run_end(plain):
    dep, app, admin, clients = plain
    hyper = {"lr": 0.05, "epochs": 2, "schedule": [1, 2]}
    ok, detail, run = admin.create_run(
        name="tune", rounds=2, hyperparameters_json=json.dumps(hyper), start=True
    )
    assert ok, detail
    run_id = run["id"]
    two = [clients["client0"], clients["client1"]]
    _join([train_until_run_end(c) for c in two])
    for c in two:
        starts = c.starts()
        assert [s.run_round for s in starts] == [1, 2]
        assert {s.run_id for s in starts} == {run_id}
        assert {s.run_rounds for s in starts} == {2}
        assert all(json.loads(s.hyperparameters_json) == hyper for s in starts)
        (end,) = c.run_ends()
        assert (end.run_id, end.status) == (run_id, "finished")
        assert end.model_version == 3  # base 1 + two published rounds
    (listed,) = [r for r in admin.list_runs() if r["id"] == run_id]
    assert (listed["status"], listed["rounds_done"]) == ("finished", 2)
    assert _round_runs(dep) == {run_id}
    by_admin = {e["run"]: e["by"] for e in _entries(dep, "run_created")}
    assert by_admin[run_id] == "admin"
    assert [e["run"] for e in _entries(dep, "run_finished")] == [run_id]
    # A client that was away gets the RunEnd at its next poll; the appliance keeps serving.
    late = clients["client2"]
    assert late.poll().WhichOneof("kind") == "run_end"
    assert app.thread.is_alive()


def test_pause_opens_no_round_and_resume_continues(plain):
    dep, _app, admin, clients = plain
    ok, detail, run = admin.create_run(name="pausable", rounds=3, start=True)
    assert ok, detail
    run_id = run["id"]
    paused = threading.Event()

    def pause_after_first(client: RawClient, task: pb.Task) -> None:
        if task.WhichOneof("kind") == "round_end" and not paused.is_set():
            paused.set()  # before this client polls again: round 2 cannot have opened
            ok, detail, _ = admin.control_run(run_id, "pause", "look at round 1")
            assert ok, detail

    a, b = clients["client0"], clients["client1"]
    thread_a = train_until_run_end(a, on_task=pause_after_first)
    thread_b = train_until_run_end(b, on_task=pause_after_first)
    paused.wait(60)
    # While paused the clients keep polling; no round opens (their queues hold no RoundStart).
    c = clients["client2"]
    for _ in range(6):
        assert c.poll(0.3).WhichOneof("kind") in ("idle", "round_end")
    assert len(_rounds(dep)) == 1
    assert admin.status()["run"]["status"] == "paused"
    assert _entries(dep, "run_paused")[0]["by"] == "admin"
    ok, detail, _ = admin.control_run(run_id, "resume")
    assert ok, detail
    _join([thread_a, thread_b])
    assert [s.run_round for s in a.starts()] == [1, 2, 3]
    assert a.run_ends()[0].status == "finished"
    assert len(_rounds(dep)) == 3


def test_stop_tells_every_client_and_opens_no_more_rounds(plain):
    dep, _app, admin, clients = plain
    ok, detail, run = admin.create_run(name="endless", rounds=0, start=True)
    assert ok, detail
    run_id = run["id"]
    stopped = threading.Event()

    def stop_after_first(client: RawClient, task: pb.Task) -> None:
        if task.WhichOneof("kind") == "round_end" and not stopped.is_set():
            stopped.set()
            ok, detail, _ = admin.control_run(run_id, "stop", "enough")
            assert ok, detail

    threads = [
        train_until_run_end(clients[n], on_task=stop_after_first) for n in ("client0", "client1")
    ]
    _join(threads)
    for n in ("client0", "client1"):
        (end,) = clients[n].run_ends()
        assert (end.run_id, end.status, end.reason) == (run_id, "stopped", "enough")
        assert len(clients[n].starts()) == 1
    assert len(_rounds(dep)) == 1
    (entry,) = [e for e in _entries(dep, "run_stopped") if e["run"] == run_id]
    assert (entry["by"], entry["reason"]) == ("admin", "enough")
    ok, detail, _ = admin.control_run(run_id, "resume")
    assert not ok and "stopped" in detail


def test_run_rules_are_refused_with_their_reason(plain):
    _dep, _app, admin, _clients = plain
    ok, detail, _ = admin.create_run(name="x", mode="secagg+")
    assert not ok and "configured mode 'plaintext'" in detail
    ok, detail, _ = admin.create_run(name="x", hyperparameters_json="[1, 2]")
    assert not ok and "JSON object" in detail
    ok, detail, _ = admin.create_run(name="x", hyperparameters_json=json.dumps({"k": "v" * 17000}))
    assert not ok and "16384 bytes" in detail
    ok, _, first = admin.create_run(name="first", start=True)
    assert ok
    ok, _, second = admin.create_run(name="second")
    assert ok and second["status"] == "created"
    ok, detail, _ = admin.control_run(second["id"], "start")
    assert not ok and f"run {first['id']} (first) is running" in detail
    ok, detail, _ = admin.control_run("run-99", "start")
    assert not ok and "no run 'run-99'" in detail


def test_no_sibling_round_opens_while_a_candidate_waits_for_approval(deployment, running):
    dep = with_admin(deployment(clients=2))
    dep.configure(
        aggregation=PLAIN, deadlines={"advertise_keys": 5}, gates={"require_approval": True}
    )
    running(dep.folder)
    clients = [RawClient(dep.kits[n], dep.address) for n in sorted(dep.kits)]
    with AdminClient(dep.folder, address=dep.address, timeout=15) as admin:
        ok, detail, _ = admin.create_run(name="gated", rounds=2, start=True)
        assert ok, detail
        threads = [train_until_run_end(c) for c in clients]
        _wait_for(lambda: any(r.status == "pending_approval" for r in _rounds(dep)))
        (pending,) = _rounds(dep)
        probe = RawClient(dep.kits["client0"], dep.address)  # a third poller, for the record
        # The clients keep polling; no sibling round opens while the candidate waits.
        for _ in range(5):
            assert probe.poll(0.3).WhichOneof("kind") == "idle"
        assert len(_rounds(dep)) == 1
        probe.close()
        ok, detail = admin.decide(pending.id, approve=True, reason="fine")
        assert ok, detail
        _join(threads)
        assert len(_rounds(dep)) == 2
        assert [s.run_round for s in clients[0].starts()] == [1, 2]
    for c in clients:
        c.close()


def test_a_running_run_survives_a_restart_and_resumes_counting(deployment, running):
    dep = with_admin(deployment(clients=2))
    dep.configure(aggregation=PLAIN, deadlines={"advertise_keys": 5})
    first = running(dep.folder)
    a, b = (RawClient(dep.kits[n], dep.address) for n in ("client0", "client1"))
    with AdminClient(dep.folder, address=dep.address, timeout=15) as admin:
        ok, detail, run = admin.create_run(
            name="long", rounds=3, hyperparameters_json='{"lr": 0.1}', start=True
        )
        assert ok, detail
    run_id = run["id"]
    done_one = threading.Event()

    def one_round(client: RawClient) -> None:
        while True:
            task = client.poll()
            if task.WhichOneof("kind") == "round_start":
                client.submit_update(task.round_start)
            if task.WhichOneof("kind") == "round_end":
                done_one.set()
                return

    threads = [threading.Thread(target=one_round, args=(c,), daemon=True) for c in (a, b)]
    for t in threads:
        t.start()
    _join(threads)
    first.stop()
    second = running(dep.folder)
    assert second.port == dep.port
    _join([train_until_run_end(c) for c in (a, b)])
    for c in (a, b):
        assert [s.run_round for s in c.starts()] == [1, 2, 3]
        assert {s.hyperparameters_json for s in c.starts()} == {'{"lr":0.1}'}
        assert c.run_ends()[0].run_id == run_id
    with AdminClient(dep.folder, address=dep.address, timeout=15) as admin:
        (listed,) = [r for r in admin.list_runs() if r["id"] == run_id]
    assert (listed["status"], listed["rounds_done"]) == ("finished", 3)
    a.close()
    b.close()


def test_implicit_run_keeps_the_config_budget_and_ends_the_appliance(deployment, running):
    """Backward compatibility: no run created, [aggregation] rounds = 1 as before."""
    dep = deployment(clients=2)
    dep.configure(aggregation={**PLAIN, "rounds": 1}, deadlines={"advertise_keys": 5})
    app = running(dep.folder)
    clients = [RawClient(dep.kits[n], dep.address) for n in sorted(dep.kits)]
    _join([train_until_run_end(c) for c in clients])
    app.wait(30)
    for c in clients:
        (start,) = c.starts()
        assert (start.run_round, start.run_rounds) == (1, 1)
        assert c.run_ends()[0].status == "finished"
    (created,) = _entries(dep, "run_created")
    assert (created["by"], created["rounds"]) == ("config", 1)
    for c in clients:
        c.close()


def _members(dep) -> list[list[str]]:
    return [sorted(e["clients"]) for e in _entries(dep, "participants")]


def test_a_client_that_left_is_not_put_into_the_next_round(plain):
    """Regression (stale round starts): a client that finished, and stopped polling, was
    still counted ready for ready_window seconds and put into the next round."""
    dep, _app, admin, clients = plain
    ok, detail, _ = admin.create_run(name="two", rounds=2, start=True)
    assert ok, detail

    def one_round(client: RawClient) -> None:
        while (task := client.poll()).WhichOneof("kind") != "round_end":
            if task.WhichOneof("kind") == "round_start":
                client.submit_update(task.round_start)

    leaver = threading.Thread(target=one_round, args=(clients["client2"],), daemon=True)
    leaver.start()
    stayers = [train_until_run_end(clients[n]) for n in ("client0", "client1")]
    _join([leaver, *stayers])
    first, second = _members(dep)
    assert first == ["client0", "client1", "client2"]
    assert second == ["client0", "client1"]  # client2's last poll handed it a task: not ready
    assert [r.status for r in _rounds(dep)] == ["accepted", "accepted"]


def test_the_start_of_an_ended_round_is_never_delivered(plain):
    """Regression: the queued RoundStart of a round that ended without a client was handed
    to that client when it came back, so it trained for a dead round."""
    dep, _app, admin, clients = plain
    absent = clients["client2"]
    assert absent.poll(0.2).WhichOneof("kind") == "idle"  # ready now, then silent
    ok, detail, _ = admin.create_run(name="one", rounds=1, start=True)
    assert ok, detail
    _join([train_until_run_end(clients[n]) for n in ("client0", "client1")])
    (members,) = _members(dep)
    assert members == ["client0", "client1", "client2"]
    (ended,) = _rounds(dep)
    assert ended.status == "accepted"
    back = absent.poll()
    assert back.WhichOneof("kind") == "round_end"  # not the RoundStart of the ended round
    assert bytes(back.round_end.round_id) == ended.round_id
    assert absent.poll().WhichOneof("kind") == "run_end"
    assert "round_start" not in absent.kinds()


def test_the_runs_cli_drives_the_appliance(plain):
    from typer.testing import CliRunner

    from sealagg.appliance.cli import app as cli

    dep, _app, _admin, _clients = plain
    base = ["-f", str(dep.folder), "--address", dep.address]

    def sealagg(*args: str):
        return CliRunner().invoke(cli, [*args, *base], env={"COLUMNS": "200"})

    made = sealagg("runs", "create", "cli-run", "--rounds", "4", "--hyperparameters", '{"lr": 1}')
    assert made.exit_code == 0 and "run-2 created" in made.output, made.output
    shown = json.loads(sealagg("runs", "show", "run-2").output)
    assert (shown["status"], shown["hyperparameters"]) == ("created", {"lr": 1})
    bad = sealagg("runs", "create", "x", "--hyperparameters", "[1]")
    assert bad.exit_code == 1 and "JSON object" in bad.output
    assert sealagg("runs", "start", "run-2").exit_code == 0
    paused = sealagg("runs", "pause", "run-2", "--reason", "lunch")
    assert paused.exit_code == 0 and "run-2 is paused" in paused.output
    listed = json.loads(sealagg("runs", "list", "--json").output)
    assert [(r["id"], r["status"]) for r in listed] == [("run-1", "stopped"), ("run-2", "paused")]
    refused = sealagg("evaluate", "--deadline", "2")
    assert refused.exit_code == 1 and "clients are ready" in refused.output
    assert sealagg("runs", "stop", "run-2").exit_code == 0
