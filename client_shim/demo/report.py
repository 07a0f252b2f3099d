"""``sealagg demo``: a whole federation on this machine, from provisioning to the audit check.

1. Provision a federation in a folder (CA, server certificate, one kit per client and an
   admin kit), write ``sealagg.toml`` for the demo and import the base model (a 64→64→10 MLP
   initialised from the seed).
2. Split scikit-learn's bundled 8x8 digits (no network) into a fixed held-out test set and a
   training part shared out non-IID (Dirichlet over labels) across the clients; each client
   gets its shard as an ``.npz`` file and trains on that alone.
3. Start the appliance and one process per client (``python -m sealagg.client_shim.demo.client``).
   With ``dropout``, chosen clients vanish mid-protocol (their process exits instead of
   sending a phase's message); they are started again for the next round.
4. Show live progress from the Admin.Status RPC (mutual TLS with the admin kit).
5. Report: test accuracy of every published global model, the final accuracy next to
   centralized training with the same budget, bytes each client sent per round, and the
   audit chain's verification.

Local training: SGD with momentum 0.9, lr 0.05, batch 16, 5 epochs per round; server
optimizer FedAvg (server lr 1.0). On this split that reached ~96 % after 5 rounds for seeds
0-3 in simulation; FedAdam (lr 0.03) stayed below 90 %, so FedAvg it is.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import numpy as np
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from sealagg.client_shim.demo.client import PHASES, VANISHED_EXIT_CODE
from sealagg.client_shim.demo.data import dirichlet_shards, load_split, save_shard

MODES = ("plaintext", "secagg", "secagg+", "ckks")
ADMIN_NAME = "admin"
#: Seconds each phase waits for late clients. The first phase includes local training (~0.2 s)
#: and, for a client that vanished in the previous round, possibly its restart (a cold Python
#: + torch start and warm-up take ~5 s on a busy 2-core machine). Protocol phases take
#: milliseconds here; their deadlines only matter when a client vanished.
DEADLINES = {
    "advertise_keys": 15.0,
    "share_keys": 5.0,
    "masked_input": 5.0,
    "consistency_check": 5.0,
    "unmasking": 5.0,
}
#: The appliance clips every update coordinate to ±clip before quantization; local updates
#: here reach ~1.5 in a few coordinates, so 2.0 keeps them intact.
COORDINATE_CLIP = 2.0
APPLIANCE_SCRIPT = (
    "import asyncio, logging, sys\n"
    "logging.basicConfig(level=logging.INFO, "
    "format='%(asctime)s %(name)s %(levelname)s %(message)s')\n"
    "from sealagg.appliance.server import Appliance\n"
    "asyncio.run(Appliance(sys.argv[1]).run())\n"
)


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    clients: int = 5
    rounds: int = 5
    mode: str = "secagg+"
    dp: bool = False
    dropout: float = 0.0
    seed: int = 0
    #: The federation folder (must be new or empty); None: a temporary folder.
    folder: Path | None = None
    #: Keep a temporary folder afterwards (a given ``folder`` is always kept).
    keep: bool = False
    epochs: int = 5
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 16
    alpha: float = 0.5
    test_fraction: float = 0.25
    dp_clip: float = 3.0
    dp_noise: float = 0.05
    optimizer: str = "fedavg"
    server_lr: float = 1.0
    #: Who vanishes when: {round: {client name: phase}}; None derives it from ``dropout``.
    vanish_plan: dict[int, dict[str, int]] | None = None
    #: Give up (and fail) after this many seconds.
    timeout: float = 600.0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.clients < 3:
            raise ValueError("the demo needs at least 3 clients (masking hides nothing below)")
        if self.rounds < 1 or self.epochs < 1:
            raise ValueError("rounds and epochs must be at least 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError("dropout is a fraction in [0, 1)")

    @property
    def client_names(self) -> list[str]:
        return [f"client{i}" for i in range(self.clients)]

    @property
    def phase_count(self) -> int:
        return 1 if self.mode == "plaintext" else len(PHASES)

    def minimum_survivors(self) -> int:
        """Fewest clients that must finish a round for it to publish."""
        n = self.clients
        return 1 if self.mode == "plaintext" else max(3, n // 2 + 1)

    def vanishers_per_round(self) -> int:
        if self.dropout <= 0:
            return 0
        return max(1, round(self.dropout * self.clients))

    def plan(self) -> dict[int, dict[str, int]]:
        """{round: {client: phase}}: who vanishes in which round, at which protocol phase."""
        if self.vanish_plan is not None:
            return {r: dict(v) for r, v in self.vanish_plan.items()}
        m = self.vanishers_per_round()
        if m == 0:
            return {}
        most = self.clients - self.minimum_survivors()
        if m > most:
            raise ValueError(
                f"--dropout {self.dropout:g} makes {m} of {self.clients} clients vanish per "
                f"round, but a {self.mode} round needs {self.minimum_survivors()} to finish: "
                f"at most {most} may vanish (lower --dropout or add --clients)"
            )
        rng = np.random.default_rng([self.seed, 0xD120])
        names = self.client_names
        plan: dict[int, dict[str, int]] = {}
        previous: set[str] = set()
        for r in range(1, self.rounds + 1):
            # Prefer clients that did not just vanish: they may still be starting again.
            fresh = [n for n in names if n not in previous]
            pool = fresh if len(fresh) >= m else names
            chosen = rng.choice(pool, size=m, replace=False)
            plan[r] = {str(n): int(rng.integers(self.phase_count)) for n in chosen}
            previous = set(plan[r])
        return plan

    def min_clients(self) -> int:
        """A round opens once this many clients are ready: all but the expected dropouts."""
        return max(3, self.clients - self.vanishers_per_round())


@dataclasses.dataclass
class RoundResult:
    number: int
    status: str
    reason: str | None
    model_version: int | None
    accuracy: float | None
    contributors: list[str]
    dropped: list[str]
    late: dict[str, list[str]]  # phase -> clients that missed its deadline
    seconds: float | None


@dataclasses.dataclass
class DemoResult:
    config: DemoConfig
    ok: bool = False
    problems: list[str] = dataclasses.field(default_factory=list)
    rounds: list[RoundResult] = dataclasses.field(default_factory=list)
    base_accuracy: float | None = None
    final_accuracy: float | None = None
    centralized_accuracy: float | None = None
    #: client -> round -> bytes sent (None: vanished in that round)
    bytes_sent: dict[str, dict[int, int | None]] = dataclasses.field(default_factory=dict)
    vanished: list[tuple[str, int, str]] = dataclasses.field(default_factory=list)
    epsilon: float | None = None
    audit_ok: bool = False
    audit_detail: str = ""
    shard_sizes: dict[str, int] = dataclasses.field(default_factory=dict)
    #: round -> the audited masking parameters (degree 0 = complete graph, threshold, n, note)
    masking: dict[int, dict[str, Any]] = dataclasses.field(default_factory=dict)
    seconds: float = 0.0
    federation_seconds: float = 0.0
    folder: Path | None = None

    @property
    def published(self) -> list[RoundResult]:
        return [r for r in self.rounds if r.status == "accepted"]


# ------------------------------------------------------------------------------ provisioning


def write_config(path: Path, **sections: dict[str, Any]) -> None:
    """Merge ``sections`` into the TOML file at ``path`` (flat tables of scalars)."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    lines = ["# sealagg.toml written by `sealagg demo`", ""]
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    path.write_text("\n".join(lines), encoding="utf-8")


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    raise TypeError(f"cannot write {value!r} to TOML")


