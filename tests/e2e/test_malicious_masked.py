"""Issue 17, items 3 and 6, through the real shim and appliance (mutual TLS on loopback).

* A client whose signed sealed shares do not open is blamed by every recipient with the
  signed evidence; the appliance checks each blame, excludes the client, audits
  ``client_excluded`` and publishes the exact mean of the rest. Before the fix every
  recipient aborted (DecryptionError) and nobody was blamed
  (tests/crypto/test_transcript_attacks.py runs the same attack on the protocol classes).
* The exclusion is durable: after an appliance restart the proven client is left out of
  member selection (while it polls) until an operator runs ``sealagg clients readmit``
  (audited ``client_readmitted``); then it is selected again.
* The shim's durable transcript ledger refuses a replayed transcript and a reused round
  id, across instances (a restart), and counts revealed rounds that never finished.
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from sealagg_testkit.clients import (
    FAST,
    expected_bias_and_weight,
    join,
    published_flat,
    run_clients,
)
from typer.testing import CliRunner

import sealagg.crypto.client as crypto_client
from sealagg.appliance.cli import app as cli
from sealagg.appliance.federation import FederationFolder
from sealagg.appliance.server import open_store
from sealagg.client_shim.connection import Connection
from sealagg.client_shim.session import Participant
from sealagg.client_shim.transcript_ledger import FileTranscriptLedger
from sealagg.crypto.errors import (
    MalformedMessageError,
    RevealBudgetError,
    TranscriptReusedError,
)
from sealagg.crypto.ledger import MAX_UNFINISHED_REVEALS, REVEAL_COOLDOWN_SECONDS

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]
ATTACKER_THREAD = "4"  # client4's thread (sealagg_testkit names threads by client number)


def _corrupt_client4(monkeypatch, masked_input_delay: float, early: bool) -> None:
    """client4 signs sealed shares that open for nobody; its masked input goes out after
    ``masked_input_delay`` s (late: after the blames) or, with ``early``, the honest
    clients' go out after it."""
    honest_seal, honest_masks = crypto_client.seal, crypto_client.apply_masks

    def seal(key, plaintext, associated_data):
        if threading.current_thread().name == ATTACKER_THREAD:
            return honest_seal(os.urandom(32), plaintext, associated_data)  # opens for no one
        return honest_seal(key, plaintext, associated_data)

    def apply_masks(target, masks, *rest):
        attacker = threading.current_thread().name == ATTACKER_THREAD
        if attacker != early:
            time.sleep(masked_input_delay)
        return honest_masks(target, masks, *rest)

    monkeypatch.setattr(crypto_client, "seal", seal)
    monkeypatch.setattr(crypto_client, "apply_masks", apply_masks)


def _round_with_attacker(deployment, running):
    dep = deployment(clients=5)
    dep.configure(aggregation={"mode": "secagg+", "min_clients": 5, "rounds": 1}, deadlines=FAST)
    app = running(dep.folder)
    threads, _, errors = run_clients(dep, [f"client{i}" for i in range(5)])
    app.wait(60)
    join(threads)
    store = open_store(FederationFolder.load(dep.folder))
    try:
        excluded = [e.details for e in store.audit.entries() if e.event == "client_excluded"]
    finally:
        store.close()
    return dep, app.app.orchestrator.history[-1], errors, excluded


HONEST = {f"client{i}" for i in range(4)}


def test_garbage_shares_get_their_sender_excluded_and_audited(deployment, running, monkeypatch):
    """Every recipient blames client4 with its signed share; the appliance checks each blame,
    excludes client4 before its masked input arrives, audits it, and publishes the exact mean
    of the four honest clients."""
    _corrupt_client4(monkeypatch, 1.0, early=False)
    dep, outcome, errors, excluded = _round_with_attacker(deployment, running)
    assert outcome.outcome == "published", outcome
    assert not HONEST & set(errors), errors  # no honest client aborted
    assert set(outcome.contributors) == HONEST
    version, flat, _ = published_flat(dep)
    assert version == 2
    np.testing.assert_allclose(flat, expected_bias_and_weight([0, 1, 2, 3]), atol=2e-6)
    assert {d["client"] for d in excluded} == {"client4"}
    assert {d["blamed_by"] for d in excluded} == HONEST
    assert all("does not decrypt" in d["reason"] for d in excluded)


def test_garbage_sender_whose_masked_input_came_first_aborts_the_round_cleanly(
    deployment, running, monkeypatch
):
    """The residual case: client4's masked input is in the running sum before the blames,
    so it cannot be taken out, and nobody holds a share of its self-mask seed. The round
    aborts (no sum is released, never a wrong one); client4 is still excluded and audited."""
    _corrupt_client4(monkeypatch, 1.0, early=True)
    dep, outcome, _, excluded = _round_with_attacker(deployment, running)
    assert outcome.outcome == "aborted", outcome
    assert "shares for client 5" in outcome.reason  # client4 is round index 5
    assert published_flat(dep)[0] == 1
    assert {d["client"] for d in excluded} == {"client4"}


