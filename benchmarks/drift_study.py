"""Vendor-client fine-tuning under data drift and concept drift (issue 8), on CPU.

Reproduces the shape of the published two-pilot study (Guardora FFT: image anomaly detection;
50 client images took the client's EER from 6.97% to 3.55%, 500 to 0.7%; a new anomaly class
learned from 100 labelled client samples with vendor weight 0.8) on data that ships with
scikit-learn (the 8x8 digits; no download).

Task: anomaly detection; the designated anomaly classes are positives (label 1), every other
digit is normal. A small CNN (two 3x3 conv layers, 2x2 pooling, a 64-unit head; ``--model mlp``
for the previous protocol's 64-64-64-1 MLP) outputs an anomaly score.

- Data drift: the vendor's images come from its own "devices" (mild gain/noise variation,
  each image captured on VENDOR_DEVICES of them); the vendor trains its base model (and its
  local rounds) with generic augmentation of its own images (rotation, shift, scale, gamma,
  gain, offset, noise; textbook ranges, no resampling or blur; see :func:`augment`). The
  client's device applies acquisition shifts the vendor never saw: a lower-resolution sensor
  (6x6 px, area-averaged, upsampled back to 8x8 for the model), optical blur (sigma 0.4 px),
  small rotations (±6°), gamma 1.3, a dark-current offset and sensor noise. The client
  fine-tunes with 50, 100 or 500 samples (10% anomalies), with the same generic augmentation
  of its few samples.
- Concept drift: one digit class the vendor never saw at all becomes a new anomaly type at the
  client; 100 labelled client samples (50 new-class, 50 normal); vendor weight 0.8. Recall on
  the new class at the fixed threshold 0.5 and at the vendor's holdout EER threshold (both
  fixed without the client's test set), plus at the client's own EER threshold (optimistic).

Each round both parties train locally from the global model and the global model moves by
the weighted mean of their deltas (vendor 0.8 / client 0.2); the vendor's quality gate then
evaluates the candidate on the vendor's holdout (never shared). ``--gate-reference base``
(default): accepted only if its EER is within ``--tolerance`` of the BASE version's, so the
tolerance cannot accumulate (implemented as a vendor-reported metric, see
:func:`gate_report`, so the appliance's previous-version rule is unchanged);
``--gate-reference previous``: within ``--tolerance`` of the last accepted version's.
Rejected candidates are dropped and the next round starts from the last accepted model.

Two ways to run it:
- ``--sweep`` (default): the weighted FedAvg and the gate simulated in one process (same
  arithmetic as the appliance's plaintext/attested weighted mean), over several seeds;
- ``--loopback``: one configuration through the real appliance on loopback TLS
  (``attested`` mode with the software attester, or ``--mode plaintext``; two parties; the
  vendor gate over the wire, the vendor evaluating in its own shim), to show the path end to
  end.

Commands (the ones behind benchmarks/RESULTS.md, issue 8)::

    python benchmarks/drift_study.py --seeds 3 --rounds 40 --local-steps 20 --lr 0.01 \
        --batch 128 --tolerance 0.005
    python benchmarks/drift_study.py --loopback --samples 50 --rounds 10 --local-steps 20 \
        --lr 0.01 --batch 128 --tolerance 0.005
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits

from sealagg.client_shim.metrics import detection_metrics, no_worse

ANOMALY_CLASSES = (3, 5)  # designated anomalies (positives) in the data-drift task
NEW_CLASS = 8  # concept drift: the vendor never sees it; at the client it is a new anomaly
VENDOR_WEIGHT = 0.8
VENDOR_DEVICES = 3  # the vendor's own device types: each of its images captured on each
HIDDEN = 64
CLIENT_RESOLUTION = 6  # the client's sensor: 6x6 px, upsampled back to the model's 8x8


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


def resample(images: np.ndarray, pixels: int) -> np.ndarray:
    """A ``pixels``-square sensor: area-averaged down from 8x8, bilinear back up to 8x8."""
    torch = _torch()
    f = torch.nn.functional
    t = torch.from_numpy(np.asarray(images, dtype=np.float32)).reshape(-1, 1, 8, 8)
    low = f.adaptive_avg_pool2d(t, pixels)  # exact area averaging (overlapping for 8 -> 6)
    up = f.interpolate(low, size=(8, 8), mode="bilinear", align_corners=False)
    return up.numpy().reshape(np.shape(images)).astype(np.asarray(images).dtype)


def client_device(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A camera type the vendor never saw: a lower-resolution sensor (6x6 px), optics blur,
    small rotation, gamma, offset, noise."""
    out = np.empty_like(images)
    low_res = resample(images, CLIENT_RESOLUTION)  # resolution change
    for k, img in enumerate(low_res):
        img = ndimage.gaussian_filter(img, sigma=0.4)  # optics
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


