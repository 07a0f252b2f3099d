"""What the federation recorded, read as an auditor would: through the ``sealagg`` CLI.

``sealagg audit export`` writes the signed audit log as JSON lines and ``sealagg audit verify
--file`` checks that export against the federation's audit public key; every round's
outcome, late clients, aggregate and masking parameters are then read from the verified
entries. ``sealagg model export`` writes the model versions to evaluate as safetensors.
"""

from __future__ import annotations

import dataclasses
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from sealagg.client_shim.demo.commands import SealaggCommandError, run_sealagg, run_sealagg_each

#: Audit events that set a round's status, and those that set a model version's status.
ROUND_STATUS_EVENTS = ("round_status", "round_aborted")
MODEL_STATUS_EVENTS = ("model_added", "model_published", "model_status")


@dataclasses.dataclass
class AuditedRound:
    """One round as the audit log tells it."""

    number: int
    status: str = "open"
    reason: str | None = None
    opened_at: str | None = None
    closed_at: str | None = None
    #: The model version the round produced (None: it produced none).
    model_version: int | None = None
    contributors: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)
    #: phase -> clients that missed its deadline
    late: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: The audited masking parameters (degree 0 = complete graph, threshold, n, note).
    masking: dict[str, Any] | None = None

    @property
    def seconds(self) -> float | None:
        if not self.opened_at or not self.closed_at:
            return None
        try:
            opened = datetime.fromisoformat(self.opened_at)
            closed = datetime.fromisoformat(self.closed_at)
        except ValueError:
            return None
        return (closed - opened).total_seconds()


@dataclasses.dataclass
class FederationRecord:
    """The rounds and model versions of the verified audit log."""

    rounds: list[AuditedRound]
    #: version -> its latest status ("accepted", "candidate", "rejected", ...)
    model_status: dict[int, str]
    #: The base model: the first version with neither parent nor round.
    base_version: int | None


def read_entries(path: Path) -> list[dict[str, Any]]:
    """The entries of an audit export, without its signed-head trailer."""
    entries = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            entry = json.loads(line)
            if "event" in entry:
                entries.append(entry)
    return entries


def summarize(entries: list[dict[str, Any]]) -> FederationRecord:
    """Replay the audit entries into rounds and model statuses."""
    rounds: dict[int, AuditedRound] = {}
    model_status: dict[int, str] = {}
    base_version: int | None = None

    def round_of(details: dict[str, Any]) -> AuditedRound | None:
        number = details.get("round")
        return rounds.setdefault(number, AuditedRound(number)) if isinstance(number, int) else None

    for entry in entries:
        event, details, at = entry["event"], entry.get("details") or {}, entry.get("time")
        if event in MODEL_STATUS_EVENTS and isinstance(details.get("version"), int):
            model_status[details["version"]] = str(details.get("status"))
        if event == "model_added":
            if details.get("round") is None and details.get("parent") is None:
                base_version = base_version or details["version"]
            elif (rnd := round_of(details)) is not None:
                rnd.model_version = details["version"]
            continue
        if event == "round_opened" and (rnd := round_of(details)) is not None:
            rnd.opened_at = at
        elif event in ROUND_STATUS_EVENTS and (rnd := round_of(details)) is not None:
            rnd.status = str(details.get("status", "aborted"))
            rnd.reason = details.get("reason")
            rnd.closed_at = at
        elif event == "phase_recorded" and (rnd := round_of(details)) is not None:
            if details.get("dropped"):
                rnd.late[str(details["phase"])] = [str(d) for d in details["dropped"]]
        elif event == "aggregate" and (rnd := round_of(details)) is not None:
            rnd.contributors = list(details.get("contributors", []))
            rnd.dropped = list(details.get("dropped", []))
        elif event == "round_parameters" and (rnd := round_of(details)) is not None:
            rnd.masking = details
    return FederationRecord(
        rounds=[rounds[n] for n in sorted(rounds)],
        model_status=model_status,
        base_version=base_version,
    )


def export_audit(federation: Path, work: Path) -> tuple[list[dict[str, Any]], bool, str]:
    """(entries, verified, detail): the exported log and what verifying it said."""
    path = work / "audit.jsonl"
    run_sealagg("audit", "export", str(path), federation=federation, cwd=work)
    try:
        said = run_sealagg("audit", "verify", "--file", str(path), federation=federation, cwd=work)
    except SealaggCommandError as error:
        return read_entries(path), False, str(error)
    verified = said.lstrip().startswith("audit verify: OK")
    # "audit verify: OK (35 entries, head <64 hex>)" -> "35 entries, head 0ceb05dd853e8b8d…"
    detail = said.strip().removeprefix("audit verify:").strip().removeprefix("OK").strip(" ()")
    detail = re.sub(r"\b([0-9a-f]{16})[0-9a-f]{48}\b", r"\1…", detail)
    return read_entries(path), verified, f"exported log: {detail}" if verified else detail


def export_models(federation: Path, versions: list[int], work: Path) -> dict[int, Path]:
    """Each model version as a safetensors file in ``work/models``."""
    folder = work / "models"
    folder.mkdir(exist_ok=True)
    files = {v: folder / f"v{v}.safetensors" for v in versions}
    run_sealagg_each(
        [("model", "export", str(v), "--out", str(out), "--force") for v, out in files.items()],
        federation=federation,
        cwd=work,
    )
    return files
