"""Opacus (DP-SGD) models under the shim, client-side clipping, and client-level DP."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")
opacus = pytest.importorskip("opacus")
from torch import nn  # noqa: E402

import sealagg.client_shim.pytorch as shim_torch  # noqa: E402
from sealagg import client_shim  # noqa: E402
from sealagg.appliance.federation import FederationFolder  # noqa: E402
from sealagg.appliance.server import open_store  # noqa: E402
from sealagg.appliance.testing import make_deployment  # noqa: E402
from sealagg.client_shim.connection import Connection  # noqa: E402
from sealagg.client_shim.privacy import add_gaussian_noise, clip_l2, protect_update  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing"),
    pytest.mark.filterwarnings("ignore:Optimal order is the"),
]

DEADLINES = {
    "advertise_keys": 30.0,
    "share_keys": 30.0,
    "masked_input": 30.0,
    "consistency_check": 30.0,
    "unmasking": 30.0,
}
SIZES = (256, 384, 512)
MAX_EXAMPLES = 1000
DELTA = 1e-5
UPDATE_CLIP = 0.4  # an L2 bound on the whole update that binds for at least one client


def _mlp(seed: int) -> nn.Module:
    """The same seed gives the same weights, in any thread (no global RNG involved)."""
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 2))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in (model[0], model[2]):
            bound = layer.in_features**-0.5
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    return model


def _params(model: nn.Module) -> dict[str, np.ndarray]:
    """Parameters by shim name (Opacus' ``_module.`` stripped), float32 copies."""
    return {
        client_shim.parameter_name(n): p.detach().numpy().astype(np.float32).copy()
        for n, p in model.named_parameters()
    }


def _dataset(i: int) -> torch.utils.data.TensorDataset:
    """Synthetic, linearly separable (with a margin) two-class data; client-specific draws."""
    rng = np.random.default_rng(10 + i)
    direction = np.random.default_rng(0).normal(size=20)
    x = rng.normal(size=(SIZES[i], 20)).astype(np.float32)
    score = x @ direction
    x += (np.sign(score)[:, None] * 0.5 * direction / np.linalg.norm(direction)).astype(np.float32)
    y = (score > 0).astype(np.int64)
    return torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))


@pytest.fixture
def uploads(monkeypatch) -> dict[str, list[tuple[int, str]]]:
    """(phase, metadata_json) of every upload each client's Connection makes."""
    sent: dict[str, list[tuple[int, str]]] = {}

    class Recording(Connection):
        def submit(self, header, payload, **kwargs):
            sent.setdefault(self.kit.name, []).append((header.phase, header.metadata_json))
            return super().submit(header, payload, **kwargs)

    monkeypatch.setattr(shim_torch, "Connection", Recording)
    return sent


def test_opacus_private_model_two_rounds_reports_growing_epsilon(
    tmp_path, running, uploads, accepted
):
    from opacus import PrivacyEngine
    from opacus.grad_sample import GradSampleModule

    base = _params(_mlp(0))
    dep = make_deployment(tmp_path, clients=3, model=base)
    dep.configure(
        aggregation={"mode": "secagg+", "min_clients": 3, "rounds": 2}, deadlines=DEADLINES
    )
    app = running(dep.folder)
    seen: dict[tuple[int, int], dict] = {}
    results, errors = {}, {}

    def client(i: int):
        dataset = _dataset(i)
        model = _mlp(50 + i)  # replaced by the global weights every round
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        loader = torch.utils.data.DataLoader(dataset, batch_size=64)
        engine = PrivacyEngine()
        model, optimizer, loader = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=0.3,
            max_grad_norm=1.0,
        )
        wrapped = model
        federation = client_shim.connect(
            dep.kits[f"client{i}"].source,
            address=dep.address,
            max_examples=MAX_EXAMPLES,
            clip=UPDATE_CLIP,
            poll_seconds=0.5,
        )
        reports = []
        with federation:
            assert client_shim.opacus_epsilon(engine, DELTA) == 0.0
            for rnd in federation.rounds(model, max_rounds=2):
                loaded = _params(model)
                for x, y in loader:  # the user's own Opacus loop, unchanged
                    optimizer.zero_grad()
                    nn.functional.cross_entropy(model(x), y).backward()
                    optimizer.step()
                epsilon = client_shim.opacus_epsilon(engine, DELTA)
                assert epsilon == engine.get_epsilon(delta=DELTA)
                seen[i, rnd.round_number] = {
                    "version": rnd.model_version,
                    "loaded": loaded,
                    "trained": _params(model),
                    "epsilon": epsilon,
                }
                reports.append(rnd.submit(num_examples=len(dataset), epsilon=epsilon))
        assert model is wrapped and isinstance(model, GradSampleModule)
        assert all(  # the DP optimizer still steps the very tensors the shim loads into
            p is q
            for p, q in zip(optimizer.param_groups[0]["params"], model.parameters(), strict=True)
        )
        return reports, _params(model)

    def run(i: int) -> None:
        try:
            results[i] = client(i)
        except BaseException as error:  # checked below
            errors[i] = error

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    app.wait(60)
    assert not errors, errors

    store = open_store(FederationFolder.load(dep.folder))
    try:
        models = {m.version: store.load_model(m.version) for m in store.model_versions()}
    finally:
        store.close()
    assert sorted(models) == [1, 2, 3]
    rounds = sorted({r for _, r in seen})
    weights = np.array([min(1.0, n / MAX_EXAMPLES) for n in SIZES])
    norms = []
    for r, version in zip(rounds, (1, 2), strict=True):
        previous = models[version]
        names = sorted(previous)
        flat_previous = np.concatenate([previous[n].ravel() for n in names])
        updates = []
        for i in range(3):
            record = seen[i, r]
            assert record["version"] == version
            for name in names:  # the global weights were loaded into the private model
                np.testing.assert_array_equal(record["loaded"][name], previous[name])
            trained = np.concatenate([record["trained"][n].ravel() for n in names])
            assert not np.array_equal(trained, flat_previous)  # and it trained from them
            norms.append(float(np.linalg.norm(trained.astype(np.float64) - flat_previous)))
            updates.append(clip_l2(trained - flat_previous, UPDATE_CLIP).astype(np.float64))
        mean = np.tensordot(weights, np.stack(updates), axes=1) / weights.sum()
        published = np.concatenate([models[version + 1][n].ravel() for n in names])
        np.testing.assert_allclose(published, flat_previous + mean, atol=1e-5)
    assert max(norms) > UPDATE_CLIP  # the client-side clip did bind

    for i in range(3):
        reports, final = results[i]
        assert [(r.outcome, r.model_version) for r in reports] == [
            ("published", 2),
            ("published", 3),
        ]
        for name, value in models[3].items():
            np.testing.assert_array_equal(final[name], value)
        spent = [seen[i, r]["epsilon"] for r in rounds]
        assert 0.0 < spent[0] < spent[1], spent  # ε grows with every round of DP-SGD
        sent = [json.loads(m)["epsilon"] for _, m in uploads[f"client{i}"] if m]
        assert sent == spent  # once per round, in the first (key advertisement) upload
        at_appliance = sorted(
            (r, m["epsilon"]) for r, n, _, m in accepted if n == f"client{i}" and m
        )
        assert at_appliance == list(zip(rounds, spent, strict=True))