def provision(folder: Path, config: DemoConfig) -> tuple[Any, dict[str, Path], Path]:
    """Federation, client kits and admin kit in ``folder``; config written; base model in."""
    from sealagg.appliance.federation import add_client, init_federation
    from sealagg.appliance.server import open_store
    from sealagg.appliance.testing import free_port
    from sealagg.client_shim.demo.model import make_model, to_numpy

    federation = init_federation(
        folder, name="sealagg-demo", hosts=["localhost", "127.0.0.1"], port=free_port()
    )
    kits = {name: add_client(federation, name) for name in config.client_names}
    admin_kit = add_client(federation, ADMIN_NAME, out=folder / "admin-kit")
    write_config(
        federation.paths.config,
        aggregation={
            "mode": config.mode,
            "min_clients": config.min_clients(),
            "max_clients": config.clients,
            "rounds": config.rounds,
            "dropout_rate": max(0.1, round(config.dropout, 3)),
            "clip": COORDINATE_CLIP,
            "ready_window": 10.0,
        },
        deadlines=dict(DEADLINES),
        optimizer={"name": config.optimizer, "server_lr": config.server_lr},
    )
    store = open_store(federation)
    try:
        store.add_model_version(to_numpy(make_model(config.seed)), parent=None, status="accepted")
    finally:
        store.close()
    return federation, kits, admin_kit


