"""The PyTorch client shim against a real appliance on loopback (secagg+, real certificates)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import sealagg.client_shim.pytorch as shim_torch  # noqa: E402
from sealagg import client_shim  # noqa: E402
from sealagg.appliance.federation import FederationFolder  # noqa: E402
from sealagg.appliance.server import open_store  # noqa: E402
from sealagg.appliance.testing import free_port, make_deployment  # noqa: E402
from sealagg.client_shim.connection import Connection  # noqa: E402

DEADLINES = {
    "advertise_keys": 30.0,
    "share_keys": 30.0,
    "masked_input": 30.0,
    "consistency_check": 30.0,
    "unmasking": 30.0,
}
MAX_EXAMPLES = 1000
SHARD_SIZES = (300, 450, 600)


# ---------------------------------------------------------------------------------- helpers


def _data() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8x8 digits if installed, else separable synthetic clusters."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        rng = np.random.default_rng(0)
        centers = rng.uniform(0, 1, (10, 64))
        y = rng.integers(0, 10, 1800)
        x = np.clip(centers[y] + rng.normal(0, 0.15, (1800, 64)), 0, 1)
        return x.astype(np.float32), y.astype(np.int64)
    digits = load_digits()
    order = np.random.default_rng(0).permutation(len(digits.target))
    x = (digits.data[order] / 16.0).astype(np.float32)
    return x, digits.target[order].astype(np.int64)


X, Y = _data()
X_TEST, Y_TEST = X[:400], Y[:400]
_bounds = np.cumsum((400, *SHARD_SIZES))
SHARDS = [(X[a:b], Y[a:b]) for a, b in itertools.pairwise(_bounds)]


def _mlp(seed: int, hidden: int = 16) -> nn.Module:
    """The same seed gives the same weights, in any thread (no global RNG involved)."""
    model = nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            bound = layer.in_features**-0.5
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    return model


def _state(model: nn.Module) -> dict[str, np.ndarray]:
    return {
        k: v.detach().cpu().numpy().astype(np.float32).copy() for k, v in model.state_dict().items()
    }


def _train(model, x, y, *, epochs=4, lr=0.1, seed=0, extra_loss=None) -> float:
    """The user's own plain PyTorch loop; returns the last epoch's mean loss."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    generator = torch.Generator().manual_seed(seed)
    last = 0.0
    for _ in range(epochs):
        order, total = torch.randperm(len(xt), generator=generator), 0.0
        for start in range(0, len(xt), 32):
            batch = order[start : start + 32]
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(model(xt[batch]), yt[batch])
            if extra_loss is not None:
                loss = loss + extra_loss()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        last = total / len(xt)
    return last


def _evaluate(tensors: dict[str, np.ndarray]) -> tuple[float, float]:
    """(accuracy, loss) of a set of MLP weights on the held-out set."""
    model = _mlp(0)
    model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in tensors.items()})
    with torch.no_grad():
        logits = model(torch.from_numpy(X_TEST))
        loss = float(nn.functional.cross_entropy(logits, torch.from_numpy(Y_TEST)))
        return float((logits.argmax(1).numpy() == Y_TEST).mean()), loss


def _deploy(tmp_path, model, *, rounds: int, advertise: float = 30.0):
    """A secagg+ federation of three; ``rounds=0`` runs until stopped.

    The refusal tests use ``rounds=0`` with a short ready window: a client that walked out
    stops counting as ready, so no second round opens, and the appliance stops at once
    instead of waiting for it to collect its RoundEnd.
    """
    dep = make_deployment(tmp_path, clients=3, model=model)
    dep.configure(
        aggregation={
            "mode": "secagg+",
            "min_clients": 3,
            "rounds": rounds,
            "ready_window": 10.0 if rounds else 1.0,
        },
        deadlines={**DEADLINES, "advertise_keys": advertise},
    )
    return dep


def _models(dep) -> tuple[dict[int, dict[str, np.ndarray]], int]:
    store = open_store(FederationFolder.load(dep.folder))
    try:
        versions = {m.version: store.load_model(m.version) for m in store.model_versions()}
        return versions, store.current_model().version
    finally:
        store.close()


