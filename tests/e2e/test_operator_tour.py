"""The README's "Operating the appliance" section, done exactly as an operator would.

Every administrative step is a real ``sealagg`` process on a real federation folder; the
appliance is a real ``sealagg serve`` process over mutual TLS on loopback; the data owners are
the real shim (``client_shim.connect`` + ``federation.rounds``) training a tiny PyTorch model
in threads. If a command in the README's operator section stops working (a renamed flag, a
missing command, a changed message), this tour fails at that command.

The tour: init, add-client x3, model import, serve (one instance per folder, JSON logs,
metrics); a run with hyperparameters whose loops end by themselves; a second run paused,
evaluated (secagg+ with ``evaluation_reveals_client_metrics``) and resumed; a named approver
refused an operator's action; an online backup verified, the appliance stopped, restored on a
fresh folder and continued; certificates listed; a client revoked, refused at its next call,
and the revocation audited when it happened.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from sealagg import client_shim
from sealagg.appliance.kit import load_kit
from sealagg.appliance.store import Store, default_state_path
from sealagg.appliance.testing import free_port
from sealagg.appliance.wire import sealagg_pb2 as pb
from sealagg.appliance.wire import sealagg_pb2_grpc as pb_grpc

SEALAGG = str(Path(sys.executable).parent / "sealagg")
HEALTHCHECK = Path(__file__).resolve().parents[2] / "deploy" / "healthcheck.py"
CLIENTS = ("hospital-a", "hospital-b", "hospital-c")
ENV = {"COLUMNS": "200", "PATH": "/usr/bin:/bin", "PYTHONSAFEPATH": "1"}


def sealagg(*args: object, ok: bool = True) -> subprocess.CompletedProcess:
    """One ``sealagg`` command as the operator types it (a separate process)."""
    result = subprocess.run(
        [SEALAGG, *map(str, args)], capture_output=True, text=True, timeout=120, env=ENV
    )
    if ok:
        assert result.returncode == 0, f"sealagg {args}: {result.stdout}{result.stderr}"
    return result


class Serve:
    """``sealagg serve`` in its own process; stderr goes to a file read at any time."""

    def __init__(self, folder: Path, log: Path) -> None:
        self.log = log
        self._handle = log.open("wb")
        self.proc = subprocess.Popen(
            [SEALAGG, "serve", "--folder", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=self._handle,
            env=ENV,
        )

    def lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8").splitlines()

    def wait_serving(self) -> None:
        wait(lambda: any("serving on port" in line for line in self.lines()), "serving", self)

    def stop(self) -> int:
        """SIGTERM, as systemd and docker stop it."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            return self.proc.wait(60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._handle.close()


