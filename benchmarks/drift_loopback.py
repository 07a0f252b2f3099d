"""One drift-study configuration through the real appliance on loopback TLS (issue 8).

Two parties, ``vendor`` and ``client``, each in its own thread with its own client kit and
mutual-TLS connection, train locally with the client shim's numpy core
(:class:`client_shim.session.Participant`). The appliance combines their deltas with the
configured weights (vendor 0.8 / client 0.2) and asks the vendor to evaluate every
candidate on its holdout (``[gates] vendor``): the vendor's shim downloads the candidate,
scores it in the vendor's thread and reports only the metrics. Mode ``attested`` by default
(with the INSECURE software attester: no TEE here; the shims verify its evidence before
sending anything), or ``--mode plaintext``. Masked modes are refused with two parties.
Same model, augmentation and gate rule as the sweep (``--gate-reference base``: the vendor
reports ``eer_over_base`` and the appliance gates it with tolerance 0).
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from pathlib import Path

import drift_common as dc  # a sibling file: run through drift_study.py --loopback
import numpy as np

from sealagg.appliance.attestation import setup_software_attestation
from sealagg.appliance.federation import FederationFolder, add_client, init_federation
from sealagg.appliance.kit import load_kit
from sealagg.appliance.server import open_store
from sealagg.appliance.testing import Deployment, RunningAppliance, free_port
from sealagg.appliance.wire.modelcodec import Layout, flatten
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant


def _deployment(root: Path, base: dict[str, np.ndarray], args: argparse.Namespace) -> Deployment:
    port = free_port()
    folder = root / "federation"
    fed = init_federation(folder, name="drift-study", hosts=["localhost", "127.0.0.1"], port=port)
    if args.mode == "attested":
        setup_software_attestation(folder)  # before the kits: they carry its policy
    kits = {name: load_kit(add_client(fed, name)) for name in ("vendor", "client")}
    store = open_store(fed)
    store.add_model_version(base, parent=None, status="accepted")
    store.close()
    dep = Deployment(folder, port, fed, kits)
    metric, tolerance = dc.gate_rule(args.gate_reference, args.tolerance)
    if args.mode == "attested":
        dep.configure(attestation={"provider": "software"})
    dep.configure(
        aggregation={"mode": args.mode, "min_clients": 2, "rounds": args.rounds},
        deadlines={"advertise_keys": 120},
        gates={
            "vendor": "vendor",
            "metric": metric,
            "higher_is_better": False,
            "tolerance": tolerance,
            "evaluate_deadline": 120,
        },
        weights={"vendor": dc.VENDOR_WEIGHT, "client": round(1 - dc.VENDOR_WEIGHT, 6)},
    )
    return dep


def run_loopback(args: argparse.Namespace) -> None:
    seed, samples = 0, args.samples_list[0]
    split = dc.data_drift_split(seed, samples)
    base_model = dc.base_for(split, seed, args)
    base = dc.get_weights(base_model)
    base_eer = dc.evaluate(base_model, split.holdout_x, split.holdout_y)["eer"]
    timings: dict[str, list[float]] = {"vendor": [], "client": [], "evaluate": []}
    errors: dict[str, BaseException] = {}

    def party(dep: Deployment, name: str, x: np.ndarray, y: np.ndarray) -> None:
        model = dc.new_model(seed, args.model)

        def compute(start, tensors):
            dc.set_weights(model, {k: np.array(v) for k, v in tensors.items()})
            started = time.process_time()
            step_seed = seed * 1000 + int(start.round_number) * 2 + (name == "client")
            dc.train(
                model,
                x,
                y,
                steps=args.local_steps,
                lr=args.lr,
                seed=step_seed,
                sgd=True,
                batch=args.batch,
                augmented=args.client_augment if name == "client" else args.vendor_augment,
                pos_boost=args.client_pos_boost if name == "client" else 1.0,
            )
            timings[name].append(time.process_time() - started)
            layout = Layout.of(tensors)
            delta = flatten(dc.get_weights(model), layout) - flatten(tensors, layout)
            return delta, 1.0, {"num_examples": len(y)}

        def evaluate(tensors):  # the vendor's holdout stays in this thread
            started = time.process_time()
            scorer = dc.new_model(seed, args.model)
            dc.set_weights(scorer, {k: np.array(v) for k, v in tensors.items()})
            metrics = dc.gate_report(
                dc.evaluate(scorer, split.holdout_x, split.holdout_y),
                base_eer,
                args.tolerance,
                args.gate_reference,
            )
            timings["evaluate"].append(time.process_time() - started)
            return metrics

        # The simulated data owners accept the INSECURE software attester: their own choice.
        insecure_ok = args.mode == "attested"
        conn = Connection(dep.kits[name], address=dep.address, allow_insecure_attester=insecure_ok)
        participant = Participant(
            conn, poll_seconds=1.0, evaluate=evaluate if name == "vendor" else None
        )
        try:
            for _ in range(args.rounds):
                participant.run_round(compute)
        except BaseException as error:  # reported below
            errors[name] = error
        finally:
            conn.close()

    with tempfile.TemporaryDirectory() as tmp:
        dep = _deployment(Path(tmp), base, args)
        app = RunningAppliance(dep.folder)
        started = time.perf_counter()
        threads = [
            threading.Thread(target=party, args=(dep, "vendor", split.vendor_x, split.vendor_y)),
            threading.Thread(target=party, args=(dep, "client", split.client_x, split.client_y)),
        ]
        for t in threads:
            t.start()
        app.wait(60 * args.rounds + 120)
        for t in threads:
            t.join(60)
        wall = time.perf_counter() - started
        if errors:
            raise RuntimeError(f"a party failed: {errors}")
        store = open_store(FederationFolder.load(dep.folder))
        try:
            versions = store.model_versions()
            current = store.current_model()
            final = store.load_model(current.version)
        finally:
            store.close()
    scorer = dc.new_model(seed, args.model)
    dc.set_weights(scorer, base)
    before = dc.evaluate(scorer, split.test_x, split.test_y)
    dc.set_weights(scorer, final)
    after = dc.evaluate(scorer, split.test_x, split.test_y)
    statuses = [v.status for v in versions[1:]]
    print(
        f"loopback ({args.mode}, vendor gate over TLS, {args.model}, gate vs "
        f"{args.gate_reference} ± {args.tolerance:g} EER) | seed {seed} | {samples} samples | "
        f"{args.rounds} rounds: {statuses.count('accepted')} published, "
        f"{statuses.count('rejected')} rejected by the gate | client EER "
        f"{100 * before['eer']:.2f}% → {100 * after['eer']:.2f}% | vendor holdout EER "
        f"{100 * versions[0].metrics['eer']:.2f}% → {100 * current.metrics['eer']:.2f}% "
        f"(version {current.version}) | wall {wall:.1f} s ({wall / args.rounds:.2f} s/round) | "
        f"CPU s/round vendor {np.mean(timings['vendor']):.3f}, client "
        f"{np.mean(timings['client']):.3f}, vendor evaluation {np.mean(timings['evaluate']):.3f}",
        flush=True,
    )
