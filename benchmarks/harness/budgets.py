"""Overhead budgets: ratios of two metrics measured in the same run, never absolute times.

``benchmarks/budgets.toml`` holds ``version`` and a list of ``[[budget]]`` tables::

    id = "loopback-secaggplus-vs-plaintext"     # unique, printed when exceeded
    what = "..."                                 # one line for the report
    metric = "appliance:round:secagg+:n10:d1000000"
    baseline = "appliance:round:plaintext:n10:d1000000"
    max_ratio = 1.5                              # metric / baseline <= 1.5  (or min_ratio: >=)
    profiles = ["quick", "full"]                 # where both metrics must have been measured

A budget whose metrics are missing fails in a listed profile (a check that measured nothing must
not pass) and is skipped in any other profile.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

SUPPORTED_VERSIONS = (1,)


class BudgetFileError(ValueError):
    """The budgets file is malformed; the message names the entry and the field."""


class Status(enum.StrEnum):
    ok = "ok"
    exceeded = "exceeded"
    missing = "missing"
    skipped = "skipped"


@dataclasses.dataclass(frozen=True)
class Budget:
    id: str
    what: str
    metric: str
    baseline: str
    max_ratio: float | None
    min_ratio: float | None
    profiles: tuple[str, ...]

    def limit_text(self) -> str:
        if self.max_ratio is not None:
            return f"<= {self.max_ratio:g}x"
        return f">= {self.min_ratio:g}x"


@dataclasses.dataclass(frozen=True)
class Verdict:
    budget: Budget
    status: Status
    ratio: float | None
    detail: str

    @property
    def failed(self) -> bool:
        return self.status in (Status.exceeded, Status.missing)


@dataclasses.dataclass(frozen=True)
class BudgetFile:
    version: int
    budgets: tuple[Budget, ...]


def parse(text: str, source: str = "budgets.toml") -> BudgetFile:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise BudgetFileError(f"{source}: not valid TOML: {error}") from None
    version = doc.get("version")
    if version not in SUPPORTED_VERSIONS:
        raise BudgetFileError(f"{source}: version {version!r} is not one of {SUPPORTED_VERSIONS}")
    entries = doc.get("budget", [])
    if not isinstance(entries, list) or not entries:
        raise BudgetFileError(f"{source}: no [[budget]] entries")
    budgets: list[Budget] = []
    seen: set[str] = set()
    for i, entry in enumerate(entries):
        where = f"{source}: budget #{i + 1} ({entry.get('id', '?')})"
        for field in ("id", "what", "metric", "baseline"):
            if not isinstance(entry.get(field), str) or not entry[field]:
                raise BudgetFileError(f"{where}: '{field}' must be a non-empty string")
        if entry["id"] in seen:
            raise BudgetFileError(f"{where}: duplicate id")
        seen.add(entry["id"])
        bounds = [entry.get("max_ratio"), entry.get("min_ratio")]
        if sum(b is not None for b in bounds) != 1:
            raise BudgetFileError(f"{where}: give exactly one of 'max_ratio' and 'min_ratio'")
        bound = next(b for b in bounds if b is not None)
        if isinstance(bound, bool) or not isinstance(bound, int | float) or not bound > 0:
            raise BudgetFileError(f"{where}: the ratio bound must be a positive number")
        profiles = entry.get("profiles", ["quick", "full"])
        if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
            raise BudgetFileError(f"{where}: 'profiles' must be a list of profile names")
        budgets.append(
            Budget(
                id=entry["id"],
                what=entry["what"],
                metric=entry["metric"],
                baseline=entry["baseline"],
                max_ratio=None if bounds[0] is None else float(bounds[0]),
                min_ratio=None if bounds[1] is None else float(bounds[1]),
                profiles=tuple(profiles),
            )
        )
    return BudgetFile(version=int(version), budgets=tuple(budgets))


def load(path: Path) -> BudgetFile:
    return parse(path.read_text(encoding="utf-8"), source=str(path))


def check_one(budget: Budget, metrics: Mapping[str, float], profile: str) -> Verdict:
    value, base = metrics.get(budget.metric), metrics.get(budget.baseline)
    if value is None or base is None:
        absent = [k for k, v in ((budget.metric, value), (budget.baseline, base)) if v is None]
        halted = [k for k in absent if metrics.get(_halted_key(k))]
        why = f"not measured: {', '.join(absent)}"
        if halted:
            why += f" (round halted: {', '.join(halted)})"
        status = Status.missing if profile in budget.profiles else Status.skipped
        return Verdict(budget, status, None, why)
    if not (math.isfinite(value) and math.isfinite(base)) or base <= 0:
        return Verdict(budget, Status.missing, None, f"unusable values {value!r} / {base!r}")
    ratio = value / base
    ok = ratio <= budget.max_ratio if budget.max_ratio is not None else ratio >= budget.min_ratio
    detail = f"{ratio:.3g}x (limit {budget.limit_text()})"
    return Verdict(budget, Status.ok if ok else Status.exceeded, ratio, detail)


def _halted_key(metric: str) -> str:
    """``flower:secagg+:w:round_seconds`` -> ``flower:secagg+:w:halted``."""
    return metric.rsplit(":", 1)[0] + ":halted" if metric.count(":") >= 3 else ""


def check(budgets: Sequence[Budget], metrics: Mapping[str, float], profile: str) -> list[Verdict]:
    return [check_one(b, metrics, profile) for b in budgets]


def failure_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """One line per failed budget, naming it: what ``--check`` prints before exiting non-zero."""
    return [f"budget {v.status}: {v.budget.id}: {v.detail}" for v in verdicts if v.failed]


def as_json(verdicts: Sequence[Verdict]) -> list[dict[str, Any]]:
    return [
        {
            "id": v.budget.id,
            "what": v.budget.what,
            "metric": v.budget.metric,
            "baseline": v.budget.baseline,
            "limit": v.budget.limit_text(),
            "status": str(v.status),
            "ratio": v.ratio,
            "detail": v.detail,
        }
        for v in verdicts
    ]
