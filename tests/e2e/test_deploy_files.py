"""The deployment files: Dockerfile, .dockerignore, compose, systemd unit, image lock and SBOM.

No docker daemon is needed: the files are read and checked against each other and against the
project (the lock, pyproject.toml, the CLI), the systemd unit goes through systemd's own
verifier where it is installed, and the container health probe runs for real against a real
``sealagg serve`` subprocess over mutual TLS, which is then stopped with the signal the compose
file and the unit send.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import tomllib
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from sealagg.appliance.cli._common import ADMIN_KIT_DIRNAME, ADMIN_NAME
from sealagg.appliance.federation import add_client, init_federation
from sealagg.appliance.testing import free_port

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "deploy" / "compose.yaml"
UNIT = ROOT / "deploy" / "systemd" / "sealagg.service"
HEALTHCHECK = ROOT / "deploy" / "healthcheck.py"
MAIN_LOCK = ROOT / "requirements" / "lock.txt"
IMAGE_LOCK = ROOT / "requirements" / "lock-appliance.txt"
SBOM = ROOT / "scripts" / "sbom.sh"
#: In the image's lock to build the project, then removed from the image (Dockerfile).
BUILD_ONLY = {"setuptools"}
#: Packages that must never reach the appliance image (the client extra, HE, dev tools).
NEVER_IN_IMAGE = {"torch", "opacus", "transformers", "peft", "scikit-learn", "tenseal", "pytest"}
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------ helpers


def parse_lock(path: Path) -> dict[str, tuple[str, frozenset[str]]]:
    """name -> (version, sha256 hashes) of a ``uv pip compile --generate-hashes`` file."""
    pins: dict[str, tuple[str, frozenset[str]]] = {}
    name = version = None
    hashes: set[str] = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        pin = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if pin:
            if name is not None:
                pins[name] = (version, frozenset(hashes))
            name, version, hashes = canonicalize_name(pin[1]), pin[2], set()
        hashes.update(re.findall(r"--hash=sha256:([0-9a-f]{64})", line))
    if name is not None:
        pins[name] = (version, frozenset(hashes))
    return pins


def runtime_closure() -> set[str]:
    """Every distribution sealagg's base dependencies pull in (markers for this interpreter,
    no extras), from the installed metadata: what the image must hold, no more, no less."""
    seen: set[str] = set()
    todo = [
        Requirement(r)
        for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ]
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            pytest.fail(f"{name} (needed by the appliance) is not installed in this venv")
        todo.extend(Requirement(r) for r in requires)
    return seen


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text(encoding="utf-8"))
    out = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            word, _, rest = stripped.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's build stages, each a list of instructions starting at its FROM."""
    found: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def dockerfile_arg(name: str) -> str:
    for word, rest in dockerfile_instructions():
        if word == "ARG" and rest.startswith(f"{name}="):
            return rest.split("=", 1)[1]
    pytest.fail(f"the Dockerfile sets no default for ARG {name}")


def ignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    """.dockerignore as (re-included?, regex), with Docker's rules: ``*`` stays within one
    path segment, ``**`` crosses them, and a pattern matching a folder matches what is in it."""
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        body = line[1:] if negated else line
        body = body.strip("/")
        regex = ""
        i = 0
        while i < len(body):
            if body.startswith("**/", i):
                regex, i = regex + "(?:.*/)?", i + 3
            elif body.startswith("**", i):
                regex, i = regex + ".*", i + 2
            elif body[i] == "*":
                regex, i = regex + "[^/]*", i + 1
            elif body[i] == "?":
                regex, i = regex + "[^/]", i + 1
            else:
                regex, i = regex + re.escape(body[i]), i + 1
        patterns.append((negated, re.compile(f"^{regex}(?:/.*)?$")))
    return patterns


def in_build_context(relative: str) -> bool:
    included = True
    for negated, pattern in ignore_patterns():
        if pattern.match(relative):
            included = negated
    return included


def compose_service() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))["services"]["appliance"]


def unit_entries() -> dict[str, list[str]]:
    """Every ``Key=value`` of the unit, in order (systemd keys may repeat)."""
    entries: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if "=" in line and not line.lstrip().startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            entries.setdefault(key.strip(), []).append(value.strip())
    return entries


def unit_value(key: str) -> str:
    values = unit_entries().get(key)
    assert values, f"the unit sets no {key}="
    return values[-1]


# ------------------------------------------------------------------------ the image's lock