def test_file_ledger_refuses_a_replayed_transcript_and_a_reused_round_id(tmp_path):
    path = tmp_path / "kit.sealagg.transcripts"
    FileTranscriptLedger(path).claim(b"r" * 32, b"h" * 32)
    restarted = FileTranscriptLedger(path)  # a new process reads the same file
    with pytest.raises(TranscriptReusedError, match="this round transcript"):
        restarted.claim(b"s" * 32, b"h" * 32)
    with pytest.raises(TranscriptReusedError, match="round id"):
        restarted.claim(b"r" * 32, b"g" * 32)
    restarted.claim(b"s" * 32, b"g" * 32)
    assert path.read_text().count("\n") == 2  # refusals write nothing
    path.write_text(path.read_text() + "damaged\n")
    with pytest.raises(MalformedMessageError, match="line 3"):
        restarted.claim(b"t" * 32, b"f" * 32)


def _audit(dep, event):
    store = open_store(FederationFolder.load(dep.folder))
    try:
        return [e.details for e in store.audit.entries() if e.event == event], dict(
            store.excluded_participants()
        )
    finally:
        store.close()


def _round_with_poller(dep, running, honest, poller):
    """A restarted appliance, ``poller`` polling first (ready, never forced), then ``honest``."""
    app = running(dep.folder)
    conn = Connection(dep.kits[poller], address=dep.address, timeout=10.0, retry_seconds=30)
    participant = Participant(conn, poll_seconds=0.5)
    polled = threading.Event()

    def poll() -> None:
        try:
            polled.set()
            participant.run_round(lambda start, tensors: (np.zeros(0), 1.0, {}))
        except Exception:  # the connection is closed under it at the end
            pass

    threading.Thread(target=poll, daemon=True).start()
    polled.wait(5)
    time.sleep(1.0)  # the poller is ready before anyone else
    threads, _, errors = run_clients(dep, sorted(honest))
    app.wait(60)
    join(threads)
    conn.close()
    return app.app.orchestrator.history[-1], errors


def test_a_proven_sender_stays_excluded_across_a_restart_until_readmitted(
    deployment, running, monkeypatch
):
    """Round 1: client4 sends garbage shares and is excluded on proven blames. The appliance
    restarts; client4 (honest now) polls first, yet round 2 selects only the other four.
    `sealagg clients readmit client4` (audited) and another restart: round 3 selects it."""
    _corrupt_client4(monkeypatch, 1.0, early=False)
    dep, outcome, _, excluded = _round_with_attacker(deployment, running)
    assert outcome.outcome == "published" and {d["client"] for d in excluded} == {"client4"}
    assert all(d["round"] == 1 for d in excluded)
    monkeypatch.undo()  # client4 behaves from now on

    dep.configure(aggregation={"min_clients": 4})
    _, durable = _audit(dep, "client_excluded")
    assert set(durable) == {"client4"} and durable["client4"].round == 1
    outcome, errors = _round_with_poller(dep, running, HONEST, "client4")
    assert outcome.outcome == "published", outcome
    assert set(outcome.contributors) == HONEST and not errors
    participants, _ = _audit(dep, "participants")
    assert "client4" not in participants[-1]["clients"]

    listed = CliRunner().invoke(cli, ["clients", "-f", str(dep.folder)])
    assert listed.exit_code == 0 and "excluded" in listed.output, listed.output
    result = CliRunner().invoke(cli, ["clients", "readmit", "client4", "-f", str(dep.folder)])
    assert result.exit_code == 0, result.output
    readmitted, durable = _audit(dep, "client_readmitted")
    assert durable == {} and readmitted[-1]["client"] == "client4"
    assert readmitted[-1]["excluded_in_round"] == 1
    again = CliRunner().invoke(cli, ["clients", "readmit", "client4", "-f", str(dep.folder)])
    assert again.exit_code != 0 and "not excluded" in again.output

    dep.configure(aggregation={"min_clients": 5})
    app = running(dep.folder)
    threads, _, errors = run_clients(dep, [f"client{i}" for i in range(5)])
    app.wait(60)
    join(threads)
    assert not errors, errors
    outcome = app.app.orchestrator.history[-1]
    assert outcome.outcome == "published" and "client4" in outcome.contributors


def test_file_ledger_counts_revealed_rounds_that_never_finish(tmp_path):
    """An appliance that aborts after seeing the graph (a withheld coin, a stalled phase)
    gets a fresh draw each time: after MAX_UNFINISHED_REVEALS claims in a row that never
    finished, the client takes part again only after the cooldown, or once a round
    finishes; the count survives a restart (a new instance on the same file)."""
    now = [1000.0]
    path = tmp_path / "kit.sealagg.transcripts"
    ledger = FileTranscriptLedger(path, clock=lambda: now[0])
    for i in range(MAX_UNFINISHED_REVEALS):
        ledger.claim(bytes([i]) * 32, bytes([100 + i]) * 32)
    restarted = FileTranscriptLedger(path, clock=lambda: now[0])
    with pytest.raises(RevealBudgetError, match="never finished"):
        restarted.claim(b"x" * 32, b"y" * 32)
    now[0] += REVEAL_COOLDOWN_SECONDS
    restarted.claim(b"x" * 32, b"y" * 32)  # one more after the cooldown
    with pytest.raises(RevealBudgetError):
        restarted.claim(b"z" * 32, b"w" * 32)
    restarted.finish(b"x" * 32)
    restarted.claim(b"z" * 32, b"w" * 32)  # a finished round resets the count