def test_client_dp_validation(tmp_path):
    dp = client_shim.ClientDP(clip=2.0, noise_multiplier=0.5)
    assert dp.noise_std == 1.0
    assert client_shim.ClientDP(1, 0).noise_multiplier == 0.0
    for clip, noise, error in [
        (0.0, 1.0, ValueError),
        (-1.0, 1.0, ValueError),
        (1.0, -0.1, ValueError),
        (float("nan"), 1.0, ValueError),
        (1.0, float("inf"), ValueError),
        (True, 1.0, TypeError),
        ("1", 1.0, TypeError),
    ]:
        with pytest.raises(error):
            client_shim.ClientDP(clip, noise)
    kit = make_deployment(tmp_path, clients=3).kits["client0"].source
    with pytest.raises(TypeError, match="ClientDP"):
        client_shim.connect(kit, dp=(1.0, 1.0), ready_timeout=0)


def test_clip_and_client_dp_noise():
    rng = np.random.default_rng(0)
    big = rng.normal(0, 1, 10_000).astype(np.float32)
    clipped = clip_l2(big, 2.0)
    assert np.linalg.norm(clipped.astype(np.float64)) <= 2.0
    assert np.linalg.norm(clipped.astype(np.float64)) == pytest.approx(2.0, rel=1e-6)
    cosine = clipped @ big / (np.linalg.norm(clipped) * np.linalg.norm(big))
    assert cosine == pytest.approx(1.0, abs=1e-6)  # same direction
    small = big * 1e-4
    np.testing.assert_array_equal(clip_l2(small, 2.0), small)  # inside the bound: untouched
    np.testing.assert_array_equal(protect_update(big), big)

    dp = client_shim.ClientDP(clip=0.5, noise_multiplier=0.8)
    zero = np.zeros(200_000, dtype=np.float32)
    np.random.seed(0)
    torch.manual_seed(0)
    first = protect_update(zero, dp=dp)
    np.random.seed(0)
    torch.manual_seed(0)
    second = protect_update(zero, dp=dp)
    assert first.dtype == np.float32
    assert float(np.std(first)) == pytest.approx(dp.noise_std, rel=0.02)
    assert abs(float(np.mean(first))) < 0.01
    assert not np.array_equal(first, second)  # fresh OS entropy, not the global seeds

    noisy = protect_update(big, clip=1.0, dp=dp)  # clipped to min(1.0, 0.5), then noised
    residual = noisy.astype(np.float64) - clip_l2(big, 0.5)
    assert float(np.std(residual)) == pytest.approx(dp.noise_std, rel=0.05)
    np.testing.assert_array_equal(add_gaussian_noise(big, 0.0), big)


def test_opacus_epsilon_helper():
    from opacus import PrivacyEngine

    engine = PrivacyEngine()
    assert client_shim.opacus_epsilon(engine, DELTA) == 0.0  # nothing spent before a step
    for delta in (0.0, 1.0, -1e-5, float("nan")):
        with pytest.raises(ValueError):
            client_shim.opacus_epsilon(engine, delta)

    class Spent:  # any engine with get_epsilon(delta)
        def get_epsilon(self, delta):
            return 3.5

    assert client_shim.opacus_epsilon(Spent(), DELTA) == 3.5
