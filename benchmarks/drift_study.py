"""Vendor-client fine-tuning under data drift and concept drift (issue 8), on CPU.

Reproduces the shape of the published two-pilot study (Guardora FFT: image anomaly detection;
50 client images took the client's EER from 6.97% to 3.55%, 500 to 0.7%; a new anomaly class
learned from 100 labelled client samples with vendor weight 0.8) on data that ships with
scikit-learn (the 8x8 digits; no download).

Task: anomaly detection; the designated anomaly classes are positives (label 1), every other
digit is normal. A small MLP outputs an anomaly score.

- Data drift: the vendor's images come from its own "devices" (mild gain/noise variation,
  each image captured on VENDOR_DEVICES of them); the client's device applies acquisition
  shifts the vendor never saw: optical blur (sigma 0.4 px, standing in for a lower effective
  resolution: with the other shifts, an explicit 8→6→8 px resampling took the base model's
  client EER to 20-30%, far from the published 7% starting point),
  small rotations (±6°), gamma 1.3, a dark-current offset and sensor noise. The client
  fine-tunes with 50, 100 or 500 samples (10% anomalies).
- Concept drift: one digit class the vendor never saw at all becomes a new anomaly type at the
  client; 100 labelled client samples (50 new-class, 50 normal); vendor weight 0.8.

Each round both parties train locally from the global model and the global model moves by
the weighted mean of their deltas (vendor 0.8 / client 0.2); the vendor's quality gate then
evaluates the candidate on the vendor's holdout (never shared) and accepts it only if its EER
is no worse than the last accepted version's (``--tolerance``, absolute EER). Rejected
candidates are dropped and the next round starts from the last accepted model.

Two ways to run it:
- ``--sweep`` (default): the weighted FedAvg and the gate simulated in one process (same
  arithmetic as the appliance's plaintext/attested weighted mean), over several seeds;
- ``--loopback``: one configuration through the real appliance on loopback TLS
  (``attested`` mode with the software attester, or ``--mode plaintext``; two parties; the
  vendor gate over the wire, the vendor evaluating in its own shim), to show the path end to
  end.

Commands (the ones behind benchmarks/RESULTS.md, issue 8)::

    python benchmarks/drift_study.py --seeds 3 --rounds 80 --local-steps 20 --lr 0.01 \
        --batch 128 --tolerance 0.0
    python benchmarks/drift_study.py --seeds 3 --rounds 80 --local-steps 20 --lr 0.01 \
        --batch 128 --tolerance 0.005
    python benchmarks/drift_study.py --loopback --samples 50 --rounds 10 --local-steps 20 \
        --lr 0.01 --batch 128
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

from client_shim.metrics import detection_metrics, no_worse

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
            + sum(w * d[k].astype(np.float64) for w, d in zip(weights, deltas, strict=True)) / total
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
    #: the same at the client's own EER threshold (its operating point on its test set)
    new_recall_eer_before: float = math.nan
    new_recall_eer_after: float = math.nan


def vendor_base_model(split: Split, seed: int, steps: int = 3000):
    model = new_model(seed)
    train(model, split.vendor_x, split.vendor_y, steps=steps, lr=1e-3, seed=seed)
    return model


def recall(model, split: Split, threshold: float = 0.5) -> float:
    assert split.test_new is not None
    s = scores(model, split.test_x[split.test_new])
    return float((s >= threshold).mean())


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
    batch: int = 64,
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
            train(model, x, y, steps=local_steps, lr=lr, seed=step_seed, sgd=sgd, batch=batch)
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
    client_after = evaluate(final, split.test_x, split.test_y)
    result = RunResult(
        client_before,
        client_after,
        vendor_before,
        accepted_metrics,
        rounds,
        rejected,
        client_time / rounds,
        vendor_time / rounds,
    )
    if split.test_new is not None:
        set_weights(vendor, get_weights(base))
        result.new_recall_before = new_before
        result.new_recall_after = recall(final, split)
        result.new_recall_eer_before = recall(vendor, split, client_before["eer_threshold"])
        result.new_recall_eer_after = recall(final, split, client_after["eer_threshold"])
    return result


def _ms(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    a = np.asarray(values, dtype=np.float64) * scale
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.{digits}f}"


def _tune(split: Split, seed: int, args: argparse.Namespace) -> RunResult:
    base = vendor_base_model(split, seed)
    return fine_tune(
        split,
        base,
        seed=seed,
        rounds=args.rounds,
        local_steps=args.local_steps,
        lr=args.lr,
        tolerance=args.tolerance,
        batch=args.batch,
        vendor_weight=args.vendor_weight,
    )


def sweep(args: argparse.Namespace) -> dict:
    table: dict = {"data_drift": {}, "concept_drift": {}}
    for samples in args.samples_list:
        runs = [_tune(data_drift_split(seed, samples), seed, args) for seed in range(args.seeds)]
        table["data_drift"][samples] = runs
        _print_data_row(samples, runs)
    if args.concept:
        runs = [_tune(concept_drift_split(seed), seed, args) for seed in range(args.seeds)]
        table["concept_drift"][100] = runs
        _print_concept_row(runs)
    return table


def _row(label: str, runs: list[RunResult], key: str, metric: str, scale: float = 100.0) -> str:
    before = [getattr(r, f"{key}_before")[metric] for r in runs]
    after = [getattr(r, f"{key}_after")[metric] for r in runs]
    return f"{label} {_ms(before, scale)} → {_ms(after, scale)}"


def _print_data_row(samples: int, runs: list[RunResult]) -> None:
    parts = [
        f"data drift | {samples} samples",
        _row("client EER %", runs, "client", "eer"),
        _row("client HTER@0.5 %", runs, "client", "hter"),
        _row("vendor EER %", runs, "vendor", "eer"),
        _row("vendor acc %", runs, "vendor", "accuracy"),
        f"rejected {sum(r.rejected for r in runs)}/{sum(r.rounds for r in runs)}",
        f"client CPU s/round {_ms([r.client_seconds_per_round for r in runs], 1.0, 3)}",
        f"vendor CPU s/round {_ms([r.vendor_seconds_per_round for r in runs], 1.0, 3)}",
    ]
    print(" | ".join(parts), flush=True)


def _print_concept_row(runs: list[RunResult]) -> None:
    recall_before = _ms([r.new_recall_before for r in runs])
    recall_after = _ms([r.new_recall_after for r in runs])
    parts = [
        "concept drift | 100 samples (50/50)",
        f"new-class recall % {recall_before} → {recall_after}",
        f"at the client's EER threshold {_ms([r.new_recall_eer_before for r in runs])} → "
        f"{_ms([r.new_recall_eer_after for r in runs])}",
        _row("client EER %", runs, "client", "eer"),
        _row("vendor EER %", runs, "vendor", "eer"),
        _row("vendor acc %", runs, "vendor", "accuracy"),
        f"rejected {sum(r.rejected for r in runs)}/{sum(r.rounds for r in runs)}",
        f"client CPU s/round {_ms([r.client_seconds_per_round for r in runs], 1.0, 3)}",
    ]
    print(" | ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--sweep", action="store_true", help="in-process simulation (default)")
    mode.add_argument("--loopback", action="store_true", help="through the real appliance")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument(
        "--samples", dest="samples_list", type=int, nargs="*", default=[50, 100, 500]
    )
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--local-steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--tolerance", type=float, default=0.0, help="gate tolerance on EER")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--vendor-weight", type=float, default=VENDOR_WEIGHT)
    parser.add_argument("--mode", choices=["attested", "plaintext"], default="attested")
    parser.add_argument(
        "--no-concept", dest="concept", action="store_false", help="skip the concept-drift run"
    )
    parser.add_argument("--json", type=Path, help="also write the raw per-seed results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.loopback:
        from drift_loopback import run_loopback  # a sibling file (benchmarks/ is no package)

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
