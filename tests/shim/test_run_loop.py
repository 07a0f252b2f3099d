"""The PyTorch loop against a scripted appliance (real gRPC on loopback): runs, hyperparameters,
the run's end, max_rounds, federated evaluation and a model that does not match.

Each test here failed on the shim before issue 19: ``rounds()`` never ended, RoundStart's run
fields and hyperparameters were not visible, a federated ``Evaluate`` went unanswered, and a
mismatched model left the appliance waiting for its deadline (no refusal report).
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import torch
from sealagg_testkit.fake_aggregator import FakeAggregator
from torch import nn

from sealagg import client_shim
from sealagg.appliance.testing import make_deployment
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.client_shim.connection import Connection
from sealagg.crypto.refusal import RefusalCode


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(4, 2)


def _tensors(model: nn.Module, shift: float = 0.0) -> dict[str, np.ndarray]:
    return {n: p.detach().numpy().copy() + shift for n, p in model.named_parameters()}


@pytest.fixture
def fake():
    started: list[FakeAggregator] = []

    def make(models):
        server = FakeAggregator(models)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def kit(tmp_path):
    return make_deployment(tmp_path, clients=3, authority=False).kits["client0"]


def _federation(kit, server: FakeAggregator) -> client_shim.Federation:
    connection = Connection(kit, address=server.address, insecure=True, timeout=5, max_downtime=5)
    return client_shim.Federation(connection, poll_seconds=0.2)


def _start(server: FakeAggregator, number: int, version: int, **run: object) -> pb.RoundStart:
    participants = [
        pb.Participant(index=i + 1, name=f"client{i}", identity_key=bytes(32)) for i in range(3)
    ]
    return pb.RoundStart(
        round_number=number,
        round_id=os.urandom(16),
        mode="plaintext",
        model_version=version,
        client_index=1,
        participants=participants,
        threshold=2,
        minimum_survivors=2,
        submit_deadline_unix=time.time() + 30,
        model_sha256=server.sha256(version),
        **run,
    )


def _end_rounds_on_upload(server: FakeAggregator, publish: dict[bytes, int]) -> None:
    """Answer each plaintext upload with the round's end (published as ``publish[round_id]``)."""

    def on_upload(message: pb.UploadMessage) -> None:
        if message.header.kind != "plaintext_update":
            return
        rid = bytes(message.header.round_id)
        server.put(
            round_end=pb.RoundEnd(
                round_id=rid, outcome=pb.RoundEnd.PUBLISHED, model_version=publish[rid]
            )
        )

    server.on_upload = on_upload


def test_run_hyperparameters_reach_training_and_run_end_stops_the_loop(kit, fake):
    model = _model()
    base = _tensors(model)
    server = fake({1: base, 2: _tensors(model, 0.5), 3: _tensors(model, 1.0)})
    hyper = [{"lr": 0.05, "local_epochs": 2}, {"lr": 0.01, "schedule": {"warmup": 3}}]
    starts = [
        _start(
            server,
            n,
            n,
            run_id="run-7",
            run_round=n,
            run_rounds=2,
            hyperparameters_json=json.dumps(h),
        )
        for n, h in zip((1, 2), hyper, strict=True)
    ]
    _end_rounds_on_upload(server, {bytes(s.round_id): s.model_version + 1 for s in starts})
    for s in starts:
        server.put(round_start=s)
    # Another run's end must not stop this client's loop; its own run's end must.
    server.put(run_end=pb.RunEnd(run_id="run-other", status="finished", reason="x"))
    server.put(
        run_end=pb.RunEnd(run_id="run-7", status="finished", reason="budget", model_version=3)
    )
    federation = _federation(kit, server)
    seen = []
    for rnd in federation.rounds(model):  # no max_rounds: only the run's end stops it
        seen.append((rnd.run_id, rnd.run_round, rnd.run_rounds, rnd.hyperparameters))
        rnd.hyperparameters["lr"] = 99  # a copy: the next read is unchanged
        assert rnd.hyperparameters == hyper[rnd.run_round - 1]
        rnd.submit(num_examples=10)
    federation.close()
    assert seen == [("run-7", 1, 2, hyper[0]), ("run-7", 2, 2, hyper[1])]
    ended = federation.run_end
    assert isinstance(ended, client_shim.RunEnded)
    assert (ended.run_id, ended.status, ended.reason, ended.model_version) == (
        "run-7",
        "finished",
        "budget",
        3,
    )
    # The model holds the run's final version after the loop.
    np.testing.assert_allclose(model.weight.detach().numpy(), _tensors(_model(), 1.0)["weight"])
    assert [u.header.kind for u in server.uploads] == ["plaintext_update"] * 2


