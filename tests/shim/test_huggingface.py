"""The Hugging Face integration (Trainer + PEFT) against a real appliance on loopback (secagg+).

Nothing is downloaded: tiny GPT-2 models are built from a config with random weights, the
data are random token ids, and the hub is offline.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

import threading
from collections.abc import Callable

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from sealagg_testkit.huggingface import (  # noqa: E402
    as_numpy,
    make_trainer,
    tiny_config,
    tiny_lm,
    token_dataset,
)

from sealagg import client_shim  # noqa: E402
from sealagg.appliance.federation import FederationFolder  # noqa: E402
from sealagg.appliance.server import open_store  # noqa: E402
from sealagg.appliance.testing import make_deployment  # noqa: E402
from sealagg.client_shim.connection import Connection  # noqa: E402
from sealagg.client_shim.huggingface import FederatedCallback, federated_train  # noqa: E402
from sealagg.client_shim.pytorch import shared_parameters  # noqa: E402

DEADLINES = {
    "advertise_keys": 30.0,
    "share_keys": 30.0,
    "masked_input": 30.0,
    "consistency_check": 30.0,
    "unmasking": 30.0,
}
MAX_EXAMPLES = 100
SHARD_SIZES = (24, 32, 48)
STEPS = 3


# ---------------------------------------------------------------------------------- helpers


def _deploy(tmp_path, model: dict[str, np.ndarray], rounds: int = 2):
    dep = make_deployment(tmp_path, clients=3, model=model)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": 3, "rounds": rounds, "ready_window": 10.0},
        deadlines=DEADLINES,
    )
    return dep


def _models(dep) -> tuple[dict[int, dict[str, np.ndarray]], int]:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        versions = {m.version: store.load_model(m.version) for m in store.model_versions()}
        return versions, store.current_model().version
    finally:
        store.close()


def _run_clients(app, work: dict[str, Callable[[], object]]):
    results: dict[str, object] = {}
    errors: dict[str, BaseException] = {}

    def run(name: str, job: Callable[[], object]) -> None:
        try:
            results[name] = job()
        except BaseException as error:  # checked by the test
            errors[name] = error

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in work.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a client thread did not finish"
    assert not errors, errors
    app.wait(60)
    return results


def _client(dep, i: int, trainer, seen: dict, **options):
    """One client: federated_train with a before_submit hook that records the round."""

    def capture(rnd, trainer) -> None:
        seen[i, rnd.round_number] = {
            "version": rnd.model_version,
            "global": {k: v.copy() for k, v in rnd.global_tensors.items()},
            "trained": as_numpy(shared_parameters(trainer.model)),
            "update": rnd.update(),
        }

    federation = client_shim.connect(
        dep.kits[f"client{i}"].source,
        address=dep.address,
        max_examples=MAX_EXAMPLES,
        poll_seconds=0.5,
    )
    with federation:
        records = federated_train(
            trainer,
            federation,
            max_rounds=2,
            steps_per_round=STEPS,
            before_submit=capture,
            **options,
        )
    return records


def _check_fedavg(models, seen, sizes) -> None:
    """Each published model is the previous one plus the weighted mean of the clients' deltas."""
    weights = np.array([min(1.0, n / MAX_EXAMPLES) for n in sizes])
    rounds = sorted({r for _, r in seen})
    assert len(rounds) == 2
    for r, version in zip(rounds, (1, 2), strict=True):
        previous = models[version]
        deltas = {}
        for i in range(3):
            record = seen[i, r]
            assert record["version"] == version
            for name in previous:
                np.testing.assert_array_equal(record["global"][name], previous[name])
            deltas[i] = {n: record["trained"][n] - previous[n] for n in previous}
            flat = np.concatenate([deltas[i][n].ravel() for n in sorted(previous)])
            assert np.abs(flat).max() > 0, f"client {i} did not train in round {r}"
            assert np.abs(flat).max() < 1.0  # inside the appliance's per-coordinate clip
            # what the shim sends (before masking): the same deltas, in sorted-name layout
            np.testing.assert_allclose(record["update"], flat, atol=1e-7)
        assert not np.allclose(
            np.concatenate([d.ravel() for d in deltas[0].values()]),
            np.concatenate([d.ravel() for d in deltas[1].values()]),
        ), "two clients sent the same update"
        for name in previous:
            stacked = np.stack([deltas[i][name] for i in range(3)]).astype(np.float64)
            mean = np.tensordot(weights, stacked, axes=1) / weights.sum()
            np.testing.assert_allclose(models[version + 1][name], previous[name] + mean, atol=1e-5)


