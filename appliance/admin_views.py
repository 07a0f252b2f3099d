"""Read-only admin views: the one source of every page, every ``Query`` reply and every list
the Python admin API returns.

Why one module: the console, the gRPC ``Admin.Query`` handler and the CLI must show the same
facts, and must hide the same facts. What a mode hides (in ``secagg``, ``secagg+`` and ``ckks``
the appliance never holds one client's update, so it must not look as if it did) is decided
here once, not per front-end. Views only read: the store through read queries, the federation
folder's public files, the orchestrator's in-memory snapshot. No view writes, and none returns
key material (audit payload values whose key looks secret are replaced, see "audit").

``AdminViews(...).view(name, args)`` returns JSON-safe data (dicts, lists, str, int, float,
bool, None). Times are ISO-8601 UTC strings as the store keeps them. An unknown view name or
bad arguments raise :class:`ViewError` (a ``ValueError``) whose message says what is allowed.

Views and their keys
====================

``federation`` (no args) -> dict
    name, mode, policy {colluders, minimum_sum, allowed_modes [str], security_bits} (the
    governing policy: the authority's signed one, else the configuration's), colluders (``c``)
    and minimum_survivors (``m``) (int | None: set in the masked modes, where they bind), threshold
    (int | None: t of the latest masked round), neighbours (int | None: each client's
    neighbours k in it; n - 1 for the complete graph),
    min_clients, require_approval, approvals_required, dp_mode ("none" | "client" | ...),
    attestation (str: the configured provider, "none" by default),
    server_certificate {subject, not_after, days_left}, ca_certificate {subject, not_after,
    days_left}, roster {installed: bool, version: int | None, entries: int, signed_by: str |
    None (authority key hex), authority_pinned: bool, error?: str (an unreadable roster)},
    admins [{name, roles: [str], legacy: bool}], admin_directory_error (str | None).

``live`` (no args) -> dict
    run (dict | None: id, name, status, rounds, rounds_done, mode), model_version (int | None),
    mode, round (dict | None: number, phase, members [names], clients_in (int: members still
    in), waiting [names], waiting_count, vanished {name: reason}, vanished_count,
    deadline_seconds_left (float | None)), ready_clients [names], presence_streams (int),
    bytes_in (float), bytes_out (float), history [{...last outcomes, as orchestrator status}],
    privacy (dict: the DP controller's summary without per-client values in masked modes),
    now (ISO time).

``runs`` (no args) -> list of dict
    id, name, mode, status, rounds, rounds_done, base_model_version, created_at, created_by,
    started_at (first round's open time or None), ended_at, reason, schedule ("sync" |
    "async").

``rounds`` (args: run_id?: str, limit?: int 1..1000, default 100) -> list of dict, newest first
    number, run_id (str | None), mode, status (outcome: open/aggregating/pending_approval/
    accepted/rejected/aborted), reason, started_at, ended_at, duration_seconds (float | None),
    members (int: clients at the first phase), survivors (int: clients in at the last phase),
    bytes (int | None: not kept per round today -> None), phases [{phase, at, clients_in,
    dropped (int), seconds (float | None: until the next transition / close)}].

``clients`` (no args) -> list of dict (one per issued, non-admin client)
    name, state ("active" | "revoked" | "excluded"), ready (bool: polling now or within the
    ready window), in_round (bool: a member of the open round, not vanished), vanished
    (str | None: why it left the open round), last_seen (ISO | None: its last poll to this
    appliance process; None: not since the start), cert_serial,
    issued_at, not_after, days_left, kit_valid (bool), revoked (bool), revoked_at
    (str | None), revoke_reason (str | None), excluded (dict | None: round, reason,
    blamed_by, excluded_at), attestation (dict | None: accepted, format, reason, at -- the
    latest result). Never any update, gradient, loss or per-client metric; in masked and
    CKKS modes nothing per client beyond liveness and identity.

``versions`` (no args) -> list of dict, oldest first
    version, parent, round (int | None: source round), sha256, status
    ("accepted" | "candidate" | "pending" | "rejected"), created_at, current (bool),
    metrics (dict: the gate's aggregate metrics, e.g. accuracy, loss; {} if none).

``approvals`` (no args) -> list of dict (candidates awaiting a decision)
    round, version, metrics (dict), created_at, approvals [{admin, approve, reason, at}],
    approvals_count (int), required (int).

``privacy`` (no args) -> dict
    enabled (bool), mode, accountant, delta (float | None), target_epsilon (float | None),
    epsilon_cumulative (float | None), exhausted (str | None),
    runs [{run_id (str | None), series [{round, epsilon_round, epsilon_cumulative, at}]}],
    clients {epsilon {name: ε}, participations {name: n}, exhausted [names]} (async runs).

``attestations`` (args: limit?: int 1..1000, default 200) -> list of dict, newest first
    seq, at, client, accepted (bool), format, reason, detail, round (int | None: the round
    open when it was reported).

``audit`` (args: offset?: int >= 0 (default 0), limit?: int 1..500 (default 100)) -> dict
    total (int), offset, limit, entries [{seq, at, kind, actor (str | None), summary (dict:
    the payload with secret-looking values replaced by "[redacted]" and long values cut; for
    masked rounds per-client payloads such as ``reports`` become {"clients": [names]})}].

Besides the views: ``status()`` is the orchestrator's snapshot (``sealagg status``, Admin
Status) and ``run_records()`` every run as stored (Admin ListRuns).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from cryptography import x509

from sealagg.appliance.admins import AdminDirectory

__all__ = ["HIDING_MODES", "VIEWS", "AdminViews", "ViewError"]

VIEWS = (
    "federation",
    "live",
    "runs",
    "rounds",
    "clients",
    "versions",
    "approvals",
    "privacy",
    "attestations",
    "audit",
)
#: Modes in which the appliance never holds one client's update: no view may show anything
#: per client beyond liveness and identity (what it declared is not the front-end's to show).
HIDING_MODES = frozenset({"secagg", "secagg+", "ckks"})
MAX_AUDIT_PAGE = 500
MAX_LIST = 1000
#: Audit payload keys whose values are never passed through, whatever the entry kind.
_SECRET_KEY = re.compile(r"(secret|private|passphrase|password|token|seed|share|key$|_key_)", re.I)
_PUBLIC_KEY_NAMES = frozenset({"identity_key", "tls_spki_sha256", "public_key", "verify_key"})
_MAX_SUMMARY_CHARS = 200
#: Per-client values some audit entries carry (declared example counts, local ε, weights):
#: in a hiding mode the audit view keeps only who, not how much.
_PER_CLIENT_PAYLOADS = frozenset({"reports", "contribution_weights", "scores", "weights"})


class ViewError(ValueError):
    """An unknown view or bad view arguments; the message says what is allowed."""


class AdminViews:
    """Every read-only admin view over one appliance's state (see the module docstring).

    ``orchestrator``: the live one (``status()``, ``runs``, ``config``, ``privacy``);
    ``store``: its state database; ``federation``: the loaded federation folder (certificates,
    client records, roster; None: those fields are left empty); ``admins``: the live
    administrator directory (``DirectoryWatch.current``; None: only the legacy ``admin``).
    """

    def __init__(
        self,
        orchestrator: Any,
        store: Any,
        federation: Any = None,
        *,
        admins: Callable[[], AdminDirectory] | None = None,
    ) -> None:
        self._orch = orchestrator
        self._store = store
        self._federation = federation
        self._admins = admins
        self._views: dict[str, Callable[[Mapping[str, object]], dict | list]] = {
            "federation": self._federation_view,
            "live": self._live,
            "runs": self._runs,
            "rounds": self._rounds,
            "clients": self._clients,
            "versions": self._versions,
            "approvals": self._approvals,
            "privacy": self._privacy,
            "attestations": self._attestations,
            "audit": self._audit,
        }

    @property
    def mode(self) -> str:
        return str(self._orch.config.aggregation.mode)

    @property
    def hides_clients(self) -> bool:
        return self.mode in HIDING_MODES

    def view(self, name: str, args: Mapping[str, object] | None = None) -> dict | list:
        """The view ``name`` with ``args``; raises :class:`ViewError` for anything else."""
        if not isinstance(name, str) or name not in self._views:
            raise ViewError(f"unknown view {str(name)[:64]!r}; views: {', '.join(VIEWS)}")
        if args is None:
            args = {}
        if not isinstance(args, Mapping):
            raise ViewError(f"the arguments of view {name!r} must be a JSON object")
        return self._views[name](args)

    def status(self) -> dict:
        """The orchestrator's status snapshot, as ``sealagg status`` has always shown it."""
        return self._orch.status()

    def run_records(self) -> list[dict]:
        """Every run as ``Run.as_dict`` (what ListRuns has always answered)."""
        return [run.as_dict() for run in self._orch.runs.runs()]

    # ------------------------------------------------------------------------- federation

    def _federation_view(self, args: Mapping[str, object]) -> dict:
        _no_args("federation", args)
        config = self._orch.config
        policy = self._orch.governing_policy()
        hiding = self.mode in HIDING_MODES
        threshold, neighbours = self._graph_parameters()
        federation = self._federation
        out: dict[str, Any] = {
            "name": self._store.federation().name,
            "mode": self.mode,
            "policy": {
                "colluders": policy.colluders,
                "minimum_sum": policy.minimum_sum,
                "allowed_modes": sorted(policy.allowed_modes),
                "security_bits": policy.security_bits,
            },
            "colluders": policy.colluders if hiding else None,
            "minimum_survivors": policy.minimum_sum if hiding else None,
            "threshold": threshold,
            "neighbours": neighbours,
            "min_clients": config.aggregation.min_clients,
            "require_approval": config.gates.require_approval,
            "approvals_required": config.gates.approvals_required,
            "dp_mode": config.privacy.mode,
            "attestation": str(getattr(config.attestation, "provider", "") or ""),
            "server_certificate": None,
            "ca_certificate": None,
            "roster": {
                "installed": False,
                "version": None,
                "entries": 0,
                "signed_by": None,
                "authority_pinned": False,
            },
        }
        if federation is not None:
            out["server_certificate"] = _certificate(federation.server_certificate)
            out["ca_certificate"] = _certificate(federation.ca_certificate)
            out["roster"] = self._roster(federation)
        out["admins"], out["admin_directory_error"] = self._admin_list()
        return out

    def _graph_parameters(self) -> tuple[int | None, int | None]:
        """t and k of the latest masked round (``round_parameters`` audit entry), if any."""
        if self.mode not in ("secagg", "secagg+"):
            return None, None
        with self._store.snapshot() as conn:
            row = conn.execute(
                "SELECT entry FROM audit_log WHERE event = 'round_parameters' "
                "ORDER BY seq DESC LIMIT 1"
            ).fetchone()
        details = _details(row[0]) if row else {}
        threshold, degree, n = (details.get(k) for k in ("threshold", "degree", "n"))
        if isinstance(degree, int) and degree == 0 and isinstance(n, int):
            degree = n - 1  # 0 on the wire: the complete graph
        return (
            threshold if isinstance(threshold, int) else None,
            degree if isinstance(degree, int) else None,
        )

    def _roster(self, federation: Any) -> dict:
        pinned = federation.authority_public_key
        try:
            roster = federation.roster()
        except Exception as error:  # a damaged roster is shown as such, not as none
            return {
                "installed": False,
                "version": None,
                "entries": 0,
                "signed_by": None,
                "authority_pinned": pinned is not None,
                "error": str(error)[:_MAX_SUMMARY_CHARS],
            }
        return {
            "installed": roster is not None,
            "version": getattr(roster, "version", None),
            "entries": len(getattr(roster, "entries", ()) or ()),
            "signed_by": pinned.hex() if (roster is not None and pinned) else None,
            "authority_pinned": pinned is not None,
        }

    def _directory(self) -> tuple[AdminDirectory, str | None]:
        """The directory, and why it was refused (``DirectoryWatch.error``) if it was."""
        if self._admins is None:
            return AdminDirectory(), None
        directory = self._admins()
        watch = getattr(self._admins, "__self__", None)  # DirectoryWatch.current, bound
        error = getattr(watch, "error", None)
        return directory, error if isinstance(error, str) else None

    def _admin_list(self) -> tuple[list[dict], str | None]:
        directory, error = self._directory()
        names = sorted(directory.names())
        admins = [
            {
                "name": name,
                "roles": sorted(r.value for r in directory.roles_of(name)),
                "legacy": not bool(directory.entry(name)),
            }
            for name in names
        ]
        return admins, error

    # ------------------------------------------------------------------------------- live

    def _live(self, args: Mapping[str, object]) -> dict:
        _no_args("live", args)
        status = self._orch.status()
        now = _now()
        active = status.get("round")
        round_view = None
        if active is not None:
            members = list(active.get("members", []))
            waiting = list(active.get("waiting_for", []))
            vanished = dict(active.get("vanished", {}))
            deadline = active.get("phase_deadline")
            left = None
            if isinstance(deadline, int | float):
                left = max(0.0, round(float(deadline) - self._clock(), 3))
            round_view = {
                "number": active.get("number"),
                "phase": active.get("phase"),
                "members": members,
                "clients_in": len([m for m in members if m not in vanished]),
                "waiting": waiting,
                "waiting_count": len(waiting),
                "vanished": vanished,
                "vanished_count": len(vanished),
                "deadline_seconds_left": left,
            }
        privacy = dict(status.get("privacy") or {})
        if self.hides_clients:
            for key in (
                "local_dp_epsilon",
                "epsilon_per_client",
                "participations_per_client",
                "clients_exhausted",
                "last_buffer",
            ):
                privacy.pop(key, None)
        return {
            "run": status.get("run"),
            "model_version": status.get("model_version"),
            "mode": status.get("mode"),
            "round": round_view,
            "ready_clients": list(status.get("ready_clients", [])),
            "presence_streams": status.get("presence_streams", 0),
            "bytes_in": _finite(status.get("bytes_in")),
            "bytes_out": _finite(status.get("bytes_out")),
            "history": list(status.get("history", [])),
            "privacy": privacy,
            "now": now,
        }

    def _clock(self) -> float:
        clock = getattr(self._orch, "_clock", None)
        return float(clock()) if callable(clock) else datetime.now(UTC).timestamp()

    # ------------------------------------------------------------------------------- runs

    def _runs(self, args: Mapping[str, object]) -> list:
        _no_args("runs", args)
        with self._store.snapshot() as conn:
            started = dict(
                conn.execute(
                    "SELECT runs.run_id, MIN(rounds.opened_at) FROM runs "
                    "JOIN rounds ON rounds.run = runs.id GROUP BY runs.id"
                ).fetchall()
            )
        out = []
        for run in self._orch.runs.runs():
            item = run.as_dict()
            out.append(
                {
                    "id": item["id"],
                    "name": item["name"],
                    "mode": item["mode"],
                    "status": item["status"],
                    "rounds": item["rounds"],
                    "rounds_done": item["rounds_done"],
                    "base_model_version": item["base_model_version"],
                    "created_at": item["created_at"],
                    "created_by": item["created_by"],
                    "started_at": started.get(item["id"]),
                    "ended_at": item["ended_at"],
                    "reason": item["reason"],
                    "schedule": item.get("schedule", "sync"),
                }
            )
        return out

    # ----------------------------------------------------------------------------- rounds

    def _rounds(self, args: Mapping[str, object]) -> list:
        _only_args("rounds", args, {"run_id", "limit"})
        limit = _int_arg(args, "limit", 100, 1, MAX_LIST)
        run_id = args.get("run_id")
        if run_id is not None and not isinstance(run_id, str):
            raise ViewError("rounds: run_id must be a string (e.g. 'run-1')")
        query = (
            "SELECT rounds.id, runs.run_id, rounds.mode, rounds.status, rounds.reason, "
            "rounds.opened_at, rounds.closed_at FROM rounds LEFT JOIN runs ON runs.id = rounds.run"
        )
        params: tuple[Any, ...] = ()
        if run_id is not None:
            query += " WHERE runs.run_id = ?"
            params = (run_id,)
        query += " ORDER BY rounds.id DESC LIMIT ?"
        with self._store.snapshot() as conn:
            rows = conn.execute(query, (*params, limit)).fetchall()
            numbers = [r[0] for r in rows]
            phases: dict[int, list[tuple]] = {n: [] for n in numbers}
            if numbers:  # one range query, filtered here (no SQL built from values)
                for row in conn.execute(
                    "SELECT round, phase, at, clients_in, dropped FROM phase_transitions "
                    "WHERE round BETWEEN ? AND ? ORDER BY id",
                    (min(numbers), max(numbers)),
                ):
                    if row[0] in phases:
                        phases[row[0]].append(row)
        return [_round_view(row, phases[row[0]]) for row in rows]

    # ---------------------------------------------------------------------------- clients

    def _clients(self, args: Mapping[str, object]) -> list:
        _no_args("clients", args)
        federation = self._federation
        if federation is None:
            return []
        directory, _ = self._directory()
        admins = directory.names()
        revoked_serials = federation.revocations()
        excluded = self._store.excluded_participants()
        # Not orchestrator.status(): its ready list audits roster refusals, and views only
        # read. The same facts, from the orchestrator's in-memory state.
        active = getattr(self._orch, "_round", None)
        members = set(getattr(active, "members", ()) or ())
        vanished = dict(getattr(self._orch, "_absent", {}) or {}) if active is not None else {}
        links = getattr(self._orch, "_links", {})
        window = float(self._orch.config.aggregation.ready_window)
        moment = self._clock()
        ready = {
            name
            for name, link in links.items()
            if getattr(link, "polling", 0) > 0
            or (not getattr(link, "busy", True) and moment - link.last_poll <= window)
        }
        attested = self._latest_attestations()
        participants = {p.cert_serial: p for p in self._store.participants(active_only=False)}
        now = datetime.now(UTC)
        out = []
        for record in federation.client_records():
            if record.name in admins:
                continue
            serial = format(record.serial, "x")
            revoked = bool(record.revoked or record.serial in revoked_serials)
            row = participants.get(serial)
            exclusion = excluded.get(record.name)
            link = links.get(record.name)
            last = getattr(link, "last_poll", 0.0) if link is not None else 0.0
            state = "revoked" if revoked else ("excluded" if exclusion else "active")
            days_left = (record.not_after - now).total_seconds() / 86400
            out.append(
                {
                    "name": record.name,
                    "state": state,
                    "ready": record.name in ready,
                    "in_round": record.name in members and record.name not in vanished,
                    "vanished": vanished.get(record.name),
                    "last_seen": _iso(datetime.fromtimestamp(last, UTC)) if last else None,
                    "cert_serial": serial,
                    "issued_at": _iso(record.issued_at),
                    "not_after": _iso(record.not_after),
                    "days_left": round(days_left, 2),
                    "kit_valid": not revoked and days_left > 0,
                    "revoked": revoked,
                    "revoked_at": (
                        row.revoked_at
                        if row is not None and row.revoked_at
                        else (_iso(record.revoked_at) if record.revoked_at else None)
                    ),
                    "revoke_reason": row.revoke_reason if row is not None else None,
                    "excluded": None
                    if exclusion is None
                    else {
                        "round": exclusion.round,
                        "reason": exclusion.reason,
                        "blamed_by": exclusion.blamed_by,
                        "excluded_at": exclusion.excluded_at,
                    },
                    "attestation": attested.get(record.name),
                }
            )
        return out

    def _latest_attestations(self) -> dict[str, dict]:
        latest: dict[str, dict] = {}
        for item in self._attestation_rows(MAX_LIST):  # newest first
            latest.setdefault(
                item["client"],
                {
                    "accepted": item["accepted"],
                    "format": item["format"],
                    "reason": item["reason"],
                    "at": item["at"],
                },
            )
        return latest

    # --------------------------------------------------------------------------- versions

    def _versions(self, args: Mapping[str, object]) -> list:
        _no_args("versions", args)
        current = self._store.current_model()
        return [
            {
                "version": m.version,
                "parent": m.parent,
                "round": m.round,
                "sha256": m.sha256,
                "status": m.status,
                "created_at": m.created_at,
                "current": current is not None and m.version == current.version,
                "metrics": _json_safe(m.metrics or {}),
            }
            for m in self._store.model_versions()
        ]

    # -------------------------------------------------------------------------- approvals

    def _approvals(self, args: Mapping[str, object]) -> list:
        _no_args("approvals", args)
        required = int(self._orch.config.gates.approvals_required)
        pending = [m for m in self._store.model_versions() if m.status == "pending"]
        out = []
        with self._store.snapshot() as conn:
            for model in pending:
                rows = conn.execute(
                    "SELECT admin, approve, reason, at FROM approvals WHERE round = ? "
                    "AND version = ? ORDER BY id",
                    (model.round, model.version),
                ).fetchall()
                decisions = [
                    {"admin": a, "approve": bool(ok), "reason": reason or "", "at": at}
                    for a, ok, reason, at in rows
                ]
                out.append(
                    {
                        "round": model.round,
                        "version": model.version,
                        "metrics": _json_safe(model.metrics or {}),
                        "created_at": model.created_at,
                        "approvals": decisions,
                        "approvals_count": sum(1 for d in decisions if d["approve"]),
                        "required": required,
                    }
                )
        return out

    # ---------------------------------------------------------------------------- privacy

    def _privacy(self, args: Mapping[str, object]) -> dict:
        _no_args("privacy", args)
        controller = self._orch.privacy
        summary = controller.status()
        series: dict[str | None, list[dict]] = {}
        with self._store.snapshot() as conn:
            rows = conn.execute(
                "SELECT audit_log.time, audit_log.entry FROM audit_log "
                "WHERE audit_log.event = 'privacy' ORDER BY audit_log.seq"
            ).fetchall()
            run_of = dict(
                conn.execute(
                    "SELECT rounds.id, runs.run_id FROM rounds JOIN runs ON runs.id = rounds.run"
                ).fetchall()
            )
        for at, entry in rows:
            details = _details(entry)
            number = details.get("round")
            run = run_of.get(number) if isinstance(number, int) else None
            series.setdefault(run, []).append(
                {
                    "round": number if isinstance(number, int) else None,
                    "epsilon_round": _finite(details.get("epsilon_round")),
                    "epsilon_cumulative": _finite(details.get("epsilon_cumulative")),
                    "at": at,
                }
            )
        enabled = bool(getattr(controller, "enabled", False))
        return {
            "enabled": enabled,
            "mode": summary.get("mode", "none"),
            "accountant": summary.get("accountant"),
            "delta": _finite(summary.get("delta")),
            "target_epsilon": _finite(summary.get("target_epsilon")),
            "epsilon_cumulative": _finite(summary.get("epsilon_cumulative")),
            "exhausted": summary.get("exhausted"),
            "runs": [{"run_id": run, "series": points} for run, points in series.items()],
            # Async runs (issue 21): each client's own ε, composed over the buffers it joined.
            "clients": {
                "epsilon": summary.get("epsilon_per_client") or {},
                "participations": summary.get("participations_per_client") or {},
                "exhausted": summary.get("clients_exhausted") or [],
            },
        }

    # ----------------------------------------------------------------------- attestations

    def _attestations(self, args: Mapping[str, object]) -> list:
        _only_args("attestations", args, {"limit"})
        return self._attestation_rows(_int_arg(args, "limit", 200, 1, MAX_LIST))

    def _attestation_rows(self, limit: int) -> list[dict]:
        """``attestation_result`` audit entries, newest first, each with the round open when
        it was reported (the latest round opened before it)."""
        with self._store.snapshot() as conn:
            rows = conn.execute(
                "SELECT seq, time, entry FROM audit_log WHERE event = 'attestation_result' "
                "ORDER BY seq DESC LIMIT ?",
                (limit,),
            ).fetchall()
            opened = conn.execute(
                "SELECT seq, entry FROM audit_log WHERE event = 'round_opened' ORDER BY seq"
            ).fetchall()
        starts = [(seq, _details(entry).get("round")) for seq, entry in opened]
        out = []
        for seq, at, entry in rows:
            details = _details(entry)
            number = None
            for start_seq, round_number in starts:
                if start_seq > seq:
                    break
                number = round_number if isinstance(round_number, int) else None
            out.append(
                {
                    "seq": seq,
                    "at": at,
                    "client": str(details.get("client", "")),
                    "accepted": bool(details.get("accepted", False)),
                    "format": str(details.get("format", "")),
                    "reason": str(details.get("reason", "")),
                    "detail": str(details.get("detail", ""))[:_MAX_SUMMARY_CHARS],
                    "round": number,
                }
            )
        return out

    # ------------------------------------------------------------------------------ audit

    def _audit(self, args: Mapping[str, object]) -> dict:
        _only_args("audit", args, {"offset", "limit"})
        offset = _int_arg(args, "offset", 0, 0, 2**62)
        limit = _int_arg(args, "limit", 100, 1, MAX_AUDIT_PAGE)
        with self._store.snapshot() as conn:
            total = int(conn.execute("SELECT count(*) FROM audit_log").fetchone()[0])
            rows = conn.execute(
                "SELECT seq, time, event, entry FROM audit_log ORDER BY seq LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
            round_modes = dict(conn.execute("SELECT id, mode FROM rounds").fetchall())
        entries = []
        for seq, at, kind, entry in rows:
            details = _details(entry)
            number = details.get("round")
            mode = round_modes.get(number) if isinstance(number, int) else None
            # Hidden when the configured mode hides, or the entry's own round was masked (a
            # run may use another mode than the configuration's).
            hide = self.hides_clients or mode in HIDING_MODES
            entries.append(
                {
                    "seq": seq,
                    "at": at,
                    "kind": kind,
                    "actor": _actor(details),
                    "summary": self._summary(details, hide_clients=hide),
                }
            )
        return {"total": total, "offset": offset, "limit": limit, "entries": entries}

    def _summary(self, details: Mapping[str, Any], *, hide_clients: bool) -> dict:
        out: dict[str, Any] = {}
        for key, value in details.items():
            if _SECRET_KEY.search(key) and key not in _PUBLIC_KEY_NAMES:
                out[key] = "[redacted]"
            elif hide_clients and key in _PER_CLIENT_PAYLOADS and isinstance(value, Mapping):
                out[key] = {"clients": sorted(str(k) for k in value)}
            else:
                out[key] = _cut(value)
        return out


# ---------------------------------------------------------------------------- helpers


def _no_args(view: str, args: Mapping[str, object]) -> None:
    _only_args(view, args, set())


def _only_args(view: str, args: Mapping[str, object], allowed: set[str]) -> None:
    unknown = sorted(str(k) for k in args if k not in allowed)
    if unknown:
        takes = ", ".join(sorted(allowed)) if allowed else "no arguments"
        raise ViewError(f"view {view!r} takes {takes}; unknown: {', '.join(unknown)[:200]}")


def _int_arg(args: Mapping[str, object], key: str, default: int, low: int, high: int) -> int:
    value = args.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ViewError(f"{key} must be an integer from {low} to {high} (got {value!r})"[:200])
    return value


def _details(entry: bytes | str) -> dict[str, Any]:
    """The ``details`` of a stored audit entry (unverified: ``verify`` checks the chain)."""
    try:
        body = json.loads(entry)
    except (TypeError, ValueError):
        return {}
    details = body.get("details") if isinstance(body, dict) else None
    return details if isinstance(details, dict) else {}


def _actor(details: Mapping[str, Any]) -> str | None:
    """Who did it, as the entry says: an admin's name, else the OS user, else ``by``."""
    for key in ("by", "admin", "requested_by", "decided_by"):
        value = details.get(key)
        if isinstance(value, str) and value:
            return value
        if isinstance(value, Mapping):
            name = value.get("admin") or value.get("os_user")
            if isinstance(name, str) and name:
                return name
    return None


def _cut(value: Any, depth: int = 0) -> Any:
    """A JSON value bounded for display: long strings and lists cut, deep nesting elided."""
    if isinstance(value, str):
        return value if len(value) <= _MAX_SUMMARY_CHARS else value[:_MAX_SUMMARY_CHARS] + "…"
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, bool | int) or value is None:
        return value
    if depth >= 3:
        return "…"
    if isinstance(value, Mapping):
        return {
            str(k): (
                "[redacted]"
                if _SECRET_KEY.search(str(k)) and k not in _PUBLIC_KEY_NAMES
                else _cut(v, depth + 1)
            )
            for k, v in list(value.items())[:50]
        }
    if isinstance(value, list | tuple):
        items = [_cut(v, depth + 1) for v in value[:50]]
        if len(value) > 50:
            items.append(f"… {len(value) - 50} more")
        return items
    return str(value)[:_MAX_SUMMARY_CHARS]


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _now() -> str:
    return _iso(datetime.now(UTC))


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _seconds(start: str | None, end: str | None) -> float | None:
    a, b = _parse_time(start), _parse_time(end)
    return None if a is None or b is None else round((b - a).total_seconds(), 3)


def _certificate(cert: x509.Certificate) -> dict:
    not_after = cert.not_valid_after_utc
    return {
        "subject": cert.subject.rfc4514_string(),
        "not_after": _iso(not_after),
        "days_left": round((not_after - datetime.now(UTC)).total_seconds() / 86400, 2),
    }


def _round_view(row: tuple, phases: list[tuple]) -> dict:
    number, run_id, mode, status, reason, opened, closed = row
    steps = []
    previous = opened
    for _, phase, at, clients_in, dropped in phases:
        try:
            dropped_count = len(json.loads(dropped))
        except (TypeError, ValueError):
            dropped_count = 0
        steps.append(
            {
                "phase": phase,
                "at": at,
                "clients_in": clients_in,
                "dropped": dropped_count,
                "seconds": _seconds(previous, at),
            }
        )
        previous = at
    return {
        "number": number,
        "run_id": run_id,
        "mode": mode,
        "status": status,
        "reason": reason,
        "started_at": opened,
        "ended_at": closed,
        "duration_seconds": _seconds(opened, closed),
        "members": phases[0][3] if phases else None,
        "survivors": phases[-1][3] if phases else None,
        "bytes": None,
        "phases": steps,
    }
