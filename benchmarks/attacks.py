"""Byzantine attack simulation: FedAvg on scikit-learn digits, in process, no network.

n clients (f of them Byzantine) train a small numpy MLP (64-32-10, ReLU, softmax)
for one local epoch per round and send their update (local minus global weights);
the server applies an aggregation rule from ``kernels`` and adds the result to the
global model. Accuracy is measured on a held-out 25% after the last round.

Attacks (Byzantine clients know the honest updates where the attack needs them):

* ``sign_flip``: send ``-10 x`` the client's own honest update (scaled, as plain
  negation with f < n/2 only slows the mean down).
* ``gaussian``: send N(0, 1) noise per coordinate (updates are ~1e-2).
* ``alie``: A Little Is Enough (Baruch et al. 2019): ``mu - z sigma`` per coordinate
  over the honest updates, ``z = Phi^-1((n - s) / n)``, ``s = floor(n/2 + 1) - f``.
* ``ipm``: inner-product manipulation (Xie et al. 2020): ``-eps x mean(honest)``,
  eps = 0.5.
* ``label_flip``: train honestly on flipped labels ``9 - y`` (data poisoning).

Rules: mean, coordinate median, trimmed mean (beta = f/n), Krum and Multi-Krum
(f), geometric median, and the median of bucket means with buckets of 3 (what the
masked modes run; it shows the robustness cost of bucketing).

Run: ``python benchmarks/attacks.py --clients 20 --byzantine 4 --rounds 30`` (prints a
Markdown table; ``--out FILE`` writes it too).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from pathlib import Path
from statistics import NormalDist

import numpy as np

from sealagg import kernels
from sealagg.appliance.robust import RULES as APPLIANCE_RULES

ATTACKS = ("none", "sign_flip", "gaussian", "alie", "ipm", "label_flip")
RULES = (*APPLIANCE_RULES, "bucket_median")  # the appliance's rules, plus bucketing
HIDDEN = 32
CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Data:
    clients: list[tuple[np.ndarray, np.ndarray]]
    test_x: np.ndarray
    test_y: np.ndarray


def load_data(n_clients: int, seed: int) -> Data:
    """Digits scaled to [0, 1], 75/25 split, training set shuffled into equal IID shards."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    cut = int(0.75 * len(y))
    train, test = order[:cut], order[cut:]
    shards = np.array_split(train, n_clients)
    return Data([(x[s], y[s]) for s in shards], x[test], y[test])


def init_model(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, math.sqrt(2 / 64), (64, HIDDEN))
    w2 = rng.normal(0, math.sqrt(2 / HIDDEN), (HIDDEN, CLASSES))
    return np.concatenate([w1.ravel(), np.zeros(HIDDEN), w2.ravel(), np.zeros(CLASSES)]).astype(
        np.float32
    )


def _unpack(w: np.ndarray) -> tuple[np.ndarray, ...]:
    a = 64 * HIDDEN
    b = a + HIDDEN
    c = b + HIDDEN * CLASSES
    return (
        w[:a].reshape(64, HIDDEN),
        w[a:b],
        w[b:c].reshape(HIDDEN, CLASSES),
        w[c:],
    )


def predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    w1, b1, w2, b2 = _unpack(w.astype(np.float64))
    return np.argmax(np.maximum(x @ w1 + b1, 0) @ w2 + b2, axis=1)


def accuracy(w: np.ndarray, data: Data) -> float:
    if not np.isfinite(w).all():
        return 0.0
    with np.errstate(all="ignore"):
        return float(np.mean(predict(w, data.test_x) == data.test_y))


def local_update(
    w: np.ndarray, x: np.ndarray, y: np.ndarray, rng: np.random.Generator, lr: float = 0.3
) -> np.ndarray:
    """One epoch of minibatch SGD (batch 16) on cross-entropy; returns local - global."""
    params = [p.copy() for p in _unpack(w.astype(np.float64))]
    w1, b1, w2, b2 = params
    order = rng.permutation(len(y))
    for start in range(0, len(y), 16):
        idx = order[start : start + 16]
        xb, yb = x[idx], y[idx]
        h = np.maximum(xb @ w1 + b1, 0)
        logits = h @ w2 + b2
        logits -= logits.max(axis=1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(yb)), yb] -= 1
        p /= len(yb)
        gw2, gb2 = h.T @ p, p.sum(axis=0)
        dh = (p @ w2.T) * (h > 0)
        gw1, gb1 = xb.T @ dh, dh.sum(axis=0)
        w1 -= lr * gw1
        b1 -= lr * gb1
        w2 -= lr * gw2
        b2 -= lr * gb2
    local = np.concatenate([w1.ravel(), b1, w2.ravel(), b2])
    return (local - w.astype(np.float64)).astype(np.float32)


