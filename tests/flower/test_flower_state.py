"""The mod's sealed round state: refused for another round or node, or when tampered with.

``tests/flower/apps/state_app.py`` runs in .venv-flower with a temporary ``FLWR_HOME`` and
drives ``sealagg_mod`` with Flower messages, each with a context rebuilt from its protobuf
form (what the deployment runtime hands a fresh ClientApp process). A missing environment is
a failure that says how to make it, never a skip.
"""

from __future__ import annotations

import pytest
from sealagg_testkit.flower_env import REPO, run_flower_script


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    app = REPO / "tests" / "flower" / "apps" / "state_app.py"
    return run_flower_script(app, tmp_path_factory.mktemp("state"), timeout=120)


def test_the_offer_leaves_only_sealed_state_in_the_context(report: dict) -> None:
    assert report["offer_answered_with_keys"] is True
    assert report["record_after_offer"] == ["client", "offer"]


def test_a_state_for_another_round_is_refused_and_the_round_dropped(report: dict) -> None:
    assert report["other_round"] == (
        "refused: ReplayedMessageError: the sealed client state belongs to another round"
    )
    assert report["after_other_round"].startswith(
        "refused: OutOfPhaseError: sealagg: no round in progress for node 3 in its context"
    )


def test_another_nodes_or_a_tampered_state_is_refused(report: dict) -> None:
    failed = "refused: DecryptionError: ciphertext failed authentication"
    assert report["other_node"] == failed
    assert report["tampered"] == failed
    assert report["record_after_tamper"] == ["ledger"]  # the round's secrets are gone


def test_the_sealing_key_is_a_private_file_of_the_node(report: dict) -> None:
    assert (report["key_mode"], report["key_dir_mode"], report["key_size"]) == (
        "0o600",
        "0o700",
        32,
    )
