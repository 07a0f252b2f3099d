"""``sealagg-demo`` end to end: real appliance and client processes on loopback.

Three small federations (4 clients, 3 rounds) run here: secagg+, plaintext with the same
seed, and secagg+ with a client that vanishes mid-protocol; and a ckks one (3 data owners and
the key holder, 2 rounds). Together they take about a minute and a half on a 2-core machine.
Every client enrolled: its keys were made in its own folder, the authority signed the roster
and countersigned the kits, and the appliance never held a client's private key.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

pytest.importorskip("torch")
pytest.importorskip("sklearn")

from sealagg.appliance.kit import load_kit
from sealagg.client_shim.demo.cli import main
from sealagg.client_shim.demo.client import PHASES
from sealagg.client_shim.demo.config import KEY_HOLDER, DemoConfig
from sealagg.client_shim.demo.data import dirichlet_shards, load_split
from sealagg.client_shim.demo.provision import demo_settings
from sealagg.client_shim.demo.report import render_report
from sealagg.client_shim.demo.results import DemoResult
from sealagg.client_shim.demo.runner import run_demo
from sealagg.client_shim.demo.toml_edit import set_keys

SMALL = {"clients": 4, "rounds": 3, "seed": 0, "timeout": 120.0}
MASKED_INPUT = PHASES.index("masked_input")


def _run(tmp_path: Path, **overrides) -> tuple[DemoResult, str]:
    out = io.StringIO()
    console = Console(file=out, width=140, highlight=False)
    config = DemoConfig(**{**SMALL, **overrides}, folder=tmp_path / "federation")
    result = run_demo(config, console)
    render_report(result, console)
    return result, out.getvalue()


def _explain(result: DemoResult, text: str) -> str:
    logs = result.folder / "demo" / "logs" if result.folder else None
    return f"problems: {result.problems}\nlogs: {logs}\n{text}"


@pytest.fixture(scope="module")
def secagg_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, str]:
    return _run(tmp_path_factory.mktemp("secagg"), mode="secagg+")


def test_secagg_plus_publishes_every_round_and_learns(secagg_run):
    result, text = secagg_run
    assert result.ok, _explain(result, text)
    assert [r.number for r in result.published] == [1, 2, 3]
    assert all(len(r.contributors) == 4 for r in result.published), _explain(result, text)
    accuracies = [r.accuracy for r in result.published]
    assert result.final_accuracy is not None and result.final_accuracy >= 0.85, accuracies
    assert result.base_accuracy is not None and result.final_accuracy > result.base_accuracy + 0.5
    assert result.centralized_accuracy is not None and result.centralized_accuracy >= 0.9
    assert result.audit_ok
    assert "audit verify: OK" in text
    _assert_enrolled(result, [f"client{i}" for i in range(4)])
    # Every client reported the masked protocol's bytes for every round (about d·4 bytes).
    assert set(result.bytes_sent) == {f"client{i}" for i in range(4)}
    for per_round in result.bytes_sent.values():
        assert sorted(per_round) == [1, 2, 3]
        assert all(v is not None and 4 * 4810 < v < 8 * 4810 for v in per_round.values())


def _assert_enrolled(result: DemoResult, names: list[str]) -> None:
    """The demo's clients hold enrolled, authority-countersigned kits, and none of their
    private keys is anywhere in the federation (appliance) folder."""
    assert result.folder is not None
    federation_files = [p for p in (result.folder / "federation").rglob("*") if p.is_file()]
    for name in names:
        kit = load_kit(result.folder / "clients" / name)
        assert kit.enrolled and kit.authority_signed and kit.authority_public_key is not None
        secrets = (kit.identity_seed, kit.client_key_pem)
        for path in federation_files:
            data = path.read_bytes()
            assert not any(secret in data for secret in secrets), path


def test_plaintext_and_secagg_plus_reach_the_same_accuracy(secagg_run, tmp_path):
    masked, _ = secagg_run
    plain, text = _run(tmp_path, mode="plaintext")
    assert plain.ok, _explain(plain, text)
    assert len(plain.published) == 3
    assert masked.final_accuracy is not None and plain.final_accuracy is not None
    assert abs(masked.final_accuracy - plain.final_accuracy) <= 0.02, (
        masked.final_accuracy,
        plain.final_accuracy,
    )


def test_a_client_vanishing_mid_protocol_does_not_stop_the_rounds(tmp_path):
    # client1 sends its keys and shares in round 2, then its process exits instead of sending
    # the masked input; the round goes on without it at once (its presence stream closed: no
    # deadline is waited out); the process is started again and takes part in round 3. With
    # no planned dropout rate a round opens only with all four clients ready, so round 3 waits
    # for the restart (with --dropout it would go on with the three that are there).
    plan = {2: {"client1": MASKED_INPUT}}
    result, text = _run(tmp_path, mode="secagg+", dropout=0.0, vanish_plan=plan)
    assert result.ok, _explain(result, text)
    assert [r.number for r in result.published] == [1, 2, 3], _explain(result, text)
    assert result.vanished == [("client1", 2, "masked_input")]  # round 2, that phase
    second = result.rounds[1]
    assert second.late == {"masked_input": ["client1"]}
    assert "client1" in second.dropped and len(second.contributors) == 3
    assert result.bytes_sent["client1"][2] is None
    assert result.bytes_sent["client1"][3], "the restarted client did not rejoin"
    assert len(result.rounds[2].contributors) == 4
    assert result.final_accuracy is not None and result.final_accuracy >= 0.85
    assert result.audit_ok


def test_shards_are_non_iid_disjoint_and_cover_the_training_set():
    split = load_split(0)
    shards = dirichlet_shards(split.y_train, 5, alpha=0.5, seed=0)
    joined = np.concatenate(shards)
    assert len(joined) == len(split.y_train) == len(np.unique(joined))
    assert min(len(s) for s in shards) >= 20
    # Label-skewed: some client holds at most a few examples of some digit.
    counts = np.array([np.bincount(split.y_train[s], minlength=10) for s in shards])
    assert counts.min() <= 3
    again = dirichlet_shards(split.y_train, 5, alpha=0.5, seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(shards, again, strict=True))


def test_dropout_the_rounds_cannot_survive_is_refused_before_starting():
    with pytest.raises(ValueError, match="at most 1 may vanish"):
        DemoConfig(clients=4, dropout=0.5).plan()
    plan = DemoConfig(clients=5, rounds=4, dropout=0.2, seed=3).plan()
    assert sorted(plan) == [1, 2, 3, 4]
    assert all(len(who) == 1 for who in plan.values())
    assert all(0 <= phase < len(PHASES) for who in plan.values() for phase in who.values())
    assert DemoConfig(clients=5, dropout=0.2).min_clients() == 4
    # A round of 3 with its planned vanisher would leave 2, below the quorum of 3: the round
    # waits for the fourth (vanished clients are noticed at once, so without this the next
    # round would open before the restarted process is back and abort).
    assert DemoConfig(clients=4, dropout=0.25).min_clients() == 4
    # 10 clients, 3 vanish a round: 8 members leave 5, the quorum of a round of 8 under c = 1
    # (2(q - c) > n - c); 7 members would leave 4 of the 5 needed.
    config = DemoConfig(clients=10, dropout=0.3)
    assert config.min_clients() == 8
    assert config.minimum_survivors(8) == 5 and config.minimum_survivors(7) == 5


def test_cli_refuses_a_dropout_the_rounds_cannot_survive(tmp_path):
    out, err = io.StringIO(), io.StringIO()
    folder = tmp_path / "never-created"
    code = main(["--clients", "4", "--dropout", "0.5", "--folder", str(folder)], out, err)
    assert code == 1
    assert "at most 1 may vanish" in err.getvalue()
    assert not folder.exists()


def test_cli_options_reach_the_config():
    from sealagg.client_shim.demo.cli import build_parser

    args = build_parser().parse_args(["--clients", "7", "--mode", "ckks", "--dp", "-f", "x"])
    assert (args.clients, args.mode, args.dp, args.folder) == (7, "ckks", True, Path("x"))
    assert build_parser().parse_args(["--no-dp"]).dp is False
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--clients", "2"])


def test_config_edit_keeps_what_init_wrote_and_sets_only_the_demo_keys():
    text = (
        '# written by init\n\n[federation]\nname = "x"\n\n[aggregation]\n'
        '# a comment init wrote\nmode = "secagg+"\nmin_clients = 3\n\n'
        "[deadlines]\nshare_keys = 60\n"
    )
    edited = set_keys(
        text,
        {
            "aggregation": {"mode": "plaintext", "rounds": 2, "clip": 2.0},
            "deadlines": {"share_keys": 5.0},
            "optimizer": {"name": "fedavg", "server_lr": 1.0},
        },
    )
    import tomllib

    parsed = tomllib.loads(edited)
    assert parsed["federation"] == {"name": "x"}
    assert parsed["aggregation"] == {
        "mode": "plaintext",
        "min_clients": 3,
        "rounds": 2,
        "clip": 2.0,
    }
    assert parsed["deadlines"] == {"share_keys": 5.0}
    assert parsed["optimizer"] == {"name": "fedavg", "server_lr": 1.0}
    assert "# a comment init wrote" in edited and edited.startswith("# written by init")


def test_ckks_config_names_a_key_holder_and_counts_it_as_a_client():
    ckks = DemoConfig(clients=3, mode="ckks")
    assert ckks.key_holder == KEY_HOLDER
    assert ckks.process_names == ["client0", "client1", "client2", KEY_HOLDER]
    settings = demo_settings(ckks)
    assert settings["ckks"] == {"key_holder": KEY_HOLDER}
    # The key holder must be ready too: 3 data owners (the appliance's m) plus it.
    assert settings["aggregation"]["min_clients"] == settings["aggregation"]["max_clients"] == 4
    for mode in ("plaintext", "secagg", "secagg+"):  # the other modes are unchanged
        other = DemoConfig(clients=3, mode=mode)
        assert other.key_holder is None and other.process_names == other.client_names
        assert "ckks" not in demo_settings(other)
        assert demo_settings(other)["aggregation"]["max_clients"] == 3


def test_ckks_publishes_with_a_key_holder_that_sends_no_update(tmp_path):
    result, text = _run(tmp_path, mode="ckks", clients=3, rounds=2)
    assert result.ok, _explain(result, text)
    assert [r.number for r in result.published] == [1, 2], _explain(result, text)
    # The key holder is no contributor: the sums cover the three data owners only.
    owners = ["client0", "client1", "client2"]
    assert all(sorted(r.contributors) == owners for r in result.published)
    assert result.final_accuracy is not None and result.final_accuracy >= 0.85
    assert f"{KEY_HOLDER} (key holder)" in text
    assert KEY_HOLDER not in result.shard_sizes
    assert result.audit_ok
    _assert_enrolled(result, [*owners, KEY_HOLDER])
