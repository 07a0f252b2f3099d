"""sealagg.flower's knobs (Flower's names), the client's own offer check, the Flower API pin and
the package's layering.

The Flower side runs in .venv-flower (scripts/flower_env.sh; Flower 1.42 pins protobuf < 7,
so it cannot live in .venv): the test runs ``tests/flower/apps/knobs_app.py`` there and reads
its JSON. A missing environment is a failure that says how to make it, never a skip.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from sealagg_testkit.flower_env import REPO, run_flower_script


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    app = REPO / "tests" / "flower" / "apps" / "knobs_app.py"
    return run_flower_script(app, tmp_path_factory.mktemp("knobs"), timeout=120)


def test_the_flower_api_sealagg_uses_is_the_pinned_one(report: dict) -> None:
    assert report["api"] == "ok", report["api"]


def test_the_extra_pins_the_flower_version_the_code_checks() -> None:
    import tomllib

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["flower"] == ["flwr[simulation]==1.42.0"]
    lock = (REPO / "requirements" / "lock-flower.txt").read_text()
    assert "\nflwr==1.42.0 " in lock
    api = (REPO / "flower" / "api.py").read_text()
    assert 'FLOWER_VERSION = "1.42.0"' in api


def test_accepted_knobs_map_to_the_finder_and_flower_semantics(report: dict) -> None:
    cases = report["cases"]
    # Defaults: the finder's choice for n=10 (complete graph, t=2, majority quorum).
    assert cases["defaults_n10"] == {
        "ok": True, "degree": 9, "threshold": 2, "minimum_survivors": 6,
    }  # fmt: skip
    # Flower's num_shares counts the client itself: num_shares=n is the complete graph.
    assert cases["flower_style_n10"] == {
        "ok": True, "degree": 9, "threshold": 4, "minimum_survivors": 6,
    }  # fmt: skip
    # Floats: fractions of the clients and of num_shares, as in Flower.
    assert cases["fraction_shares_n10"] == {
        "ok": True, "degree": 9, "threshold": 5, "minimum_survivors": 6,
    }  # fmt: skip


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("threshold_1", "a threshold below 2 is no secret sharing"),
        ("threshold_above_shares", "exceeds the 9 shares a client hands to its neighbours"),
        ("sparse_too_weak_n10", "the federation policy refuses: sparse graph k=4, t=2"),
        ("modulus_2_16", "sealagg masks in Z_(2^32) only"),
        ("no_timeout", "every stage needs a finite deadline"),
        ("quantization_wraps_n10", "before the sum wraps Z_(2^32)"),
        ("two_clients", "a masked sum needs at least 3"),
        ("shares_without_threshold", "num_shares and reconstruction_threshold go together"),
        ("finder_refuses_colluders", "sealagg's parameter finder refuses: 5 clients cannot"),
    ],
)
def test_refused_knob_combinations_say_why(report: dict, case: str, reason: str) -> None:
    assert report["cases"][case]["ok"] is False
    assert reason in report["cases"][case]["reason"]


def test_the_workflow_constructor_refuses_static_knobs(report: dict) -> None:
    assert "sealagg masks in Z_(2^32) only" in report["workflow_refuses_modulus"]


def test_a_client_refuses_an_offer_its_policy_refuses(report: dict) -> None:
    offers = report["offers"]
    assert offers["honest"] == "accepted"
    assert offers["low_quorum"].startswith("refused: quorum 3 of n=10")
    assert "allows equivocation" in offers["low_quorum"]
    assert offers["small_quantization"] == (
        "refused: quantization sized for 5 clients, the round has 10: the sum would wrap"
    )


def test_the_mod_refuses_by_name_and_passes_other_messages_through(report: dict) -> None:
    mod = report["mod"]
    assert mod["evaluate_passes_through"] == "passed through"
    assert mod["train_without_sealagg_passes_through"] == "passed through"
    assert mod["calls_passed_to_the_clientapp"] == 2
    assert mod["protocol_without_round"].startswith(
        "refused: OutOfPhaseError: sealagg: no round in progress for node 3 in its context"
    )
    assert mod["identify_returns_a_verify_key"] is True
    assert mod["weak_offer"].startswith("refused: PolicyRefusedError: quorum 3 of n=10")
    assert mod["after_refusal"].startswith("refused: OutOfPhaseError: sealagg: no round")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_sealagg_flower_builds_on_crypto_and_kernels_only() -> None:
    """The appliance's and the shim's gRPC stubs need protobuf 7, which Flower forbids."""
    files = sorted((REPO / "flower").rglob("*.py"))
    assert files
    ours = {
        name.split(".")[1]
        for path in files
        for name in _imports(path)
        if name.startswith("sealagg.")
    }
    assert ours <= {"crypto", "kernels", "flower"}, ours
    private = [name for path in files for name in _imports(path) if "._primitives" in name]
    assert private == [], "crypto's primitives are crypto's own"
