"""Vendor–client fine-tuning under data drift and concept drift (issue 8), on CPU.

Reproduces the shape of the published two-pilot study (Guardora FFT: image anomaly detection;
50 client images took the client's EER from 6.97% to 3.55%, 500 to 0.7%; a new anomaly class
learned from 100 labelled client samples with vendor weight 0.8) on data that ships with
scikit-learn (the 8×8 digits; no download).

Task: anomaly detection; the designated anomaly classes are positives (label 1), every other
digit is normal. A small MLP outputs an anomaly score.

- Data drift: the vendor's images come from its own "devices" (mild gain/noise variation);
  the client's device applies acquisition shifts the vendor never saw: lower resolution
  (8→5→8 px), optical blur, gamma/contrast, sensor noise, small rotations. The client
  fine-tunes with 50, 100 or 500 samples (10% anomalies).
- Concept drift: one digit class the vendor never saw at all becomes a new anomaly type at the
  client; 100 labelled client samples (50 new-class, 50 normal); vendor weight 0.8.

Each round both parties train locally from the global model and the global model moves by
the weighted mean of their deltas (vendor 0.8 / client 0.2); the vendor's quality gate then
evaluates the candidate on the vendor's holdout (never shared) and accepts it only if its EER
is no worse than the last accepted version's (tolerance 0). Rejected candidates are dropped and
the next round starts from the last accepted model.

Two ways to run it:
- ``--sweep`` (default): the weighted FedAvg and the gate simulated in one process (same
  arithmetic as the appliance's plaintext/attested weighted mean), over several seeds;
- ``--loopback``: one configuration through the real appliance on loopback TLS (plaintext
  mode, two parties, the vendor gate over the wire with the vendor evaluating in its own
  shim), to show the path end to end.

Commands::

    python benchmarks/drift_study.py --sweep --seeds 5
    python benchmarks/drift_study.py --loopback --samples 50 --rounds 10
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from client_shim.metrics import detection_metrics, no_worse  # noqa: E402

ANOMALY_CLASSES = (3, 5)  # designated anomalies (positives) in the data-drift task
NEW_CLASS = 8  # concept drift: the vendor never sees it; at the client it is a new anomaly
VENDOR_WEIGHT = 0.8
VENDOR_DEVICES = 3  # the vendor's own device types: each of its images captured on each
HIDDEN = 64


# ---------------------------------------------------------------------------------- devices


def vendor_device(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The vendor's devices: small per-image gain and sensor noise around the clean images."""
    gain = rng.uniform(0.9, 1.1, size=(len(images), 1, 1))
    noisy = images * gain + rng.normal(0, 0.3, images.shape)
    return np.clip(noisy, 0, 16)