MODELS = ("cnn", "mlp")


def new_model(seed: int, arch: str = "cnn"):
    """``cnn`` (the current protocol): two 3x3 conv layers, 2x2 pooling, a 64-unit head;
    ``mlp`` (the previous protocol): 64-64-64-1 on the raw pixels."""
    torch = _torch()
    torch.manual_seed(seed)
    nn = torch.nn
    if arch == "cnn":
        return nn.Sequential(
            nn.Unflatten(1, (1, 8)),  # (N, 8, 8) -> (N, 1, 8, 8)
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, HIDDEN),
            nn.ReLU(),
            nn.Linear(HIDDEN, 1),
        )
    if arch != "mlp":
        raise ValueError(f"unknown model {arch!r}; choose from {MODELS}")
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


def augment(xb, gen):
    """Generic augmentation of a batch (N, 8, 8) in [0, 1], each party of its own images.

    Geometric (rotation ±10°, shift ±0.5 px, scale ±10%) and photometric (gamma 0.7-1.5, gain
    ±20%, offset ±0.05, noise sd up to 0.06): textbook ranges, not fitted to any client device.
    No resampling or blur, so a lower-resolution sensor stays a shift the vendor never saw."""
    torch = _torch()
    f = torch.nn.functional
    n = xb.shape[0]

    def uniform(lo: float, hi: float):
        return lo + (hi - lo) * torch.rand(n, generator=gen)

    angle = uniform(-10, 10) * math.pi / 180
    scale = uniform(0.9, 1.1)
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    shift_x, shift_y = uniform(-0.12, 0.12), uniform(-0.12, 0.12)  # ±0.12 of half-width 4 px
    theta = torch.stack(
        [torch.stack([cos, -sin, shift_x], 1), torch.stack([sin, cos, shift_y], 1)], 1
    )
    x = xb[:, None]
    grid = f.affine_grid(theta, list(x.shape), align_corners=False)
    x = f.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    x = x.clamp(0, 1) ** uniform(0.7, 1.5)[:, None, None, None]
    x = x * uniform(0.8, 1.2)[:, None, None, None] + uniform(-0.05, 0.05)[:, None, None, None]
    x = x + torch.randn(x.shape, generator=gen) * uniform(0, 0.06)[:, None, None, None]
    return x.clamp(0, 1)[:, 0]


def train(
    model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    steps: int,
    lr: float,
    seed: int,
    batch=64,
    sgd=False,
    augmented: bool = False,
    pos_boost: float = 1.0,
):
    """Local training on class-balanced binary cross-entropy, ``steps`` mini-batches.

    Adam for the vendor's base model; SGD with momentum (``sgd=True``) for fine-tuning rounds,
    whose steps stay small and even from the first one (Adam's first steps are about ``lr``
    per weight whatever the gradient, which jolts a converged model every round).
    ``augmented``: each batch through :func:`augment`; ``pos_boost`` multiplies the positives'
    (balanced) weight, e.g. for a client's few samples of a new anomaly class."""
    torch = _torch()
    gen = torch.Generator().manual_seed(seed)
    xt = torch.from_numpy((x / 16.0).astype(np.float32))
    yt = torch.from_numpy(y.astype(np.float32))
    pos = max(float(y.mean()), 1e-3)
    weight = torch.where(yt > 0, pos_boost * 0.5 / pos, 0.5 / (1 - pos))
    optimizer = (
        torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
        if sgd
        else torch.optim.Adam(model.parameters(), lr=lr)
    )
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (min(batch, len(xt)),), generator=gen)
        xb = augment(xt[idx], gen) if augmented else xt[idx]
        logits = model(xb).squeeze(1)
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
    #: the same at the vendor's EER threshold on its holdout (fixed before the client tests)
    new_recall_vendor_threshold_after: float = math.nan


def vendor_base_model(split: Split, seed: int, steps: int = 3000, *, arch="cnn", augmented=True):
    """The vendor's base model: Adam on its own captures (with generic augmentation)."""
    model = new_model(seed, arch)
    train(
        model, split.vendor_x, split.vendor_y, steps=steps, lr=1e-3, seed=seed, augmented=augmented
    )
    return model


#: the gate metric when anchored to the base version (see :func:`gate_report`)
ANCHORED_METRIC = "eer_over_base"