def test_image_lock_holds_exactly_the_appliance_dependencies() -> None:
    image = parse_lock(IMAGE_LOCK)
    runtime = set(image) - BUILD_ONLY
    assert runtime == runtime_closure(), (
        "requirements/lock-appliance.txt must hold sealagg's base dependencies and what they "
        "pull in, no more (refresh it with scripts/lock_appliance.sh)"
    )
    assert set(image) >= BUILD_ONLY, "the build stage needs the locked build backend"
    assert not NEVER_IN_IMAGE & set(image)


def test_image_lock_agrees_with_the_main_lock() -> None:
    main, image = parse_lock(MAIN_LOCK), parse_lock(IMAGE_LOCK)
    for name, (version, hashes) in image.items():
        assert name in main, f"{name} is in the image's lock but not in requirements/lock.txt"
        assert version == main[name][0], f"{name}: image {version}, main lock {main[name][0]}"
        assert hashes, f"{name} has no hash in the image's lock"
        assert hashes <= main[name][1], f"{name}: a hash the main lock does not vouch for"


def test_image_lock_pins_what_this_venv_runs() -> None:
    """The tests run against the versions the image ships."""
    for name, (version, _) in parse_lock(IMAGE_LOCK).items():
        if name not in BUILD_ONLY:
            assert distribution(name).version == version, name


# ---------------------------------------------------------------------------- Dockerfile


def test_base_image_is_pinned_by_digest_in_every_stage() -> None:
    base = dockerfile_arg("PYTHON_IMAGE")
    assert re.fullmatch(r"python:3\.11-slim@sha256:[0-9a-f]{64}", base), base
    names = set()
    for stage in stages():
        source, *alias = stage[0][1].split()
        assert source == "${PYTHON_IMAGE}", f"FROM {source}: every stage uses the pinned base"
        if alias:
            names.add(alias[-1])
    assert {"build", "runtime"} <= names


def test_dependencies_install_only_from_the_hashed_image_lock() -> None:
    installs = [rest for word, rest in dockerfile_instructions() if word == "RUN" and "pip" in rest]
    commands = [c for rest in installs for c in rest.split("&&") if re.search(r"\binstall\b", c)]
    assert commands, "the Dockerfile installs nothing?"
    for command in commands:
        assert "--no-deps" in command, command  # nothing is resolved at build time
        if "-r " in command:
            assert "--require-hashes" in command and "requirements/lock-appliance.txt" in command
        else:  # the project itself, built with the locked backend
            assert command.rstrip().endswith(" ."), command
            assert "--no-build-isolation" in command, command
    uninstall = [c for rest in installs for c in rest.split("&&") if "uninstall" in c]
    assert uninstall and set(uninstall[0].split()) >= BUILD_ONLY


def test_runtime_stage_is_non_root_with_the_folder_as_a_volume() -> None:
    runtime = stages()[-1]
    words = [word for word, _ in runtime]
    (user,) = [rest for word, rest in runtime if word == "USER"]
    uid = re.search(r"useradd [^&]*--uid (\d+)", " ".join(r for w, r in runtime if w == "RUN"))
    assert uid and int(uid[1]) >= 1000
    # Numeric, so a runtime (Kubernetes' runAsNonRoot) can tell without /etc/passwd.
    assert user == f"{uid[1]}:{uid[1]}"
    assert any(word == "VOLUME" and "/federation" in rest for word, rest in runtime)
    assert words.index("USER") > max(i for i, w in enumerate(words) if w == "RUN")
    # Only the venv and the probe come into the runtime stage: no sources, no build tools.
    copies = [rest for word, rest in runtime if word == "COPY"]
    assert copies[0] == "--from=build /opt/sealagg /opt/sealagg"
    assert copies[1:] == ["--chmod=0555 deploy/healthcheck.py /opt/sealagg/libexec/healthcheck.py"]
    assert ("STOPSIGNAL", "SIGTERM") in runtime
    assert ("ENTRYPOINT", '["sealagg"]') in runtime
    assert ("CMD", '["serve", "--folder", "/federation"]') in runtime


def test_labels_carry_source_version_revision_and_base() -> None:
    labels = " ".join(rest for word, rest in stages()[-1] if word == "LABEL")
    for key in ("source", "version", "revision", "licenses", "base.name", "title"):
        assert f"org.opencontainers.image.{key}=" in labels, key
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert dockerfile_arg("VERSION") == version
    assert compose_service()["image"] == f"sealagg:{version}"


