"""A whole federation on this machine, from provisioning to the audit check.

1. Provision a federation as production does (:mod:`.provision`): a federation authority
   (``sealagg authority``) that signs the policy and the roster and countersigns kits; clients
   that enrol with keys of their own (``client_shim.enrol``); the operator's ``sealagg`` CLI
   for the CA, the roster, the clients' certificates, a few ``sealagg.toml`` settings and the
   base model (a 64→64→10 MLP initialised from the seed).
2. Split scikit-learn's bundled 8x8 digits (no network) into a fixed held-out test set and a
   training part shared out non-IID (Dirichlet over labels) across the clients; each client
   gets its shard as an ``.npz`` file and trains on that alone.
3. Start ``sealagg serve`` and one process per client (:mod:`.processes`). With ``dropout``,
   chosen clients vanish mid-protocol; they are started again for the next round
   (:mod:`.supervise`).
4. Show live progress from the Admin.Status RPC (:mod:`.status`, :mod:`.display`).
5. Evaluate (:mod:`.evaluate`): the audited record, the accuracy of every published global
   model next to centralized training, the bytes each client sent; :mod:`.report` prints it.

Layout of the demo folder: ``federation/`` (what ``sealagg init`` made; the CLI works on it
with ``--folder``), ``authority/`` (the security team's key and signed roster, never inside
the federation), ``clients/<name>/`` (each client's own keys and installed kit) and ``demo/``
(shards, client results, logs, exported models; every child process runs in there).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from sealagg.client_shim.demo.commands import SealaggCommandError
from sealagg.client_shim.demo.config import DemoConfig
from sealagg.client_shim.demo.console_link import console_login
from sealagg.client_shim.demo.data import Split, dirichlet_shards, load_split, save_shard
from sealagg.client_shim.demo.display import Progress, live_view
from sealagg.client_shim.demo.evaluate import collect_client_reports, evaluate
from sealagg.client_shim.demo.processes import ApplianceProcess, ClientProcess, client_argv, tail
from sealagg.client_shim.demo.provision import Federation, provision
from sealagg.client_shim.demo.results import DemoResult
from sealagg.client_shim.demo.status import StatusPoller
from sealagg.client_shim.demo.supervise import supervise

FEDERATION_DIRNAME = "federation"
WORK_DIRNAME = "demo"


def run_demo(config: DemoConfig, console: Console | None = None) -> DemoResult:
    """Run the whole demo; never raises for a failed federation (see ``result.problems``)."""
    console = console or Console(highlight=False)
    started = time.monotonic()
    result = DemoResult(config)
    plan = config.plan()  # refuse an infeasible dropout before creating anything
    temporary = config.folder is None
    folder = Path(tempfile.mkdtemp(prefix="sealagg-demo-")) if temporary else Path(config.folder)
    try:
        if folder.is_dir() and any(folder.iterdir()):
            result.problems.append(f"{folder} is not empty: give a new or empty folder")
        else:
            _run(config, folder, plan, console, result)
    except SealaggCommandError as error:
        result.problems.append(str(error))
    finally:
        if temporary and not config.keep:
            shutil.rmtree(folder, ignore_errors=True)
            result.folder = None
        else:
            result.folder = folder
        result.seconds = time.monotonic() - started
    result.ok = not result.problems
    return result


def _show_console(
    federation: Federation, work: Path, console: Console, appliance: ApplianceProcess
) -> None:
    """Print the web console's address and a one-time login (from ``sealagg console``); on a
    terminal, wait for Enter so the rounds can be watched from the first one."""
    try:
        address, login = console_login(federation.folder, work)
    except SealaggCommandError as error:
        if appliance.poll() is not None:
            raise
        console.print(f"  [yellow]console: not available[/] ({escape(str(error))})")
        return
    # soft_wrap: a URL split over two lines could not be copied
    console.print(
        f"  [bold]console[/]: {escape(address)} (read-only until you sign in)", soft_wrap=True
    )
    console.print(f"  sign in (one-time link, about 2 minutes): {escape(login)}", soft_wrap=True)
    console.print(
        "  the browser will warn about the certificate: the federation's own CA signed it "
        f"({escape(str(federation.folder / 'ca.pem'))})",
        soft_wrap=True,
    )
    if sys.stdin.isatty():
        console.input("  open it in a browser, then press Enter to start the rounds ")


def _run(
    config: DemoConfig,
    folder: Path,
    plan: dict[int, dict[str, int]],
    console: Console,
    result: DemoResult,
) -> None:
    console.print(
        f"[bold]sealagg demo[/]: {config.clients} clients, {config.rounds} rounds, "
        f"mode {escape(config.mode)}"
        + (f" (key holder: {escape(config.key_holder)})" if config.key_holder else "")
        + f", DP {'on' if config.dp else 'off'}, "
        f"dropout {config.dropout:g}, seed {config.seed}"
    )
    work = folder / WORK_DIRNAME
    (work / "logs").mkdir(parents=True)
    federation = provision(folder / FEDERATION_DIRNAME, config, work)
    split = load_split(config.seed, config.test_fraction)
    clients = _prepare_clients(config, federation, work, split, plan, result)
    sizes = ", ".join(f"{n} {s}" for n, s in result.shard_sizes.items())
    console.print(
        f"  data: digits, {len(split.y_train)} train / {len(split.y_test)} test; non-IID shards "
        f"(Dirichlet alpha={config.alpha:g}): {sizes}"
    )
    if plan:
        described = "; ".join(
            f"round {r}: "
            + ", ".join(f"{n} at {config.phase_name(p)}" for n, p in sorted(who.items()))
            for r, who in sorted(plan.items())
        )
        console.print(f"  vanishing plan: {described}")
    console.print(f"  demo folder: {folder}")

    fed_started = time.monotonic()
    appliance = ApplianceProcess(federation.folder, work / "logs" / "appliance.log")
    poller: StatusPoller | None = None
    progress = Progress(config.rounds, config.mode, time.monotonic())
    try:
        if config.console:
            _show_console(federation, work, console, appliance)
        for proc in clients.values():
            proc.start(wait_for_go=True)
        poller = StatusPoller(federation.admin_kit)
        with live_view(console, progress) as refresh:
            supervise(config, appliance, clients, poller, progress, refresh, result)
    finally:
        for proc in clients.values():
            proc.stop()
        appliance.stop()
        if poller is not None:
            poller.close()
        result.federation_seconds = time.monotonic() - fed_started
    if not appliance.stopped_by_us and appliance.returncode != 0:
        result.problems.append(
            f"the appliance exited with code {appliance.returncode}: {tail(appliance.log)}"
        )
    collect_client_reports(clients, result)
    evaluate(config, federation.folder, work, split, result)


def _prepare_clients(
    config: DemoConfig,
    federation: Federation,
    work: Path,
    split: Split,
    plan: dict[int, dict[str, int]],
    result: DemoResult,
) -> dict[str, ClientProcess]:
    """Write each client's shard and build (not start) its process (and the key holder's)."""
    shards = dirichlet_shards(split.y_train, config.clients, alpha=config.alpha, seed=config.seed)
    clients: dict[str, ClientProcess] = {}
    for name, idx in zip(config.client_names, shards, strict=True):
        shard_file = work / f"{name}.npz"
        result_file = work / f"{name}.jsonl"
        save_shard(shard_file, split.x_train[idx], split.y_train[idx])
        result.shard_sizes[name] = len(idx)
        argv = client_argv(
            config,
            name,
            kit=federation.kits[name],
            shard_file=shard_file,
            result_file=result_file,
            max_examples=len(split.y_train),
            plan=plan,
        )
        clients[name] = ClientProcess(name, argv, work / "logs" / f"{name}.log", result_file)
    if config.key_holder:  # mode ckks: holds the round keys and decrypts; sends no update
        name = config.key_holder
        result_file = work / f"{name}.jsonl"
        argv = client_argv(
            config,
            name,
            kit=federation.kits[name],
            shard_file=None,
            result_file=result_file,
            max_examples=len(split.y_train),
            plan={},
        )
        clients[name] = ClientProcess(name, argv, work / "logs" / f"{name}.log", result_file)
    return clients
