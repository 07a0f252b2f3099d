"""Persistence of runs and federated evaluations (tables ``runs`` and ``evaluations``).

Every change commits in one transaction with its audit entry (``store.transaction()`` and
``audit.append(..., conn=tx)``): a crash leaves either both or neither, so the audit log
never claims a run change the state lacks, nor the reverse. Administrator actions carry the
administrator's name (``by``). Counting a round against its run's budget commits together
with opening the round, so a restart resumes the count exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sealagg.appliance.audit import canonical_json, format_time
from sealagg.appliance.runs import ASYNC_KEY, ENDED_STATUSES, LIVE_STATUSES, Run, RunError
from sealagg.appliance.store import Store

__all__ = ["RunStore"]

_SELECT = (
    "SELECT id, run_id, name, mode, status, rounds, rounds_done, hyperparameters, "
    "base_model_version, created_at, created_by, ended_at, reason FROM runs"
)
#: The audit event of each status a run enters.
_EVENTS = {
    "running": "run_started",
    "paused": "run_paused",
    "stopped": "run_stopped",
    "finished": "run_finished",
}


def _now() -> str:
    return format_time(datetime.now(UTC))


def _run(row: tuple) -> Run:
    """A stored row as a Run. An asynchronous run's parameters (issue 21) are stored in its
    hyperparameters column under :data:`~appliance.runs.ASYNC_KEY` (no schema change: a
    user's hyperparameters may not use that key) and split off here, so clients receive
    exactly the model owner's hyperparameters."""
    run = Run(*row)
    if ASYNC_KEY not in run.hyperparameters:  # cheap test first: most runs are synchronous
        return run
    document = json.loads(run.hyperparameters)
    params = document.pop(ASYNC_KEY, None)
    if params is None:
        return run
    return dataclasses.replace(
        run,
        hyperparameters=canonical_json(document).decode("utf-8"),
        async_params=canonical_json(params).decode("utf-8"),
    )


class RunStore:
    """Runs and evaluations in the federation's state database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # ---------------------------------------------------------------------------- runs

    def create(
        self,
        *,
        name: str,
        mode: str,
        rounds: int,
        hyperparameters: dict[str, Any],
        base_model_version: int | None,
        by: str,
        async_params: dict[str, Any] | None = None,
    ) -> Run:
        """A new run in status ``created``; its id (``run-N``) is the appliance's choice.
        ``async_params``: an asynchronous run's checked parameters (None: synchronous)."""
        text = canonical_json(hyperparameters).decode("utf-8")
        stored = text
        if async_params is not None:  # kept beside them, never sent to clients (_run)
            stored = canonical_json({**hyperparameters, ASYNC_KEY: async_params}).decode()
        with self.store.transaction() as tx:
            row = int(tx.execute("SELECT COALESCE(MAX(id), 0) + 1 FROM runs").fetchone()[0])
            run_id = f"run-{row}"
            tx.execute(
                "INSERT INTO runs (id, run_id, name, mode, status, rounds, rounds_done, "
                "hyperparameters, base_model_version, created_at, created_by) "
                "VALUES (?, ?, ?, ?, 'created', ?, 0, ?, ?, ?, ?)",
                (row, run_id, name, mode, rounds, stored, base_model_version, _now(), by),
            )
            details = {
                "run": run_id,
                "name": name,
                "mode": mode,
                "rounds": rounds,
                "hyperparameters_sha256": hashlib.sha256(text.encode()).hexdigest(),
                "base_model_version": base_model_version,
                "by": by,
            }
            if async_params is not None:  # synchronous runs' entries stay as they were
                details["schedule"] = "async"
                details["async"] = async_params
            self.store.audit.append("run_created", details, conn=tx)
            return self._get(tx, run_id)

    def get(self, run_id: str) -> Run:
        with self.store.snapshot() as conn:
            return self._get(conn, run_id)

    def _get(self, conn: Any, run_id: str) -> Run:
        row = conn.execute(_SELECT + " WHERE run_id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunError(f"there is no run {run_id!r}")
        return _run(row)

    def runs(self) -> list[Run]:
        with self.store.snapshot() as conn:
            rows = conn.execute(_SELECT + " ORDER BY id").fetchall()
        return [_run(row) for row in rows]

    def running(self) -> Run | None:
        return next((r for r in self.runs() if r.status == "running"), None)

    def live(self) -> Run | None:
        """The running run, else the most recent paused one (what status shows)."""
        runs = self.runs()
        return next((r for r in runs if r.status == "running"), None) or next(
            (r for r in reversed(runs) if r.status in LIVE_STATUSES), None
        )

    def latest_ended(self) -> Run | None:
        return next((r for r in reversed(self.runs()) if r.status in ENDED_STATUSES), None)

    def transition(
        self,
        run: Run,
        status: str,
        *,
        by: str,
        reason: str = "",
        action: str = "",
        base_model_version: int | None = None,
    ) -> Run:
        """Move ``run`` to ``status`` (rules: :func:`appliance.runs.next_status`), audited."""
        ended = _now() if status in ENDED_STATUSES else None
        event = "run_resumed" if action == "resume" else _EVENTS[status]
        with self.store.transaction() as tx:
            current = self._get(tx, run.run_id)
            if current.status != run.status:  # changed since the caller read it
                raise RunError(f"run {run.run_id} is now {current.status}; try again")
            base = current.base_model_version if base_model_version is None else base_model_version
            tx.execute(
                "UPDATE runs SET status = ?, ended_at = COALESCE(?, ended_at), "
                "reason = COALESCE(?, reason), base_model_version = ? WHERE id = ?",
                (status, ended, reason or None, base, run.row),
            )
            self.store.audit.append(
                event,
                {
                    "run": run.run_id,
                    "previous": current.status,
                    "status": status,
                    "rounds_done": current.rounds_done,
                    "by": by,
                    "reason": reason,
                },
                conn=tx,
            )
            return self._get(tx, run.run_id)

    def open_round(self, run: Run, opener: Callable[[], int]) -> tuple[int, Run]:
        """Open a round with ``opener`` (``store.open_round(..., run=row)``) and count it
        against ``run``'s budget in the same transaction: (round number, updated run)."""
        with self.store.transaction() as tx:
            number = opener()
            tx.execute("UPDATE runs SET rounds_done = rounds_done + 1 WHERE id = ?", (run.row,))
            return number, self._get(tx, run.run_id)

    def uncount_round(self, run: Run, number: int, *, restart: int, gone: Sequence[str]) -> Run:
        """Give back the budget of round ``number``, aborted because members vanished
        before revealing their graph coins, which the run replaces at once; audited as
        ``round_restarted`` in the same transaction (the aborted round stays in the
        rounds table with its reason: nothing about it is hidden, it only does not count)."""
        with self.store.transaction() as tx:
            tx.execute(
                "UPDATE runs SET rounds_done = rounds_done - 1 WHERE id = ? AND rounds_done > 0",
                (run.row,),
            )
            self.store.audit.append(
                "round_restarted",
                {
                    "run": run.run_id,
                    "round": number,
                    "restart": restart,
                    "vanished_before_reveal": sorted(gone),
                },
                conn=tx,
            )
            return self._get(tx, run.run_id)

    # --------------------------------------------------------------------- evaluations

    def open_evaluation(
        self, evaluation_id: bytes, run: Run | None, version: int, by: str, clients: list[str]
    ) -> None:
        with self.store.transaction() as tx:
            tx.execute(
                "INSERT INTO evaluations (evaluation_id, run, version, requested_by, status, "
                "created_at) VALUES (?, ?, ?, ?, 'open', ?)",
                (evaluation_id.hex(), run.row if run else None, version, by, _now()),
            )
            self.store.audit.append(
                "evaluation_requested",
                {
                    "evaluation": evaluation_id.hex(),
                    "run": run.run_id if run else None,
                    "model_version": version,
                    "asked": len(clients),
                    "by": by,
                },
                conn=tx,
            )

    def close_evaluation(
        self,
        evaluation_id: bytes,
        *,
        status: str,
        clients: int,
        num_examples: int,
        metrics: dict[str, float] | None,
        reason: str = "",
    ) -> None:
        """Record the outcome: only the weighted mean over ``clients`` reports, never one's."""
        text = None if metrics is None else canonical_json(metrics).decode("utf-8")
        with self.store.transaction() as tx:
            tx.execute(
                "UPDATE evaluations SET status = ?, closed_at = ?, clients = ?, num_examples = ?, "
                "metrics = ? WHERE evaluation_id = ?",
                (status, _now(), clients, num_examples, text, evaluation_id.hex()),
            )
            self.store.audit.append(
                "evaluation_result",
                {
                    "evaluation": evaluation_id.hex(),
                    "status": status,
                    "clients": clients,
                    "num_examples": num_examples,
                    "metrics": metrics,
                    "reason": reason,
                },
                conn=tx,
            )

    def fail_open_evaluations(self, reason: str) -> None:
        """On restart: evaluations left open by the previous process fail (audited)."""
        with self.store.transaction() as tx:
            rows = tx.execute(
                "SELECT evaluation_id FROM evaluations WHERE status = 'open' ORDER BY id"
            ).fetchall()
            for (evaluation_id,) in rows:
                tx.execute(
                    "UPDATE evaluations SET status = 'failed', closed_at = ? "
                    "WHERE evaluation_id = ?",
                    (_now(), evaluation_id),
                )
                self.store.audit.append(
                    "evaluation_result",
                    {
                        "evaluation": evaluation_id,
                        "status": "failed",
                        "clients": 0,
                        "num_examples": 0,
                        "metrics": None,
                        "reason": reason,
                    },
                    conn=tx,
                )

    def evaluations(self) -> list[dict[str, Any]]:
        with self.store.snapshot() as conn:
            rows = conn.execute(
                "SELECT e.evaluation_id, r.run_id, e.version, e.requested_by, e.status, "
                "e.created_at, e.closed_at, e.clients, e.num_examples, e.metrics "
                "FROM evaluations e LEFT JOIN runs r ON r.id = e.run ORDER BY e.id"
            ).fetchall()
        keys = (
            "evaluation_id",
            "run",
            "model_version",
            "requested_by",
            "status",
            "created_at",
            "closed_at",
            "clients",
            "num_examples",
            "metrics",
        )
        return [dict(zip(keys, row, strict=True)) for row in rows]