def _start(workers: dict[str, Callable[[], object]]):
    results: dict[str, object] = {}
    errors: dict[str, BaseException] = {}

    def run(name: str, work: Callable[[], object]) -> None:
        try:
            results[name] = work()
        except BaseException as error:  # checked by the test
            errors[name] = error

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in workers.items()]
    for t in threads:
        t.start()
    return threads, results, errors


def _finish(app, threads, *, all_rounds: bool = True) -> None:
    """Wait for the clients, then for the appliance's rounds (or just the first outcome)."""
    for t in threads:
        t.join(60)
        assert not t.is_alive(), "a client thread did not finish"
    if all_rounds:
        app.wait(60)
        return
    deadline = time.monotonic() + 30
    while not app.app.orchestrator.history and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(app.app.orchestrator.history) == 1, app.app.orchestrator.history


@pytest.fixture
def uploads(monkeypatch) -> dict[str, list[tuple[int, str, int]]]:
    """Every upload each client's Connection makes: (phase, metadata_json, payload bytes)."""
    sent: dict[str, list[tuple[int, str, int]]] = {}

    class Recording(Connection):
        def submit(self, header, payload, **kwargs):
            parts = payload if isinstance(payload, list | tuple) else [payload]
            record = (header.phase, header.metadata_json, sum(memoryview(p).nbytes for p in parts))
            sent.setdefault(self.kit.name, []).append(record)
            return super().submit(header, payload, **kwargs)

    monkeypatch.setattr(shim_torch, "Connection", Recording)
    return sent


class _Renamed(nn.Module):
    names: ClassVar[str] = "fc1/fc2 instead of the global model's 0/2"

    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 16), nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


# ------------------------------------------------------------------------------------ tests


def test_three_clients_fedavg_two_rounds(tmp_path, running, uploads, accepted):
    base = _state(_mlp(0))
    dep = _deploy(tmp_path, base, rounds=2)
    app = running(dep.folder)
    seen: dict[tuple[int, int], dict] = {}

    def client(i: int):
        model = _mlp(100 + i)  # not the global init: the shim must load the global weights
        x, y = SHARDS[i]
        federation = client_shim.connect(
            dep.kits[f"client{i}"].source,
            address=dep.address,
            max_examples=MAX_EXAMPLES,
            poll_seconds=0.5,
        )
        reports = []
        with federation:
            for rnd in federation.rounds(model, max_rounds=2):
                loaded = _state(model)
                prox = None
                if i == 2:  # one client uses FedProx, anchored to this round's global weights
                    prox = lambda rnd=rnd: client_shim.proximal_term(model, rnd, 0.01)  # noqa: E731
                loss = _train(model, x, y, seed=rnd.round_number * 10 + i, extra_loss=prox)
                seen[i, rnd.round_number] = {
                    "version": rnd.model_version,
                    "global": {k: v.copy() for k, v in rnd.global_tensors.items()},
                    "loaded": loaded,
                    "trained": _state(model),
                }
                reports.append(rnd.submit(num_examples=len(x), metrics={"loss": loss}))
        return reports, _state(model)

    threads, results, errors = _start({f"client{i}": lambda i=i: client(i) for i in range(3)})
    _finish(app, threads)
    assert not errors, errors
    models, current = _models(dep)
    assert current == 3 and sorted(models) == [1, 2, 3]

    for i in range(3):
        reports, final = results[f"client{i}"]
        assert [(r.outcome, r.model_version) for r in reports] == [
            ("published", 2),
            ("published", 3),
        ]
        for name, value in models[3].items():  # the model holds the published weights
            np.testing.assert_array_equal(final[name], value)

    weights = np.array([min(1.0, len(SHARDS[i][0]) / MAX_EXAMPLES) for i in range(3)])
    rounds = sorted({r for _, r in seen})
    for r, version in zip(rounds, (1, 2), strict=True):
        previous = models[version]
        for i in range(3):
            record = seen[i, r]
            assert record["version"] == version
            for name in previous:
                np.testing.assert_array_equal(record["global"][name], previous[name])
                np.testing.assert_array_equal(record["loaded"][name], previous[name])
        for name in previous:
            updates = np.stack([seen[i, r]["trained"][name] - previous[name] for i in range(3)])
            assert np.abs(updates).max() < 1.0  # inside the appliance's per-coordinate clip
            mean = np.tensordot(weights, updates.astype(np.float64), axes=1) / weights.sum()
            np.testing.assert_allclose(models[version + 1][name], previous[name] + mean, atol=1e-5)

    # Only masked protocol messages left the clients; the metadata reached the appliance.
    for i in range(3):
        metas = [json.loads(m) for _, m, _ in uploads[f"client{i}"] if m]
        assert [m["num_examples"] for m in metas] == [len(SHARDS[i][0])] * 2
    at_appliance = [(n, m) for _, n, phase, m in accepted if phase == 0]
    assert len(at_appliance) == 6 and all("loss" in m["metrics"] for _, m in at_appliance)

    accuracy_before, loss_before = _evaluate(base)
    accuracy_after, loss_after = _evaluate(models[3])
    assert loss_after < loss_before - 0.5, (loss_before, loss_after)
    assert accuracy_after > accuracy_before + 0.3, (accuracy_before, accuracy_after)