def gate_report(
    metrics: dict[str, float], base_eer: float, tolerance: float, reference: str
) -> dict[str, float]:
    """What the vendor reports to the gate.

    ``previous``: its holdout metrics; the gate compares EER with the last accepted version's
    within ``tolerance`` (a tolerance per step can accumulate over versions).
    ``base``: also ``eer_over_base`` = max(0, EER - base EER - tolerance), gated with
    tolerance 0: the base scores 0, so (by induction) every accepted version scores 0 and a
    candidate is accepted iff its EER <= base EER + tolerance. The appliance's unchanged
    previous-version rule thus anchors every published version to the base."""
    if reference == "previous":
        return metrics
    if reference != "base":
        raise ValueError(f"unknown gate reference {reference!r}")
    return {**metrics, ANCHORED_METRIC: max(0.0, metrics["eer"] - base_eer - tolerance)}


def gate_rule(reference: str, tolerance: float) -> tuple[str, float]:
    """(metric, tolerance) the gate compares for that reference."""
    return (ANCHORED_METRIC, 0.0) if reference == "base" else ("eer", tolerance)


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
    tolerance: float = 0.0,
    gate_reference: str = "base",
    sgd: bool = True,
    batch: int = 64,
    arch: str = "cnn",
    vendor_augmented: bool = True,
    client_augmented: bool = True,
    client_pos_boost: float = 1.0,
) -> RunResult:
    """Rounds of weighted FedAvg with the vendor gate, simulated in one process."""
    vendor, client = new_model(seed, arch), new_model(seed, arch)
    accepted = get_weights(base)
    set_weights(vendor, accepted)
    vendor_before = evaluate(vendor, split.holdout_x, split.holdout_y)
    gate_metric, gate_tolerance = gate_rule(gate_reference, tolerance)
    accepted_metrics = gate_report(vendor_before, vendor_before["eer"], tolerance, gate_reference)
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
            train(
                model,
                x,
                y,
                steps=local_steps,
                lr=lr,
                seed=step_seed,
                sgd=sgd,
                batch=batch,
                augmented=client_augmented if who == "client" else vendor_augmented,
                pos_boost=client_pos_boost if who == "client" else 1.0,
            )
            elapsed = time.process_time() - started
            if who == "client":
                client_time += elapsed
            else:
                vendor_time += elapsed
            new = get_weights(model)
            deltas.append({k: new[k] - accepted[k] for k in accepted})
        candidate = weighted_mean_step(accepted, deltas, [vendor_weight, 1.0 - vendor_weight])
        set_weights(vendor, candidate)  # the vendor evaluates it on its holdout, in its process
        metrics = gate_report(
            evaluate(vendor, split.holdout_x, split.holdout_y),
            vendor_before["eer"],
            tolerance,
            gate_reference,
        )
        if no_worse(
            metrics, accepted_metrics, gate_metric, higher_is_better=False, tolerance=gate_tolerance
        ):
            accepted, accepted_metrics = candidate, metrics
        else:
            rejected += 1
    final = new_model(seed, arch)
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
        result.new_recall_vendor_threshold_after = recall(
            final, split, accepted_metrics["eer_threshold"]
        )
    return result


def _ms(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    a = np.asarray(values, dtype=np.float64) * scale
    return f"{a.mean():.{digits}f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.{digits}f}"


_BASES: dict[tuple, object] = {}


def base_for(split: Split, seed: int, args: argparse.Namespace):
    """The vendor's base model, cached: its data is the same for every client sample size."""
    key = (seed, args.model, args.vendor_augment, hash(split.vendor_x.tobytes()))
    if key not in _BASES:
        _BASES[key] = vendor_base_model(split, seed, arch=args.model, augmented=args.vendor_augment)
    return _BASES[key]


def _tune(split: Split, seed: int, args: argparse.Namespace) -> RunResult:
    return fine_tune(
        split,
        base_for(split, seed, args),
        seed=seed,
        rounds=args.rounds,
        local_steps=args.local_steps,
        lr=args.lr,
        tolerance=args.tolerance,
        gate_reference=args.gate_reference,
        batch=args.batch,
        vendor_weight=args.vendor_weight,
        arch=args.model,
        vendor_augmented=args.vendor_augment,
        client_augmented=args.client_augment,
        client_pos_boost=args.client_pos_boost,
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
        f"at the vendor's holdout EER threshold → "
        f"{_ms([r.new_recall_vendor_threshold_after for r in runs])}",
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
    parser.add_argument(
        "--gate-reference",
        choices=["base", "previous"],
        default="base",
        help="compare each candidate with the base version (default) or the last accepted one",
    )
    parser.add_argument("--model", choices=MODELS, default="cnn")
    parser.add_argument(
        "--no-vendor-augment",
        dest="vendor_augment",
        action="store_false",
        help="the vendor trains without generic augmentation",
    )
    parser.add_argument(
        "--no-client-augment",
        dest="client_augment",
        action="store_false",
        help="the client trains without generic augmentation of its samples",
    )
    parser.add_argument(
        "--client-pos-boost", type=float, default=1.0, help="client's extra weight on positives"
    )
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