# ------------------------------------------------------------------------------ processes


def _env(*, single_threaded: bool = False) -> dict[str, str]:
    env = dict(os.environ)
    # sealagg is installed: no PYTHONPATH, and never the working directory first on sys.path.
    env["PYTHONSAFEPATH"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    if single_threaded:
        # Several clients share a small machine and their tensors are tiny: worker threads
        # (torch's and numba's OpenMP pools) would only spin and steal each other's cores.
        env.setdefault("OMP_NUM_THREADS", "1")
        env.setdefault("NUMBA_NUM_THREADS", "1")
    return env


class ClientProcess:
    """One client's process; started again after it vanished."""

    def __init__(self, name: str, argv: list[str], log: Path, result: Path) -> None:
        self.name = name
        self.argv = argv
        self.log = log
        self.result = result
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.finished = False
        self.failed: str | None = None

    def start(self, *, wait_for_go: bool) -> None:
        argv = [*self.argv, "--wait-for-go"] if wait_for_go else self.argv
        with self.log.open("a") as log:
            log.write(f"--- start {self.starts + 1}: {' '.join(argv)}\n")
            log.flush()
            self.process = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                argv,
                stdin=subprocess.PIPE if wait_for_go else subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_env(single_threaded=True),
                cwd=self.log.parent,
            )
        self.starts += 1

    @property
    def ready(self) -> bool:
        return self.result.with_suffix(".ready").exists()

    def go(self) -> None:
        if self.process is not None and self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.write(b"go\n")
                self.process.stdin.close()

    def records(self) -> list[dict[str, Any]]:
        if not self.result.exists():
            return []
        out = []
        for line in self.result.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out

    def stop(self) -> None:
        proc = self.process
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class StatusPoller:
    """Admin.Status over mutual TLS with the admin kit (the appliance reserves 'admin')."""

    def __init__(self, kit_path: Path, address: str) -> None:
        import grpc

        from sealagg.appliance.kit import load_kit
        from sealagg.appliance.wire import sealagg_pb2 as pb
        from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc

        kit = load_kit(kit_path)
        ca, key, cert = kit.channel_credentials_material()
        self._grpc = grpc
        self._pb = pb
        self._channel = grpc.secure_channel(
            address,
            grpc.ssl_channel_credentials(ca, key, cert),
            options=[("grpc.ssl_target_name_override", kit.server_name)],
        )
        self._stub = pb_grpc.AdminStub(self._channel)

    def status(self, timeout: float = 1.0) -> dict[str, Any] | None:
        try:
            reply = self._stub.Status(self._pb.StatusRequest(), timeout=timeout)
            return json.loads(reply.json)
        except (self._grpc.RpcError, ValueError):
            return None

    def close(self) -> None:
        self._channel.close()


# ------------------------------------------------------------------------------ live view