def wait(predicate, what: str, serve: Serve | None = None, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if serve is not None and serve.proc.poll() is not None:
            raise AssertionError(f"the appliance exited while waiting for {what}: {serve.lines()}")
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# -- the data owners ----------------------------------------------------------------------


def _data(i: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + i)
    x = torch.randn(16, 8, generator=g)
    return x, x[:, :2] * 0.5


def _examples(i: int) -> int:
    return 10 * (i + 1)


def _mse(model: nn.Module, i: int) -> float:
    x, y = _data(i)
    with torch.no_grad():
        return float(nn.functional.mse_loss(model(x), y))


class DataOwners:
    """The three data owners' scripts, as the README writes them, one thread each."""

    def __init__(self, kits: Path, names=CLIENTS, gate_round: int | None = None) -> None:
        self.seen: dict[str, list] = {n: [] for n in names}
        self.ends: dict[str, object] = {}
        self.errors: dict[str, BaseException] = {}
        self.gate_round = gate_round
        self.gate = threading.Event()
        self.threads = [
            threading.Thread(target=self._work, args=(kits / n, n, CLIENTS.index(n)), daemon=True)
            for n in names
        ]
        for t in self.threads:
            t.start()

    def _work(self, kit: Path, name: str, i: int) -> None:
        try:
            federation = client_shim.connect(kit, max_downtime=30, poll_seconds=0.5)
            model = nn.Linear(8, 2)  # the imported base model's tensors: weight, bias

            def evaluate(m: nn.Module) -> dict:
                return {"mse": _mse(m, i), "num_examples": _examples(i)}

            try:
                for rnd in federation.rounds(model, evaluate=evaluate):
                    x, y = _data(i)
                    optimizer = torch.optim.SGD(model.parameters(), lr=rnd.hyperparameters["lr"])
                    optimizer.zero_grad()
                    nn.functional.mse_loss(model(x), y).backward()
                    optimizer.step()
                    self.seen[name].append((rnd.run_id, rnd.run_round, rnd.run_rounds))
                    if rnd.run_round == self.gate_round:
                        assert self.gate.wait(60), "the gate never opened"
                    rnd.submit(num_examples=_examples(i))
                self.ends[name] = federation.run_end
            finally:
                federation.close()
        except BaseException as error:  # surfaced by finish()
            self.errors[name] = error

    def finish(self) -> None:
        for t in self.threads:
            t.join(90)
        assert not any(t.is_alive() for t in self.threads), "a client loop did not end"
        assert not self.errors, self.errors

    def ended(self, run_id: str) -> None:
        self.finish()
        for name, end in self.ends.items():
            assert end is not None, name
            assert (end.run_id, end.status) == (run_id, "finished"), (name, end)


# -- small readers of CLI output ------------------------------------------------------------


def run_json(folder: Path, run_id: str, *kit: object) -> dict:
    return json.loads(sealagg("runs", "show", run_id, "--folder", folder, *kit).stdout)


def round_count(folder: Path) -> int:
    return len(re.findall(r"^│ \d+ ", sealagg("rounds", "--folder", folder).stdout, re.M))


def create_run(folder: Path, name: str, rounds: int, hyper: dict, *kit: object) -> str:
    out = sealagg(
        "runs", "create", name, "--rounds", rounds, "--hyperparameters", json.dumps(hyper),
        "--start", "--json", "--folder", folder, *kit,
    ).stdout  # fmt: skip
    run = json.loads(out)
    assert run["status"] == "running" and run["hyperparameters"] == hyper, run
    return run["id"]


def permission_denied(kit_path: str, run_id: str) -> bool:
    """The appliance's own answer to alice's pause, under the CLI: PERMISSION_DENIED."""
    kit = load_kit(Path(kit_path))
    ca, key, cert = kit.channel_credentials_material()
    channel = grpc.secure_channel(
        kit.address,
        grpc.ssl_channel_credentials(ca, key, cert),
        options=[("grpc.ssl_target_name_override", kit.server_name)],
    )
    try:
        pb_grpc.AdminStub(channel).ControlRun(
            pb.RunControl(run_id=run_id, action="pause", reason="alice"), timeout=10
        )
    except grpc.RpcError as error:
        assert "needs the role operator" in error.details(), error.details()
        return error.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        channel.close()
    raise AssertionError("the appliance let an approver pause a run")


def assert_json_lines(lines: list[str]) -> None:
    """The appliance's stderr: one JSON object a line, nothing else (gRPC's lines too)."""
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict), line


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as reply:
        return reply.read().decode()


# -- the tour ----------------------------------------------------------------------------------


