"""Utility of distributed DP on digits: plaintext FedAvg vs SecAgg+ vs SecAgg+ with DDGauss.

A simulated population of ``--population`` clients (the 1,347 training digits dealt round
robin, so each client holds one or two examples and client-level DP is close to example-level
DP), Poisson-sampled at rate q each round; softmax regression (650 parameters, padded to 1,024
for the Hadamard rotation); each sampled client runs a few local gradient steps and sends its
update. Columns:

* ``plaintext``: FedAvg (uniform weights) of the float updates, no clipping, no noise;
* ``secagg+``: the same updates quantized (crypto.encoding) and summed by the real SecAgg+
  protocol in process (crypto.simulation: keys, Shamir shares, masks, unmasking);
* ``clip only``: the DP pipeline (clip to C, rotate, round) with negligible noise, which
  separates the cost of clipping from the cost of noise;
* ``dp eps=X``: clip to C, rotate, round, add discrete Gaussian noise sized for the sampled
  round (crypto.dp), noise multiplier calibrated with dp-accounting so that ε(δ) after all
  rounds is X; the ring vectors are summed mod 2^32 (what SecAgg+ returns bit for bit; the
  first round of each run goes through the real protocol and is checked equal). ε reported
  is recomputed from the effective noise of every round (appliance.accounting).

Run: ``python benchmarks/dp_utility.py`` (≈10 min on 2 busy cores); ``--quick`` for a smoke
run. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import time

import numpy as np

from sealagg.appliance.accounting import RoundPrivacy, epsilon, noise_multiplier_for
from sealagg.client_shim.demo.data import load_split
from sealagg.crypto import (
    IdentityKey,
    QuantizationSpec,
    RoundConfig,
    decode_sum,
    encode_update,
)
from sealagg.crypto.dp import DistributedDPSpec, decode_dp_sum, encode_dp_update, rotation_seed
from sealagg.crypto.params import choose_graph
from sealagg.crypto.rules import MIN_MASKED_PARTIES
from sealagg.crypto.simulation import run_round

CLASSES, FEATURES = 10, 64
DIM = FEATURES * CLASSES + CLASSES


def _logits(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return x @ w[: FEATURES * CLASSES].reshape(FEATURES, CLASSES) + w[FEATURES * CLASSES :]


def _local_update(w: np.ndarray, x: np.ndarray, y: np.ndarray, steps: int, lr: float):
    local = w.copy()
    onehot = np.eye(CLASSES)[y]
    for _ in range(steps):
        z = _logits(local, x)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        g = (p - onehot) / len(y)
        grad = np.concatenate([(x.T @ g).ravel(), g.sum(axis=0)])
        local -= lr * grad
    return local - w


def _accuracy(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    return float((_logits(w, x).argmax(axis=1) == y).mean())


class _Protocol:
    """The real SecAgg+ round in process, keys made once per round size."""

    def __init__(self) -> None:
        self._ids: dict[int, IdentityKey] = {}

    def sum(self, vectors: list[np.ndarray]) -> np.ndarray:
        n = len(vectors)
        ids = {u: self._ids.setdefault(u, IdentityKey.generate()) for u in range(1, n + 1)}
        degree, threshold, _ = choose_graph(n, "secagg+", 0.1, 0.05)  # as the appliance does
        config = RoundConfig.create(
            round_id=os.urandom(32),
            identities={u: k.verify_key_bytes for u, k in ids.items()},
            threshold=threshold,
            vector_length=vectors[0].shape[0],
            degree=degree,
        )
        return run_round(config, ids, dict(enumerate(vectors, start=1))).total


def _ring_sum(vectors: list[np.ndarray]) -> np.ndarray:
    total = np.zeros_like(vectors[0])
    for v in vectors:
        total += v
    return total


def run(args: argparse.Namespace, column: str, target_eps: float | None) -> dict:
    split = load_split(seed=0)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(split.y_train))
    shards = [order[i :: args.population] for i in range(args.population)]
    q = args.clients_per_round / args.population
    w = np.zeros(DIM)
    protocol = _Protocol()
    z = None
    if target_eps is not None:
        z = noise_multiplier_for(target_eps, args.delta, q, args.rounds)
    accounted: list[RoundPrivacy] = []
    started = time.perf_counter()
    for rnd in range(args.rounds):
        chosen = np.flatnonzero(rng.random(args.population) < q)  # Poisson sampling
        if len(chosen) < MIN_MASKED_PARTIES:
            continue
        updates = [
            _local_update(
                w, split.x_train[shards[c]], split.y_train[shards[c]], args.steps, args.lr
            )
            for c in chosen
        ]
        if column == "plaintext":
            mean = np.mean(updates, axis=0)
        elif column == "secagg+":
            spec = QuantizationSpec(clip=args.coordinate_clip, max_clients=len(chosen))
            enc = [encode_update(u.astype(np.float32), 1.0, spec) for u in updates]
            total = protocol.sum(enc) if args.protocol_every_round else _ring_sum(enc)
            mean, _ = decode_sum(total, spec)
        else:
            s = len(chosen)
            spec = DistributedDPSpec(
                mechanism=args.mechanism if z else "gaussian",
                dimension=DIM,
                clip=args.clip,
                # sized for the sampled round; "clip only": a negligible 1e-9 of Gaussian noise
                noise_std=(z or 1e-9) * args.clip / math.sqrt(s),
                indicator_std=0.0,
                max_clients=s,
            )
            seed = rotation_seed(rnd.to_bytes(32, "big"))
            enc = [encode_dp_update(u, spec, seed)[0] for u in updates]
            total = _ring_sum(enc)
            if rnd == 0:  # the real protocol returns exactly the ring sum
                assert np.array_equal(protocol.sum(enc), total)
            out = decode_dp_sum(total, spec, seed)
            mean = out.mean_update
            z_eff = math.sqrt(out.count) * spec.noise_std / spec.sensitivity
            if z:
                accounted.append(RoundPrivacy(rnd + 1, q, z_eff))
        w = w + args.server_lr * mean
    seconds = time.perf_counter() - started
    eps = epsilon(accounted, args.delta) if accounted else None
    return {
        "column": column,
        "accuracy": _accuracy(w, split.x_test, split.y_test),
        "z": z,
        "epsilon": eps,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--population", type=int, default=1000)
    parser.add_argument("--clients-per-round", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--server-lr", type=float, default=1.0)
    parser.add_argument("--clip", type=float, default=1.0, help="L2 clip C under DP")
    parser.add_argument("--coordinate-clip", type=float, default=4.0)
    parser.add_argument("--delta", type=float, default=1e-4)
    parser.add_argument("--mechanism", default="discrete_gaussian")
    parser.add_argument("--epsilons", default="1,3,8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--protocol-every-round", action="store_true", default=True)
    parser.add_argument("--ring-sum", dest="protocol_every_round", action="store_false")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", default="", help="comma-separated column names to run")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.protocol_every_round = 10, False
    plan = [("plaintext", None), ("secagg+", None), ("clip only", None)]
    plan += [(f"dp eps={e}", float(e)) for e in args.epsilons.split(",") if e]
    if args.only:
        plan = [p for p in plan if p[0] in args.only.split(",")]
    print(
        f"population {args.population}, q = {args.clients_per_round / args.population:g}, "
        f"{args.rounds} rounds, delta = {args.delta:g}, C = {args.clip:g}, {args.mechanism}"
    )
    print("| configuration | test accuracy | noise multiplier z | ε accounted | seconds |")
    print("|---|---|---|---|---|")
    for column, eps in plan:
        r = run(args, column, eps)
        z = "-" if r["z"] is None else f"{r['z']:.3f}"
        e = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        print(f"| {column} | {r['accuracy']:.3f} | {z} | {e} | {r['seconds']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
