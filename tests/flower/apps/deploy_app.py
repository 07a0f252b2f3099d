"""A Flower app for Flower's DEPLOYMENT runtime (SuperLink + SuperNodes), with sealagg.

Copied by tests/flower/test_flower_deployment.py into a temporary app directory next to a
generated ``pyproject.toml`` (``flwr run`` builds a FAB from it). No torch here: every message
of a round starts a fresh ClientApp process in the deployment runtime, so the app stays light
(numpy softmax regression on scikit-learn's digits, loaded only when a client trains).

Run config (``[tool.flwr.app.config]``): ``out`` (the report JSON the ServerApp writes),
``updates`` (where each ClientApp records the update it returns, test instrumentation so the
test knows plaintext FedAvg over exactly the survivors), ``victim`` and ``victim-round`` (that
partition writes ``victim.ready`` there and then waits to be killed with its SuperNode).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow

from sealagg.flower import SealaggWorkflow, sealagg_mod

N = 5
ROUNDS = 1  # one round (CI time): the killed SuperNode is in it
FEATURES, CLASSES = 64, 10


def data(pid: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.data / 16.0
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    return x[order][pid::N], y[order][pid::N]


def initial() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [0.01 * rng.standard_normal((FEATURES, CLASSES)), np.zeros(CLASSES)]


def train(arrays: list[np.ndarray], x: np.ndarray, y: np.ndarray, seed: int) -> list[np.ndarray]:
    w, b = (np.asarray(a, dtype=np.float64).copy() for a in arrays)
    rng = np.random.default_rng(seed)
    for _ in range(3):
        perm = rng.permutation(len(y))
        for start in range(0, len(y), 16):
            idx = perm[start : start + 16]
            logits = x[idx] @ w + b
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
            p[np.arange(len(idx)), y[idx]] -= 1.0
            w -= 0.5 * x[idx].T @ p / len(idx)
            b -= 0.5 * p.mean(0)
    return [w.astype(np.float32), b.astype(np.float32)]


class DigitsClient(NumPyClient):
    def __init__(self, pid: int, run_config: dict) -> None:
        self.pid, self.cfg = pid, run_config

    def fit(self, parameters, config):
        rnd = int(config["round"])
        if self.pid == int(self.cfg["victim"]) and rnd == int(self.cfg["victim-round"]):
            # Mid-round: keys shared, masked input not sent. The test kills this SuperNode
            # (and this process with it) when the marker appears.
            Path(str(self.cfg["updates"]), "victim.ready").write_text(str(rnd))
            time.sleep(300)
        x, y = data(self.pid)
        out = train(parameters, x, y, seed=1000 * rnd + self.pid)
        flat = np.concatenate([a.astype(np.float64).ravel() for a in out])
        np.save(Path(str(self.cfg["updates"])) / f"r{rnd}-p{self.pid}-n{len(y)}.npy", flat)
        return out, len(y), {}


def client_fn(context: Context):
    pid = int(context.node_config["partition-id"])
    return DigitsClient(pid, dict(context.run_config)).to_client()


client_app = ClientApp(client_fn=client_fn, mods=[sealagg_mod])
server_app = ServerApp()


@server_app.main()
def _main(grid: Grid, context: Context) -> None:
    cfg = context.run_config
    globals_: list[list[float]] = []

    def evaluate(server_round, arrays, config):
        globals_.append(np.concatenate([np.ravel(a) for a in arrays]).tolist())
        return 0.0, {}

    strategy = FedAvg(
        fraction_fit=1.0,
        fraction_evaluate=0.0,
        min_fit_clients=N,
        min_available_clients=N,
        initial_parameters=ndarrays_to_parameters(initial()),
        evaluate_fn=evaluate,
        on_fit_config_fn=lambda server_round: {"round": server_round},
        accept_failures=True,
    )
    legacy = LegacyContext(
        context=context, config=ServerConfig(num_rounds=ROUNDS), strategy=strategy
    )
    workflow = SealaggWorkflow(
        num_shares=N,
        reconstruction_threshold=int(cfg["threshold"]),
        timeout=float(cfg["stage-timeout"]),
    )
    error = ""
    try:
        DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
    except Exception as exc:  # the report says what went wrong; the test fails loudly on it
        error = f"{type(exc).__name__}: {exc}"
    Path(str(cfg["out"])).write_text(
        json.dumps(
            {
                "globals": globals_,
                "rounds": [dataclasses.asdict(r) for r in workflow.rounds],
                "error": error,
            }
        )
    )