def _backbone_model(seed: int) -> nn.Module:
    model = _mlp(seed, hidden=128)
    model[0].requires_grad_(False)  # a frozen "pretrained" layer; only the head travels
    return model


def test_trainable_share_sends_only_requires_grad_parameters(tmp_path, running, uploads):
    frozen = _state(_backbone_model(0))
    base = {k: v for k, v in frozen.items() if k.startswith("2.")}
    trainable, full = sum(v.size for v in base.values()), sum(v.size for v in frozen.values())
    assert full > 5 * trainable
    dep = _deploy(tmp_path, base, rounds=1)
    app = running(dep.folder)

    def client(i: int):
        model = _backbone_model(0)  # the same frozen layer everywhere, a local head
        x, y = SHARDS[i]
        federation = client_shim.connect(
            dep.kits[f"client{i}"].source, address=dep.address, poll_seconds=0.5
        )
        with federation:
            for rnd in federation.rounds(model, max_rounds=1):
                assert sorted(rnd.global_tensors) == ["2.bias", "2.weight"]
                _train(model, x, y, epochs=2, seed=i)
                assert rnd.update().shape == (trainable,)
                report = rnd.submit(num_examples=len(x))
        return report, _state(model)

    threads, results, errors = _start({f"client{i}": lambda i=i: client(i) for i in range(3)})
    _finish(app, threads)
    assert not errors, errors
    models, current = _models(dep)
    assert sorted(models[current]) == ["2.bias", "2.weight"]
    masked_input = 4 * (trainable + 1)  # uint32 ring elements; the weight rides last
    for i in range(3):
        report, final = results[f"client{i}"]
        assert report.outcome == "published"
        for name in ("0.weight", "0.bias"):  # the frozen layer never changed, never travelled
            np.testing.assert_array_equal(final[name], frozen[name])
        for name, value in models[current].items():
            np.testing.assert_array_equal(final[name], value)
        largest = max(size for _, _, size in uploads[f"client{i}"])
        assert masked_input <= largest <= masked_input + 64, (largest, masked_input)
        assert masked_input <= report.bytes_sent < masked_input + 8192, report.bytes_sent
        assert report.bytes_sent < 4 * full // 2


