"""Server optimizers: FedAvg/FedAvgM by hand, the adaptive ones against a plain numpy reference."""

from __future__ import annotations

import numpy as np
import pytest
import safetensors.numpy

from sealagg.appliance.errors import ConfigError
from sealagg.appliance.optimizers import (
    OPTIMIZER_NAMES,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedAvgM,
    FedYogi,
    ServerOptimizer,
    make_optimizer,
)

SHAPES = {"dense.weight": (4, 5), "dense.bias": (5,), "scale": ()}


def random_model(rng: np.random.Generator, scale: float = 1.0) -> dict[str, np.ndarray]:
    return {
        name: np.asarray(scale * rng.standard_normal(shape), dtype=np.float32)
        for name, shape in SHAPES.items()
    }


def random_run(seed: int, steps: int) -> tuple[dict[str, np.ndarray], list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    weights = random_model(rng)
    # Deltas of varying size so that v - Δ² changes sign between rounds (matters for Yogi).
    deltas = [random_model(rng, scale=0.3 * (1 + (t % 3))) for t in range(steps)]
    return weights, deltas


def run(
    opt: ServerOptimizer, weights: dict[str, np.ndarray], deltas: list[dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    for delta in deltas:
        weights = opt.step(weights, delta)
    return weights


# ---------------------------------------------------------------- independent reference


def reference_adaptive(
    variant: str,
    weights: dict[str, np.ndarray],
    deltas: list[dict[str, np.ndarray]],
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> dict[str, np.ndarray]:
    """Reddi et al. 2021 Algorithm 2 written out directly, one tensor at a time."""
    out = {}
    for name in weights:
        x = weights[name].astype(np.float64)
        m = np.zeros_like(x)
        v = np.full_like(x, tau**2)
        for delta in deltas:
            g = delta[name].astype(np.float64)
            m = beta1 * m + (1 - beta1) * g
            if variant == "fedadagrad":
                v = v + g**2
            elif variant == "fedadam":
                v = beta2 * v + (1 - beta2) * g**2
            elif variant == "fedyogi":
                v = v - (1 - beta2) * g**2 * np.sign(v - g**2)
            else:
                raise AssertionError(variant)
            # The appliance publishes float32 each round, so the reference rounds too.
            x = (x + lr * m / (np.sqrt(v) + tau)).astype(np.float32).astype(np.float64)
        out[name] = x.astype(np.float32)
    return out


ADAPTIVE_CASES = [
    ("fedadagrad", {"server_lr": 0.1, "tau": 1e-3}, 0.0, 0.0),
    ("fedadagrad", {"server_lr": 0.3, "tau": 0.5, "beta1": 0.6}, 0.6, 0.0),
    ("fedadam", {"server_lr": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}, 0.9, 0.99),
    ("fedadam", {"server_lr": 0.2, "beta1": 0.5, "beta2": 0.7, "tau": 0.5}, 0.5, 0.7),
    ("fedyogi", {"server_lr": 0.01, "beta1": 0.9, "beta2": 0.99, "tau": 1e-3}, 0.9, 0.99),
    ("fedyogi", {"server_lr": 0.2, "beta1": 0.5, "beta2": 0.7, "tau": 0.5}, 0.5, 0.7),
]


@pytest.mark.parametrize(("name", "params", "beta1", "beta2"), ADAPTIVE_CASES)
def test_adaptive_matches_reference_over_five_steps(
    name: str, params: dict[str, float], beta1: float, beta2: float
) -> None:
    weights, deltas = random_run(seed=7, steps=5)
    got = run(make_optimizer(name, **params), weights, deltas)
    want = reference_adaptive(
        name, weights, deltas, params["server_lr"], beta1, beta2, params["tau"]
    )
    assert got.keys() == want.keys()
    for key in want:
        assert got[key].dtype == np.float32
        assert got[key].shape == SHAPES[key]
        np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6, err_msg=key)
    # The run actually moved the model (a no-op optimizer would not match by accident).
    assert max(np.abs(got[k] - weights[k]).max() for k in got) > 1e-2


def test_v_starts_at_tau_squared_and_m_at_zero() -> None:
    tau, beta1, beta2 = 0.5, 0.9, 0.99
    opt = FedAdam(server_lr=0.1, beta1=beta1, beta2=beta2, tau=tau)
    delta = {"w": np.array([0.2, -0.4], dtype=np.float32)}
    opt.step({"w": np.zeros(2, dtype=np.float32)}, delta)
    state = opt.state_dict()
    g = delta["w"].astype(np.float64)
    np.testing.assert_allclose(state["v/w"], beta2 * tau**2 + (1 - beta2) * g**2, rtol=1e-15)
    np.testing.assert_allclose(state["m/w"], (1 - beta1) * g, rtol=1e-15)
    assert state["m/w"].dtype == np.float64
    assert int(state["step"].reshape(())) == 1


def test_yogi_differs_from_adam_when_v_exceeds_delta_squared() -> None:
    beta1, beta2, tau = 0.9, 0.9, 1e-3
    weights = {"w": np.zeros(3, dtype=np.float32)}
    big = {"w": np.full(3, 1.0, dtype=np.float32)}
    small = {"w": np.full(3, 0.05, dtype=np.float32)}
    adam = FedAdam(server_lr=0.1, beta1=beta1, beta2=beta2, tau=tau)
    yogi = FedYogi(server_lr=0.1, beta1=beta1, beta2=beta2, tau=tau)

    # Round 1: Δ² > v = τ², so Yogi *adds* (1-β2)Δ² (sign = -1).
    xa, xy = adam.step(weights, big), yogi.step(weights, big)
    v1 = yogi.state_dict()["v/w"]
    np.testing.assert_allclose(v1, tau**2 + (1 - beta2) * 1.0, rtol=1e-15)

    # Round 2: v ≈ 0.1 > Δ² = 0.0025, so Yogi *subtracts* (1-β2)Δ² while Adam decays by β2.
    xa, xy = adam.step(xa, small), yogi.step(xy, small)
    g2 = np.float64(np.float32(0.05)) ** 2
    v2_yogi = yogi.state_dict()["v/w"]
    v2_adam = adam.state_dict()["v/w"]
    np.testing.assert_allclose(v2_yogi, v1 - (1 - beta2) * g2, rtol=1e-15)
    assert (v2_yogi < v1).all()
    assert (v2_yogi - v2_adam > 0.005).all()  # Adam forgot 10 % of v, Yogi only 0.025 %
    assert np.abs(xa["w"] - xy["w"]).min() > 1e-3


# ---------------------------------------------------------------- FedAvg and FedAvgM by hand


def test_fedavg_lr_one_is_exactly_weights_plus_delta() -> None:
    weights, deltas = random_run(seed=1, steps=1)
    got = FedAvg().step(weights, deltas[0])
    for key in weights:
        assert got[key].dtype == np.float32
        np.testing.assert_array_equal(got[key], weights[key] + deltas[0][key])


def test_fedavg_scales_by_server_lr() -> None:
    weights = {"w": np.array([1.0, 2.0], dtype=np.float32)}
    delta = {"w": np.array([4.0, -8.0], dtype=np.float32)}
    got = FedAvg(server_lr=0.25).step(weights, delta)
    np.testing.assert_array_equal(got["w"], np.array([2.0, 0.0], dtype=np.float32))


def test_fedavgm_momentum_accumulates_over_three_steps() -> None:
    opt = FedAvgM(server_lr=2.0, momentum=0.5)
    x = {"w": np.array([0.0, 0.0], dtype=np.float32)}
    deltas = [[1.0, 2.0], [0.5, -1.0], [2.0, 0.0]]
    # v1 = [1, 2]              x1 = 0  + 2·v1 = [2, 4]
    # v2 = .5·v1 + [.5, -1] = [1, 0]      x2 = [4, 4]
    # v3 = .5·v2 + [2, 0]  = [2.5, 0]     x3 = [9, 4]
    expected = [[2.0, 4.0], [4.0, 4.0], [9.0, 4.0]]
    for delta, want in zip(deltas, expected, strict=True):
        x = opt.step(x, {"w": np.array(delta, dtype=np.float32)})
        np.testing.assert_array_equal(x["w"], np.array(want, dtype=np.float32))
    state = opt.state_dict()
    np.testing.assert_array_equal(state["momentum/w"], [2.5, 0.0])
    assert int(state["step"].reshape(())) == 3


# ---------------------------------------------------------------- state persistence


def all_default_optimizers() -> list[str]:
    return list(OPTIMIZER_NAMES)


@pytest.mark.parametrize("name", all_default_optimizers())
def test_state_round_trip_through_safetensors_continues_identically(name: str) -> None:
    weights, deltas = random_run(seed=3, steps=6)
    uninterrupted = run(make_optimizer(name), weights, deltas)

    first = make_optimizer(name)
    halfway = run(first, weights, deltas[:3])
    blob = safetensors.numpy.save(first.state_dict())
    del first
    resumed = make_optimizer(name)
    resumed.load_state_dict(safetensors.numpy.load(blob))
    assert resumed.steps == 3
    finished = run(resumed, halfway, deltas[3:])

    for key in uninterrupted:
        np.testing.assert_array_equal(finished[key], uninterrupted[key], err_msg=key)
    assert resumed.steps == 6


def test_fresh_state_dict_loads_and_state_dict_is_a_copy() -> None:
    fresh = FedAdam().state_dict()
    assert set(fresh) == {"step"}
    opt = FedAdam()
    opt.load_state_dict(fresh)
    weights, deltas = random_run(seed=4, steps=2)
    opt.step(weights, deltas[0])
    snapshot = opt.state_dict()
    snapshot["m/scale"][...] = 1e6  # must not reach into the optimizer
    assert set(snapshot) == {"step"} | {f"{s}/{k}" for s in ("m", "v") for k in SHAPES}
    np.testing.assert_array_equal(
        opt.state_dict()["m/scale"], (1 - 0.9) * deltas[0]["scale"].astype(np.float64)
    )


@pytest.mark.parametrize(
    ("state", "match"),
    [
        ({}, "missing 'step'"),
        ({"step": np.array([1.5])}, "single integer"),
        ({"step": np.array([-1])}, "negative"),
        ({"step": np.array([1]), "m/w": np.zeros(2)}, r"slot\(s\) \['v'\] missing"),
        ({"step": np.array([1]), "m/w": np.zeros(2), "v/w": np.zeros(3)}, "shape"),
        ({"step": np.array([1]), "m/w": np.zeros(2), "v/w": -np.ones(2)}, "negative"),
        ({"step": np.array([1]), "m/w": np.full(2, np.nan), "v/w": np.ones(2)}, "NaN"),
        ({"step": np.array([1]), "momentum/w": np.zeros(2)}, "unexpected key 'momentum/w'"),
        ({"step": np.array([0]), "m/w": np.zeros(2), "v/w": np.zeros(2)}, "step is 0"),
    ],
)
def test_load_state_dict_rejects_corrupt_state(state: dict[str, np.ndarray], match: str) -> None:
    opt = FedAdam()
    weights, deltas = random_run(seed=5, steps=1)
    opt.step(weights, deltas[0])
    before = opt.state_dict()
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(state)
    after = opt.state_dict()  # a rejected load changes nothing
    assert after.keys() == before.keys()
    for key in before:
        np.testing.assert_array_equal(after[key], before[key])


# ---------------------------------------------------------------- refusing bad input


@pytest.mark.parametrize("name", all_default_optimizers())
def test_inputs_are_never_mutated(name: str) -> None:
    weights, deltas = random_run(seed=6, steps=3)
    copies = [{k: a.copy() for k, a in d.items()} for d in [weights, *deltas]]
    for tensors in [weights, *deltas]:
        for array in tensors.values():
            array.flags.writeable = False  # any in-place write would raise
    opt = make_optimizer(name)
    out = run(opt, weights, deltas)
    for original, copy in zip([weights, *deltas], copies, strict=True):
        for key in copy:
            np.testing.assert_array_equal(original[key], copy[key])
    for key in out:
        assert out[key] is not weights[key]
        assert out[key].flags.writeable


def _state_snapshot(opt: ServerOptimizer) -> dict[str, np.ndarray]:
    return {k: v.copy() for k, v in opt.state_dict().items()}


def _assert_same_state(opt: ServerOptimizer, snapshot: dict[str, np.ndarray]) -> None:
    now = opt.state_dict()
    assert now.keys() == snapshot.keys()
    for key in snapshot:
        np.testing.assert_array_equal(now[key], snapshot[key])


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda d: {k: v for k, v in d.items() if k != "dense.bias"}, "missing key 'dense.bias'"),
        (lambda d: {**d, "extra": np.zeros(2, np.float32)}, "unexpected key 'extra'"),
        (
            lambda d: {**d, "dense.weight": np.zeros((5, 4), np.float32)},
            r"'dense.weight' has shape \(5, 4\), expected \(4, 5\)",
        ),
    ],
)
def test_later_delta_with_different_layout_is_refused(change, match: str) -> None:
    weights, deltas = random_run(seed=8, steps=2)
    opt = FedYogi()
    weights = opt.step(weights, deltas[0])
    snapshot = _state_snapshot(opt)
    with pytest.raises(ValueError, match=f"optimizer state: {match}"):
        opt.step(change(weights), change(deltas[1]))
    _assert_same_state(opt, snapshot)
    assert opt.steps == 1