def test_no_secret_is_set_in_an_image_layer() -> None:
    for word, rest in dockerfile_instructions():
        if word in ("ENV", "ARG", "LABEL"):
            assert not re.search(r"(?i)(pass(word|phrase)?|secret|token|private)\w*=", rest), rest


def test_healthcheck_asks_the_grpc_health_service() -> None:
    (check,) = [rest for word, rest in stages()[-1] if word == "HEALTHCHECK"]
    command = json.loads(check.split("CMD", 1)[1])
    assert command == ["python", "/opt/sealagg/libexec/healthcheck.py"]
    assert "grpc_health.v1" in HEALTHCHECK.read_text(encoding="utf-8")
    assert compose_service()["healthcheck"]["test"] == ["CMD", *command]


# -------------------------------------------------------------------------- .dockerignore


def test_build_context_lets_in_what_the_dockerfile_copies() -> None:
    for stage in stages():
        for word, rest in stage:
            if word != "COPY" or "--from=" in rest:
                continue
            sources = [p for p in rest.split() if not p.startswith("--")][:-1]
            for source in sources:
                assert in_build_context(source.strip("/")), f"COPY {source} is ignored"
                assert (ROOT / source).exists(), source


@pytest.mark.parametrize(
    "path",
    [
        "federation/ca.key",
        "federation/state.sqlite3",
        "deploy/secrets/ca-passphrase",
        "secrets/ca-passphrase",
        "appliance/kits/alice/client.key",
        "appliance/admin-kit/client.pem",
        # Stray secrets inside the folders that are let in.
        "appliance/leaked-ca.key",
        "crypto/_primitives/debug.pem",
        "attest/scratch.sqlite3",
        "appliance/federation/kits/bob.tar.gz",
        "kernels/__pycache__/_modular._add_into-35.py311.1.nbc",
        "appliance/__pycache__/server.cpython-311.pyc",
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "requirements/lock.txt",
        "ca-passphrase",
        "backup.tar.gz",
    ],
)
def test_build_context_keeps_out_keys_state_and_everything_unnamed(path: str) -> None:
    assert not in_build_context(path)


def test_nothing_in_the_build_context_is_a_key_or_a_database() -> None:
    """Walk the real checkout: whatever would be sent to the daemon is source or metadata."""
    reincluded = [
        line[1:].strip("/").split("/")[0]
        for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    ]
    sent = []
    for top in sorted(ROOT.iterdir()):
        # An ignored top-level entry that no "!" pattern reaches into sends nothing.
        if not in_build_context(top.name) and top.name not in reincluded:
            continue
        for path in [top] if top.is_file() else sorted(top.rglob("*")):
            relative = path.relative_to(ROOT).as_posix()
            if path.is_file() and in_build_context(relative):
                sent.append(relative)
    assert "appliance/server.py" in sent and "pyproject.toml" in sent
    # The console's pages (issue 24) ship in the image: served by the appliance, never fetched.
    console_page = re.compile(r"appliance/console/static/[\w.-]+\.(html|css|js)")
    odd = [
        p
        for p in sent
        if not p.endswith((".py", ".proto", ".pyi", ".toml", ".md", ".txt"))
        and not console_page.fullmatch(p)
    ]
    assert odd == []


# ------------------------------------------------------------------------------- compose


def test_compose_runs_the_folder_volume_with_its_passphrase_as_a_secret() -> None:
    document = yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))
    service = compose_service()
    assert "federation:/federation" in service["volumes"]
    assert "federation" in document["volumes"]
    command = service["command"]
    assert command[:3] == ["serve", "--folder", "/federation"]
    (secret,) = service["secrets"]
    passphrase = command[command.index("--passphrase-file") + 1]
    assert passphrase == f"/run/secrets/{secret['target']}"
    assert set(document["secrets"][secret["source"]]) == {"file"}
    assert not any(
        re.search(r"(?i)pass|secret|token", f"{k}={v}")
        for k, v in (service.get("environment") or {}).items()
    ), "secrets go through `secrets:`, never the environment"


def test_compose_publishes_grpc_and_keeps_metrics_on_loopback() -> None:
    ports = compose_service()["ports"]
    grpc_port = "50051:50051"
    assert grpc_port in ports
    for port in ports:
        if port != grpc_port:
            assert port.startswith("127.0.0.1:"), f"{port} must be bound to the host's loopback"


