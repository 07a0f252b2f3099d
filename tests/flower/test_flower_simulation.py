"""A real Flower app through Flower's own simulation engine, with sealagg's mod and workflow.

``tests/flower/apps/digits_app.py`` runs in .venv-flower (scripts/flower_env.sh): ten
ClientApps train a small PyTorch MLP on scikit-learn's digits under Flower's FedAvg, first
with Flower's plaintext fit workflow, then with ``sealagg_mod`` + ``SealaggWorkflow`` (clean,
30 % of the ClientApps failing mid-round, and a threshold those failures break). The app
records each update it returns, so every round's plaintext FedAvg over exactly the survivors
is known; the secure global model must equal it within the quantization bound (plus float32
rounding of Flower's own FedAvg arithmetic), round after round.
"""

from __future__ import annotations

import numpy as np
import pytest
from sealagg_testkit.flower_env import REPO, run_flower_script

from sealagg.crypto.encoding import QuantizationSpec

N = 10
MAX_WEIGHT = 1000.0
CLIP = 8.0
#: Flower's FedAvg sums float32 arrays (weights times identical values) and the global is float32.
FLOAT32_SLACK = 16 * 2.0**-24


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    app = REPO / "tests" / "flower" / "apps" / "digits_app.py"
    return run_flower_script(app, tmp_path_factory.mktemp("digits"), timeout=600)["phases"]


def tolerance(expected: dict) -> float:
    """Quantization bound on the weighted mean, from the unmasked sums' bounds.

    The server learns S = Σw·x + e1 and W = Σw + e2 with |e1| <= n/scale and |e2| <=
    n/weight_scale (sealagg.crypto.encoding); |S/W - Σw·x/Σw| <= (|e1| + |mean|·|e2|) / (W -
    |e2|).
    """
    n = expected["clients"]
    spec = QuantizationSpec(clip=CLIP, max_clients=N)
    e1, e2 = n / spec.scale, n / spec.weight_scale
    total_weight = sum(c / MAX_WEIGHT for c in expected["num_examples"])
    biggest = max(abs(v) for v in expected["mean"])
    quantization = (e1 + biggest * e2) / (total_weight - e2)
    return quantization + FLOAT32_SLACK * biggest


def check_round(phase: dict, rnd: int) -> None:
    expected = phase["expected"][rnd - 1]
    global_model = np.array(phase["globals"][rnd])  # globals[0] is the initial model
    diff = np.abs(global_model - np.array(expected["mean"])).max()
    assert diff <= tolerance(expected), (rnd, diff, tolerance(expected))


def test_plaintext_reference_is_flowers_fedavg(report: dict) -> None:
    """The reference computation agrees with Flower's own FedAvg (float32 rounding only)."""
    for rnd in (1, 2, 3):
        check_round(report["plain"], rnd)


def test_secure_global_model_equals_plaintext_fedavg_round_after_round(report: dict) -> None:
    secure = report["secure"]
    assert [r["completed"] for r in secure["rounds"]] == [True, True, True]
    assert all(r["survivors"] == N and r["dropped"] == [] for r in secure["rounds"])
    for rnd in (1, 2, 3):
        check_round(secure, rnd)
    # Same seeds, same initial model: round 1 equals the plaintext run's round 1 itself.
    plain1, secure1 = np.array(report["plain"]["globals"][1]), np.array(secure["globals"][1])
    assert np.abs(plain1 - secure1).max() <= tolerance(report["plain"]["expected"][0])
    # And the model learns: the secure run's accuracy tracks the plaintext run's.
    assert secure["accuracy"][-1] > secure["accuracy"][0] + 0.2
    assert np.allclose(secure["accuracy"], report["plain"]["accuracy"], atol=0.01)


def test_a_round_survives_30_percent_failing_clientapps(report: dict) -> None:
    phase = report["dropout"]
    rounds = phase["rounds"]
    assert [r["completed"] for r in rounds] == [True, True, True]
    assert rounds[1]["survivors"] == 7 and len(rounds[1]["dropped"]) == 3
    assert rounds[1]["minimum_survivors"] <= 7
    assert phase["expected"][1]["clients"] == 7
    for rnd in (1, 2, 3):  # round 2: FedAvg over exactly the seven survivors
        check_round(phase, rnd)


def test_a_round_aborts_cleanly_when_the_failures_break_the_threshold(report: dict) -> None:
    phase = report["abort"]
    first, second = phase["rounds"]
    assert first["completed"] and first["threshold"] == 8 and first["minimum_survivors"] == 8
    check_round(phase, 1)
    assert second["completed"] is False
    assert second["reason"] == "BelowThresholdError: masked input: 7 clients, at least 8 required"
    # Nothing was aggregated: the global model after round 2 is round 1's, bit for bit.
    assert phase["globals"][2] == phase["globals"][1]
