"""The lower layers' dependency rules, read from the source (ast, every import, even lazy ones).

kernels imports nothing of ours; crypto imports kernels at most, and within crypto only the
private primitives layer touches cryptography, PyNaCl or TenSEAL (one place to audit the
cipher code); attest uses crypto's public API only; nothing of ours imports benchmarks/.
The shim/appliance door is tests/shim/test_door.py.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CRYPTO_LIBRARIES = ("cryptography", "nacl", "tenseal")


def imports_of(path: Path) -> list[str]:
    """Absolute module names imported anywhere in the file (``from a import b`` gives a.b too)."""
    names: list[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
            names += [f"{node.module}.{alias.name}" for alias in node.names]
    return names


def sources(folder: str) -> list[Path]:
    return sorted((REPO / folder).rglob("*.py"))


def ours(name: str) -> str | None:
    """The package of ours that an import names (``sealagg.crypto._primitives.x`` -> crypto)."""
    parts = name.split(".")
    return parts[1] if parts[0] == "sealagg" and len(parts) > 1 else None


def ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(REPO).as_posix() for p in paths]


@pytest.mark.parametrize("path", sources("kernels"), ids=ids(sources("kernels")))
def test_kernels_import_nothing_of_ours(path: Path) -> None:
    assert [n for n in imports_of(path) if ours(n) and ours(n) != "kernels"] == []


@pytest.mark.parametrize("path", sources("crypto"), ids=ids(sources("crypto")))
def test_crypto_imports_kernels_at_most(path: Path) -> None:
    assert [n for n in imports_of(path) if ours(n) not in (None, "crypto", "kernels")] == []


@pytest.mark.parametrize("path", sources("crypto"), ids=ids(sources("crypto")))
def test_only_the_primitives_layer_touches_the_crypto_libraries(path: Path) -> None:
    if "_primitives" in path.parts:
        return
    touched = [n for n in imports_of(path) if n.split(".")[0] in CRYPTO_LIBRARIES]
    assert touched == [], f"{path.name} imports {touched}: go through crypto._primitives"


@pytest.mark.parametrize("path", sources("attest"), ids=ids(sources("attest")))
def test_attest_uses_crypto_public_api_only(path: Path) -> None:
    bad = [
        n
        for n in imports_of(path)
        if ours(n) not in (None, "attest", "crypto")
        or (ours(n) == "crypto" and any(p.startswith("_") for p in n.split(".")[2:]))
    ]
    assert bad == []


@pytest.mark.parametrize(
    "folder", ["kernels", "crypto", "attest", "appliance", "client_shim", "tests/support"]
)
def test_nothing_imports_benchmarks(folder: str) -> None:
    bench_modules = {p.stem for p in (REPO / "benchmarks").glob("*.py")} | {"harness", "suite"}
    bad = [
        f"{path.relative_to(REPO)}: {name}"
        for path in sources(folder)
        for name in imports_of(path)
        if name.split(".")[0] in bench_modules | {"benchmarks"}
    ]
    assert bad == []
