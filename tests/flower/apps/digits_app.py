"""A real Flower app (PyTorch MLP on scikit-learn's digits) run through Flower's simulation engine.

Run by tests/flower/test_flower_*.py with ``.venv-flower/bin/python -P`` (never the main venv:
Flower 1.42 needs protobuf < 7). One simulation, ten ClientApps, one client actor (one CPU
is all this machine spares; the mod's round state travels sealed in each node's context, so
more actors would work too), and four workflows in a row, each from the same initial model
with its own FedAvg:

* ``plain``: Flower's default fit workflow (plaintext FedAvg), 3 rounds;
* ``secure``: ``SealaggWorkflow()`` with ``sealagg_mod``, 3 rounds;
* ``dropout``: the same, with 3 of the 10 ClientApps raising in training in round 2;
* ``abort``: ``SealaggWorkflow(num_shares=10, reconstruction_threshold=8)``, the same failures
  in round 2: the quorum (8) is more than the 7 survivors, so that round must abort.

The ClientApp writes every update it returns (test instrumentation in the app, not in
sealagg) so the script can compute plaintext FedAvg over exactly the clients that survived.
Prints nothing useful; writes one JSON document to ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from flwr.client import ClientApp, NumPyClient
from flwr.common import Context, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow
from flwr.simulation import run_simulation
from sklearn.datasets import load_digits

from sealagg.flower import SealaggWorkflow, sealagg_mod

N = 10
FAILING = (1, 4, 7)  # 30 % of the ClientApps, in round 2 of the dropout and abort phases
PHASES = (
    ("plain", 3, None),
    ("secure", 3, {}),
    ("dropout", 3, {}),
    ("abort", 2, {"num_shares": N, "reconstruction_threshold": 8}),
)


def data():
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    return x[order], y[order]


def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))


def get_arrays(net: torch.nn.Module) -> list[np.ndarray]:
    return [p.detach().numpy().copy() for p in net.state_dict().values()]


def set_arrays(net: torch.nn.Module, arrays: list[np.ndarray]) -> None:
    keys = list(net.state_dict())
    net.load_state_dict({k: torch.tensor(a) for k, a in zip(keys, arrays, strict=True)})


class DigitsClient(NumPyClient):
    def __init__(self, pid: int, updates: Path) -> None:
        x, y = data()
        self.x, self.y = torch.tensor(x[pid::N]), torch.tensor(y[pid::N])
        self.pid, self.updates = pid, updates

    def fit(self, parameters, config):
        rnd, phase = int(config["round"]), str(config["phase"])
        if self.pid in {int(p) for p in str(config["fail"]).split(",") if p}:
            raise RuntimeError(f"client {self.pid} fails mid-round (test)")
        torch.set_num_threads(1)
        torch.manual_seed(1000 * rnd + self.pid)  # same seeds in every phase
        net = model()
        set_arrays(net, parameters)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        perm = torch.randperm(len(self.y))
        for start in range(0, len(perm), 16):
            idx = perm[start : start + 16]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(self.x[idx]), self.y[idx]).backward()
            opt.step()
        out = get_arrays(net)
        flat = np.concatenate([a.astype(np.float64).ravel() for a in out])
        np.save(self.updates / f"{phase}-r{rnd}-p{self.pid}-n{len(self.y)}.npy", flat)
        return out, len(self.y), {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    updates = Path(tempfile.mkdtemp(prefix="sealagg-flower-"))
    x_all, y_all = data()
    init = get_arrays(model())
    report: dict = {"phases": {}}

    def client_fn(context: Context):
        return DigitsClient(int(context.node_config["partition-id"]), updates).to_client()

    client_app = ClientApp(client_fn=client_fn, mods=[sealagg_mod])
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        for phase, rounds, knobs in PHASES:
            globals_: list[list[float]] = []
            accuracy: list[float] = []

            def evaluate(server_round, arrays, config, globals_=globals_, accuracy=accuracy):
                net = model()
                set_arrays(net, arrays)
                with torch.no_grad():
                    pred = net(torch.tensor(x_all)).argmax(1).numpy()
                globals_.append(np.concatenate([a.ravel() for a in arrays]).tolist())
                accuracy.append(float((pred == y_all).mean()))
                return 0.0, {}

            def fit_config(server_round, phase=phase):
                fail = FAILING if phase in ("dropout", "abort") and server_round == 2 else ()
                return {
                    "round": server_round,
                    "phase": phase,
                    "fail": ",".join(map(str, fail)),
                }

            strategy = FedAvg(
                fraction_fit=1.0,
                fraction_evaluate=0.0,
                min_fit_clients=N,
                min_available_clients=N,
                initial_parameters=ndarrays_to_parameters(init),
                evaluate_fn=evaluate,
                on_fit_config_fn=fit_config,
                accept_failures=True,
            )
            legacy = LegacyContext(
                context=context, config=ServerConfig(num_rounds=rounds), strategy=strategy
            )
            workflow = SealaggWorkflow(**knobs, timeout=120.0) if knobs is not None else None
            if workflow is None:
                DefaultWorkflow()(grid, legacy)
            else:
                DefaultWorkflow(fit_workflow=workflow)(grid, legacy)
            report["phases"][phase] = {
                "globals": globals_,
                "accuracy": accuracy,
                "rounds": [dataclasses.asdict(r) for r in workflow.rounds] if workflow else [],
            }

    logging.getLogger("flwr").setLevel(logging.WARNING)
    run_simulation(
        server_app=server_app,
        client_app=client_app,
        num_supernodes=N,
        backend_config={
            # address "local": always a private Ray instance, never another process's
            # cluster found through /tmp/ray (that one runs other Python environments).
            "init_args": {"address": "local", "num_cpus": 1, "include_dashboard": False},
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
        },
    )
    # Plaintext FedAvg over exactly the updates each round's surviving clients returned.
    for phase, rounds, _ in PHASES:
        expected = []
        for rnd in range(1, rounds + 1):
            files = sorted(updates.glob(f"{phase}-r{rnd}-p*.npy"))
            counts = [int(f.stem.rsplit("-n", 1)[1]) for f in files]
            stacked = np.stack([np.load(f) for f in files])
            mean = (stacked * np.array(counts)[:, None]).sum(0) / sum(counts)
            expected.append(
                {
                    "clients": len(files),
                    "num_examples": counts,
                    "mean": mean.tolist(),
                    "max_abs": float(np.abs(stacked).max()),
                }
            )
        report["phases"][phase]["expected"] = expected
    Path(args.out).write_text(json.dumps(report))


if __name__ == "__main__":
    main()
