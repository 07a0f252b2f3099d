"""Federated evaluation: every ready client evaluates a model version on its own data.

An administrator asks (``Admin.Evaluate``); every ready client gets
``Task(evaluate=Evaluate(federated=True, run_id, evaluation_id, model_version, model_sha256,
deadline_unix))``, downloads that (accepted) version, evaluates it locally and answers with
``UploadMessage(header=UploadHeader(kind="evaluation", round_id=evaluation_id, total_bytes=0,
metadata_json='{"evaluation_id": hex, "model_version": v, "num_examples": n, "metrics":
{"name": number, ...}}'), data=b"")``. The evaluation closes at its deadline or once every
asked client answered.

What is kept: only the mean of each metric weighted by ``num_examples``, over the reports
that arrived (and only metrics every one of them reported), in the ``evaluations`` table and
the ``evaluation_result`` audit entry. One client's metrics are never stored, logged or shown.
A result needs at least ``max(2, m)`` reports (``m``: the policy's fewest clients any revealed
sum may cover); with fewer, the evaluation fails and nothing but the count is kept, because a
"mean" over one client is that client's metrics.

Protection, chosen deliberately: the reports reach the appliance one by one, in plaintext, and
it holds them in memory until the evaluation closes. In ``plaintext`` and ``attested`` modes
the appliance (or its TEE) sees every client's update already, and a client's loss on its own
data reveals less than its update: within what the mode reveals. In masked modes (``secagg``,
``secagg+``, ``ckks``) the appliance is promised only sums, so an unmasked per-client metric
would break the run's protection silently: federated evaluation is refused there unless the
run opts in with the hyperparameter ``"evaluation_reveals_client_metrics": true`` (the model
owner states that per-client metrics may be seen by the appliance; clients see the flag in
every RoundStart). Aggregating metrics through a masked round would keep them hidden; it is
not built yet. Residual risk even with the mean: two evaluations over client sets that differ
by one client let an observer difference out that client's metrics (as with any sum); the
minimum of ``m`` reports bounds but does not remove it.

Bounded input: at most 64 metric names of at most 64 characters, finite numbers only,
``num_examples`` a positive integer below 2^40, the report's metadata at most 16 KiB;
duplicate, late, unasked and unknown reports are refused with the reason.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import math
import os
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

from sealagg.appliance.rounds import UploadRefusedError
from sealagg.appliance.wire import sealagg_pb2 as pb

__all__ = [
    "MASKED_MODES",
    "OPT_IN",
    "EvaluationError",
    "FederatedEvaluations",
    "check_allowed",
    "parse_report",
]

OPT_IN = "evaluation_reveals_client_metrics"
MASKED_MODES = frozenset({"secagg", "secagg+", "ckks"})
MAX_METRICS = 64
MAX_METRIC_NAME = 64
MAX_EXAMPLES = 2**40
MAX_META_BYTES = 16 * 1024
EVALUATION_ID_BYTES = 16
MAX_DEADLINE_SECONDS = 3600.0
#: Evaluations open at once (each holds a pending Admin call and a task per client).
MAX_OPEN = 4
#: Closed evaluations remembered, so a late report is told "closed", not "unknown".
RECENT = 64


class EvaluationError(ValueError):
    """A refused evaluation request; the message is the reason."""


def check_allowed(mode: str, hyperparameters: Mapping[str, Any]) -> None:
    """Refuse federated evaluation in a masked mode unless the run opted in (see module)."""
    if mode in MASKED_MODES and hyperparameters.get(OPT_IN) is not True:
        raise EvaluationError(
            f"federated evaluation shows each client's metrics to the appliance, which a "
            f"{mode} run promises to see only sums: refused unless the run's hyperparameters "
            f'set "{OPT_IN}": true'
        )


def parse_report(metadata_json: str) -> tuple[str, int, int, dict[str, float]]:
    """(evaluation id hex, model version, num_examples, metrics) or UploadRefusedError."""

    def invalid(why: str) -> UploadRefusedError:
        return UploadRefusedError("INVALID_ARGUMENT", f"evaluation report: {why}")

    if len(metadata_json.encode("utf-8")) > MAX_META_BYTES:
        raise invalid(f"metadata_json is at most {MAX_META_BYTES} bytes")
    try:
        report = json.loads(metadata_json, parse_constant=lambda c: math.nan)
    except (ValueError, RecursionError):
        raise invalid("metadata_json is not JSON") from None
    keys = {"evaluation_id", "model_version", "num_examples", "metrics"}
    if not isinstance(report, dict) or set(report) != keys:
        raise invalid(f"metadata_json is an object with exactly {sorted(keys)}")
    eid, version = report["evaluation_id"], report["model_version"]
    count, metrics = report["num_examples"], report["metrics"]
    if not isinstance(eid, str) or len(eid) != 2 * EVALUATION_ID_BYTES:
        raise invalid("evaluation_id is the request's id in hex")
    if type(version) is not int or version < 1:
        raise invalid("model_version must be a positive integer")
    if type(count) is not int or not 0 < count < MAX_EXAMPLES:
        raise invalid(f"num_examples must be an integer in 1..{MAX_EXAMPLES - 1}")
    if not isinstance(metrics, dict) or not 0 < len(metrics) <= MAX_METRICS:
        raise invalid(f"metrics must be an object of 1 to {MAX_METRICS} numbers")
    clean: dict[str, float] = {}
    for name, value in metrics.items():
        if not (0 < len(name) <= MAX_METRIC_NAME and name.isprintable()):
            raise invalid(f"metric names are 1 to {MAX_METRIC_NAME} printable characters")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise invalid("metric values must be numbers")
        if isinstance(value, int) and abs(value) > 2**53:
            raise invalid("metric values must be finite numbers of at most 2^53")
        if not math.isfinite(value):
            raise invalid("metric values must be finite")
        clean[name] = float(value)
    return eid, version, count, clean


@dataclasses.dataclass
class _Open:
    evaluation_id: bytes
    run_id: str
    version: int
    asked: frozenset[str]
    minimum: int
    reports: dict[str, tuple[int, dict[str, float]]] = dataclasses.field(default_factory=dict)
    done: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)


@dataclasses.dataclass(frozen=True)
class Result:
    """What an evaluation yields: counts and the weighted means, nothing per client."""

    evaluation_id: str
    status: str  # "done" | "failed"
    version: int
    asked: int
    clients: int
    num_examples: int
    metrics: dict[str, float] | None
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def weighted_mean(reports: Mapping[str, tuple[int, Mapping[str, float]]]) -> dict[str, float]:
    """Per metric reported by every client: Σ n_i·v_i / Σ n_i (float64 sums)."""
    names = set.intersection(*(set(m) for _, m in reports.values())) if reports else set()
    total = sum(n for n, _ in reports.values())
    return {
        name: math.fsum(n * m[name] for n, m in reports.values()) / total for name in sorted(names)
    }


class FederatedEvaluations:
    """Open evaluations: who was asked, who answered; closes them into a :class:`Result`."""

    def __init__(
        self, send: Callable[[str, pb.Task], None], clock: Callable[[], float] = time.time
    ) -> None:
        self._send = send
        self._clock = clock
        self._open: dict[bytes, _Open] = {}
        self._closed: OrderedDict[bytes, None] = OrderedDict()

    def knows(self, evaluation_id: bytes) -> bool:
        """True for an open or recently closed federated evaluation (route its reports here)."""
        return evaluation_id in self._open or evaluation_id in self._closed

    def may_download(self, name: str, version: int) -> bool:
        """A client asked to evaluate ``version`` (hook for DownloadModel's candidate rule)."""
        return any(name in o.asked and o.version == version for o in self._open.values())

    def open(
        self,
        *,
        run_id: str,
        version: int,
        sha256: str,
        clients: list[str],
        minimum: int,
        deadline_seconds: float,
    ) -> tuple[bytes, pb.Task, asyncio.Event]:
        """Register an evaluation: (its id, the task for every asked client, done event).
        The caller records it durably, then :meth:`ask` sends the task."""
        if len(self._open) >= MAX_OPEN:
            raise EvaluationError(f"{MAX_OPEN} evaluations are open already; wait for one")
        evaluation_id = os.urandom(EVALUATION_ID_BYTES)
        pending = _Open(evaluation_id, run_id, version, frozenset(clients), minimum)
        self._open[evaluation_id] = pending
        task = pb.Task(
            evaluate=pb.Evaluate(
                federated=True,
                run_id=run_id,
                evaluation_id=evaluation_id,
                round_id=evaluation_id,  # the id a report's UploadHeader.round_id carries
                model_version=version,
                model_sha256=sha256,
                deadline_unix=self._clock() + deadline_seconds,
            )
        )
        return evaluation_id, task, pending.done

    def ask(self, evaluation_id: bytes, task: pb.Task) -> None:
        for name in sorted(self._open[evaluation_id].asked):
            self._send(name, task)

    def close(self, evaluation_id: bytes) -> Result:
        """Close the evaluation (deadline or everyone answered) and compute its result."""
        pending = self._open.pop(evaluation_id)
        self._closed[evaluation_id] = None
        while len(self._closed) > RECENT:
            self._closed.popitem(last=False)
        reports = pending.reports
        count = len(reports)
        examples = sum(n for n, _ in reports.values())
        common = weighted_mean(reports) if reports else {}
        status, reason, metrics = "done", "", common
        if count < pending.minimum:
            status, metrics = "failed", None
            reason = (
                f"{count} of {len(pending.asked)} clients reported; at least {pending.minimum} "
                "are needed so that no result is one client's metrics"
            )
        elif not common:
            status, metrics = "failed", None
            reason = "no metric was reported by every client that answered"
        pending.reports = {}  # the individual reports are dropped here
        return Result(
            evaluation_id.hex(),
            status,
            pending.version,
            len(pending.asked),
            count,
            examples if status == "done" else 0,
            metrics,
            reason,
        )

    # ----------------------------------------------------------------- transport hooks

    def check_upload(self, name: str, header: pb.UploadHeader) -> int:
        """Refuse a report nobody asked for before reading anything; the body is empty."""
        evaluation_id = bytes(header.round_id)
        pending = self._open.get(evaluation_id)
        if pending is None:
            if evaluation_id in self._closed:
                raise UploadRefusedError(
                    "FAILED_PRECONDITION", "this evaluation is closed (the report came late)"
                )
            raise UploadRefusedError("FAILED_PRECONDITION", "no evaluation is open with this id")
        if name not in pending.asked:
            raise UploadRefusedError(
                "PERMISSION_DENIED", f"{name} was not asked to take part in this evaluation"
            )
        if name in pending.reports:
            raise UploadRefusedError("ALREADY_EXISTS", f"{name} already reported this evaluation")
        if header.total_bytes != 0:
            raise UploadRefusedError(
                "INVALID_ARGUMENT", "an evaluation report travels in metadata_json; no body"
            )
        return 0

    def receive(self, name: str, header: pb.UploadHeader) -> None:
        self.check_upload(name, header)
        pending = self._open[bytes(header.round_id)]
        eid, version, count, metrics = parse_report(header.metadata_json)
        if not hmac.compare_digest(eid, pending.evaluation_id.hex()):
            raise UploadRefusedError(
                "INVALID_ARGUMENT", "the report's evaluation_id differs from its header's"
            )
        if version != pending.version:
            raise UploadRefusedError(
                "FAILED_PRECONDITION",
                f"the report is for version {version}, version {pending.version} was asked",
            )
        pending.reports[name] = (count, metrics)
        if set(pending.reports) >= pending.asked:
            pending.done.set()
