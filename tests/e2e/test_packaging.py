"""What we ship and how it installs: one ``sealagg`` namespace, and a lock that covers it all.

These guard the namespace change: the wheel holds only ``sealagg/``, pyproject's explicit
package list names every package folder, no file of ours imports a bare ``kernels`` /
``crypto`` / ``attest`` / ``appliance`` / ``client_shim`` (in code, in strings that are run as
code, or in the docs a user copies from), and ``requirements/lock.txt`` pins every package
with a hash, so a new upstream release cannot change what ``./run`` installs.
"""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
FOLDERS = ("kernels", "crypto", "attest", "appliance", "client_shim", "flower")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
LOCK = REPO / "requirements" / "lock.txt"

#: `import kernels`, `from crypto.x import y`, `import appliance.cli` ... anywhere in a line
#: (code, a `python -c` string, a Markdown example), but not `sealagg.kernels` or `a/kernels`.
BARE_IMPORT = re.compile(
    r"(?<![\w./])(?:(?<!sealagg )import|from)\s+"
    r"(?:kernels|crypto|attest|appliance|client_shim)\b(?![-/])"
)


def tracked_files(*patterns: str) -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "-z", *patterns], cwd=REPO, capture_output=True, check=False
    )
    # CI and every developer run from a git checkout: no listing is a failure, not a skip.
    assert out.returncode == 0, out.stderr.decode()[-2000:]
    return [REPO / name for name in out.stdout.decode().split("\0") if name]


def test_the_package_list_names_every_package_folder() -> None:
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {
        ".".join(("sealagg", *init.parent.relative_to(REPO).parts))
        for folder in FOLDERS
        for init in (REPO / folder).rglob("__init__.py")
    }
    assert listed == found
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {
        f"sealagg.{folder}": folder for folder in FOLDERS
    }
    assert not (REPO / "sealagg").exists(), "sealagg is a namespace: no folder of that name"


def test_console_scripts_and_lint_use_the_namespace() -> None:
    for target in PYPROJECT["project"]["scripts"].values():
        assert target.startswith("sealagg."), target
    isort = PYPROJECT["tool"]["ruff"]["lint"]["isort"]
    assert isort["known-first-party"] == ["sealagg"]


def test_no_bare_import_of_our_folders_anywhere() -> None:
    files = tracked_files("*.py", "*.md", "*.toml", "*.sh", "run", "Dockerfile", ".ci/*")
    assert len(files) > 150
    # This file quotes the pattern it looks for.
    here = Path(__file__).resolve()
    files = [path for path in files if path != here]
    offenders = [
        f"{path.relative_to(REPO)}:{number}: {line.strip()}"
        for path in files
        if path.exists()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if BARE_IMPORT.search(line)
    ]
    assert offenders == []


def test_no_sys_path_tricks() -> None:
    """sys.path inserts and PYTHONPATH would expose our folders under their bare names again."""
    pattern = re.compile(r"sys\.path\.(?:insert|append)|PYTHONPATH\"?\]?\s*=")
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in tracked_files("*.py", "run", ".ci/*")
        if path.exists() and path != Path(__file__).resolve()
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []


def test_the_wheel_holds_only_sealagg(tmp_path: Path) -> None:
    """`pip wheel .` of a copy of the sources: every file is under sealagg/ or its metadata."""
    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for folder in FOLDERS:
        shutil.copytree(
            REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__")
        )
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--no-index", "--quiet", "-w", str(tmp_path / "dist"), str(source)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (wheel,) = (tmp_path / "dist").glob("sealagg-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/", 1)[0] for name in names}
    version = importlib.metadata.version("sealagg")
    assert top == {"sealagg", f"sealagg-{version}.dist-info"}, top
    for folder in FOLDERS:
        assert f"sealagg/{folder}/__init__.py" in names
    assert "sealagg/__init__.py" not in names
    assert "sealagg/appliance/wire/sealagg.proto" in names


def _locked() -> dict[str, str]:
    """name -> pinned version; every entry must carry at least one sha256 hash."""
    pins: dict[str, str] = {}
    text = LOCK.read_text()
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        first = block.splitlines()[0]
        if first.startswith("#") or not first.strip():
            continue
        requirement = Requirement(first.rstrip(" \\"))
        (spec,) = requirement.specifier
        assert spec.operator == "==", first
        assert "--hash=sha256:" in block, f"{requirement.name} has no hash"
        pins[canonicalize_name(requirement.name)] = spec.version
    return pins


def test_the_lock_pins_everything_with_hashes() -> None:
    pins = _locked()
    wanted = [Requirement(r) for r in PYPROJECT["project"]["dependencies"]]
    for extra in ("client", "he", "dev"):
        wanted += [Requirement(r) for r in PYPROJECT["project"]["optional-dependencies"][extra]]
    for requirement in wanted:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{name} is in pyproject.toml but not in the lock"
        assert requirement.specifier.contains(pins[name], prereleases=True), (name, pins[name])
    assert pins["torch"] == "2.13.0+cpu"
    assert "kernels" in pins  # Hugging Face's, through transformers: the suite runs beside it


def test_this_environment_is_the_lock() -> None:
    """./run installs exactly the lock: every locked package is installed at its version."""
    pins = _locked()
    for name, version in pins.items():
        try:
            installed = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pytest.fail(f"{name} is locked but not installed")
        assert installed == version, (name, installed, version)