def test_max_rounds_ends_the_loop_without_a_run_end(kit, fake):
    model = _model()
    server = fake({1: _tensors(model), 2: _tensors(model, 0.1), 3: _tensors(model, 0.2)})
    starts = [_start(server, n, n) for n in (1, 2)]
    _end_rounds_on_upload(server, {bytes(s.round_id): s.model_version + 1 for s in starts})
    for s in starts:
        server.put(round_start=s)
    federation = _federation(kit, server)
    rounds = [rnd.round_number for rnd in federation.rounds(model, max_rounds=1) if rnd.submit(5)]
    assert rounds == [1]
    assert federation.run_end is None
    rnd = next(iter(federation.rounds(model, max_rounds=1)))  # the second is still there
    assert rnd.round_number == 2 and rnd.hyperparameters == {} and rnd.run_id == ""
    federation.close()


@pytest.mark.parametrize(
    "text", ["[1, 2]", "{not json", '{"lr": NaN}', '"lr"', '{"a": ' * 5000 + "1" + "}" * 5000]
)
def test_bad_hyperparameters_refuse_the_round_and_send_nothing(kit, fake, text):
    model = _model()
    server = fake({1: _tensors(model)})
    start = _start(server, 1, 1, run_id="r", hyperparameters_json=text)
    server.put(round_start=start)
    federation = _federation(kit, server)
    with pytest.raises(client_shim.HyperparametersError, match="hyperparameters"):
        next(iter(federation.rounds(model)))
    federation.close()
    assert server.uploads == []
    assert [(bytes(r.round_id), r.code) for r in server.refusals] == [
        (bytes(start.round_id), RefusalCode.PARAMETERS.value)
    ]


def test_mismatched_model_is_reported_at_once_and_named(kit, fake):
    model = _model()
    other = nn.Sequential(nn.Linear(4, 3))  # other names and shapes
    server = fake({1: _tensors(model)})
    start = _start(server, 1, 1)
    server.put(round_start=start)
    federation = _federation(kit, server)
    with pytest.raises(client_shim.ModelMismatchError) as info:
        next(iter(federation.rounds(other)))
    federation.close()
    error = info.value
    assert isinstance(error, ValueError)  # as before: a ValueError, now naming every tensor
    named = " ".join(error.tensors)
    for name in ("'weight'", "'bias'", "'0.weight'", "'0.bias'"):
        assert name in named and name in str(error)
    assert server.uploads == []
    (refusal,) = server.refusals
    assert bytes(refusal.round_id) == bytes(start.round_id)
    assert refusal.code == RefusalCode.PARAMETERS.value
    assert "'0.weight'" in refusal.detail


def test_model_changed_during_the_round_is_reported_before_sending(kit, fake):
    model = _model()
    server = fake({1: _tensors(model)})
    start = _start(server, 1, 1)
    server.put(round_start=start)
    federation = _federation(kit, server)
    rnd = next(iter(federation.rounds(model)))
    model.weight = nn.Parameter(torch.zeros(5, 4))  # replaced the layer's weight mid-round
    with pytest.raises(client_shim.ModelMismatchError, match="'weight'"):
        rnd.submit(num_examples=3)
    federation.close()
    assert server.uploads == []
    assert [r.code for r in server.refusals] == [RefusalCode.PARAMETERS.value]


def _evaluate_task(server: FakeAggregator, version: int, sha: str | None = None) -> pb.Task:
    return pb.Task(
        evaluate=pb.Evaluate(
            federated=True,
            run_id="run-7",
            evaluation_id=os.urandom(16),
            model_version=version,
            model_sha256=sha or server.sha256(version),
            deadline_unix=time.time() + 30,
        )
    )


def test_federated_evaluation_reports_metrics_and_weight_and_restores_the_model(kit, fake):
    model = _model()
    before = _tensors(model)
    candidate = _tensors(model, 0.25)
    server = fake({1: before, 2: candidate})
    good = _evaluate_task(server, 2)
    forged = _evaluate_task(server, 2, sha="0" * 64)  # the appliance's word does not match
    server.tasks.put(good)
    server.tasks.put(forged)
    server.put(run_end=pb.RunEnd(run_id="run-7", status="stopped", reason="operator"))
    seen_weights = []

    def evaluate(m: nn.Module) -> dict:
        seen_weights.append(m.weight.detach().numpy().copy())
        return {"accuracy": np.float32(0.75), "loss": torch.tensor(0.5), "num_examples": 40}

    federation = _federation(kit, server)
    assert list(federation.rounds(model, run_id="run-7", evaluate=evaluate)) == []
    federation.close()
    # Evaluated on the requested version (the forged one never reached the callback) ...
    assert len(seen_weights) == 1
    np.testing.assert_allclose(seen_weights[0], candidate["weight"])
    # ... and the model got its own weights back.
    np.testing.assert_allclose(model.weight.detach().numpy(), before["weight"])
    (upload,) = server.uploads
    header = upload.header
    assert header.kind == "evaluation" and upload.data == b"" and header.total_bytes == 0
    assert bytes(header.round_id) == bytes(good.evaluate.evaluation_id)
    assert json.loads(header.metadata_json) == {
        "evaluation_id": bytes(good.evaluate.evaluation_id).hex(),
        "model_version": 2,
        "num_examples": 40,
        "metrics": {"accuracy": 0.75, "loss": 0.5},
    }
    assert federation.participant.evaluate is None  # handed back after the loop