@pytest.mark.parametrize("name", all_default_optimizers())
def test_weights_must_match_delta(name: str) -> None:
    weights, deltas = random_run(seed=9, steps=1)
    del weights["scale"]
    with pytest.raises(ValueError, match="weights do not match delta: missing key 'scale'"):
        make_optimizer(name).step(weights, deltas[0])


@pytest.mark.parametrize("name", all_default_optimizers())
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", ["delta", "weights"])
def test_non_finite_input_is_refused_and_state_kept(name: str, bad: float, where: str) -> None:
    weights, deltas = random_run(seed=10, steps=2)
    opt = make_optimizer(name)
    weights = opt.step(weights, deltas[0])
    snapshot = _state_snapshot(opt)
    target = deltas[1] if where == "delta" else weights
    target["dense.weight"] = target["dense.weight"].copy()
    target["dense.weight"][2, 3] = bad
    with pytest.raises(ValueError, match=rf"{where}\['dense.weight'\] contains 1 NaN or Inf"):
        opt.step(weights, deltas[1])
    _assert_same_state(opt, snapshot)


def test_float32_overflow_is_refused() -> None:
    weights = {"w": np.array([3e38], dtype=np.float32)}
    with pytest.raises(ValueError, match="non-finite"):
        FedAvg().step(weights, {"w": np.array([3e38], dtype=np.float32)})


