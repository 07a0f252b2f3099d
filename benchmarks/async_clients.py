"""The client side of the asynchronous benchmark (bench_async.py): heterogeneous digits clients.

One OS process hosts several clients, one thread each (one torch import per process instead of
one per client: 20 processes would spend ~40 s of CPU importing torch before each setting on a
2-core machine). Every client runs the README's unchanged three-line shim loop over its own
mutual-TLS connection, whatever the run's schedule:

    for rnd in federation.rounds(model):
        train(model, ...)            # S minibatch steps, sleeping ``delay`` after each
        rnd.submit(num_examples=len(shard))

Speed is simulated, not computed: client i sleeps ``delay_i`` seconds after each of its
``steps`` local SGD steps (the steps themselves take about a millisecond), so an update costs
``steps * delay_i`` seconds of wall time and the spread of speeds is exactly the spread of
delays. The fixed step count (not epochs) keeps shard sizes from changing the speed spread.

Run by bench_async.py as ``python -P async_clients.py SPEC.json NAME...``; writes one JSON
file of per-client counts when every client's loop has ended.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

#: Local training (the demo's optimizer settings: client_shim/demo/config.py).
LR = 0.05
MOMENTUM = 0.9
BATCH_SIZE = 16


def delays(clients: int, fastest: float, slowest: float) -> list[float]:
    """Per-step delays spread geometrically from ``fastest`` (client 0) to ``slowest``."""
    if clients == 1:
        return [fastest]
    ratio = slowest / fastest
    return [fastest * ratio ** (i / (clients - 1)) for i in range(clients)]


def shards(clients: int, alpha: float, seed: int) -> tuple[Any, list[np.ndarray]]:
    """The demo's split and its Dirichlet(alpha) label-skewed shards (non-IID for small alpha)."""
    from sealagg.client_shim.demo.data import dirichlet_shards, load_split

    split = load_split(seed)
    min_examples = min(20, len(split.y_train) // clients)
    parts = dirichlet_shards(
        split.y_train, clients, alpha=alpha, seed=seed, min_examples=min_examples
    )
    return split, parts


def train(model: Any, x: np.ndarray, y: np.ndarray, steps: int, delay: float, seed: int) -> None:
    """``steps`` minibatch SGD-with-momentum steps (fresh momentum), ``delay`` s after each."""
    import torch
    from torch import nn

    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    buffers: list[Any] = [None] * len(params)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(steps):
        batch = rng.choice(len(x), size=min(BATCH_SIZE, len(x)), replace=False)
        model.zero_grad(set_to_none=True)
        loss_fn(model(torch.from_numpy(x[batch])), torch.from_numpy(y[batch])).backward()
        with torch.no_grad():
            for i, p in enumerate(params):
                if p.grad is None:
                    continue
                if buffers[i] is None:
                    buffers[i] = p.grad.detach().clone()
                else:
                    buffers[i].mul_(MOMENTUM).add_(p.grad)
                p.add_(buffers[i], alpha=-LR)
        time.sleep(delay)


def client_loop(spec: dict[str, Any], name: str, data: tuple, ready: Path, out: dict) -> None:
    """One client: connect, say ready, run the shim loop until the run ends."""
    import grpc

    from sealagg import client_shim
    from sealagg.client_shim.demo.model import make_model
    from sealagg.client_shim.errors import RoundRefusedError

    index = spec["names"].index(name)
    x, y = data
    delay = spec["delays"][index]
    stats: dict[str, Any] = {
        "delay": delay,
        "examples": len(y),
        "submitted": 0,
        "outcomes": {},
        "staleness": [],
        "errors": [],
    }
    out[name] = stats
    federation = client_shim.connect(
        spec["kits"][name], address=spec["address"], poll_seconds=spec["poll_seconds"]
    )
    model = make_model(spec["model_seed"])
    (ready / name).touch()
    seed = 1000 * index
    try:
        while federation.run_end is None:
            try:
                for rnd in federation.rounds(model, run_id=None):
                    seed += 1
                    train(model, x, y, spec["steps"], delay, seed)
                    report = rnd.submit(num_examples=len(y))
                    stats["submitted"] += 1
                    stats["outcomes"][report.outcome] = stats["outcomes"].get(report.outcome, 0) + 1
                    if report.staleness is not None:
                        stats["staleness"].append(report.staleness)
            except (grpc.RpcError, RoundRefusedError) as error:  # the round went on without us
                stats["errors"].append(type(error).__name__)
                if len(stats["errors"]) > 50:
                    raise
    finally:
        federation.close()
    stats["run_end"] = federation.run_end.status if federation.run_end else None


def main(argv: list[str]) -> int:
    import torch

    torch.set_num_threads(1)  # 20 clients on 2 cores: no intra-op thread pools
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    spec = json.loads(Path(argv[0]).read_text())
    names = argv[1:]
    split, parts = shards(len(spec["names"]), spec["alpha"], spec["data_seed"])
    ready = Path(spec["ready_dir"])
    out: dict[str, Any] = {}
    failures: dict[str, str] = {}

    def run(name: str) -> None:
        part = parts[spec["names"].index(name)]
        try:
            client_loop(spec, name, (split.x_train[part], split.y_train[part]), ready, out)
        except BaseException as error:  # reported to the harness in the results file
            failures[name] = f"{type(error).__name__}: {error}"

    threads = [threading.Thread(target=run, args=(n,), daemon=True) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = {"clients": out, "failures": failures}
    (Path(spec["results_dir"]) / f"{names[0]}.json").write_text(json.dumps(result))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