@pytest.mark.parametrize(
    "answer",
    [
        {"accuracy": float("nan")},
        {"accuracy": "high"},
        {"accuracy": 0.5, "num_examples": -1},
        {"accuracy": 0.5, "num_examples": 2.5},
        ["accuracy", 0.5],
    ],
)
def test_federated_evaluation_with_unreportable_numbers_sends_nothing(kit, fake, answer):
    model = _model()
    server = fake({1: _tensors(model)})
    server.tasks.put(_evaluate_task(server, 1))
    server.put(run_end=pb.RunEnd(run_id="r", status="stopped"))
    federation = _federation(kit, server)
    assert list(federation.rounds(model, run_id="r", evaluate=lambda m: answer)) == []
    federation.close()
    assert server.uploads == []


def test_default_weight_is_one_example_and_vendor_gate_path_is_kept(kit, fake):
    model = _model()
    server = fake({1: _tensors(model)})
    server.tasks.put(_evaluate_task(server, 1))
    gate = pb.Task(
        evaluate=pb.Evaluate(
            round_id=os.urandom(16),
            model_version=1,
            model_sha256=server.sha256(1),
            metric="accuracy",
            deadline_unix=time.time() + 30,
        )
    )
    server.tasks.put(gate)
    server.put(run_end=pb.RunEnd(run_id="r", status="finished"))
    federation = _federation(kit, server)
    assert list(federation.rounds(model, run_id="r", evaluate=lambda m: {"accuracy": 1})) == []
    federation.close()
    federated, vendor = server.uploads
    assert json.loads(federated.header.metadata_json)["num_examples"] == 1
    assert bytes(vendor.header.round_id) == bytes(gate.evaluate.round_id)
    assert json.loads(vendor.data) == {"model_version": 1, "metrics": {"accuracy": 1.0}}


def test_run_end_during_a_round_ends_the_round_and_the_loop(kit, fake):
    model = _model()
    server = fake({1: _tensors(model)})
    start = _start(server, 1, 1, run_id="run-9")
    server.put(round_start=start)
    server.on_upload = lambda m: server.put(
        run_end=pb.RunEnd(run_id="run-9", status="stopped", reason="operator stop", model_version=1)
    )
    federation = _federation(kit, server)
    reports = [rnd.submit(num_examples=2) for rnd in federation.rounds(model)]
    federation.close()
    assert [(r.outcome, r.reason) for r in reports] == [
        ("aborted", "run run-9 stopped: operator stop")
    ]
    assert federation.run_end is not None and federation.run_end.status == "stopped"


def test_the_end_of_a_run_this_client_never_joined_does_not_end_its_loop(kit, fake):
    """E.g. the implicit run that an administrator's new run supersedes: its RunEnd reaches
    clients still waiting for their first round; they must keep waiting for the new run."""
    model = _model()
    server = fake({1: _tensors(model), 2: _tensors(model, 0.1)})
    server.put(run_end=pb.RunEnd(run_id="implicit", status="stopped", reason="superseded"))
    start = _start(server, 1, 1, run_id="new", run_round=1, run_rounds=1)
    server.put(round_start=start)
    _end_rounds_on_upload(server, {bytes(start.round_id): 2})
    server.put(run_end=pb.RunEnd(run_id="new", status="finished", model_version=2))
    federation = _federation(kit, server)
    runs = [rnd.run_id for rnd in federation.rounds(model) if rnd.submit(1)]
    federation.close()
    assert runs == ["new"] and federation.run_end.run_id == "new"


def test_the_loop_waits_through_idle_polls(kit, fake):
    """A run that starts later: the loop waits (idle polls) and ends with the run."""
    model = _model()
    server = fake({1: _tensors(model), 2: _tensors(model, 0.1)})
    start = _start(server, 1, 1, run_id="late", run_round=1, run_rounds=1)
    _end_rounds_on_upload(server, {bytes(start.round_id): 2})

    def later() -> None:
        time.sleep(1.0)
        server.put(round_start=start)
        server.put(run_end=pb.RunEnd(run_id="late", status="finished", model_version=2))

    threading.Thread(target=later, daemon=True).start()
    federation = _federation(kit, server)
    numbers = [rnd.run_round for rnd in federation.rounds(model) if rnd.submit(1)]
    federation.close()
    assert numbers == [1] and federation.run_end.model_version == 2


def test_without_an_evaluate_callback_a_federated_evaluation_gets_no_answer(kit, fake):
    """The client's consent to showing the appliance its metric numbers is its own callback:
    an appliance that asks anyway (a malicious one can skip the run's opt-in) gets nothing,
    not even a download of the model it names."""
    model = _model()
    server = fake({1: _tensors(model)})
    server.tasks.put(_evaluate_task(server, 1))
    server.put(run_end=pb.RunEnd(run_id="r", status="stopped"))
    federation = _federation(kit, server)
    assert list(federation.rounds(model, run_id="r")) == []
    federation.close()
    assert server.uploads == []
    assert server.downloads == []
