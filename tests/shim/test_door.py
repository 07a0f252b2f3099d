"""The layering between the client shim and the appliance, read from the source (ast, no import).

A data owner installs the client shim; it may reach the appliance's code through one door
only: the wire schema (``sealagg.appliance.wire``) and the read-only kit API
(``sealagg.appliance.kit``). The appliance never imports the shim, nor torch. The shim keeps
torch (and the libraries built on it) out of import time except in its torch integrations.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

WIRE = "sealagg.appliance.wire"
KIT_API = "sealagg.appliance.kit"
#: What the read-only kit API itself may import of ours (no kit issuing, no federation).
KIT_API_IMPORTS = frozenset({"sealagg.appliance.errors", "sealagg.appliance.pki"})
#: Libraries that import torch (or are torch): importing them costs seconds and gigabytes.
TORCH_STACK = frozenset({"torch", "torchvision", "transformers", "opacus"})

#: client_shim modules (relative paths) that import the torch stack when they are imported.
#: Everything else imports torch lazily, inside the functions that need it, so
#: ``from sealagg import client_shim`` and the numpy core (session, ckks, ...) work without it.
SHIM_TORCH_AT_IMPORT = frozenset(
    {
        "huggingface.py",  # imports transformers at the top: the Trainer integration by design
        "demo/model.py",  # the demo's MLP: torch.nn at the top by design
    }
)


def _package_dir(package: str) -> Path:
    """The folder a ``sealagg.<name>`` package is installed from, found without importing it."""
    spec = importlib.util.find_spec(package)
    assert spec is not None and spec.submodule_search_locations, package
    return Path(next(iter(spec.submodule_search_locations)))


SHIM = _package_dir("sealagg.client_shim")
APPLIANCE = _package_dir("sealagg.appliance")


@dataclass(frozen=True)
class Import:
    """One module named by an import statement."""

    module: str
    line: int
    at_import_time: bool  # False: inside a function, or under ``if TYPE_CHECKING:``


def _sources(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)


def _module_name(package: str, root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([package, *parts])


def _is_module(name: str) -> bool:
    """Whether ``name`` is a module or package of ours (so ``from X import name`` imports it)."""
    parts = name.split(".")
    if len(parts) < 2 or parts[0] != "sealagg":
        return False
    try:
        folder = _package_dir(".".join(parts[:2]))
    except (AssertionError, ModuleNotFoundError):
        return False
    path = folder.joinpath(*parts[2:])
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(path: Path, module: str) -> Iterator[Import]:
    """Every module ``path`` (named ``module``) imports, and whether at import time."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def names(node: ast.Import | ast.ImportFrom, now: bool) -> Iterator[Import]:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(alias.name, node.lineno, now)
            return
        base = node.module or ""
        if node.level:
            anchor = package.split(".")
            anchor = anchor[: len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, base] if base else anchor)
        for alias in node.names:
            child = f"{base}.{alias.name}"
            yield Import(child if _is_module(child) else base, node.lineno, now)

    def walk(nodes: list[ast.stmt], now: bool) -> Iterator[Import]:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield from names(node, now)
            elif isinstance(node, ast.If) and _is_type_checking(node.test):
                yield from walk(node.body, False)
                yield from walk(node.orelse, now)
            else:  # function bodies run later; class, if, try, with, loop bodies run now
                later = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                for child in ast.iter_child_nodes(node):
                    if isinstance(child, ast.stmt):
                        yield from walk([child], now and not later)
                    elif isinstance(child, ast.ExceptHandler | ast.match_case):
                        yield from walk(child.body, now and not later)

    yield from walk(tree.body, True)


def _cases(package: str, root: Path) -> list[object]:
    cases: list[object] = []
    for path in _sources(root):
        rel = path.relative_to(root).as_posix()
        cases.append(pytest.param(path, _module_name(package, root, path), id=rel))
    return cases


def _in_wire(module: str) -> bool:
    return module == WIRE or module.startswith(WIRE + ".")


def _through_the_door(module: str) -> bool:
    return module == KIT_API or _in_wire(module)


def _root(module: str) -> str:
    return module.partition(".")[0]


# ---------------------------------------------------------------------------------------------
# The client shim


