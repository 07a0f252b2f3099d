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
  gain, offset, noise; textbook ranges, no resampling or blur; see
  :func:`drift_common.augment`). The client's device applies acquisition shifts the vendor
  never saw: a lower-resolution sensor (6x6 px, area-averaged, upsampled back to 8x8 for the
  model), optical blur (sigma 0.4 px), small rotations (±6°), gamma 1.3, a dark-current
  offset and sensor noise. The client fine-tunes with 50, 100 or 500 samples (10% anomalies),
  with the same generic augmentation of its few samples.
- Concept drift: one digit class the vendor never saw at all becomes a new anomaly type at the
  client; 100 labelled client samples (50 new-class, 50 normal); vendor weight 0.8. Recall on
  the new class at the fixed threshold 0.5 and at the vendor's holdout EER threshold (both
  fixed without the client's test set), plus at the client's own EER threshold (optimistic).

Each round both parties train locally from the global model and the global model moves by
the weighted mean of their deltas (vendor 0.8 / client 0.2); the vendor's quality gate then
evaluates the candidate on the vendor's holdout (never shared). ``--gate-reference base``
(default): accepted only if its EER is within ``--tolerance`` of the BASE version's, so the
tolerance cannot accumulate (implemented as a vendor-reported metric, see
:func:`drift_common.gate_report`, so the appliance's previous-version rule is unchanged);
``--gate-reference previous``: within ``--tolerance`` of the last accepted version's.
Rejected candidates are dropped and the next round starts from the last accepted model.

The task itself (devices, data splits, model, training, gate rule) is in drift_common.py,
shared with drift_loopback.py. Two ways to run it:
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

import drift_common as dc
import numpy as np

from sealagg.client_shim.metrics import no_worse

# ------------------------------------------------------------------------------------ study


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


def recall(model, split: dc.Split, threshold: float = 0.5) -> float:
    assert split.test_new is not None
    s = dc.scores(model, split.test_x[split.test_new])
    return float((s >= threshold).mean())


def fine_tune(
    split: dc.Split,
    base,
    *,
    seed: int,
    rounds: int,
    local_steps: int,
    lr: float,
    vendor_weight: float = dc.VENDOR_WEIGHT,
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
    vendor, client = dc.new_model(seed, arch), dc.new_model(seed, arch)
    accepted = dc.get_weights(base)
    dc.set_weights(vendor, accepted)
    vendor_before = dc.evaluate(vendor, split.holdout_x, split.holdout_y)
    gate_metric, gate_tolerance = dc.gate_rule(gate_reference, tolerance)
    accepted_metrics = dc.gate_report(
        vendor_before, vendor_before["eer"], tolerance, gate_reference
    )
    client_before = dc.evaluate(vendor, split.test_x, split.test_y)
    new_before = recall(vendor, split) if split.test_new is not None else math.nan
    rejected = 0
    client_time = vendor_time = 0.0
    for r in range(rounds):
        deltas = []
        for who, model, x, y in (
            ("vendor", vendor, split.vendor_x, split.vendor_y),
            ("client", client, split.client_x, split.client_y),
        ):
            dc.set_weights(model, accepted)
            started = time.process_time()
            step_seed = seed * 1000 + r * 2 + (who == "client")
            dc.train(
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
            new = dc.get_weights(model)
            deltas.append({k: new[k] - accepted[k] for k in accepted})
        candidate = weighted_mean_step(accepted, deltas, [vendor_weight, 1.0 - vendor_weight])
        dc.set_weights(vendor, candidate)  # the vendor evaluates it on its holdout, in its process
        metrics = dc.gate_report(
            dc.evaluate(vendor, split.holdout_x, split.holdout_y),
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
    final = dc.new_model(seed, arch)
    dc.set_weights(final, accepted)
    client_after = dc.evaluate(final, split.test_x, split.test_y)
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
        dc.set_weights(vendor, dc.get_weights(base))
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


def _tune(split: dc.Split, seed: int, args: argparse.Namespace) -> RunResult:
    return fine_tune(
        split,
        dc.base_for(split, seed, args),
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
        runs = [_tune(dc.data_drift_split(seed, samples), seed, args) for seed in range(args.seeds)]
        table["data_drift"][samples] = runs
        _print_data_row(samples, runs)
    if args.concept:
        runs = [_tune(dc.concept_drift_split(seed), seed, args) for seed in range(args.seeds)]
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
    parser.add_argument("--model", choices=dc.MODELS, default="cnn")
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
    parser.add_argument("--vendor-weight", type=float, default=dc.VENDOR_WEIGHT)
    parser.add_argument("--mode", choices=["attested", "plaintext"], default="attested")
    parser.add_argument(
        "--no-concept", dest="concept", action="store_false", help="skip the concept-drift run"
    )
    parser.add_argument("--json", type=Path, help="also write the raw per-seed results here")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    if args.loopback:
        from drift_loopback import run_loopback  # a sibling file; imported only when asked for

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