def test_mismatched_model_is_refused_before_anything_is_sent(tmp_path, running, uploads, accepted):
    base = _state(_mlp(0))
    dep = _deploy(tmp_path, base, rounds=0, advertise=2.0)
    app = running(dep.folder)

    def client(i: int, model: nn.Module):
        federation = client_shim.connect(
            dep.kits[f"client{i}"].source, address=dep.address, poll_seconds=0.5
        )
        with federation:
            for rnd in federation.rounds(model, max_rounds=1):
                _train(model, *SHARDS[i], epochs=1)
                report = rnd.submit(num_examples=len(SHARDS[i][0]))
        return report, _state(model)

    threads, results, errors = _start(
        {
            "client0": lambda: client(0, _Renamed()),
            "client1": lambda: client(1, _mlp(0, hidden=17)),
            "client2": lambda: client(2, _mlp(5)),
        }
    )
    _finish(app, threads, all_rounds=False)
    assert set(errors) == {"client0", "client1"}, errors
    renamed, reshaped = str(errors["client0"]), str(errors["client1"])
    assert isinstance(errors["client0"], ValueError) and "'0.bias'" in renamed, renamed
    assert "no parameter of that name" in renamed and "nothing was sent" in renamed
    assert isinstance(errors["client1"], ValueError), reshaped
    assert "'0.bias'" in reshaped and "(17,)" in reshaped and "(16,)" in reshaped, reshaped
    assert "client0" not in uploads and "client1" not in uploads  # no Submit call at all
    assert {name for _, name, _, _ in accepted} == {"client2"}
    # Without them the round cannot reach its survivor floor: it aborts, and the honest
    # client's model is back on the round's global weights.
    report, final = results["client2"]
    assert report.outcome == "aborted"
    assert app.app.orchestrator.history[-1].outcome == "aborted"
    for name, value in base.items():
        np.testing.assert_array_equal(final[name], value)


def test_nan_or_inf_in_the_update_is_refused_locally(tmp_path, running, uploads, accepted):
    dep = _deploy(tmp_path, _state(_mlp(0)), rounds=0, advertise=2.0)
    app = running(dep.folder)

    def client(i: int, poison: float | None):
        model = _mlp(0)
        federation = client_shim.connect(
            dep.kits[f"client{i}"].source, address=dep.address, poll_seconds=0.5
        )
        with federation:
            for rnd in federation.rounds(model, max_rounds=1):
                _train(model, *SHARDS[i], epochs=1)
                if poison is not None:
                    with torch.no_grad():
                        model[2].weight[3, 4] = poison
                return rnd.submit(num_examples=len(SHARDS[i][0]))

    threads, results, errors = _start(
        {
            "client0": lambda: client(0, float("nan")),
            "client1": lambda: client(1, float("inf")),
            "client2": lambda: client(2, None),
        }
    )
    _finish(app, threads, all_rounds=False)
    assert set(errors) == {"client0", "client1"}, errors
    for name in ("client0", "client1"):
        message = str(errors[name])
        assert isinstance(errors[name], ValueError), message
        assert "'2.weight'" in message and "NaN/Inf" in message and "nothing was sent" in message
        assert name not in uploads
    assert {name for _, name, _, _ in accepted} == {"client2"}
    assert results["client2"].outcome == "aborted"


def test_unreachable_appliance_fails_clearly(tmp_path):
    dep = make_deployment(tmp_path, clients=3)
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(client_shim.ApplianceUnavailableError) as info:
        client_shim.connect(dep.kits["client0"].source, address=address, ready_timeout=1.0)
    assert address in str(info.value) and "client0" in str(info.value)


def test_wrong_expired_or_revoked_kits_fail_clearly_and_send_nothing(tmp_path, running, accepted):
    from datetime import UTC, datetime, timedelta

    from sealagg.appliance.federation import (
        FederationFolder,
        add_client,
        init_federation,
        revoke_client,
    )
    from sealagg.appliance.kit import KitExpiredError, KitMismatchError, load_kit

    dep = make_deployment(tmp_path / "ours", clients=3)
    running(dep.folder)
    fed = FederationFolder.load(dep.folder)
    # A kit of another federation pointed at our appliance: refused at once, by name.
    other = init_federation(tmp_path / "other", name="other", hosts=["localhost"], port=dep.port)
    stranger = load_kit(add_client(other, "client0"))
    started = time.monotonic()
    with pytest.raises(KitMismatchError, match="another federation"):
        client_shim.connect(stranger, address=dep.address, ready_timeout=30)
    assert time.monotonic() - started < 10
    # An expired kit: refused before any connection.
    past = datetime.now(UTC) - timedelta(days=800)
    aged = init_federation(tmp_path / "aged", name="testfed", hosts=["localhost"], now=past)
    old = load_kit(add_client(aged, "client0", now=past))
    with pytest.raises(KitExpiredError, match="expired on"):
        client_shim.connect(old, address=dep.address, ready_timeout=1)
    # A revoked kit: the appliance answers but refuses it in the handshake; the message says so.
    revoke_client(fed, "client2")
    with pytest.raises(client_shim.ApplianceUnavailableError, match="revoked"):
        client_shim.connect(dep.kits["client2"], address=dep.address, ready_timeout=1)
    assert accepted == []


