"""The vendor gate from the Hugging Face integration (issue 8): the vendor's Trainer scores
each candidate on its own holdout with ``trainer_evaluator``, over real gRPC on loopback.

Nothing is downloaded: tiny GPT-2 models with random weights, random token ids (the helpers
of sealagg_testkit.huggingface).
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from sealagg_testkit.huggingface import as_numpy, make_trainer, tiny_lm, token_dataset

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from sealagg import client_shim  # noqa: E402
from sealagg.appliance.federation import FederationFolder  # noqa: E402
from sealagg.appliance.server import open_store  # noqa: E402
from sealagg.appliance.testing import make_deployment  # noqa: E402
from sealagg.client_shim.connection import Connection  # noqa: E402
from sealagg.client_shim.huggingface import federated_train, trainer_evaluator  # noqa: E402
from sealagg.client_shim.pytorch import _load, shared_parameters  # noqa: E402

STEPS = 2


def _holdout():
    return token_dataset(99, 16)  # the vendor's: it never leaves the vendor's process


def _federation(dep, name: str) -> client_shim.Federation:
    return client_shim.connect(
        dep.kits[name].source, address=dep.address, max_examples=32, poll_seconds=0.5
    )


def test_trainer_evaluator_scores_the_candidate_and_puts_the_weights_back(tmp_path):
    trainer = make_trainer(tiny_lm(0), token_dataset(0, 8), tmp_path / "out")
    evaluate = trainer_evaluator(trainer, eval_dataset=_holdout())
    own = as_numpy(shared_parameters(trainer.model))
    other = as_numpy(shared_parameters(tiny_lm(5)))
    scored_own, scored_other = evaluate(own), evaluate(other)
    assert set(scored_own) >= {"eval_loss"} and all(np.isfinite(list(scored_own.values())))
    assert scored_own["eval_loss"] != scored_other["eval_loss"]
    assert evaluate(other)["eval_loss"] == pytest.approx(scored_other["eval_loss"], rel=1e-6)
    for name, value in as_numpy(shared_parameters(trainer.model)).items():
        np.testing.assert_array_equal(value, own[name])  # the model's own weights are back
    with pytest.raises(ValueError, match="not evaluated"):  # a candidate of another shape
        evaluate({k: v for k, v in other.items() if "wte" not in k})


def test_hf_vendor_answers_the_gate_and_the_candidate_is_published(tmp_path, running):
    dep = make_deployment(tmp_path, clients=2, model=as_numpy(shared_parameters(tiny_lm(0))))
    dep.configure(
        aggregation={"mode": "plaintext", "min_clients": 2, "rounds": 1, "ready_window": 10.0},
        deadlines={"advertise_keys": 30.0},
        gates={
            "vendor": "client0",
            "metric": "eval_loss",
            "higher_is_better": False,
            "tolerance": 1.0,
            "evaluate_deadline": 30,
        },
        weights={"client0": 0.8, "client1": 0.2},
    )
    app = running(dep.folder)
    trainers = {
        i: make_trainer(tiny_lm(10 + i), token_dataset(i, 16), tmp_path / f"out{i}") for i in (0, 1)
    }
    evaluations: list[float] = []
    scorer = trainer_evaluator(trainers[0], eval_dataset=_holdout())

    def vendor_evaluate(tensors):
        metrics = scorer(tensors)
        evaluations.append(metrics["eval_loss"])
        return metrics

    results, errors = {}, {}

    def party(i: int) -> None:
        try:
            with _federation(dep, f"client{i}") as federation:
                results[i] = federated_train(
                    trainers[i],
                    federation,
                    max_rounds=1,
                    steps_per_round=STEPS,
                    evaluate=vendor_evaluate if i == 0 else None,
                )
                results[i, "evaluate"] = federation.participant.evaluate
        except BaseException as error:  # checked below
            errors[i] = error

    threads = [threading.Thread(target=party, args=(i,), daemon=True) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    app.wait(60)
    assert not errors, errors
    for i in (0, 1):
        assert [(r.report.outcome, r.report.model_version) for r in results[i]] == [
            ("published", 2)
        ]
    assert results[0, "evaluate"] is None  # handed back: connect() was given none
    assert len(evaluations) == 2  # the base model (baseline) and the candidate
    store = open_store(FederationFolder.load(dep.folder))
    try:
        versions = store.model_versions()
        assert [v.metrics["eval_loss"] for v in versions] == evaluations
        candidate = store.load_model(2)
    finally:
        store.close()
    # the reported number is the candidate's loss on the vendor's holdout, computed afresh here
    check = make_trainer(tiny_lm(0), token_dataset(0, 8), tmp_path / "check")
    _load(shared_parameters(check.model), candidate)
    expected = check.evaluate(eval_dataset=_holdout())["eval_loss"]
    assert evaluations[1] == pytest.approx(expected, rel=1e-5)


def test_evaluate_given_twice_is_refused(tmp_path):
    dep = make_deployment(tmp_path, clients=1)
    trainer = make_trainer(tiny_lm(0), token_dataset(0, 8), tmp_path / "out")
    evaluate = trainer_evaluator(trainer)
    federation = client_shim.Federation(Connection(dep.kits["client0"]), evaluate=evaluate)
    with federation, pytest.raises(ValueError, match="give it once"):
        federated_train(trainer, federation, max_rounds=1, evaluate=lambda tensors: {})
    assert federation.participant.evaluate is evaluate