# ------------------------------------------------------------------------------------ tests


def test_trainer_federated_two_rounds_fedavg(tmp_path, running):
    base_model = tiny_lm(0)
    base = as_numpy(shared_parameters(base_model))
    assert len(base) == len(list(base_model.parameters()))  # every weight travels
    dep = _deploy(tmp_path, base)
    app = running(dep.folder)
    # Trainers (and their Accelerate state) are built in the main thread; each client's model
    # starts from other weights, so the integration must load the global model.
    trainers = {
        i: make_trainer(tiny_lm(100 + i), token_dataset(i, n), tmp_path / f"out{i}")
        for i, n in enumerate(SHARD_SIZES)
    }
    seen: dict[tuple[int, int], dict] = {}
    results = _run_clients(
        app, {f"client{i}": lambda i=i: _client(dep, i, trainers[i], seen) for i in range(3)}
    )

    models, current = _models(dep)
    assert current == 3 and sorted(models) == [1, 2, 3]
    _check_fedavg(models, seen, SHARD_SIZES)
    for i in range(3):
        records = results[f"client{i}"]
        assert [(r.report.outcome, r.report.model_version) for r in records] == [
            ("published", 2),
            ("published", 3),
        ]
        assert [r.model_version for r in records] == [1, 2]
        for record in records:
            assert record.steps == STEPS  # the per-round budget, not the args' 100 epochs
            assert record.num_examples == SHARD_SIZES[i]
            assert set(record.metrics) == {"loss", "train_loss", "steps"}
            assert np.isfinite(record.metrics["loss"]) and record.metrics["loss"] > 0
        trainer = trainers[i]
        assert trainer.state.global_step == STEPS  # a new TrainerState each round
        assert trainer.args.max_steps == -1  # the user's arguments are restored
        assert trainer.args.num_train_epochs == 100
        assert FederatedCallback not in {type(c) for c in trainer.callback_handler.callbacks}
        final = as_numpy(shared_parameters(trainer.model))
        for name, value in models[3].items():  # the model holds the published weights
            np.testing.assert_array_equal(final[name], value)


def _lora(model) -> peft.PeftModel:
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM"
    )
    return peft.get_peft_model(model, config)


def test_peft_lora_only_adapters_travel(tmp_path, running, capsys):
    pretrained = {k: v.clone() for k, v in tiny_lm(0).state_dict().items()}  # the shared backbone

    def backbone_with_adapters(seed: int) -> peft.PeftModel:
        model = transformers.GPT2LMHeadModel(tiny_config())
        model.load_state_dict(pretrained)
        torch.manual_seed(seed)  # each client's own random LoRA init
        return _lora(model)

    reference = backbone_with_adapters(0)
    base = as_numpy(shared_parameters(reference, "trainable"))
    frozen = {n: p for n, p in reference.named_parameters() if not p.requires_grad}
    frozen_before = as_numpy(frozen)
    full_bytes = sum(p.numel() * p.element_size() for p in frozen.values())
    adapter_bytes = sum(v.nbytes for v in base.values())
    assert base and all("lora_" in name for name in base), sorted(base)
    assert not any("lora_" in name for name in frozen)

    dep = _deploy(tmp_path, base)
    app = running(dep.folder)
    trainers = {
        i: make_trainer(backbone_with_adapters(100 + i), token_dataset(i, n), tmp_path / f"out{i}")
        for i, n in enumerate(SHARD_SIZES)
    }
    seen: dict[tuple[int, int], dict] = {}
    results = _run_clients(
        app, {f"client{i}": lambda i=i: _client(dep, i, trainers[i], seen) for i in range(3)}
    )

    models, current = _models(dep)
    assert current == 3
    for version, tensors in models.items():
        assert sorted(tensors) == sorted(base), version
        assert all("lora_" in name for name in tensors)
    _check_fedavg(models, seen, SHARD_SIZES)
    assert any(not np.array_equal(models[3][n], base[n]) for n in base)  # the adapters learned

    sent = []
    for i in range(3):
        records = results[f"client{i}"]
        assert [r.report.outcome for r in records] == ["published", "published"]
        model = trainers[i].model
        params = dict(model.named_parameters())
        for name, before in frozen_before.items():  # the backbone never changed
            np.testing.assert_array_equal(params[name].detach().numpy(), before, err_msg=name)
        for name, value in models[3].items():
            np.testing.assert_array_equal(params[name].detach().numpy(), value)
        sent += [r.report.bytes_sent for r in records]

    with capsys.disabled():
        print(
            f"\nLoRA: {len(base)} adapter tensors, {adapter_bytes} bytes of adapter weights; "
            f"bytes sent per client per round (secagg+, 3 clients): {sent}; "
            f"full model parameters: {full_bytes} bytes; "
            f"largest round / full = {max(sent) / full_bytes:.1%}"
        )
    assert all(adapter_bytes <= b for b in sent)  # at least the masked adapter vector
    assert max(sent) < 0.10 * full_bytes, (sent, full_bytes)