@pytest.mark.parametrize(("path", "module"), _cases("sealagg.client_shim", SHIM))
def test_shim_reaches_the_appliance_only_through_the_wire_and_kit_api(
    path: Path, module: str
) -> None:
    """Lazy imports count too: a function-level import is still a dependency."""
    wrong = [
        f"line {i.line}: {i.module}"
        for i in imports_of(path, module)
        if (i.module == "sealagg.appliance" or i.module.startswith("sealagg.appliance."))
        and not _through_the_door(i.module)
    ]
    assert not wrong, f"{module} imports appliance internals: {wrong}"


@pytest.mark.parametrize(("path", "module"), _cases("sealagg.client_shim", SHIM))
def test_shim_imports_torch_at_import_time_only_in_its_torch_integrations(
    path: Path, module: str
) -> None:
    if path.relative_to(SHIM).as_posix() in SHIM_TORCH_AT_IMPORT:
        return
    eager = [
        f"line {i.line}: {i.module}"
        for i in imports_of(path, module)
        if i.at_import_time and _root(i.module) in TORCH_STACK
    ]
    assert not eager, f"{module} imports the torch stack when imported: {eager}"


def test_shim_allow_lists_name_existing_modules() -> None:
    missing = [rel for rel in SHIM_TORCH_AT_IMPORT if not (SHIM / rel).is_file()]
    assert not missing, f"stale entries in SHIM_TORCH_AT_IMPORT: {missing}"


def test_the_shim_core_loads_only_the_door_of_the_appliance() -> None:
    """At run time too: importing the torch-free shim loads no other appliance module
    (the kit API's own imports included) and no torch."""
    core = ["ckks", "connection", "errors", "metrics", "privacy", "session", "testing", "vendor"]
    code = (
        "import importlib, sys\n"
        f"for name in {core!r}: importlib.import_module('sealagg.client_shim.' + name)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    allowed = {"sealagg.appliance", KIT_API, *KIT_API_IMPORTS}
    loaded = [m for m in out if m.startswith("sealagg.appliance")]
    wrong = [m for m in loaded if m not in allowed and not _through_the_door(m)]
    assert not wrong, f"the shim's core loads appliance internals: {wrong}"
    assert not [m for m in out if _root(m) in TORCH_STACK]


# ---------------------------------------------------------------------------------------------
# The appliance side of the door


@pytest.mark.parametrize(("path", "module"), _cases("sealagg.appliance", APPLIANCE))
def test_appliance_never_imports_the_shim_nor_torch(path: Path, module: str) -> None:
    """Not even lazily: the appliance's image ships without torch and without the shim."""

    def forbidden(i: Import) -> bool:
        shim = i.module == "sealagg.client_shim" or i.module.startswith("sealagg.client_shim.")
        return shim or _root(i.module) in TORCH_STACK

    wrong = [f"line {i.line}: {i.module}" for i in imports_of(path, module) if forbidden(i)]
    assert not wrong, f"{module} imports the client shim or torch: {wrong}"


def test_the_kit_api_is_read_only() -> None:
    """The shim's kit door loads and validates kits; issuing and signing stay outside it."""
    path = APPLIANCE / "kit.py"
    ours = {i.module for i in imports_of(path, KIT_API) if _root(i.module) == "sealagg"}
    # crypto's rules (policy, roster) are for both sides; the appliance's internals are not.
    appliance = {m for m in ours if m.startswith("sealagg.appliance")}
    assert appliance <= KIT_API_IMPORTS, (
        f"the kit API imports {sorted(appliance - KIT_API_IMPORTS)}"
    )


def test_the_kit_api_carries_the_kit_errors() -> None:
    from sealagg.appliance import errors, kit

    for name in ("KitExpiredError", "KitMismatchError", "KitTamperedError", "ProvisioningError"):
        assert getattr(kit, name) is getattr(errors, name), name
        assert name in kit.__all__
    assert not hasattr(kit, "build_kit")  # signing lives in appliance/kit_issue.py


@pytest.mark.parametrize(("path", "module"), _cases(WIRE, APPLIANCE / "wire"))
def test_the_wire_schema_imports_nothing_else_of_ours(path: Path, module: str) -> None:
    ours = [
        f"line {i.line}: {i.module}"
        for i in imports_of(path, module)
        if _root(i.module) == "sealagg" and not _in_wire(i.module)
    ]
    assert not ours, f"{module} imports {ours}"