def test_bad_arguments_are_refused_before_connecting(tmp_path):
    kit = make_deployment(tmp_path, clients=3).kits["client0"].source
    with pytest.raises(ValueError, match="share must be"):
        client_shim.connect(kit, share="some")
    with pytest.raises(ValueError, match="max_examples"):
        client_shim.connect(kit, max_examples=0, ready_timeout=0)
    with pytest.raises(ValueError, match="clip"):
        client_shim.connect(kit, clip=-1.0, ready_timeout=0)


def test_shared_parameter_selection_and_checks():
    model = _backbone_model(0)
    assert sorted(client_shim.shared_parameters(model, "trainable")) == ["2.bias", "2.weight"]
    assert len(client_shim.shared_parameters(model, "all")) == 4
    only_bias = client_shim.shared_parameters(model, lambda name: name.endswith("bias"))
    assert sorted(only_bias) == ["0.bias", "2.bias"]

    wrapper = nn.Module()
    wrapper._module = model  # what Opacus' GradSampleModule looks like
    assert sorted(client_shim.shared_parameters(wrapper)) == ["2.bias", "2.weight"]

    full = _state(model)
    shared = client_shim.shared_parameters(model)
    with pytest.raises(ValueError, match=r"'0\.bias'.*leaves it out \(requires_grad=False\)"):
        client_shim.check_matches(shared, full, model_params=dict(model.named_parameters()))
    ints = {k: v.astype(np.int32) for k, v in full.items() if k.startswith("2.")}
    with pytest.raises(ValueError, match="not a float type"):
        client_shim.check_matches(shared, ints)
    client_shim.check_matches(shared, {k: v for k, v in full.items() if k.startswith("2.")})


def test_proximal_term_gradient_is_mu_times_the_distance():
    model = _backbone_model(3)
    rng = np.random.default_rng(1)
    anchors = {
        name: torch.from_numpy(rng.normal(0, 0.1, tuple(p.shape)).astype(np.float32))
        for name, p in model.named_parameters()
        if p.requires_grad
    }
    mu = 0.3
    term = client_shim.proximal_term(model, anchors, mu)
    expected = mu / 2 * sum(float(((p - anchors[n]) ** 2).sum()) for n, p in anchors_of(model))
    assert float(term.detach()) == pytest.approx(expected, rel=1e-5)
    term.backward()
    for name, param in model.named_parameters():
        if name in anchors:
            torch.testing.assert_close(param.grad, mu * (param.detach() - anchors[name]))
        else:
            assert param.grad is None  # frozen / not shared: untouched
    assert all(not a.requires_grad and a.grad is None for a in anchors.values())

    wrapper = nn.Module()
    wrapper._module = model  # names as under Opacus: "_module.2.weight"
    assert client_shim.proximal_term(wrapper, anchors, mu).item() == pytest.approx(expected)
    assert client_shim.proximal_term(model, anchors, 0.0).item() == 0.0
    with pytest.raises(ValueError, match="no parameter 'nope'"):
        client_shim.proximal_term(model, {"nope": torch.zeros(1)}, mu)
    with pytest.raises(ValueError, match="mu"):
        client_shim.proximal_term(model, anchors, -1.0)


def anchors_of(model: nn.Module):
    return [(n, p.detach()) for n, p in model.named_parameters() if p.requires_grad]


def test_package_imports_without_torch():
    script = """
import sys
class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "opacus"):
            raise ImportError(f"{name} is not installed")
sys.meta_path.insert(0, NoTorch())
from sealagg import client_shim
assert client_shim.ClientDP(1.0, 0.5).noise_std == 0.5
assert callable(client_shim.connect) and callable(client_shim.proximal_term)
assert "torch" not in sys.modules
try:
    client_shim.proximal_term(None, {}, 0.1)
except ImportError as error:
    assert "PyTorch" in str(error)
else:
    raise AssertionError("proximal_term ran without torch")
print("ok")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