# ---------------------------------------------------------------- factory and hyper-parameters


def test_factory_builds_each_optimizer_with_its_parameters() -> None:
    assert OPTIMIZER_NAMES == ("fedavg", "fedavgm", "fedadagrad", "fedadam", "fedyogi")
    assert type(make_optimizer("fedavg")) is FedAvg
    assert type(make_optimizer("fedavgm", momentum=0.5)) is FedAvgM
    assert type(make_optimizer("fedadagrad")) is FedAdagrad
    yogi = make_optimizer("FedYogi", server_lr=0.05, beta2=0.9)
    assert type(yogi) is FedYogi
    assert (yogi.server_lr, yogi.beta1, yogi.beta2, yogi.tau) == (0.05, 0.9, 0.9, 1e-3)
    adam = make_optimizer("fedadam")
    assert (adam.server_lr, adam.beta1, adam.beta2, adam.tau) == (0.1, 0.9, 0.99, 1e-3)
    assert repr(adam) == "FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.001)"


def test_factory_rejects_unknown_name_listing_choices() -> None:
    with pytest.raises(ConfigError, match="optimizer='sgd'") as info:
        make_optimizer("sgd")
    assert "fedavg, fedavgm, fedadagrad, fedadam, fedyogi" in str(info.value)


def test_factory_rejects_unknown_keyword_listing_valid_ones() -> None:
    with pytest.raises(ConfigError, match="unknown parameter") as info:
        make_optimizer("fedadagrad", beta2=0.9)
    assert "beta2" in str(info.value)
    assert "server_lr, tau, beta1" in str(info.value)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("fedavg", {"server_lr": 0.0}, r"server_lr=0\.0 is invalid: must be > 0"),
        ("fedavg", {"server_lr": -1}, r"server_lr=-1 is invalid"),
        ("fedavg", {"server_lr": float("nan")}, r"server_lr=nan is invalid: must be finite"),
        ("fedavg", {"server_lr": True}, r"server_lr=True is invalid: must be a real number"),
        ("fedavgm", {"momentum": 1.0}, r"momentum=1\.0 is invalid: must be in \[0, 1\)"),
        ("fedadam", {"beta1": -0.1}, r"beta1=-0\.1 is invalid"),
        ("fedadam", {"beta2": 1.0}, r"beta2=1\.0 is invalid"),
        ("fedyogi", {"tau": 0.0}, r"tau=0\.0 is invalid: must be > 0"),
        ("fedadagrad", {"tau": -1e-3}, r"tau=-0\.001 is invalid"),
        ("fedadagrad", {"server_lr": "0.1"}, r"server_lr='0\.1' is invalid"),
    ],
)
def test_bad_hyperparameters_raise_config_error(
    name: str, params: dict[str, object], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        make_optimizer(name, **params)


def test_zero_betas_are_allowed() -> None:
    # β = 0 is a valid edge: Adam with β1 = β2 = 0 steps by lr·Δ/(|Δ| + τ).
    opt = FedAdam(server_lr=1.0, beta1=0.0, beta2=0.0, tau=1.0)
    got = opt.step({"w": np.zeros(1, np.float32)}, {"w": np.array([3.0], np.float32)})
    np.testing.assert_allclose(got["w"], [0.75], rtol=1e-7)