def test_compose_hardening_restart_and_stop_signal() -> None:
    service = compose_service()
    assert service["read_only"] is True
    assert service["restart"] == "unless-stopped"
    assert service["stop_signal"] == "SIGTERM"
    assert re.fullmatch(r"\d+s", service["stop_grace_period"])
    assert service["cap_drop"] == ["ALL"]
    assert "no-new-privileges:true" in service["security_opt"]
    # numba's cache is the one write outside the volume: it needs a writable /tmp.
    numba_cache = re.search(r"NUMBA_CACHE_DIR=(\S+)", DOCKERFILE.read_text()).group(1)
    assert any(numba_cache.startswith(t.split(":")[0] + "/") for t in service["tmpfs"])
    uid = re.search(r"--uid (\d+)", DOCKERFILE.read_text()).group(1)
    assert service["user"] == f"{uid}:{uid}"


def _has_docker_compose() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(
    not _has_docker_compose(),
    reason="docker compose is not installed here (the YAML checks above still ran)",
)
def test_compose_file_is_valid_for_docker_compose(tmp_path: Path) -> None:
    """Compose's own parser, on a copy beside a stand-in secret file (the real one is the
    operator's and never in the checkout)."""
    copy = tmp_path / "compose.yaml"
    copy.write_text(COMPOSE.read_text(encoding="utf-8").replace("context: ..", f"context: {ROOT}"))
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "ca-passphrase").write_text("stand-in\n")
    result = subprocess.run(
        ["docker", "compose", "-f", str(copy), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# ------------------------------------------------------------------------------- systemd


def test_unit_runs_serve_on_the_folder_as_a_dedicated_user() -> None:
    exec_start = unit_value("ExecStart").split()
    assert exec_start[:2] == ["/opt/sealagg/bin/sealagg", "serve"]
    folder = exec_start[exec_start.index("--folder") + 1]
    assert unit_value("User") not in ("root", "0", "") and unit_value("Group")
    assert any(folder.startswith(p.rstrip("/") + "/") for p in unit_value("ReadWritePaths").split())
    credential, _, source = unit_value("LoadCredential").partition(":")
    assert exec_start[exec_start.index("--passphrase-file") + 1] == f"%d/{credential}"
    assert source.startswith("/etc/")
    assert unit_value("KillSignal") == "SIGTERM"
    assert unit_value("Restart") == "on-failure"


def test_unit_hardening() -> None:
    assert unit_value("ProtectSystem") == "strict"
    assert unit_value("NoNewPrivileges") == "yes"
    assert unit_value("PrivateTmp") == "yes"
    assert unit_value("CapabilityBoundingSet") == ""
    assert set(unit_value("RestrictAddressFamilies").split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    # numba's JIT needs W+X memory (test_numba_dies_under_memory_deny_write_execute).
    assert unit_value("MemoryDenyWriteExecute") == "no"


def _verifiable_unit(tmp_path: Path, text: str) -> Path:
    """The unit with ExecStart pointing at a stand-in executable (verify checks it exists)."""
    stand_in = tmp_path / "sealagg"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    unit = tmp_path / "sealagg.service"
    unit.write_text(text.replace("/opt/sealagg/bin/sealagg", str(stand_in)))
    return unit


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_verifies_the_unit_and_rates_its_exposure_low(tmp_path: Path) -> None:
    unit = _verifiable_unit(tmp_path, UNIT.read_text(encoding="utf-8"))
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert verify.returncode == 0 and str(unit) not in verify.stderr, verify.stderr
    security = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        check=False,
    )
    exposure = re.search(r"Overall exposure level for \S+: ([\d.]+)", security.stdout)
    assert exposure, security.stdout + security.stderr
    assert float(exposure[1]) <= 2.0, security.stdout


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze missing")
def test_systemd_verify_catches_a_misspelt_key(tmp_path: Path) -> None:
    """The check above can fail: a typo in a hardening key is reported."""
    text = UNIT.read_text(encoding="utf-8").replace("ProtectSystem=", "ProtectSystm=")
    unit = _verifiable_unit(tmp_path, text)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, check=False
    )
    assert "ProtectSystm" in verify.stderr


def test_numba_dies_under_memory_deny_write_execute() -> None:
    """Why the unit sets MemoryDenyWriteExecute=no: under the kernel's W^X rule for a process
    (PR_SET_MDWE, which the setting maps to on current systemd) numba refuses to load, so the
    appliance could not even start."""
    probe = (
        "import ctypes, sys\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1\n"
        "if libc.prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:\n"
        "    sys.exit(3)\n"
        "import numba\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=False
    )
    if result.returncode == 3:
        pytest.skip("this kernel has no PR_SET_MDWE (Linux < 6.3)")
    assert result.returncode != 0
    assert "cannot allocate executable memory" in result.stderr, result.stderr


# ---------------------------------------------------------------------------------- SBOM


def test_sbom_lists_every_locked_package_of_the_image_with_its_hashes(tmp_path: Path) -> None:
    out = tmp_path / "sbom.cdx.json"
    result = subprocess.run(
        ["bash", str(SBOM), str(out)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert result.returncode == 0, result.stderr
    bom = json.loads(out.read_text(encoding="utf-8"))
    assert bom["bomFormat"] == "CycloneDX" and bom["specVersion"] == "1.6"
    root = bom["metadata"]["component"]
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert (root["name"], root["version"]) == ("sealagg", version)
    libraries = {
        canonicalize_name(c["name"]): c for c in bom["components"] if c["type"] == "library"
    }
    expected = {n: v for n, v in parse_lock(IMAGE_LOCK).items() if n not in BUILD_ONLY}
    assert set(libraries) == set(expected)
    for name, (pinned, hashes) in expected.items():
        component = libraries[name]
        assert component["version"] == pinned, name
        assert component["purl"].startswith(f"pkg:pypi/{name}@{pinned}"), component["purl"]
        listed = {
            h["content"]
            for ref in component.get("externalReferences", [])
            for h in ref.get("hashes", [])
            if h["alg"] == "SHA-256"
        }
        assert listed == hashes, name
    (base,) = [c for c in bom["components"] if c["type"] == "container"]
    assert f"python:3.11-slim@{base['version']}" == dockerfile_arg("PYTHON_IMAGE")
    assert base["purl"].startswith(f"pkg:docker/library/python@{base['version']}")


# ------------------------------------------------- health probe and SIGTERM, for real


def _federation(tmp_path: Path) -> tuple[Path, int]:
    """A federation folder laid out as ``sealagg init`` leaves it (admin kit included)."""
    folder, port = tmp_path / "federation", free_port()
    federation = init_federation(folder, name="fed", hosts=["localhost"], port=port)
    add_client(federation, ADMIN_NAME, out=folder / ADMIN_KIT_DIRNAME)
    return folder, port


def _probe(folder: Path, address: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(HEALTHCHECK), "--folder", str(folder), "--address", address],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )


class _Serve:
    """``sealagg serve`` as the container or the unit runs it, with its log lines queued."""

    def __init__(self, folder: Path) -> None:
        self.process = subprocess.Popen(
            [str(BIN / "sealagg"), "serve", "--folder", str(folder)],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line)
        self.lines.put("")

    def wait_for(self, text: str) -> list[str]:
        seen = []
        while True:
            line = self.lines.get(timeout=60)
            seen.append(line)
            if text in line:
                return seen
            assert line, f"serve ended before {text!r}: {''.join(seen)}"

    def rest(self) -> list[str]:
        """The lines still to come, once the process has ended."""
        lines = []
        while line := self.lines.get(timeout=60):
            lines.append(line)
        return lines

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(30)


def test_probe_reports_serving_then_unhealthy_after_sigterm(tmp_path: Path) -> None:
    folder, port = _federation(tmp_path)
    address = f"127.0.0.1:{port}"
    serve = _Serve(folder)
    try:
        serve.wait_for("serving on port")
        healthy = _probe(folder, address)
        assert healthy.returncode == 0, healthy.stderr
        assert "SERVING" in healthy.stdout
        serve.process.send_signal(signal.SIGTERM)  # compose's stop_signal, the unit's KillSignal
        assert serve.process.wait(30) == 0
        assert any("appliance stopped" in line for line in serve.rest())
    finally:
        serve.stop()
    down = _probe(folder, address)
    assert down.returncode == 1
    assert "unhealthy" in down.stderr and "UNAVAILABLE" in down.stderr


def test_probe_refuses_a_tampered_admin_kit(tmp_path: Path) -> None:
    folder, port = _federation(tmp_path)
    kit_config = folder / ADMIN_KIT_DIRNAME / "client.toml"  # e.g. pointed at another address
    kit_config.write_text(kit_config.read_text() + "# edited\n")
    refused = _probe(folder, f"127.0.0.1:{port}")
    assert refused.returncode == 1
    assert "cannot use the admin kit" in refused.stderr
    assert "Traceback" not in refused.stderr
