"""The drift study's task (issue 8): devices, data splits, the model, training and the gate rule.

Shared by the in-process sweep (drift_study.py) and the run through the real appliance
(drift_loopback.py), so both train the same model on the same data and gate it the same way.
See drift_study.py for the study itself and its commands.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import numpy as np
from scipy import ndimage
from sklearn.datasets import load_digits

from sealagg.client_shim.metrics import detection_metrics

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


# ------------------------------------------------------------------------------------- gate


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


_BASES: dict[tuple, object] = {}


def base_for(split: Split, seed: int, args: argparse.Namespace):
    """The vendor's base model, cached: its data is the same for every client sample size."""
    key = (seed, args.model, args.vendor_augment, hash(split.vendor_x.tobytes()))
    if key not in _BASES:
        _BASES[key] = vendor_base_model(split, seed, arch=args.model, augmented=args.vendor_augment)
    return _BASES[key]