def test_step_budget_callback_stops_a_plain_trainer(tmp_path):
    callback = FederatedCallback(None, steps_per_round=2)
    trainer = make_trainer(tiny_lm(0), token_dataset(0, 32), tmp_path / "out")
    trainer.add_callback(callback)
    output = trainer.train()  # the args say 100 epochs: the callback stops after 2 steps
    assert output.global_step == 2 and callback.steps == 2
    assert callback.last_loss is not None and np.isfinite(callback.last_loss)
    assert callback.last_loss == trainer.state.log_history[-2]["loss"]
    with pytest.raises(ValueError, match="no federation"):
        callback.train(trainer)


class _FakeRound:
    """Just what FederatedCallback uses of a RoundContext, without an appliance."""

    def __init__(self, number: int) -> None:
        self.round_number = self.model_version = number
        self.sent: tuple[int, dict] | None = None

    def submit(self, num_examples, *, metrics=None):
        self.sent = (num_examples, metrics)
        return client_shim.RoundReport(self.round_number, "published", "", 0, 0)


class _FakeFederation:
    def __init__(self) -> None:
        self.rounds_given: list[_FakeRound] = []

    def rounds(self, model, *, max_rounds=None):
        for number in range(1, max_rounds + 1):
            self.rounds_given.append(_FakeRound(number))
            yield self.rounds_given[-1]


def _inner(optimizer):
    while hasattr(optimizer, "optimizer"):  # Accelerate's AcceleratedOptimizer
        optimizer = optimizer.optimizer
    return optimizer


@pytest.mark.parametrize("mode", ["reset", "keep", "user"])
def test_optimizer_per_round_and_epoch_budget(tmp_path, mode):
    model = tiny_lm(0)
    user = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9) if mode == "user" else None
    trainer = make_trainer(model, token_dataset(0, 16), tmp_path / "out")  # 2 steps per epoch
    if user is not None:
        trainer.optimizer = user  # what Trainer(optimizers=(user, None)) sets
    used = []
    records = federated_train(
        trainer,
        _FakeFederation(),
        max_rounds=2,
        epochs_per_round=2,
        reset_optimizer=mode != "keep",
        before_submit=lambda rnd, trainer: used.append(trainer.optimizer),
    )
    assert [r.steps for r in records] == [4, 4]  # 2 epochs of 2 steps, not the args' 100
    assert [r.num_examples for r in records] == [16, 16]
    first, second = (_inner(o) for o in used)
    if mode == "reset":  # a fresh AdamW each round
        assert first is not second
        assert all(s["step"] == 4 for s in second.state.values())
        assert trainer.optimizer is None
    elif mode == "keep":  # the moments carry over
        assert first is second
        assert all(s["step"] == 8 for s in second.state.values())
    else:  # the user's optimizer, never wrapped twice, handed back as given
        assert first is user and second is user and trainer.optimizer is user
        assert _inner(used[1].optimizer) is user and used[1].optimizer is user
    assert trainer.args.num_train_epochs == 100 and trainer.args.max_steps == -1


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not both"):
        FederatedCallback(None, steps_per_round=2, epochs_per_round=1.0)
    with pytest.raises(ValueError, match="steps_per_round"):
        FederatedCallback(None, steps_per_round=0)
    with pytest.raises(ValueError, match="epochs_per_round"):
        FederatedCallback(None, epochs_per_round=float("nan"))
    with pytest.raises(ValueError, match="max_rounds"):
        FederatedCallback(None, max_rounds=-1)
    dep = make_deployment(tmp_path, clients=1)
    with client_shim.Federation(Connection(dep.kits["client0"])) as federation:
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True
        )
        trainer = transformers.Trainer(
            model_init=lambda: tiny_lm(0), args=args, train_dataset=token_dataset(0, 8)
        )
        with pytest.raises(ValueError, match="model_init"):
            federated_train(trainer, federation, max_rounds=1)
