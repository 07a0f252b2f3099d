"""sealagg's mod and workflow in Flower's DEPLOYMENT runtime, for real, on loopback.

One ``flower-superlink --insecure`` and five ``flower-supernode --insecure`` processes from
.venv-flower, then ``flwr run`` of ``tests/flower/apps/deploy_app.py`` (its ``pyproject.toml``
is generated here, in a temporary app directory, with a temporary ``FLWR_HOME``). Each
SuperNode starts a fresh ClientApp process per message, so every stage of a round reaches a
process that never saw the previous one: the round's client state must travel sealed in the
node's ``Context.state`` (sealagg.flower.mod). One round (CI time): partition 4's SuperNode is
killed (SIGKILL, its whole process group) after keys are shared and before its masked input,
and the round completes with the four others (num_shares=5, reconstruction_threshold=3:
quorum 4). The global model equals plaintext FedAvg over exactly the surviving updates,
within the quantization bound.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from sealagg.crypto.encoding import QuantizationSpec

REPO = Path(__file__).resolve().parents[2]
FLOWER_BIN = REPO / ".venv-flower" / "bin"
APP = REPO / "tests" / "flower" / "apps" / "deploy_app.py"
N = 5
VICTIM = 4
MAX_WEIGHT = 1000.0
CLIP = 8.0
FLOAT32_SLACK = 16 * 2.0**-24
DEADLINE = 420.0  # seconds for the whole run (~3 min on 2 busy cores; a hang fails loudly)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pyproject(out: Path, updates: Path) -> str:
    return f"""[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "sealaggdeploy"
version = "1.0.0"
description = "sealagg deployment test"
license = "Apache-2.0"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "sealagg"

[tool.flwr.app.components]
serverapp = "deploy_app:server_app"
clientapp = "deploy_app:client_app"

[tool.flwr.app.config]
out = "{out}"
updates = "{updates}"
victim = {VICTIM}
victim-round = 1
threshold = 3
stage-timeout = 30.0
"""


class _Procs:
    def __init__(self, logs: Path, env: dict[str, str]) -> None:
        self.logs, self.env, self.procs = logs, env, {}

    def start(self, name: str, *args: str) -> subprocess.Popen:
        log = (self.logs / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            [str(FLOWER_BIN / args[0]), *args[1:]],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            cwd=self.logs,
            start_new_session=True,  # its own process group: killed with its children
        )
        self.procs[name] = proc
        return proc

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)

    def tail(self) -> str:
        return "\n".join(
            f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
            for p in sorted(self.logs.glob("*.log"))
        )


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory):
    assert (FLOWER_BIN / "python").exists(), (
        f"{FLOWER_BIN / 'python'} is missing: run scripts/flower_env.sh (./run test does) to "
        "create the pinned Flower environment"
    )
    root = tmp_path_factory.mktemp("deploy")
    home, app, logs, updates = (root / d for d in ("flwr-home", "app", "logs", "updates"))
    for d in (home, app, logs, updates):
        d.mkdir()
    out = root / "report.json"
    shutil.copy(APP, app / "deploy_app.py")
    (app / "pyproject.toml").write_text(_pyproject(out, updates))
    link = _free_port()
    (home / "config.toml").write_text(
        '[superlink]\ndefault = "sealagg-test"\n\n'
        f'[superlink.sealagg-test]\naddress = "127.0.0.1:{link}"\ninsecure = true\n'
    )
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON", "RAY_"))
    }
    env.update(
        FLWR_HOME=str(home),
        PATH=f"{FLOWER_BIN}:{env.get('PATH', '')}",
        FLWR_TELEMETRY_ENABLED="0",
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
        OMP_NUM_THREADS="1",
        # SuperExec's documented poll for new tasks (default 1 s): each stage of a round is
        # a new ClientApp task on every SuperNode, so the default costs a second per stage.
        FLWR_SUPEREXEC_TASK_POLL_INTERVAL="0.1",
    )
    procs = _Procs(logs, env)
    try:
        procs.start(
            "superlink", "flower-superlink", "--insecure", "--host", "127.0.0.1",
            "--port", str(link), "--disable-runtime-dependency-installation",
        )  # fmt: skip
        for pid in range(N):
            procs.start(
                f"supernode-{pid}", "flower-supernode", "--insecure",
                "--superlink", f"127.0.0.1:{link}", "--host", "127.0.0.1",
                "--port", str(_free_port()),
                "--node-config", f"partition-id={pid} num-partitions={N}",
            )  # fmt: skip
        started = time.monotonic()
        submitted = None
        while submitted is None or submitted.returncode != 0:
            # The SuperLink takes a moment to listen; retry the submission until it does.
            assert time.monotonic() - started < 60, procs.tail() + (
                submitted.stdout + submitted.stderr if submitted else ""
            )
            if submitted is not None:
                time.sleep(1.0)
            submitted = subprocess.run(
                [str(FLOWER_BIN / "flwr"), "run", str(app), "sealagg-test"],
                env=env, cwd=root, capture_output=True, text=True, timeout=120, check=False,
            )  # fmt: skip
        killed_at = None
        while not out.exists():
            assert time.monotonic() - started < DEADLINE, "no report in time:\n" + procs.tail()
            if killed_at is None and (updates / "victim.ready").exists():
                procs.kill(f"supernode-{VICTIM}")
                killed_at = time.monotonic()
            for name, proc in procs.procs.items():
                if name != f"supernode-{VICTIM}":
                    assert proc.poll() is None, f"{name} exited:\n" + procs.tail()
            time.sleep(0.5)
        time.sleep(0.2)  # the ServerApp writes the report in one call; let it close
        report = json.loads(out.read_text())
        report["killed"] = killed_at is not None
        report["logs"] = procs.tail()
        report["supernode_logs"] = [
            (logs / f"supernode-{pid}.log").read_text(errors="replace") for pid in range(N)
        ]
        report["superlink_log"] = (logs / "superlink.log").read_text(errors="replace")
        yield report, updates, home
    finally:
        for name in list(procs.procs):
            procs.kill(name)


def _expected(updates: Path, rnd: int) -> dict:
    files = sorted(updates.glob(f"r{rnd}-p*.npy"))
    counts = [int(f.stem.rsplit("-n", 1)[1]) for f in files]
    parts = [int(f.stem.split("-p")[1].split("-")[0]) for f in files]
    stacked = np.stack([np.load(f) for f in files])
    mean = (stacked * np.array(counts)[:, None]).sum(0) / sum(counts)
    return {"parts": parts, "num_examples": counts, "mean": mean}


def _tolerance(expected: dict) -> float:
    """The quantization bound on the weighted mean (as in test_flower_simulation.py)."""
    n = len(expected["num_examples"])
    spec = QuantizationSpec(clip=CLIP, max_clients=N)
    e1, e2 = n / spec.scale, n / spec.weight_scale
    total_weight = sum(c / MAX_WEIGHT for c in expected["num_examples"])
    biggest = float(np.abs(expected["mean"]).max())
    return (e1 + biggest * e2) / (total_weight - e2) + FLOAT32_SLACK * biggest


def test_deployment_rounds_equal_plaintext_fedavg_and_survive_a_killed_supernode(run) -> None:
    report, updates, _home = run
    assert report["error"] == "", report["error"] + report["logs"]
    assert report["killed"], "the victim never reached its training step:\n" + report["logs"]
    (only,) = report["rounds"]
    assert (only["threshold"], only["minimum_survivors"]) == (3, 4)
    assert only["completed"], only["reason"]
    assert only["survivors"] == N - 1 and len(only["dropped"]) == 1
    expected = _expected(updates, 1)
    assert expected["parts"] == [p for p in range(N) if p != VICTIM]
    global_model = np.array(report["globals"][1])  # globals[0] is the initial model
    diff = float(np.abs(global_model - expected["mean"]).max())
    assert diff <= _tolerance(expected), (diff, _tolerance(expected))
    assert report["globals"][1] != report["globals"][0]  # the model moved


def test_every_message_ran_in_a_fresh_clientapp_process_with_state_sealed_on_the_node(run):
    """The deployment runtime really started one ClientApp process per message (so the round
    state crossed processes), and the sealing key is the node's own file, never in a log."""
    report, _updates, home = run
    # Complete graph at n=5, one round: identify, offer, keys, masked input, survivors,
    # unmasking.
    for pid in range(N):
        if pid != VICTIM:
            assert report["supernode_logs"][pid].count("Start `flwr-clientapp` process") >= 6
    key_file = home / "sealagg" / "state.key"
    assert key_file.stat().st_size == 32
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert (home / "sealagg").stat().st_mode & 0o077 == 0
    key = key_file.read_bytes()
    for text in [report["superlink_log"], *report["supernode_logs"]]:
        assert key.hex() not in text