@dataclasses.dataclass
class Progress:
    rounds: int
    mode: str
    started: float
    status: dict[str, Any] | None = None
    vanished: int = 0
    restarts: int = 0
    stage: str = "starting"

    def render(self) -> RenderableType:
        table = Table.grid(padding=(0, 2))
        table.add_column(style="bold")
        table.add_column()
        elapsed = time.monotonic() - self.started
        table.add_row("sealagg demo", f"{escape(self.mode)} · {elapsed:5.1f} s · {self.stage}")
        status = self.status or {}
        history = status.get("history") or []
        current = status.get("round")
        done = len(history)
        if isinstance(current, dict):
            members = current.get("members") or []
            waiting = current.get("waiting_for") or []
            deadline = current.get("phase_deadline")
            left = f", deadline in {deadline - time.time():.0f} s" if deadline else ""
            table.add_row("round", f"{current.get('number')}/{self.rounds}")
            table.add_row("phase", f"{escape(str(current.get('phase')))}{left}")
            table.add_row(
                "clients",
                f"{len(members) - len(waiting)} in, {len(waiting)} waiting"
                + (f" ({escape(', '.join(waiting))})" if waiting else ""),
            )
        elif done >= self.rounds:
            table.add_row("round", f"all {self.rounds} rounds done")
        else:
            table.add_row("round", f"{done}/{self.rounds} done; next opens when clients are ready")
            ready = status.get("ready_clients") or []
            table.add_row("clients ready", str(len(ready)))
        published = sum(1 for h in history if h.get("outcome") == "published")
        table.add_row("published", f"{published} (model version {status.get('model_version')})")
        dropped = sum(len(h.get("dropped") or []) for h in history)
        table.add_row(
            "dropouts so far",
            f"{self.vanished} vanished mid-protocol, {self.restarts} restarted; "
            f"{dropped} update(s) left out of an aggregate",
        )
        return table

    def line(self) -> str:
        status = self.status or {}
        current = status.get("round")
        if not isinstance(current, dict):
            return f"waiting for clients ({len(status.get('ready_clients') or [])} ready)"
        members = current.get("members") or []
        waiting = current.get("waiting_for") or []
        return (
            f"round {current.get('number')}/{self.rounds} phase {current.get('phase')}: "
            f"{len(members) - len(waiting)} in, {len(waiting)} waiting, "
            f"{self.vanished} vanished so far"
        )


@contextlib.contextmanager
def _live(console: Console, progress: Progress) -> Iterator[Callable[[], None]]:
    """A refresh function: rich Live on a terminal, one line per change otherwise."""
    if console.is_terminal:
        with Live(progress.render(), console=console, refresh_per_second=8, transient=False) as lv:
            yield lambda: lv.update(progress.render())
    else:
        last = [""]

        def refresh() -> None:
            line = progress.line()
            if line != last[0] and progress.status is not None:
                console.print(f"  [{time.monotonic() - progress.started:5.1f} s] {line}")
                last[0] = line

        yield refresh


# ------------------------------------------------------------------------------ the run


def run_demo(config: DemoConfig, console: Console | None = None) -> DemoResult:
    """Run the whole demo; never raises for a failed federation (see ``result.problems``)."""
    console = console or Console(highlight=False)
    started = time.monotonic()
    result = DemoResult(config)
    plan = config.plan()  # refuse an infeasible dropout before creating anything
    temporary = config.folder is None
    folder = Path(tempfile.mkdtemp(prefix="sealagg-demo-")) if temporary else Path(config.folder)
    try:
        _run(config, folder, plan, console, result)
    finally:
        if temporary and not config.keep:
            shutil.rmtree(folder, ignore_errors=True)
            result.folder = None
        else:
            result.folder = folder
        result.seconds = time.monotonic() - started
    result.ok = not result.problems
    return result