def test_the_readme_operator_tour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # the operator's working directory: relative paths as in README
    fed = Path("federation")
    port = metrics_port = free_port()
    while metrics_port == port:
        metrics_port = free_port()

    # 1. A federation, three data owners, a base model, the appliance.
    sealagg("init", "--name", "tour", "--host", "127.0.0.1", "--port", port, "--folder", fed)
    toml = fed / "sealagg.toml"
    text = toml.read_text()
    assert f'listen = "127.0.0.1:{port}"' in text
    text = text.replace("[server]\n", f'[server]\nmetrics_listen = "127.0.0.1:{metrics_port}"\n')
    text = re.sub(r"^(\w+) = (60|300)$", r"\1 = 20", text, flags=re.M)  # short deadlines
    toml.write_text(text)
    issued_from = datetime.now(UTC).replace(microsecond=0)  # certificates keep whole seconds
    for name in CLIENTS:
        sealagg("add-client", name, "--folder", fed)
    issued_until = datetime.now(UTC)
    kits = fed / "kits"
    torch.manual_seed(1)
    base = nn.Linear(8, 2)
    tensors = {k: v.detach().contiguous() for k, v in base.state_dict().items()}
    save_file(tensors, "base.safetensors")
    assert "as model version 1" in sealagg("model", "import", "base.safetensors", "-f", fed).stdout

    serve = Serve(fed, tmp_path / "serve.log")
    try:
        serve.wait_serving()
        second = subprocess.run(
            [SEALAGG, "serve", "--folder", str(fed)],
            capture_output=True, text=True, timeout=60, env=ENV,
        )  # fmt: skip
        assert second.returncode != 0
        assert f"pid {serve.proc.pid}" in second.stderr, second.stderr
        assert (fed / ".sealagg.lock").exists()  # the lock the README names
        assert serve.proc.poll() is None
        metrics_line = f"metrics served at http://127.0.0.1:{metrics_port}/metrics"
        assert any(metrics_line in line for line in serve.lines()), serve.lines()
        metrics = scrape(f"http://127.0.0.1:{metrics_port}/metrics")
        assert re.search(r"^sealagg_run_info\{", metrics, re.M), metrics
        assert re.search(r"^sealagg_round_number ", metrics, re.M), metrics
        probe = subprocess.run(
            [sys.executable, HEALTHCHECK, "--folder", fed, "--address", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=60, env=ENV,
        )  # fmt: skip
        assert probe.returncode == 0, probe.stdout + probe.stderr

        # 2. A run with hyperparameters; the clients' loops end by themselves.
        # The run exists before the data owners start: otherwise the implicit run the
        # appliance made at start ([aggregation] rounds) opens rounds without hyperparameters.
        tune = create_run(fed, "tune-lr", 3, {"lr": 0.05})
        owners = DataOwners(kits)
        owners.ended(tune)
        assert all(s == [(tune, r, 3) for r in (1, 2, 3)] for s in owners.seen.values())
        assert run_json(fed, tune)["status"] == "finished"

        # 3. A second run: pause, evaluation, resume (secagg+, metrics revealed to evaluate).
        hyper = {"lr": 0.05, "evaluation_reveals_client_metrics": True}
        second_run = create_run(fed, "paused", 4, hyper)
        owners = DataOwners(kits, gate_round=2)
        wait(lambda: all(len(s) == 2 for s in owners.seen.values()), "round 2", serve)
        sealagg("runs", "pause", second_run, "--reason", "tour", "--folder", fed)
        owners.gate.set()  # round 2, in flight when paused, finishes
        wait(lambda: run_json(fed, second_run)["rounds_done"] == 2, "round 2 done", serve)
        rounds_when_paused = round_count(fed)
        assert rounds_when_paused == 3 + 2  # the first run's and this run's, all listed
        time.sleep(3)  # a paused run opens no round however long it waits
        assert round_count(fed) == rounds_when_paused
        assert run_json(fed, second_run)["status"] == "paused"
        assert all(len(s) == 2 for s in owners.seen.values()), owners.seen

        evaluation = json.loads(sealagg("evaluate", "--json", "--folder", fed).stdout)
        with Store.open(default_state_path(fed), read_only=True) as store:
            current = store.load_model(store.current_model().version)
        model = nn.Linear(8, 2)
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in current.items()})
        weights = [_examples(i) for i in range(3)]
        mean = sum(w * _mse(model, i) for i, w in enumerate(weights)) / sum(weights)
        assert (evaluation["clients"], evaluation["num_examples"]) == (3, sum(weights)), evaluation
        assert evaluation["metrics"]["mse"] == pytest.approx(mean, rel=1e-4), evaluation

        sealagg("runs", "resume", second_run, "--folder", fed)
        owners.ended(second_run)
        assert all(s == [(second_run, r, 4) for r in (1, 2, 3, 4)] for s in owners.seen.values())

        # 4. A named approver: may read status, may not control runs.
        sealagg("admins", "add", "alice", "--role", "approver", "--out", "alice-kit", "-f", fed)
        assert "federation" in sealagg("status", "--kit", "alice-kit", "--folder", fed).stdout
        refused = sealagg("runs", "pause", second_run, "--kit", "alice-kit", "-f", fed, ok=False)
        assert refused.returncode != 0
        assert "needs the role operator" in refused.stderr, refused
        assert permission_denied("alice-kit", second_run)  # what the CLI reported

        # 5. An online backup, verified; the appliance stopped; restored on a fresh folder.
        backup = sealagg("state", "backup", "fed-backup.tar", "--folder", fed).stdout
        assert serve.proc.poll() is None and "private keys NOT included" in backup
        sealagg("state", "verify", "fed-backup.tar", "--audit-key", fed / "audit_public_key.pem")
    finally:
        code = serve.stop()
    assert code == 0, serve.lines()
    assert_json_lines(serve.lines())
    assert_json_lines(second.stderr.splitlines())

    keys = Path("keystore")
    keys.mkdir(mode=0o700)
    for name in ("ca.key", "server.key", "audit_signing_key.pem"):
        (keys / name).write_bytes((fed / name).read_bytes())
    Path("audit_public_key.pem").write_bytes((fed / "audit_public_key.pem").read_bytes())
    new = Path("restored")
    sealagg(
        "state", "restore", "fed-backup.tar", "--folder", new, "--keys-from", keys,
        "--audit-key", "audit_public_key.pem",
    )  # fmt: skip
    admin = ("--kit", fed / "admin-kit")  # kits are never in a backup
    serve = Serve(new, tmp_path / "serve-restored.log")
    try:
        serve.wait_serving()
        # A client certificate re-issued offline, installed in the client's kit in place.
        renewed = sealagg(
            "certs", "renew-client", "hospital-a", "--kit", kits / "hospital-a", "-f", new
        )
        assert "renewed hospital-a" in renewed.stdout, renewed.stdout
        after = create_run(new, "after-restore", 1, {"lr": 0.05}, *admin)
        owners = DataOwners(kits)
        owners.ended(after)
        assert all(s == [(after, 1, 1)] for s in owners.seen.values())

        # 6. Certificates; a revocation refused at the client's next call, audited at once.
        certs = sealagg("certs", "status", "--folder", new).stdout
        for name in ("ca", "server", *CLIENTS):
            assert re.search(rf"│ {name} ", certs), certs
        federation = client_shim.connect(kits / "hospital-c", max_downtime=30)
        try:
            before = datetime.now(UTC).replace(microsecond=0)  # revoked.json: whole seconds
            sealagg("revoke", "hospital-c", "--folder", new)
            after_revoke = datetime.now(UTC)
            with pytest.raises(client_shim.AccessRefusedError) as refusal:
                for _ in federation.rounds(nn.Linear(8, 2)):
                    pytest.fail("a revoked client was offered a round")
            assert "revoked" in str(refusal.value), refusal.value
        finally:
            federation.close()
        export = sealagg("audit", "export", "-", "--folder", new).stdout
        assert not Path("-").exists()
        entries = [json.loads(line) for line in export.splitlines()]
        (revoked,) = [e for e in entries if e.get("event") == "client_revoked"]
        assert revoked["details"]["name"] == "hospital-c", revoked
        assert revoked["details"]["by"]["os_user"], revoked  # who did it
        at = datetime.fromisoformat(revoked["time"].replace("Z", "+00:00"))
        assert before <= at <= after_revoke, (before, at, after_revoke)
        # Issued before any state database existed (the README's order): recorded at the
        # first start, but with the time of the issue and who issued it.
        added = [e for e in entries if e.get("event") == "client_added"]
        assert sorted(e["details"]["name"] for e in added) == sorted(CLIENTS), added
        for entry in added:
            at = datetime.fromisoformat(entry["time"].replace("Z", "+00:00"))
            assert issued_from <= at <= issued_until, entry
    finally:
        code = serve.stop()
    assert code == 0, serve.lines()
    assert_json_lines(serve.lines())
    verified = sealagg(
        "audit", "verify", "--folder", new, "--public-key", "audit_public_key.pem"
    ).stdout
    assert "OK" in verified, verified
    for entry in added:  # the README: audited "with the OS user" (add-client ran as this user)
        assert entry["details"]["by"] is not None, entry
