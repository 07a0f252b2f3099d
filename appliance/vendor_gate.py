"""The vendor quality gate: a named party evaluates each candidate on its own holdout.

After a round aggregates, the orchestrator stores the candidate (status ``candidate``, not
downloadable by anyone else) and asks the gate party with an ``Evaluate`` task. The party's
shim downloads that version, evaluates it in its own process (the holdout never leaves it),
and uploads ``{"model_version": N, "metrics": {...}}`` (kind ``"evaluation"``). The candidate
is accepted only if its gate metric is no worse than the previous accepted version's, within
the configured tolerance. Metrics are stored with each version (write-once, audited); a
previous version without metrics is evaluated first, in the same round. Fail closed: no
report before the deadline, a missing metric or a non-finite value rejects the candidate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from sealagg.appliance.config import GatesSection
from sealagg.appliance.models import ModelVersion
from sealagg.appliance.rounds import UploadRefusedError
from sealagg.appliance.store import Store
from sealagg.appliance.wire import sealagg_pb2 as pb

__all__ = ["EVALUATION_KIND", "VendorGate"]

EVALUATION_KIND = "evaluation"
MAX_REPORT_BYTES = 64 * 1024
MAX_METRICS = 64


@dataclasses.dataclass
class _Request:
    round_id: bytes
    version: int
    future: asyncio.Future[dict[str, float]]


class VendorGate:
    """Asks the configured party to evaluate versions and compares its reports."""

    def __init__(
        self,
        gates: GatesSection,
        store: Store,
        send: Callable[[str, pb.Task], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not gates.vendor:
            raise ValueError("the vendor gate needs [gates] vendor = NAME")
        self.party = gates.vendor
        self.metric = gates.metric
        self.higher_is_better = gates.higher_is_better
        self.tolerance = gates.tolerance
        self.deadline = gates.evaluate_deadline
        self._store = store
        self._send = send
        self._clock = clock
        self._pending: _Request | None = None

    # ----------------------------------------------------------------- transport hooks

    def may_download(self, name: str, version: int) -> bool:
        """Only the gate party, and only the version it was asked to evaluate right now."""
        pending = self._pending
        return (
            pending is not None
            and hmac.compare_digest(name.encode(), self.party.encode())
            and version == pending.version
        )

    def check_upload(self, name: str, header: pb.UploadHeader) -> int:
        """Refuse an evaluation report that nobody asked for, before reading its body."""
        pending = self._pending
        if name != self.party:
            raise UploadRefusedError(
                "PERMISSION_DENIED", f"{name} is not this federation's gate party"
            )
        if pending is None or pending.future.done():
            raise UploadRefusedError("FAILED_PRECONDITION", "no evaluation is requested now")
        if not hmac.compare_digest(bytes(header.round_id), pending.round_id):
            raise UploadRefusedError("FAILED_PRECONDITION", "the report names another round")
        if header.total_bytes > MAX_REPORT_BYTES:
            raise UploadRefusedError(
                "RESOURCE_EXHAUSTED", f"an evaluation report is at most {MAX_REPORT_BYTES} bytes"
            )
        return MAX_REPORT_BYTES

    def receive(self, name: str, header: pb.UploadHeader, payload: bytes | bytearray) -> None:
        """Take a report for the pending request; a malformed one is refused (resend allowed)."""
        self.check_upload(name, header)
        pending = self._pending
        assert pending is not None  # checked above
        version, metrics = parse_report(bytes(payload))
        if version != pending.version:
            raise UploadRefusedError(
                "FAILED_PRECONDITION",
                f"the report is for version {version}, version {pending.version} was asked",
            )
        if self.metric not in metrics:
            raise UploadRefusedError(
                "INVALID_ARGUMENT", f"the report lacks the gate metric {self.metric!r}"
            )
        pending.future.set_result(metrics)

    # ------------------------------------------------------------------------ deciding

    async def judge(
        self, round_id: bytes, previous: ModelVersion, candidate: ModelVersion
    ) -> tuple[bool, str]:
        """(accept, reason): evaluate ``previous`` if it has no metrics, then ``candidate``."""
        baseline = previous.metrics
        if baseline is None or self.metric not in baseline:
            baseline, why = await self._evaluate(round_id, previous)
            if baseline is None:
                return False, f"vendor gate: no baseline for version {previous.version}: {why}"
            if previous.metrics is None:
                self._store.set_model_metrics(previous.version, baseline)
        metrics, why = await self._evaluate(round_id, candidate)
        if metrics is None:
            return False, f"vendor gate: {why}"
        self._store.set_model_metrics(candidate.version, metrics)
        return self.compare(metrics, baseline, previous.version)

    def compare(
        self, metrics: Mapping[str, float], baseline: Mapping[str, Any], previous: int
    ) -> tuple[bool, str]:
        new, old = float(metrics[self.metric]), float(baseline[self.metric])
        ok = new >= old - self.tolerance if self.higher_is_better else new <= old + self.tolerance
        relation = "no worse than" if ok else "worse than"
        return ok, (
            f"vendor gate: {self.metric} {new:.6g} is {relation} version {previous}'s "
            f"{old:.6g} (tolerance {self.tolerance:g}, "
            f"{'higher' if self.higher_is_better else 'lower'} is better)"
        )

    async def _evaluate(
        self, round_id: bytes, model: ModelVersion
    ) -> tuple[dict[str, float] | None, str]:
        future: asyncio.Future[dict[str, float]] = asyncio.get_running_loop().create_future()
        self._pending = _Request(round_id, model.version, future)
        task = pb.Task(
            evaluate=pb.Evaluate(
                round_id=round_id,
                model_version=model.version,
                model_sha256=model.sha256,
                metric=self.metric,
                deadline_unix=self._clock() + self.deadline,
            )
        )
        self._send(self.party, task)
        try:
            return await asyncio.wait_for(future, self.deadline), ""
        except TimeoutError:
            return None, (
                f"{self.party} sent no evaluation of version {model.version} "
                f"within {self.deadline:g} s"
            )
        finally:
            self._pending = None


def parse_report(payload: bytes) -> tuple[int, dict[str, float]]:
    """``{"model_version": N, "metrics": {name: finite number}}`` or UploadRefusedError."""
    try:
        report = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise UploadRefusedError("INVALID_ARGUMENT", "the evaluation report is not JSON") from None
    if not isinstance(report, dict) or set(report) != {"model_version", "metrics"}:
        raise UploadRefusedError(
            "INVALID_ARGUMENT", 'a report is {"model_version": N, "metrics": {...}}'
        )
    version, metrics = report["model_version"], report["metrics"]
    if type(version) is not int or version < 1:
        raise UploadRefusedError("INVALID_ARGUMENT", "model_version must be a positive integer")
    if not isinstance(metrics, dict) or not 0 < len(metrics) <= MAX_METRICS:
        raise UploadRefusedError(
            "INVALID_ARGUMENT", f"metrics must be an object of 1 to {MAX_METRICS} numbers"
        )
    clean: dict[str, float] = {}
    for key, value in metrics.items():
        if (
            not isinstance(key, str)
            or not 0 < len(key) <= 64
            or isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise UploadRefusedError(
                "INVALID_ARGUMENT", f"metric {key!r}: names map to finite numbers"
            )
        clean[key] = float(value)
    return version, clean