def _run(
    config: DemoConfig,
    folder: Path,
    plan: dict[int, dict[str, int]],
    console: Console,
    result: DemoResult,
) -> None:
    console.print(
        f"[bold]sealagg demo[/]: {config.clients} clients, {config.rounds} rounds, "
        f"mode {escape(config.mode)}, DP {'on' if config.dp else 'off'}, "
        f"dropout {config.dropout:g}, seed {config.seed}"
    )
    federation, kits, admin_kit = provision(folder, config)
    work = folder / "demo"
    (work / "logs").mkdir(parents=True)
    split = load_split(config.seed, config.test_fraction)
    shards = dirichlet_shards(split.y_train, config.clients, alpha=config.alpha, seed=config.seed)
    clients: dict[str, ClientProcess] = {}
    for name, idx in zip(config.client_names, shards, strict=True):
        shard_file = work / f"{name}.npz"
        save_shard(shard_file, split.x_train[idx], split.y_train[idx])
        result.shard_sizes[name] = len(idx)
        argv = [
            sys.executable,
            "-m",
            "sealagg.client_shim.demo.client",
            "--kit",
            str(kits[name]),
            "--shard-file",
            str(shard_file),
            "--rounds",
            str(config.rounds),
            "--epochs",
            str(config.epochs),
            "--lr",
            str(config.lr),
            "--momentum",
            str(config.momentum),
            "--batch-size",
            str(config.batch_size),
            "--seed",
            str(config.seed),
            "--max-examples",
            str(len(split.y_train)),
            "--result-file",
            str(work / f"{name}.jsonl"),
        ]
        if config.dp:
            argv += ["--dp", "--dp-clip", str(config.dp_clip), "--dp-noise", str(config.dp_noise)]
        for r, who in sorted(plan.items()):
            if name in who:
                argv += ["--vanish", f"{r}:{who[name]}"]
        clients[name] = ClientProcess(
            name, argv, work / "logs" / f"{name}.log", work / f"{name}.jsonl"
        )
    sizes = ", ".join(f"{n} {s}" for n, s in result.shard_sizes.items())
    console.print(
        f"  data: digits, {len(split.y_train)} train / {len(split.y_test)} test; non-IID shards "
        f"(Dirichlet alpha={config.alpha:g}): {sizes}"
    )
    if plan:
        described = "; ".join(
            f"round {r}: "
            + ", ".join(
                f"{n} at {PHASES[p] if config.mode != 'plaintext' else 'update'}"
                for n, p in sorted(who.items())
            )
            for r, who in sorted(plan.items())
        )
        console.print(f"  vanishing plan: {described}")
    console.print(f"  federation folder: {folder}")

    appliance_log = work / "logs" / "appliance.log"
    fed_started = time.monotonic()
    with appliance_log.open("w") as log:
        appliance = subprocess.Popen(  # noqa: S603 - our own interpreter
            [sys.executable, "-c", APPLIANCE_SCRIPT, str(folder)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_env(),
            cwd=work,
        )
    poller: StatusPoller | None = None
    progress = Progress(config.rounds, config.mode, time.monotonic())
    try:
        for proc in clients.values():
            proc.start(wait_for_go=True)
        poller = StatusPoller(admin_kit, federation.public_address)
        with _live(console, progress) as refresh:
            _supervise(config, appliance, clients, poller, progress, refresh, result)
    finally:
        for proc in clients.values():
            proc.stop()
        stopped_by_us = appliance.poll() is None
        if stopped_by_us:
            appliance.terminate()
            try:
                appliance.wait(10)
            except subprocess.TimeoutExpired:
                appliance.kill()
                appliance.wait(5)
        if poller is not None:
            poller.close()
        result.federation_seconds = time.monotonic() - fed_started
    if not stopped_by_us and appliance.returncode != 0:
        result.problems.append(
            f"the appliance exited with code {appliance.returncode}: {_tail(appliance_log)}"
        )
    _collect_clients(config, clients, result)
    with _torch_single_thread():
        _evaluate(config, folder, split, result)


def _supervise(
    config: DemoConfig,
    appliance: subprocess.Popen,
    clients: dict[str, ClientProcess],
    poller: StatusPoller,
    progress: Progress,
    refresh: Callable[[], None],
    result: DemoResult,
) -> None:
    deadline = time.monotonic() + config.timeout
    released = False
    appliance_done_at: float | None = None
    gone_at: float | None = None
    while True:
        now = time.monotonic()
        if now > deadline:
            result.problems.append(f"the demo did not finish within {config.timeout:g} s")
            return
        if not released:
            progress.stage = "starting the appliance and the clients"
            if all(p.ready for p in clients.values()) and poller.status(0.5) is not None:
                for proc in clients.values():
                    proc.go()
                released = True
                progress.stage = "running"
            elif appliance.poll() is not None:
                return
            elif any(p.process and p.process.poll() is not None for p in clients.values()):
                for p in clients.values():
                    if p.process and p.process.poll() is not None:
                        p.failed = f"exited with code {p.process.returncode} before joining"
                return
        for proc in clients.values():
            code = None if proc.process is None else proc.process.poll()
            if code is None or proc.finished or proc.failed:
                continue
            if code == 0:
                proc.finished = True
            elif code == VANISHED_EXIT_CODE:
                last = next(
                    (r for r in reversed(proc.records()) if r.get("outcome") == "vanished"), {}
                )
                progress.vanished += 1
                if (
                    int(last.get("round", config.rounds)) < config.rounds
                    and appliance_done_at is None
                ):
                    proc.start(wait_for_go=False)
                    progress.restarts += 1
                else:
                    proc.finished = True
            else:
                proc.failed = f"exited with code {code}"
        if released:
            status = poller.status(1.0)
            if status is not None:
                progress.status = status
        refresh()
        alive = [p for p in clients.values() if not (p.finished or p.failed)]
        if released and not alive and appliance.poll() is None:
            if gone_at is None:
                gone_at = now
            elif now - gone_at > 10:
                result.problems.append("every client left before the appliance finished")
                return
        if appliance.poll() is not None:
            if appliance_done_at is None:
                appliance_done_at = now
                progress.stage = "finished; waiting for the clients to leave"
            # Clients in the last round leave on their own; the others are stopped.
            if all(p.finished or p.failed for p in clients.values()) or now - appliance_done_at > 5:
                progress.stage = "finished"
                refresh()
                return
        time.sleep(0.2)


def _collect_clients(
    config: DemoConfig, clients: dict[str, ClientProcess], result: DemoResult
) -> None:
    for name, proc in clients.items():
        if proc.failed:
            result.problems.append(f"{name} {proc.failed}: {_tail(proc.log)}")
        per_round: dict[int, int | None] = {}
        for record in proc.records():
            number = int(record.get("round", 0))
            if record.get("outcome") == "vanished":
                per_round[number] = None
                result.vanished.append((name, number, str(record.get("phase"))))
            else:
                per_round[number] = int(record.get("bytes_sent", 0))
                if record.get("epsilon") is not None:
                    result.epsilon = max(result.epsilon or 0.0, float(record["epsilon"]))
        result.bytes_sent[name] = per_round


def _evaluate(config: DemoConfig, folder: Path, split: Any, result: DemoResult) -> None:
    """Accuracy of every global model, the audit chain, and the centralized baseline."""
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    from sealagg.appliance.errors import ApplianceError
    from sealagg.appliance.store import Store, default_state_path
    from sealagg.client_shim.demo.model import accuracy_of, make_model, to_numpy, train

    # What an auditor holds: the federation's audit public key.
    verify_key = load_pem_public_key((folder / "audit_public_key.pem").read_bytes())
    store = Store.open(default_state_path(folder), read_only=True)
    try:
        try:
            report = store.audit.verify(verify_key)
            result.audit_ok = bool(report.ok)
            result.audit_detail = str(report)
            entries = store.audit.entries(verify_key)
            aggregates = {
                e.details.get("round"): e.details for e in entries if e.event == "aggregate"
            }
            result.masking = {
                e.details["round"]: e.details for e in entries if e.event == "round_parameters"
            }
        except ApplianceError as error:
            result.audit_detail = str(error)
            result.problems.append(f"audit verify failed: {error}")
            aggregates = {}
        versions = store.model_versions()
        by_round = {m.round: m for m in versions if m.round is not None}
        base = next((m for m in versions if m.round is None), None)
        if base is not None:
            result.base_accuracy = accuracy_of(
                store.load_model(base.version), split.x_test, split.y_test
            )
        for rnd in store.rounds():
            model = by_round.get(rnd.id)
            accuracy = None
            if model is not None and model.status == "accepted":
                accuracy = accuracy_of(store.load_model(model.version), split.x_test, split.y_test)
            late = {p.phase: [str(d) for d in p.dropped] for p in store.phases(rnd.id) if p.dropped}
            aggregate = aggregates.get(rnd.id, {})
            result.rounds.append(
                RoundResult(
                    number=rnd.id,
                    status=rnd.status,
                    reason=rnd.reason,
                    model_version=model.version if model else None,
                    accuracy=accuracy,
                    contributors=list(aggregate.get("contributors", [])),
                    dropped=list(aggregate.get("dropped", [])),
                    late=late,
                    seconds=_seconds(rnd.opened_at, rnd.closed_at),
                )
            )
    finally:
        store.close()
    published = result.published
    if published:
        result.final_accuracy = published[-1].accuracy
    if len(published) != config.rounds:
        missing = [
            f"round {r.number} {r.status} ({r.reason})"
            for r in result.rounds
            if r.status != "accepted"
        ]
        result.problems.append(
            f"{len(published)} of {config.rounds} rounds published"
            + (f"; not published: {', '.join(missing)}" if missing else "")
        )
    # Centralized baseline: same initial weights and optimizer, rounds x epochs on all data.
    model = make_model(config.seed)
    train(
        model,
        split.x_train,
        split.y_train,
        epochs=config.rounds * config.epochs,
        lr=config.lr,
        momentum=config.momentum,
        batch_size=config.batch_size,
        seed=config.seed,
    )
    result.centralized_accuracy = accuracy_of(to_numpy(model), split.x_test, split.y_test)


@contextlib.contextmanager
def _torch_single_thread() -> Iterator[None]:
    """Tiny tensors: torch's thread pool only adds overhead, and next to the OpenMP runtime
    scikit-learn loads it slowed a 1-second training to 8 s on a 2-core machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _seconds(opened: str | None, closed: str | None) -> float | None:
    from datetime import datetime

    if not opened or not closed:
        return None
    try:
        return (datetime.fromisoformat(closed) - datetime.fromisoformat(opened)).total_seconds()
    except ValueError:
        return None


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) if text else "(empty log)"


# ------------------------------------------------------------------------------ the report


def _pct(value: float | None) -> str:
    return "-" if value is None or math.isnan(value) else f"{100 * value:.1f} %"


_SHORT_PHASES = {
    "advertise_keys": "advertise",
    "share_keys": "share",
    "masked_input": "masked",
    "consistency_check": "consistency",
    "unmasking": "unmask",
    "update": "update",
}


def _describe_masking(masking: dict[int, dict[str, Any]], mode: str) -> str:
    """One phrase per distinct graph/threshold, with the rounds that used it."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for number, p in sorted(masking.items()):
        key = (int(p.get("degree", 0)), int(p.get("threshold", 0)), int(p.get("n", 0)))
        groups.setdefault(key, []).append(number)
    parts = []
    for (degree, threshold, n), numbers in groups.items():
        graph = "complete graph" if degree == 0 else f"Harary graph of degree {degree}"
        parts.append(
            f"{graph} over {n} clients, Shamir threshold t={threshold} "
            f"(round{'s' if len(numbers) > 1 else ''} {', '.join(map(str, numbers))})"
        )
    text = "; ".join(parts)
    if mode == "secagg+" and any(
        str(p.get("note", "")).startswith("finder targets unreachable") for p in masking.values()
    ):
        text += (
            ". The SecAgg+ parameter finder's targets need more clients than this demo has, "
            "so the appliance used the complete graph (as in SecAgg), as audited"
        )
    return text


def render_report(result: DemoResult, console: Console) -> None:
    config = result.config
    rounds = Table(title="global models (test accuracy on the held-out 25 %)", title_justify="left")
    rounds.add_column("round", justify="right")
    rounds.add_column("outcome")
    rounds.add_column("model", justify="right")
    rounds.add_column("accuracy", justify="right")
    rounds.add_column("contributors", justify="right")
    rounds.add_column("dropped / late")
    rounds.add_column("seconds", justify="right")
    rounds.add_row("0", "base model", "1", _pct(result.base_accuracy), "", "", "")
    for r in result.rounds:
        late = "; ".join(f"{phase}: {', '.join(names)}" for phase, names in r.late.items())
        rounds.add_row(
            str(r.number),
            "published" if r.status == "accepted" else f"{r.status} {r.reason or ''}",
            "-" if r.model_version is None else str(r.model_version),
            _pct(r.accuracy),
            str(len(r.contributors)) if r.contributors else "-",
            escape(late) if late else "-",
            "-" if r.seconds is None else f"{r.seconds:.1f}",
        )
    sent = Table(
        title="bytes sent per client per round (KiB; ✗ phase: vanished before sending it)",
        title_justify="left",
    )
    sent.add_column("client")
    sent.add_column("examples", justify="right")
    numbers = list(range(1, config.rounds + 1))
    for n in numbers:
        sent.add_column(f"r{n}", justify="right")
    for name, per_round in result.bytes_sent.items():
        cells = []
        for n in numbers:
            value = per_round.get(n, "absent")
            vanished = next((p for c, r, p in result.vanished if c == name and r == n), None)
            if vanished is not None:
                cells.append(f"✗ {_SHORT_PHASES.get(vanished, vanished)}")
            elif value == "absent":
                cells.append("-")
            else:
                cells.append(f"{(value or 0) / 1024:.1f}")
        sent.add_row(name, str(result.shard_sizes.get(name, "")), *cells)
    console.print(Group(rounds, sent))
    gap = None
    if result.final_accuracy is not None and result.centralized_accuracy is not None:
        gap = 100 * (result.centralized_accuracy - result.final_accuracy)
    console.print(
        f"final accuracy ({escape(config.mode)}): [bold]{_pct(result.final_accuracy)}[/]   "
        f"centralized (same model, {config.rounds * config.epochs} epochs on all training data): "
        f"{_pct(result.centralized_accuracy)}"
        + (f"   gap {gap:+.1f} points" if gap is not None else "")
    )
    if result.masking and config.mode != "ckks":  # ckks rounds have no graph or threshold
        console.print(f"masking: {escape(_describe_masking(result.masking, config.mode))}")
    if config.dp:
        eps = "-" if result.epsilon is None else f"{result.epsilon:.3g}"
        console.print(
            f"client-level DP: L2 clip {config.dp_clip:g}, noise multiplier {config.dp_noise:g}; "
            f"ε per client = {eps} at δ=1e-5 after its last release (RDP). With this few "
            "clients the noise that keeps the model useful gives no meaningful ε."
        )
    if result.vanished:
        console.print(
            f"dropouts: {len(result.vanished)} client process(es) vanished mid-protocol "
            f"({', '.join(f'{c} in round {r} at {p}' for c, r, p in result.vanished)})"
        )
    audit = "[green]OK[/]" if result.audit_ok else "[red]FAILED[/]"
    console.print(f"audit verify: {audit}  [dim]{escape(result.audit_detail)}[/]")
    console.print(
        f"wall time: {result.seconds:.1f} s (federation {result.federation_seconds:.1f} s)"
    )
    if result.folder is not None:
        console.print(f"federation folder kept: {result.folder}")
    for problem in result.problems:
        console.print(f"[red]problem:[/] {escape(problem)}", soft_wrap=True)


def main(argv: list[str] | None = None, stdout: TextIO | None = None) -> int:
    """``python -m sealagg.client_shim.demo.runner`` with the defaults (the CLI has the options)."""
    console = Console(file=stdout, highlight=False)
    result = run_demo(DemoConfig(), console)
    render_report(result, console)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
