"""Striped secure aggregation on a local Ray cluster against the one-process round (issue 22).

Subcommands (results: ``benchmarks/RESULTS_striped.md``):

* ``striped``: rounds of ``--clients`` clients at ``--dimension`` values over W stripes
  (``--stripes``, default 1 2 3 4: :class:`~appliance.scale.coordinator.StripedRound` on a
  local cluster of a head and ``--workers`` worker nodes, one CPU each; fresh stripe actors
  for every W, spread over the workers), driven by
  :func:`~appliance.scale.local.run_striped_round` with the real protocol clients.
  Per round: wall time, the server side (coordinator + stripes: the time inside
  ``StripedRound.receive`` / ``close_phase``, Ray transfers included) apart from the client
  side (the rest: masking, signing, the wire schema), the bytes each stripe received, the
  AES-CTR bytes each stripe generated to unmask (masks in the plan x its range x 4), each
  stripe's traced peak (``StripedRound.memory()``, tracemalloc, this round only) and its
  process's peak RSS as the kernel counts it (``VmHWM``). Beside it, the one-process round
  (:func:`crypto.simulation.run_round`) at the same n, d, k, t and dropouts, in a child
  process (its peak RSS is the whole process: every client and the server), unless
  ``--no-single``.
* ``groups``: ``--clients`` (1,000) clients in one round at ``--dimension`` (100 k) through
  grouped SecAgg+ (:mod:`appliance.scale.groups`, :mod:`crypto.groups`), each group a
  StripedRound on the cluster, and the same groups through the one-process protocol; against
  one ungrouped one-process round at each ``--single-n``, in a child process bounded by
  ``--single-timeout`` seconds.
* ``rates``: this machine's AES-CTR unmask rate (mask bytes per second, one stripe's range,
  several masks) and modular add rate (bytes per second into the accumulator), one core.
* ``model``: a MODEL of the multi-machine round from those rates, the coordinator's measured
  protocol work and a stated network bandwidth (``--gbits``): server-side round time against
  W machines at ``--dimension`` for each n in ``--clients-model``.
* ``plot``: the tables and a PNG (``--plot``) from earlier ``--json`` files (``--from-json``).

Inputs: client u's quantized vector is the constant ``c_u`` (a stride-0 uint32 view, so 10
clients x 100 M values cost no memory before masking); the masking cost does not depend on
the values, and the assembled sum is checked to be exactly sum(c_u) over the survivors.
Dropouts: ``round(--dropout x n)`` clients (seeded) go silent after sharing keys, so their
pairwise masks are rebuilt and removed (the costliest unmasking).

    .venv/bin/python benchmarks/bench_striped.py striped --dimension 10000000 --clients 10 \
        --stripes 1 2 3 4 --json /tmp/striped-d10M-n10.json
    .venv/bin/python benchmarks/bench_striped.py groups --clients 1000 --dimension 100000
    .venv/bin/python benchmarks/bench_striped.py model --dimension 100000000 \
        --clients-model 10 100 --json /tmp/model.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from sealagg.crypto import IdentityKey, Phase, RoundConfig
from sealagg.crypto.params import find_parameters

#: 10 Gbit/s: the network bandwidth the model assumes per machine unless told.
DEFAULT_GBITS = 10.0
_GOLDEN = 2654435761  # spreads the per-client constants over Z_(2^32)


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _rss_mib() -> float:
    """This process's peak resident set (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- the round's shape


