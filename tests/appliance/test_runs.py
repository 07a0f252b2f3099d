"""Run rules, their persistence and audit, readiness, and the evaluation report parser."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealagg.appliance.evaluation import (
    EvaluationError,
    check_allowed,
    parse_report,
    weighted_mean,
)
from sealagg.appliance.rounds import UploadRefusedError
from sealagg.appliance.runs import RunError, check_hyperparameters
from sealagg.appliance.server import Appliance
from sealagg.appliance.wire import sealagg_pb2 as pb


@pytest.fixture
def orchestrator(deployment):
    dep = deployment(clients=3)
    dep.configure(aggregation={"mode": "plaintext", "min_clients": 2, "rounds": 0})
    app = Appliance(dep.folder)
    yield app.orchestrator
    asyncio.run(app.close())


def _events(orch, event: str) -> list[dict]:
    return [e.details for e in orch.store.audit.entries() if e.event == event]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("[1]", "JSON object"),
        ('"lr"', "JSON object"),
        ("{", "not valid JSON"),
        ('{"lr": NaN}', "finite"),
        ('{"lr": Infinity}', "finite"),
        ('{"lr": 1e999}', "finite"),
        ('{"lr": 100000000000000000000}', "2\\*\\*53"),
        ('{"\\ud800": 1}', "not valid Unicode"),
        (json.dumps({"k": "x" * 16400}), "16384 bytes"),
        ("[" * 5000 + "]" * 5000, "JSON object|nested|not valid JSON"),
    ],
)
def test_hyperparameters_are_a_bounded_object_of_finite_numbers(text, reason):
    with pytest.raises(RunError, match=reason):
        check_hyperparameters(text)


def test_hyperparameters_accepted():
    assert check_hyperparameters("") == {}
    assert check_hyperparameters('{"lr": 0.05, "layers": [1, 2], "opt": {"b": true}}') == {
        "lr": 0.05,
        "layers": [1, 2],
        "opt": {"b": True},
    }


def test_lifecycle_is_audited_with_the_admins_name(orchestrator):
    orch = orchestrator
    orch._ensure_implicit_run()
    (implicit,) = orch.runs.runs()
    assert (implicit.status, implicit.created_by) == ("running", "config")
    run = orch.create_run(
        name="tune",
        mode="",
        rounds=5,
        hyperparameters_json='{"lr": 0.1}',
        base_model_version=0,
        start=False,
        by="alice",
    )
    assert (run.run_id, run.status, run.mode) == ("run-2", "created", "plaintext")
    for action, status in (("start", "running"), ("pause", "paused"), ("resume", "running")):
        run = orch.control_run(run.run_id, action, f"{action} it", "alice")
        assert run.status == status
    run = orch.control_run(run.run_id, "stop", "done", "bob")
    assert (run.status, run.reason) == ("stopped", "done")
    assert orch.runs.get("run-1").status == "stopped"  # the implicit run gave way
    assert _events(orch, "run_created")[-1]["by"] == "alice"
    for event, by in (
        ("run_started", "alice"),
        ("run_paused", "alice"),
        ("run_resumed", "alice"),
        ("run_stopped", "bob"),
    ):
        assert [e["by"] for e in _events(orch, event) if e["run"] == "run-2"] == [by]
    (gave_way,) = [e for e in _events(orch, "run_stopped") if e["run"] == "run-1"]
    assert gave_way["reason"] == "superseded by run-2"
    with pytest.raises(RunError, match="is stopped: it cannot resume"):
        orch.control_run(run.run_id, "resume", "", "alice")
    orch._ensure_implicit_run()  # an administrator drives runs now: no implicit run again
    assert len(orch.runs.runs()) == 2


def test_one_run_at_a_time_and_the_configured_mode_only(orchestrator):
    orch = orchestrator
    kwargs = dict(rounds=0, hyperparameters_json="", base_model_version=0, by="alice")
    first = orch.create_run(name="a", mode="", start=True, **kwargs)
    second = orch.create_run(name="b", mode="plaintext", start=False, **kwargs)
    with pytest.raises(RunError, match=f"run {first.run_id} \\(a\\) is running"):
        orch.control_run(second.run_id, "start", "", "alice")
    with pytest.raises(RunError, match="configured mode 'plaintext'"):
        orch.create_run(name="c", mode="secagg", start=False, **kwargs)
    with pytest.raises(RunError, match="unknown action"):
        orch.control_run(second.run_id, "delete", "", "alice")
    with pytest.raises(RunError, match="no model version 9"):
        orch.create_run(name="d", mode="", start=False, **{**kwargs, "base_model_version": 9})


def test_status_reports_the_live_run(orchestrator):
    orch = orchestrator
    orch.create_run(
        name="r",
        mode="",
        rounds=3,
        hyperparameters_json="",
        base_model_version=0,
        start=True,
        by="alice",
    )
    assert orch.status()["run"] == {
        "id": "run-1",
        "name": "r",
        "status": "running",
        "rounds": 3,
        "rounds_done": 0,
        "mode": "plaintext",
    }


def test_a_client_whose_last_poll_handed_it_a_task_is_not_ready(orchestrator):
    """Regression (stale round starts): it counted as ready for ready_window seconds after
    its last poll, even when that poll gave it work and it never came back."""
    orch = orchestrator

    async def scenario() -> tuple[list[str], list[str], list[str]]:
        await orch.poll("client0", 0.01)  # idle: ready
        idle = orch.ready_clients()
        orch._send_to("client0", pb.Task(round_end=pb.RoundEnd(round_id=b"r" * 32)))
        queued = orch.ready_clients()  # news waiting for it: not ready
        task = await orch.poll("client0", 0.01)
        assert task.WhichOneof("kind") == "round_end"
        return idle, queued, orch.ready_clients()

    idle, queued, after_task = asyncio.run(scenario())
    assert idle == ["client0"]
    assert queued == [] and after_task == []


def test_masked_modes_refuse_evaluation_without_the_opt_in():
    for mode in ("secagg", "secagg+", "ckks"):
        with pytest.raises(EvaluationError, match="evaluation_reveals_client_metrics"):
            check_allowed(mode, {})
        with pytest.raises(EvaluationError):
            check_allowed(mode, {"evaluation_reveals_client_metrics": "yes"})
        check_allowed(mode, {"evaluation_reveals_client_metrics": True})
    check_allowed("plaintext", {})
    check_allowed("attested", {})


def _meta(**overrides) -> str:
    meta = {"evaluation_id": "ab" * 16, "model_version": 2, "num_examples": 7}
    meta["metrics"] = {"loss": 0.5}
    meta.update(overrides)
    return json.dumps(meta)


@pytest.mark.parametrize(
    ("meta", "reason"),
    [
        ("nope", "not JSON"),
        ("[]", "exactly"),
        (_meta(extra=1), "exactly"),
        (_meta(evaluation_id="ab"), "evaluation_id"),
        (_meta(model_version=True), "model_version"),
        (_meta(num_examples=0), "num_examples"),
        (_meta(num_examples=2**41), "num_examples"),
        (_meta(num_examples=1.5), "num_examples"),
        (_meta(metrics={}), "1 to 64"),
        (_meta(metrics={str(i): 1 for i in range(65)}), "1 to 64"),
        (_meta(metrics={"x" * 65: 1}), "printable"),
        (_meta(metrics={"a\nb": 1}), "printable"),
        (_meta(metrics={"loss": True}), "numbers"),
        (_meta(metrics={"loss": "1"}), "numbers"),
        (_meta(metrics={"loss": 1e999}), "finite"),
        (_meta(metrics={"loss": 10**400}), "finite"),
        (_meta().replace("0.5", "NaN"), "finite"),
        (_meta(metrics={"k": "x" * 17000}), "16384 bytes"),
    ],
)
def test_evaluation_reports_are_refused_with_a_reason(meta, reason):
    with pytest.raises(UploadRefusedError, match=reason) as caught:
        parse_report(meta)
    assert caught.value.code == "INVALID_ARGUMENT"


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=70), inner),
    max_leaves=20,
)
_KEYS = st.sampled_from(["evaluation_id", "model_version", "num_examples", "metrics", "x"])


@given(st.text(max_size=300) | st.dictionaries(_KEYS, _JSON).map(json.dumps))
def test_the_report_parser_raises_only_its_refusal(text):
    with contextlib.suppress(UploadRefusedError):
        eid, version, count, metrics = parse_report(text)
        assert len(eid) == 32 and version >= 1 and count >= 1
        assert all(math.isfinite(v) for v in metrics.values())


def test_the_mean_keeps_only_metrics_every_client_reported():
    mean = weighted_mean({"a": (1, {"loss": 1.0, "only_a": 9.0}), "b": (3, {"loss": 2.0})})
    assert mean == {"loss": 1.75}


def test_an_evaluation_a_restart_interrupted_is_recorded_as_failed(deployment):
    dep = deployment(clients=3)
    first = Appliance(dep.folder)
    first.orchestrator.runs.open_evaluation(b"e" * 16, None, 1, "alice", ["client0", "client1"])
    asyncio.run(first.close())  # a stop without closing the evaluation: as in a crash
    second = Appliance(dep.folder)
    try:
        second.orchestrator.recover()
        (row,) = second.orchestrator.runs.evaluations()
        assert (row["status"], row["metrics"], row["requested_by"]) == ("failed", None, "alice")
        (entry,) = [e for e in _events(second.orchestrator, "evaluation_result")]
        assert entry["reason"] == "the appliance restarted during the evaluation"
    finally:
        asyncio.run(second.close())