def captures(
    images: np.ndarray, labels: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Each vendor image as captured by each of the vendor's VENDOR_DEVICES devices."""
    shots = [vendor_device(images, rng) for _ in range(VENDOR_DEVICES)]
    return np.concatenate(shots), np.tile(labels, VENDOR_DEVICES)


def client_device(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A camera type the vendor never saw: optics blur, small rotation, gamma, offset, noise."""
    out = np.empty_like(images)
    for k, img in enumerate(images):
        img = ndimage.gaussian_filter(img, sigma=0.4)  # optics / lower effective resolution
        img = ndimage.rotate(img, rng.uniform(-6, 6), reshape=False, order=1)  # mounting
        img = 16 * (np.clip(img, 0, 16) / 16) ** 1.3  # sensor gamma / contrast
        img = img + 0.5 + rng.normal(0, 0.6, img.shape)  # dark-current offset, sensor noise
        out[k] = np.clip(img, 0, 16)
    return out


# ------------------------------------------------------------------------------------ model


def _torch():
    import torch

    torch.set_num_threads(1)
    return torch


def new_model(seed: int):
    torch = _torch()
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(),
        torch.nn.Linear(64, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, HIDDEN),
        torch.nn.ReLU(),
        torch.nn.Linear(HIDDEN, 1),
    )


def get_weights(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def set_weights(model, weights: dict[str, np.ndarray]) -> None:
    torch = _torch()
    model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in weights.items()})


def train(
    model, x: np.ndarray, y: np.ndarray, *, steps: int, lr: float, seed: int, batch=64, sgd=False
):
    """Local training on class-balanced binary cross-entropy, ``steps`` mini-batches.

    Adam for the vendor's base model; SGD with momentum (``sgd=True``) for fine-tuning rounds,
    whose steps stay small and even from the first one (Adam's first steps are about ``lr``
    per weight whatever the gradient, which jolts a converged model every round)."""
    torch = _torch()
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy((x / 16.0).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    pos = max(float(y.mean()), 1e-3)
    weight = torch.where(yt > 0, 0.5 / pos, 0.5 / (1 - pos))
    optimizer = (
        torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        if sgd
        else torch.optim.Adam(model.parameters(), lr=lr)
    )
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (min(batch, len(xt)),), generator=gen)
        logits = model(xt[idx]).squeeze(1)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits, yt[idx], weight=weight[idx]
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def scores(model, x: np.ndarray) -> np.ndarray:
    torch = _torch()
    model.eval()
    with torch.no_grad():
        return torch.sigmoid(model(torch.from_numpy((x / 16.0).astype(np.float32)))).numpy()[:, 0]


def evaluate(model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    return detection_metrics(scores(model, x), y, threshold=0.5).as_dict()


def weighted_mean_step(
    base: dict[str, np.ndarray], deltas: list[dict[str, np.ndarray]], weights: list[float]
) -> dict[str, np.ndarray]:
    """What the appliance computes: base + Σ w_i Δ_i / Σ w_i (float64 accumulation)."""
    total = sum(weights)
    return {
        k: (
            base[k].astype(np.float64)
            + sum(w * d[k].astype(np.float64) for w, d in zip(weights, deltas)) / total
        ).astype(np.float32)
        for k in base
    }


# ------------------------------------------------------------------------------------- data


@dataclasses.dataclass
class Split:
    vendor_x: np.ndarray
    vendor_y: np.ndarray
    holdout_x: np.ndarray
    holdout_y: np.ndarray
    client_x: np.ndarray  # the client's labelled fine-tuning samples
    client_y: np.ndarray
    test_x: np.ndarray  # the client's site test set (same device / drift), never trained on
    test_y: np.ndarray
    test_new: np.ndarray | None = None  # mask: test samples of the new class (concept drift)


def data_drift_split(seed: int, samples: int) -> Split:
    digits = load_digits()
    images, classes = digits.images, digits.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    labels = np.isin(classes, ANOMALY_CLASSES).astype(np.int64)
    vendor_idx, client_idx = order[: len(order) * 45 // 100], order[len(order) * 45 // 100 :]
    cut = len(vendor_idx) * 70 // 100
    v_train, v_hold = vendor_idx[:cut], vendor_idx[cut:]
    client_images = client_device(images[client_idx], rng)
    client_labels = labels[client_idx]
    anomalies = np.flatnonzero(client_labels == 1)
    normals = np.flatnonzero(client_labels == 0)
    n_anom = max(1, round(0.1 * samples))
    chosen = np.r_[anomalies[:n_anom], normals[: samples - n_anom]]
    rest = np.setdiff1d(np.arange(len(client_idx)), chosen)
    vendor_x, vendor_y = captures(images[v_train], labels[v_train], rng)
    holdout_x, holdout_y = captures(images[v_hold], labels[v_hold], rng)
    return Split(
        vendor_x,
        vendor_y,
        holdout_x,
        holdout_y,
        client_images[chosen],
        client_labels[chosen],
        client_images[rest],
        client_labels[rest],
    )


def concept_drift_split(seed: int, per_class: int = 50) -> Split:
    """The vendor never sees NEW_CLASS; at the client it is a new anomaly type."""
    digits = load_digits()
    images, classes = digits.images, digits.target
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(images))
    known = order[classes[order] != NEW_CLASS]
    new = order[classes[order] == NEW_CLASS]
    labels = np.isin(classes, (*ANOMALY_CLASSES, NEW_CLASS)).astype(np.int64)
    vendor_idx, client_idx = known[: len(known) // 2], known[len(known) // 2 :]
    cut = len(vendor_idx) * 70 // 100
    v_train, v_hold = vendor_idx[:cut], vendor_idx[cut:]
    client_normals = client_idx[labels[client_idx] == 0]
    chosen = np.r_[new[:per_class], client_normals[:per_class]]
    test = np.r_[new[per_class:], np.setdiff1d(client_idx, chosen)]
    client_x = vendor_device(images[chosen], rng)  # same devices: only the concept drifts
    vendor_x, vendor_y = captures(images[v_train], labels[v_train], rng)
    holdout_x, holdout_y = captures(images[v_hold], labels[v_hold], rng)
    return Split(
        vendor_x,
        vendor_y,
        holdout_x,
        holdout_y,
        client_x,
        labels[chosen],
        vendor_device(images[test], rng),
        labels[test],
        test_new=classes[test] == NEW_CLASS,
    )


# ------------------------------------------------------------------------------------ study


@dataclasses.dataclass
class RunResult:
    client_before: dict[str, float]
    client_after: dict[str, float]
    vendor_before: dict[str, float]
    vendor_after: dict[str, float]
    rounds: int
    rejected: int
    client_seconds_per_round: float
    vendor_seconds_per_round: float
    new_recall_before: float = math.nan
    new_recall_after: float = math.nan


def vendor_base_model(split: Split, seed: int, steps: int = 3000):
    model = new_model(seed)
    train(model, split.vendor_x, split.vendor_y, steps=steps, lr=1e-3, seed=seed)
    return model


def recall(model, split: Split) -> float:
    assert split.test_new is not None
    s = scores(model, split.test_x[split.test_new])
    return float((s >= 0.5).mean())


def fine_tune(
    split: Split,
    base,
    *,
    seed: int,
    rounds: int,
    local_steps: int,
    lr: float,
    vendor_weight: float = VENDOR_WEIGHT,
    gate_metric: str = "eer",
    tolerance: float = 0.0,
    sgd: bool = True,
) -> RunResult:
    """Rounds of weighted FedAvg with the vendor gate, simulated in one process."""
    vendor, client = new_model(seed), new_model(seed)
    accepted = get_weights(base)
    set_weights(vendor, accepted)
    accepted_metrics = evaluate(vendor, split.holdout_x, split.holdout_y)
    vendor_before = accepted_metrics
    client_before = evaluate(vendor, split.test_x, split.test_y)
    new_before = recall(vendor, split) if split.test_new is not None else math.nan
    rejected = 0
    client_time = vendor_time = 0.0
    for r in range(rounds):
        deltas = []
        for who, model, x, y in (
            ("vendor", vendor, split.vendor_x, split.vendor_y),
            ("client", client, split.client_x, split.client_y),
        ):
            set_weights(model, accepted)
            started = time.process_time()
            step_seed = seed * 1000 + r * 2 + (who == "client")
            train(model, x, y, steps=local_steps, lr=lr, seed=step_seed, sgd=sgd)
            elapsed = time.process_time() - started
            if who == "client":
                client_time += elapsed
            else:
                vendor_time += elapsed
            new = get_weights(model)
            deltas.append({k: new[k] - accepted[k] for k in accepted})
        candidate = weighted_mean_step(accepted, deltas, [vendor_weight, 1.0 - vendor_weight])
        set_weights(vendor, candidate)  # the vendor evaluates it on its holdout, in its process
        metrics = evaluate(vendor, split.holdout_x, split.holdout_y)
        if no_worse(
            metrics, accepted_metrics, gate_metric, higher_is_better=False, tolerance=tolerance
        ):
            accepted, accepted_metrics = candidate, metrics
        else:
            rejected += 1
    final = new_model(seed)
    set_weights(final, accepted)
    return RunResult(
        client_before,
        evaluate(final, split.test_x, split.test_y),
        vendor_before,
        accepted_metrics,
        rounds,
        rejected,
        client_time / rounds,
        vendor_time / rounds,
        new_before,
        recall(final, split) if split.test_new is not None else math.nan,
    )


def _ms(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    a = np.asarray(values, dtype=np.float64) * scale
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.{digits}f}"


def sweep(args: argparse.Namespace) -> dict:
    table: dict = {"data_drift": {}, "concept_drift": {}}
    for samples in args.samples_list:
        runs = []
        for seed in range(args.seeds):
            split = data_drift_split(seed, samples)
            base = vendor_base_model(split, seed)
            runs.append(
                fine_tune(
                    split,
                    base,
                    seed=seed,
                    rounds=args.rounds,
                    local_steps=args.local_steps,
                    lr=args.lr,
                )
            )
        table["data_drift"][samples] = runs
        _print_data_row(samples, runs)
    runs = []
    for seed in range(args.seeds):
        split = concept_drift_split(seed)
        base = vendor_base_model(split, seed)
        runs.append(
            fine_tune(
                split, base, seed=seed, rounds=args.rounds, local_steps=args.local_steps, lr=args.lr
            )
        )
    table["concept_drift"][100] = runs
    _print_concept_row(runs)
    return table


def _print_data_row(samples: int, runs: list[RunResult]) -> None:
    print(
        f"data drift | {samples} samples | client EER {_ms([r.client_before['eer'] for r in runs])}% "
        f"→ {_ms([r.client_after['eer'] for r in runs])}% | client HTER@0.5 "
        f"{_ms([r.client_before['hter'] for r in runs])}% → {_ms([r.client_after['hter'] for r in runs])}% "
        f"| vendor EER {_ms([r.vendor_before['eer'] for r in runs])}% → "
        f"{_ms([r.vendor_after['eer'] for r in runs])}% | vendor acc "
        f"{_ms([r.vendor_before['accuracy'] for r in runs])}% → "
        f"{_ms([r.vendor_after['accuracy'] for r in runs])}% | rejected "
        f"{sum(r.rejected for r in runs)}/{sum(r.rounds for r in runs)} | client CPU s/round "
        f"{_ms([r.client_seconds_per_round for r in runs], 1.0, 3)} | vendor CPU s/round "
        f"{_ms([r.vendor_seconds_per_round for r in runs], 1.0, 3)}",
        flush=True,
    )


def _print_concept_row(runs: list[RunResult]) -> None:
    print(
        f"concept drift | 100 samples (50/50) | new-class recall "
        f"{_ms([r.new_recall_before for r in runs])}% → {_ms([r.new_recall_after for r in runs])}% "
        f"| client EER {_ms([r.client_before['eer'] for r in runs])}% → "
        f"{_ms([r.client_after['eer'] for r in runs])}% | vendor EER "
        f"{_ms([r.vendor_before['eer'] for r in runs])}% → {_ms([r.vendor_after['eer'] for r in runs])}% "
        f"| vendor acc {_ms([r.vendor_before['accuracy'] for r in runs])}% → "
        f"{_ms([r.vendor_after['accuracy'] for r in runs])}% | rejected "
        f"{sum(r.rejected for r in runs)}/{sum(r.rounds for r in runs)} | client CPU s/round "
        f"{_ms([r.client_seconds_per_round for r in runs], 1.0, 3)}",
        flush=True,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sweep", action="store_true", help="in-process simulation (default)")
    mode.add_argument("--loopback", action="store_true", help="through the real appliance")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--samples", dest="samples_list", type=int, nargs="+", default=[50, 100, 500]
    )
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--local-steps", type=int, default=25)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--json", type=Path, help="also write the raw per-seed results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.loopback:
        from benchmarks.drift_loopback import run_loopback

        run_loopback(args)
    else:
        table = sweep(args)
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        k: {str(n): [dataclasses.asdict(r) for r in v] for n, v in t.items()}
                        for k, t in table.items()
                    },
                    indent=1,
                )
            )
    print(f"wall time {time.perf_counter() - started:.1f} s", flush=True)


if __name__ == "__main__":
    main()