def byzantine_updates(
    attack: str,
    honest: np.ndarray,
    own: np.ndarray,
    n: int,
    f: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """(f, d) malicious updates; ``own`` holds what the Byzantine clients would honestly send."""
    d = honest.shape[1]
    if attack in ("none", "label_flip"):
        return own
    if attack == "sign_flip":
        return -10.0 * own
    if attack == "gaussian":
        return rng.normal(0, 1.0, (f, d)).astype(np.float32)
    if attack == "alie":
        s = math.floor(n / 2 + 1) - f
        z = NormalDist().inv_cdf((n - s) / n)
        mu, sigma = honest.mean(axis=0), honest.std(axis=0)
        return np.tile(mu - z * sigma, (f, 1)).astype(np.float32)
    if attack == "ipm":
        return np.tile(-0.5 * honest.mean(axis=0), (f, 1)).astype(np.float32)
    raise ValueError(f"unknown attack {attack!r}")


def make_rule(rule: str, n: int, f: int, seed: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """Aggregation rule over (n, d) float32 updates; the round number seeds the buckets."""
    if rule == "mean":
        return lambda u, r: kernels.weighted_mean(u, np.ones(len(u)))
    if rule == "median":
        return lambda u, r: kernels.coordinate_median(u)
    if rule == "trimmed_mean":
        return lambda u, r: kernels.trimmed_mean(u, f / n)
    if rule == "krum":
        return lambda u, r: u[kernels.krum(u, f)]
    if rule == "multi_krum":
        return lambda u, r: kernels.multi_krum(u, f)[0]
    if rule == "geometric_median":
        return lambda u, r: kernels.geometric_median(u)[0]
    if rule == "bucket_median":

        def bucketed(u: np.ndarray, r: int) -> np.ndarray:
            perm = np.random.default_rng([seed, r]).permutation(len(u))
            groups = np.array_split(perm, len(u) // 3)
            means = np.stack([u[g].mean(axis=0) for g in groups]).astype(np.float32)
            return kernels.coordinate_median(means)

        return bucketed
    raise ValueError(f"unknown rule {rule!r}")


def simulate(
    attack: str, rule: str, *, n: int, f: int, rounds: int, seed: int = 0, data: Data | None = None
) -> float:
    """Test accuracy of FedAvg under ``attack`` with ``rule``; clients 0..f-1 are Byzantine."""
    data = data or load_data(n, seed)
    w = init_model(seed)
    aggregate = make_rule(rule, n, f, seed)
    rng = np.random.default_rng(seed + 1)
    for r in range(rounds):
        updates = []
        for i, (x, y) in enumerate(data.clients):
            labels = (CLASSES - 1 - y) if (attack == "label_flip" and i < f) else y
            updates.append(local_update(w, x, labels, rng))
        stacked = np.stack(updates)
        if f:
            stacked[:f] = byzantine_updates(attack, stacked[f:], stacked[:f], n, f, rng)
        with np.errstate(all="ignore"):
            step = aggregate(stacked, r)
        w = (w.astype(np.float64) + step).astype(np.float32)
        if not np.isfinite(w).all() or np.abs(w).max() > 1e6:
            return 0.0  # diverged: counted as chance or worse
    return accuracy(w, data)


def table(n: int, f: int, rounds: int, seeds: list[int]) -> str:
    lines = [
        f"| rule \\ attack (n={n}, f={f}, {rounds} rounds) | " + " | ".join(ATTACKS) + " |",
        "|---|" + "---|" * len(ATTACKS),
    ]
    datasets = {s: load_data(n, s) for s in seeds}
    for rule in RULES:
        cells = []
        for attack in ATTACKS:
            accs = [
                simulate(attack, rule, n=n, f=f, rounds=rounds, seed=s, data=datasets[s])
                for s in seeds
            ]
            cells.append(f"{100 * np.mean(accs):.1f}")
        lines.append(f"| {rule} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--byzantine", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    t0 = time.perf_counter()
    text = table(args.clients, args.byzantine, args.rounds, args.seeds)
    text += f"\n\n(accuracy %, mean over seeds {args.seeds}; {time.perf_counter() - t0:.0f} s)\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