def shape(n: int, degree: int | None, threshold: int | None) -> tuple[int | None, int, int]:
    """(degree or None for the complete graph, threshold, quorum): given, or what the
    parameter finder picks for 10 % dropouts and 10 % corrupt clients; n <= 10 complete."""
    if threshold is not None:
        return degree, threshold, max(threshold, n // 2 + 1)
    if n <= 10 and degree is None:
        return None, n // 2 + 1, n // 2 + 1
    p = find_parameters(n, 0.1, 0.1)
    k = None if p.complete else (degree or p.degree)
    return k, p.threshold, p.minimum_survivors


def make_config(
    n: int, d: int, degree: int | None, threshold: int, quorum: int, seed: int
) -> tuple[RoundConfig, dict[int, IdentityKey]]:
    identities = {u: IdentityKey.generate() for u in range(1, n + 1)}
    config = RoundConfig.create(
        round_id=os.urandom(32),
        identities={u: k.verify_key_bytes for u, k in identities.items()},
        threshold=threshold,
        vector_length=d,
        degree=degree,
        minimum_survivors=quorum,
    )
    return config, identities


def constant_inputs(members: Any, d: int) -> dict[int, np.ndarray]:
    """Client u's input: the constant c_u as a stride-0 view (no memory until masked)."""
    return {u: np.broadcast_to(np.uint32((u * _GOLDEN) % 2**32), (d,)) for u in members}


def expected_constant(survivors: Any) -> int:
    return sum((u * _GOLDEN) % 2**32 for u in survivors) % 2**32


def dropouts_for(n: int, fraction: float, seed: int) -> dict[int, Phase]:
    """round(fraction x n) clients gone after sharing keys (seeded, as test_bench_rounds)."""
    rnd = random.Random(seed * 1_000_003 + n)
    return {u: Phase.MASKED_INPUT for u in rnd.sample(range(1, n + 1), round(fraction * n))}


def check_sum(total: np.ndarray, survivors: Any) -> None:
    want = np.uint32(expected_constant(survivors))
    if total.dtype != np.uint32 or not bool(np.all(total == want)):
        raise AssertionError("the assembled sum is not the survivors' sum")


# --------------------------------------------------------------------------- one process


def single_round(n: int, d: int, degree: int | None, t: int, q: int, drop: float, seed: int):
    """One :func:`run_round` (every client and the server in this process)."""
    from sealagg.crypto.simulation import RoundStats, run_round

    config, identities = make_config(n, d, degree, t, q, seed)
    dropouts = dropouts_for(n, drop, seed)
    stats = RoundStats()
    t0 = time.perf_counter()
    result = run_round(config, identities, constant_inputs(identities, d), dropouts, stats)
    wall = time.perf_counter() - t0
    check_sum(result.total, result.survivors)
    return {
        "n": n,
        "d": d,
        "degree": degree,
        "threshold": t,
        "dropped": len(dropouts),
        "survivors": len(result.survivors),
        "wall_s": round(wall, 3),
        "server_s": round(stats.server_total, 3),
        "client_s": round(stats.client_total, 3),
        "wire_s": round(stats.wire_seconds, 3),
        "unmask_s": round(stats.server_seconds.get(Phase.UNMASKING, 0.0), 3),
        "server_masked_input_s": round(stats.server_seconds.get(Phase.MASKED_INPUT, 0.0), 3),
        "bytes_up": stats.bytes_up,
        "peak_rss_mib": round(_rss_mib(), 1),
        "load": _loadavg(),
    }


def single_in_child(
    n: int,
    d: int,
    degree: int | None,
    t: int,
    q: int,
    drop: float,
    seed: int,
    timeout: float,
) -> dict[str, Any]:
    """:func:`single_round` in a fresh process (its peak RSS is that round's alone)."""
    argv = [sys.executable, "-P", __file__, "_single", str(n), str(d), str(degree or 0)]
    argv += [str(t), str(q), str(drop), str(seed)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    started = time.perf_counter()
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"n": n, "d": d, "unfinished_after_s": timeout, "load": _loadavg()}
    if done.returncode != 0:
        raise RuntimeError(f"one-process round failed:\n{done.stderr[-3000:]}")
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_s"] = round(time.perf_counter() - started, 3)
    return row


# --------------------------------------------------------------------------- striped rounds


def metered_round_class():
    """``StripedRound`` with meters: server-side seconds per phase (coordinator + stripes,
    Ray transfers included), bytes forwarded to each stripe, the stripes' unmask call."""
    from sealagg.appliance.scale.coordinator import StripedRound
    from sealagg.crypto.messages import MaskedInput

    class MeteredRound(StripedRound):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            t0 = time.perf_counter()
            self.server_seconds: dict[str, float] = {}
            super().__init__(*args, **kwargs)
            self._tick("begin", t0)
            self.bytes_in = [0] * len(self.ranges)
            self.unmask_call_s = 0.0

        def _tick(self, name: str, t0: float) -> None:
            self.server_seconds[name] = self.server_seconds.get(name, 0.0) + (
                time.perf_counter() - t0
            )

        def receive(self, sender: int, msg: Any) -> None:
            phase = self.server.phase
            t0 = time.perf_counter()
            try:
                super().receive(sender, msg)
            finally:
                self._tick(f"receive:{phase.name if phase else 'none'}", t0)
            if isinstance(msg, MaskedInput) and phase is Phase.MASKED_INPUT:
                for i, rng in enumerate(self.ranges):
                    self.bytes_in[i] += 4 * rng.length

        def close_phase(self) -> Any:
            phase = self.server.phase
            t0 = time.perf_counter()
            try:
                return super().close_phase()
            finally:
                self._tick(f"close:{phase.name if phase else 'none'}", t0)

        def _unmask(self, result: Any) -> None:
            self.plan_masks = len(result.masks)
            t0 = time.perf_counter()
            super()._unmask(result)
            self.unmask_call_s += time.perf_counter() - t0

    return MeteredRound


def striped_round(
    pool: list[Any],
    w: int,
    n: int,
    d: int,
    degree: int | None,
    t: int,
    q: int,
    drop: float,
    seed: int,
) -> dict[str, Any]:
    from sealagg.appliance.scale.coordinator import plan_stripes
    from sealagg.appliance.scale.local import run_striped_round

    config, identities = make_config(n, d, degree, t, q, seed)
    dropouts = dropouts_for(n, drop, seed)
    ranges = plan_stripes(d, [1] * w)
    load = _loadavg()
    t0 = time.perf_counter()
    striped = metered_round_class()(config, pool[:w], ranges, timeout=600.0)
    outcome = run_striped_round(striped, identities, constant_inputs(identities, d), dropouts)
    wall = time.perf_counter() - t0
    check_sum(outcome.total, outcome.survivors)
    memory = striped.memory()
    secs = striped.server_seconds
    server = sum(secs.values())
    masks = striped.plan_masks
    return {
        "W": w,
        "n": n,
        "d": d,
        "degree": degree,
        "threshold": t,
        "dropped": len(dropouts),
        "survivors": len(outcome.survivors),
        "wall_s": round(wall, 3),
        "server_s": round(server, 3),
        "client_and_wire_s": round(wall - server, 3),
        "server_upload_s": round(secs.get("receive:MASKED_INPUT", 0.0), 3),
        "server_commit_s": round(secs.get("close:MASKED_INPUT", 0.0), 3),
        "server_unmask_call_s": round(striped.unmask_call_s, 3),
        "server_phases_s": {k: round(v, 3) for k, v in striped.server_seconds.items()},
        "plan_masks": masks,
        "stripe_lengths": [r.length for r in ranges],
        "stripe_bytes_in": striped.bytes_in,
        "stripe_aes_bytes": [masks * 4 * r.length for r in ranges],
        "stripe_peak_mib": [round(m["peak"] / 2**20, 1) for m in memory],
        "stripe_share_mib": [
            round(4 * r.length * (1 + n - len(dropouts)) / 2**20, 1) for r in ranges
        ],
        "ingest_mb_s": round(
            sum(striped.bytes_in) / 1e6 / max(1e-9, secs.get("receive:MASKED_INPUT", 0.0)),
            1,
        ),
        "driver_peak_rss_mib": round(_rss_mib(), 1),
        "load": load,
        "load_after": _loadavg(),
    }


def new_stripes(count: int) -> list[Any]:
    """``count`` fresh stripe actors, spread over the worker nodes."""
    import ray

    from sealagg.appliance.scale.cluster import stripe_options
    from sealagg.appliance.scale.coordinator import stripe_actor_class

    actor = stripe_actor_class(**stripe_options())
    pool = [actor.remote() for _ in range(count)]
    ray.get([s.node_id.remote() for s in pool], timeout=600)  # started
    return pool


def start_pool(workers: int, stripes: int, object_store_mib: int) -> tuple[Any, list[Any]]:
    import ray

    from sealagg.appliance.scale.cluster import start_local_cluster

    t0 = time.perf_counter()
    cluster = start_local_cluster(workers=workers, object_store_mib=object_store_mib)
    pool = new_stripes(stripes)
    nodes = ray.get([s.node_id.remote() for s in pool], timeout=600)
    print(
        f"cluster: head + {workers} workers up in {time.perf_counter() - t0:.1f} s; "
        f"{stripes} stripes on {len(set(nodes))} nodes",
        flush=True,
    )
    return cluster, pool


def stripe_pids(pool: list[Any]) -> list[int]:
    """The OS process of each stripe actor (all on this machine: a local cluster)."""
    import ray

    return ray.get([s.__ray_call__.remote(lambda _self: os.getpid()) for s in pool], timeout=600)


def high_water_mib(pid: int) -> float:
    """The process's peak resident set so far (``VmHWM``), as the kernel counts it."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_striped(args: argparse.Namespace, pool: list[Any] | None = None) -> dict[str, Any]:
    """Every W in ``--stripes``: on fresh stripe actors (their OS peak is that round's), or
    on ``pool`` when given (tests: the actors are reused, the OS peak is cumulative)."""
    import ray

    degree, t, q = shape(args.clients, args.degree, args.threshold)
    out: dict[str, Any] = {"kind": "striped", "workers": args.workers, "rows": [], "single": None}
    if not args.no_single:
        out["single"] = single_in_child(
            args.clients, args.dimension, degree, t, q, args.dropout, args.seed, args.single_timeout
        )
        print(f"one process: {json.dumps(out['single'])}", flush=True)
    cluster = None
    fresh = pool is None
    if pool is None:
        cluster, pool = start_pool(args.workers, 0, args.object_store_mib)
    try:
        for w in args.stripes:
            stripes = new_stripes(w) if fresh else pool[:w]
            # Warm-up, not recorded: a stripe's first round pays its imports and the add
            # kernel's compilation (about 20 MiB of the traced peak, a second of time).
            striped_round(stripes, w, 10, 4096, None, 6, 6, 0.1, args.seed)
            pids = stripe_pids(stripes)
            base = [high_water_mib(p) for p in pids]
            row = striped_round(
                stripes, w, args.clients, args.dimension, degree, t, q, args.dropout, args.seed
            )
            row["stripe_os_peak_mib"] = [round(high_water_mib(p), 1) for p in pids]
            row["stripe_os_base_mib"] = [round(b, 1) for b in base]
            out["rows"].append(row)
            print(f"W={w}: {json.dumps(row)}", flush=True)
            if fresh:
                for s in stripes:
                    ray.kill(s)
    finally:
        if cluster is not None:
            cluster.shutdown()
    return out


# --------------------------------------------------------------------------- many clients


def metered_runner(pool: list[Any], w: int, server_seconds: list[float]) -> Any:
    """As :func:`appliance.scale.groups.striped_runner` (each group a StripedRound on
    ``w`` equal stripes, driven by ``run_striped_round``), with the server side metered."""
    from sealagg.appliance.scale.coordinator import plan_stripes
    from sealagg.appliance.scale.local import run_striped_round

    metered = metered_round_class()

    def run(config, identities, inputs, dropouts):  # type: ignore[no-untyped-def]
        ranges = plan_stripes(config.vector_length, [1] * w)
        striped = metered(config, pool[:w], ranges, timeout=600.0)
        try:
            return run_striped_round(striped, identities, inputs, dropouts)
        finally:
            server_seconds.append(sum(striped.server_seconds.values()))

    return run


def run_groups(args: argparse.Namespace, pool: list[Any] | None = None) -> dict[str, Any]:
    """``--clients`` clients in groups of at most ``--group-size`` on ``--stripes`` stripes."""
    from sealagg.appliance.scale.groups import group_configs, run_grouped_round
    from sealagg.crypto.groups import plan_groups
    from sealagg.crypto.policy import FederationPolicy

    n, d, size = args.clients, args.dimension, args.group_size
    out: dict[str, Any] = {"kind": "groups", "n": n, "d": d, "group_size": size, "single": []}
    for m in args.single_n:
        k, t, q = shape(m, None, None)
        row = single_in_child(m, d, k, t, q, args.dropout, args.seed, args.single_timeout)
        out["single"].append(row)
        print(f"one process n={m}: {json.dumps(row)}", flush=True)
    policy = FederationPolicy()
    plan = plan_groups(os.urandom(32), range(1, n + 1), size, policy.minimum_sum)
    degree, threshold, _ = shape(max(len(g) for g in plan.groups), None, None)
    identities = {u: IdentityKey.generate() for u in range(1, n + 1)}
    keys = {u: key.verify_key_bytes for u, key in identities.items()}
    configs = group_configs(
        plan,
        keys,
        threshold=threshold,
        vector_length=d,
        policy=policy,
        degree=degree,
        mode="secagg" if degree is None else "secagg+",
    )
    dropouts = dropouts_for(n, args.dropout, args.seed)
    inputs = constant_inputs(identities, d)
    shape_row = {
        "n": n,
        "d": d,
        "groups": len(plan.groups),
        "group_sizes": sorted({len(g) for g in plan.groups}),
        "mode": "secagg" if degree is None else "secagg+",
        "degree": degree,
        "threshold": threshold,
        "quorum": sorted({c.minimum_survivors for c in configs}),
        "dropped": len(dropouts),
    }
    if not args.no_single:  # the same groups, each through the one-process protocol
        from sealagg.crypto.simulation import RoundStats, run_round

        stats = RoundStats()
        load = _loadavg()
        t0 = time.perf_counter()
        outcome = run_grouped_round(
            plan,
            configs,
            identities,
            inputs,
            dropouts,
            run_group=lambda c, i, x, dr: run_round(c, i, x, dr, stats),
        )
        wall = time.perf_counter() - t0
        check_sum(outcome.total, outcome.survivors)
        out["grouped_single"] = {
            **shape_row,
            "W": 0,
            "survivors": len(outcome.survivors),
            "wall_s": round(wall, 3),
            "server_s": round(stats.server_total, 3),
            "client_and_wire_s": round(stats.client_total + stats.wire_seconds, 3),
            "load": load,
        }
        print(f"grouped, one process: {json.dumps(out['grouped_single'])}", flush=True)
    cluster = None
    if pool is None:
        cluster, pool = start_pool(args.workers, max(args.stripes), args.object_store_mib)
    try:
        w = max(args.stripes)
        server: list[float] = []
        load = _loadavg()
        t0 = time.perf_counter()
        outcome = run_grouped_round(
            plan, configs, identities, inputs, dropouts, run_group=metered_runner(pool, w, server)
        )
        wall = time.perf_counter() - t0
    finally:
        if cluster is not None:
            cluster.shutdown()
    check_sum(outcome.total, outcome.survivors)
    out["grouped"] = {
        **shape_row,
        "W": w,
        "survivors": len(outcome.survivors),
        "wall_s": round(wall, 3),
        "server_s": round(sum(server), 3),
        "client_and_wire_s": round(wall - sum(server), 3),
        "load": load,
        "load_after": _loadavg(),
    }
    print(f"grouped: {json.dumps(out['grouped'])}", flush=True)
    return out


# --------------------------------------------------------------------------- rates and model


def measure_rates(length: int = 1 << 25, masks: int = 4, repeats: int = 7) -> dict[str, Any]:
    """One core: AES-CTR mask removal (bytes of keystream per second, applied into a
    stripe's range at a non-aligned offset, as a stripe does) and the modular add, on a
    128 MiB range (out of every cache, as a stripe's range of a LoRA-size vector is).

    The model takes the best of ``repeats`` (its machines are dedicated; this one is shared
    with other sessions' tests, which slow a repeat by up to 5x); the median is kept too."""
    from sealagg.crypto.mask_slice import apply_mask_range
    from sealagg.kernels import mod_add_into

    acc = np.zeros(length, dtype=np.uint32)
    x = np.ones(length, dtype=np.uint32)
    plan = [(os.urandom(32), 1 if i % 2 else -1) for i in range(masks)]
    apply_mask_range(acc[:4096], plan, 7)  # warm: imports, the backend's first context
    mod_add_into(acc, x)  # warm: the kernel's first call (numba compiles it)
    aes, add = [], []
    load = _loadavg()
    for _ in range(repeats):
        t0 = time.perf_counter()
        apply_mask_range(acc, plan, 1_234_567)
        aes.append(4 * length * masks / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for _ in range(masks):
            mod_add_into(acc, x)
        add.append(4 * length * masks / (time.perf_counter() - t0))
    return {
        "aes_ctr_bytes_per_s": max(aes),
        "add_bytes_per_s": max(add),
        "aes_ctr_median_bytes_per_s": float(np.median(aes)),
        "add_median_bytes_per_s": float(np.median(add)),
        "range_values": length,
        "masks": masks,
        "repeats": repeats,
        "load": load,
    }


def model(
    rates: dict[str, Any],
    d: int,
    n: int,
    w: int,
    gbits: float,
    *,
    dropout: float = 0.1,
    coordinator_s: float = 0.0,
) -> dict[str, float]:
    """A MODEL of one striped round's server side on ``w`` machines, one stripe each (one
    core for its AES-CTR and adds), ``gbits`` network per machine; nothing pipelined.

    * ingest: each stripe receives every survivor-to-be's range, n x 4d/W bytes, at the
      machine's bandwidth (front-ends on the same machines forward chunks to their stripe);
    * add: the same bytes through the modular add, after the commit;
    * unmask: (survivors + survivors' pairs with the dropped) masks x 4d/W bytes of AES-CTR;
      for a complete graph the pairs are survivors x dropped, for SecAgg+ each dropped
      client's k neighbours, the surviving share of them;
    * assemble: the coordinator pulls the 4d-byte sum over its own link;
    * coordinator: the protocol's non-vector work (keys, shares, signatures, Shamir),
      independent of d: measured (:func:`coordinator_seconds`), passed in.
    """
    bw = gbits * 1e9 / 8
    dropped = round(dropout * n)
    survivors = n - dropped
    degree, _, _ = shape(n, None, None)
    k = n - 1 if degree is None else degree
    pairs = round(dropped * k * survivors / (n - 1))  # a dropped client's surviving neighbours
    masks = survivors + pairs
    share = 4 * d / w
    ingest = (n - dropped) * share / bw
    add = survivors * share / rates["add_bytes_per_s"]
    unmask = masks * share / rates["aes_ctr_bytes_per_s"]
    assemble = 4 * d / bw if w > 1 else 0.0
    return {
        "W": w,
        "n": n,
        "d": d,
        "masks": masks,
        "ingest_s": ingest,
        "add_s": add,
        "unmask_s": unmask,
        "assemble_s": assemble,
        "coordinator_s": coordinator_s,
        "server_s": ingest + add + unmask + assemble + coordinator_s,
        "stripe_gb": (n - dropped + 1) * share / 1e9,  # staged ranges + the accumulator
        "client_mask_s": (k + 1) * 4 * d / rates["aes_ctr_bytes_per_s"],
        "client_upload_s": 4 * d / bw,
    }


def coordinator_seconds(n: int, dropout: float, seed: int, d: int = 1024) -> float:
    """The server's protocol work at n clients with the vector made negligible: the
    one-process round's server seconds at d = 1024 (key directory, shares, signatures,
    Shamir reconstruction; what the coordinator does whatever d is), best of 3 rounds."""
    k, t, q = shape(n, None, None)
    return min(float(single_round(n, d, k, t, q, dropout, seed)["server_s"]) for _ in range(3))


def run_model(args: argparse.Namespace, rates: dict[str, Any] | None = None) -> dict[str, Any]:
    rates = rates or measure_rates()
    print(f"rates: {json.dumps(rates)}", flush=True)
    coordinator = {n: coordinator_seconds(n, args.dropout, args.seed) for n in args.clients_model}
    print(f"coordinator s (measured, d=1024): {json.dumps(coordinator)}", flush=True)
    rows = [
        model(
            rates,
            args.dimension,
            n,
            w,
            args.gbits,
            dropout=args.dropout,
            coordinator_s=coordinator[n],
        )
        for n in args.clients_model
        for w in args.machines
    ]
    return {"kind": "model", "gbits": args.gbits, "rates": rates, "rows": rows, "load": _loadavg()}


# --------------------------------------------------------------------------- tables


def _mib(values: list[float]) -> str:
    return " / ".join(f"{v:.0f}" for v in values)


def _mb(values: list[int]) -> str:
    return " / ".join(f"{v / 1e6:.0f}" for v in values)


def _os_peak(row: dict[str, Any]) -> str:
    if "stripe_os_peak_mib" not in row:
        return "-"
    return f"{_mib(row['stripe_os_peak_mib'])} ({_mib(row['stripe_os_base_mib'])})"


def markdown(result: dict[str, Any]) -> str:
    lines: list[str] = []
    if result["kind"] == "striped":
        lines += [
            "| server | n | d | k | t | dropped | wall s | server s | of which: upload "
            "/ commit (add) / unmask s | client + wire s | per stripe: MB received "
            "| per stripe: MB of AES-CTR | per stripe: peak MiB (share MiB) "
            "| per stripe: OS peak RSS MiB (before) | peak RSS MiB | load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---|---|---|---|---:|---|",
        ]
        s = result["single"]
        if s and "wall_s" in s:
            lines.append(
                f"| one process | {s['n']} | {s['d']:,} | {s['degree'] or s['n'] - 1} "
                f"| {s['threshold']} | {s['dropped']} | {s['wall_s']:.1f} | {s['server_s']:.1f} "
                f"| masked input {s['server_masked_input_s']:.1f}, unmask {s['unmask_s']:.1f} "
                f"| {s['client_s'] + s['wire_s']:.1f} | - | - | - | - | {s['peak_rss_mib']:.0f} "
                f"(clients + server) | {s['load']} |"
            )
        elif s:
            lines.append(
                f"| one process | {s['n']} | {s['d']:,} | unfinished after "
                f"{s['unfinished_after_s']} s |"
            )
        for r in result["rows"]:
            lines.append(
                f"| W={r['W']} stripes | {r['n']} | {r['d']:,} | {r['degree'] or r['n'] - 1} "
                f"| {r['threshold']} | {r['dropped']} | {r['wall_s']:.1f} | {r['server_s']:.1f} "
                f"| {r['server_upload_s']:.1f} / {r['server_commit_s']:.1f} "
                f"/ {r['server_unmask_call_s']:.1f} | {r['client_and_wire_s']:.1f} "
                f"| {_mb(r['stripe_bytes_in'])} "
                f"| {_mb(r['stripe_aes_bytes'])} | {_mib(r['stripe_peak_mib'])} "
                f"({_mib(r['stripe_share_mib'])}) | {_os_peak(r)} "
                f"| {r['driver_peak_rss_mib']:.0f} (driver) "
                f"| {r['load']} |"
            )
    elif result["kind"] == "groups":
        lines += [
            "| server | n | d | groups | k | t | dropped | wall s | server s | client + wire s "
            "| load |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for key in ("grouped", "grouped_single"):
            g = result.get(key)
            if not g:
                continue
            server = f"W={g['W']} stripes" if g["W"] else "one process, group by group"
            lines.append(
                f"| grouped {g['mode']}, {server} | {g['n']} | {g['d']:,} "
                f"| {g['groups']} x {'/'.join(map(str, g['group_sizes']))} | {g['degree']} "
                f"| {g['threshold']} | {g['dropped']} | {g['wall_s']:.1f} | {g['server_s']:.1f} "
                f"| {g['client_and_wire_s']:.1f} | {g['load']} |"
            )
        for s in result["single"]:
            if "wall_s" in s:
                lines.append(
                    f"| one process | {s['n']} | {s['d']:,} | 1 | {s['degree'] or s['n'] - 1} "
                    f"| {s['threshold']} | {s['dropped']} | {s['wall_s']:.1f} "
                    f"| {s['server_s']:.1f} | {s['client_s'] + s['wire_s']:.1f} | {s['load']} |"
                )
            else:
                lines.append(
                    f"| one process | {s['n']} | {s['d']:,} | 1 | | | | unfinished after "
                    f"{s['unfinished_after_s']:.0f} s | | | {s['load']} |"
                )
    else:
        r = result["rates"]
        lines += [
            f"MODEL (not measured): AES-CTR {r['aes_ctr_bytes_per_s'] / 1e9:.2f} GB/s and "
            f"modular add {r['add_bytes_per_s'] / 1e9:.2f} GB/s per core (measured here: best "
            f"of {r.get('repeats', 1)}; medians {r.get('aes_ctr_median_bytes_per_s', 0) / 1e9:.2f}"
            f" and {r.get('add_median_bytes_per_s', 0) / 1e9:.2f} GB/s; load {r['load']}), "
            f"{result['gbits']:g} Gbit/s per machine, one stripe per machine.",
            "",
            "| n | d | W machines | masks in plan | ingest s | add s | unmask s | assemble s "
            "| coordinator s (measured) | server s (model) | stripe memory GB "
            "| client masking s | client upload s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for m in result["rows"]:
            lines.append(
                f"| {m['n']} | {m['d']:,} | {m['W']} | {m['masks']} | {m['ingest_s']:.2f} "
                f"| {m['add_s']:.2f} | {m['unmask_s']:.2f} | {m['assemble_s']:.2f} "
                f"| {m['coordinator_s']:.2f} | {m['server_s']:.2f} | {m['stripe_gb']:.1f} "
                f"| {m['client_mask_s']:.2f} | {m['client_upload_s']:.2f} |"
            )
    return "\n".join(lines)


# --------------------------------------------------------------------------- plot


def plot(results: list[dict[str, Any]], path: Path) -> None:
    """Server-side round time against W: measured (W stripes on this one 2-core machine,
    one line per n and d) beside the MODEL (W machines), on log-log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        if r["kind"] == "striped":
            rows = r["rows"]
            label = f"measured: n={rows[0]['n']}, d={rows[0]['d']:,} (W stripes, 1 machine)"
            (line,) = ax.plot(
                [x["W"] for x in rows], [x["server_s"] for x in rows], "o-", label=label
            )
            s = r.get("single")
            if s and "server_s" in s:
                ax.plot([1], [s["server_s"]], "*", color=line.get_color(), markersize=11)
        elif r["kind"] == "model":
            for n in sorted({m["n"] for m in r["rows"]}):
                rows = [m for m in r["rows"] if m["n"] == n]
                label = f"MODEL: n={n}, d={rows[0]['d']:,}, {r['gbits']:g} Gbit/s (W machines)"
                ax.plot([m["W"] for m in rows], [m["server_s"] for m in rows], "s--", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%d"))
    ax.set_xlabel("W (stripes / machines)")
    ax.set_ylabel("server-side round time, s")
    ax.set_title("Striped rounds: server side (stars: the one-process server, same round)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- command line


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["striped", "groups", "rates", "model", "plot"])
    p.add_argument("--dimension", type=int, default=10_000_000)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--degree", type=int, default=None, help="default: the parameter finder's")
    p.add_argument("--threshold", type=int, default=None, help="default: the finder's / n//2+1")
    p.add_argument("--dropout", type=float, default=0.1)
    p.add_argument("--stripes", type=int, nargs="+", default=[1, 2, 3, 4])
    p.add_argument("--workers", type=int, default=2, help="worker nodes (one CPU each)")
    p.add_argument("--object-store-mib", type=int, default=256)
    p.add_argument("--no-single", action="store_true", help="skip the one-process round")
    p.add_argument("--single-timeout", type=float, default=300.0)
    p.add_argument("--single-n", type=int, nargs="*", default=[200, 400, 1000])
    p.add_argument("--group-size", type=int, default=100)
    p.add_argument("--gbits", type=float, default=DEFAULT_GBITS)
    p.add_argument("--clients-model", type=int, nargs="+", default=[10, 100])
    p.add_argument("--machines", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    p.add_argument("--from-json", type=Path, nargs="*", default=[], help="plot: earlier runs")
    p.add_argument("--plot", type=Path, help="plot: the PNG to write")
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parser().parse_args(argv)
    if args.what == "plot":
        results = [json.loads(path.read_text()) for path in args.from_json]
        for result in results:
            print(markdown(result), end="\n\n")
        if args.plot:
            plot(results, args.plot)
        return {"kind": "plot"}
    if args.what == "striped":
        result = run_striped(args)
    elif args.what == "groups":
        result = run_groups(args)
    elif args.what == "rates":
        result = {"kind": "rates", "rates": measure_rates()}
        print(json.dumps(result["rates"]))
        return result
    else:
        result = run_model(args)
    result["command"] = " ".join(["benchmarks/bench_striped.py", *(argv or sys.argv[1:])])
    print(markdown(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["_single"]:
        n, d, k, t, q = (int(v) for v in sys.argv[2:7])
        print(json.dumps(single_round(n, d, k or None, t, q, float(sys.argv[7]), int(sys.argv[8]))))
    else:
        main()
