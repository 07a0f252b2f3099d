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

Noise (issue 20): when the run measured the two metrics in alternating paired passes
(``metrics.paired_runs``), the budget is judged on the 95 % interval of the ratio
(:mod:`.intervals`): ``ok`` only if the whole interval is within the limit, ``exceeded`` only if
the whole interval is beyond it, and ``inconclusive`` (printed "inconclusive (noise)") when it
straddles the limit or there are too few pairs for an interval. Inconclusive is not a failure
(``--check`` exits 0 on it) but is always reported: a budget that noise could flip says so
instead of passing or failing by luck. Without pairs (a peer measured in another process, peak
RSS) the single figures are compared as before and the verdict says there was no interval.
"""

from __future__ import annotations

import dataclasses
import enum
import math
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from harness.intervals import CONFIDENCE, RatioInterval, ratio_interval

SUPPORTED_VERSIONS = (1,)


class BudgetFileError(ValueError):
    """The budgets file is malformed; the message names the entry and the field."""


class Status(enum.StrEnum):
    ok = "ok"
    exceeded = "exceeded"
    missing = "missing"
    skipped = "skipped"
    inconclusive = "inconclusive"


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
    interval: RatioInterval | None = None

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


def check_one(
    budget: Budget,
    metrics: Mapping[str, float],
    profile: str,
    runs: Sequence[Mapping[str, float]] = (),
) -> Verdict:
    """One verdict; ``runs`` are the paired passes (each a ``{key: value}`` measured together)."""
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
    pairs = [(r[budget.metric], r[budget.baseline]) for r in runs if _paired(r, budget)]
    if pairs:
        return _judge_interval(budget, pairs)
    ratio = value / base
    ok = _within(budget, ratio)
    detail = f"{ratio:.3g}x (limit {budget.limit_text()}); single figures, no interval"
    return Verdict(budget, Status.ok if ok else Status.exceeded, ratio, detail)


def _paired(run: Mapping[str, float], budget: Budget) -> bool:
    return budget.metric in run and budget.baseline in run


def _within(budget: Budget, ratio: float) -> bool:
    if budget.max_ratio is not None:
        return ratio <= budget.max_ratio
    return ratio >= budget.min_ratio  # type: ignore[operator]


def _judge_interval(budget: Budget, pairs: Sequence[tuple[float, float]]) -> Verdict:
    """ok / exceeded only when the whole interval agrees; otherwise inconclusive (noise)."""
    interval = ratio_interval(pairs)
    limit = f"limit {budget.limit_text()}"
    if interval is None:
        ratios = sorted(m / b for m, b in pairs if m > 0 and b > 0)
        point = ratios[len(ratios) // 2] if ratios else None
        shown = "-" if point is None else f"{point:.3g}x"
        detail = f"{shown} ({limit}; {len(pairs)} pairs: too few for a {CONFIDENCE:.0%} interval)"
        return Verdict(budget, Status.inconclusive, point, detail)
    low_ok, high_ok = _within(budget, interval.low), _within(budget, interval.high)
    span = (
        f"{interval.estimate:.3g}x, {interval.coverage:.1%} interval "
        f"[{interval.low:.3g}, {interval.high:.3g}] from {interval.pairs} pairs"
    )
    if low_ok and high_ok:
        status = Status.ok
    elif not low_ok and not high_ok:
        status = Status.exceeded
    else:
        status = Status.inconclusive
    return Verdict(budget, status, interval.estimate, f"{span} ({limit})", interval)


def _halted_key(metric: str) -> str:
    """``flower:secagg+:w:round_seconds`` -> ``flower:secagg+:w:halted``."""
    return metric.rsplit(":", 1)[0] + ":halted" if metric.count(":") >= 3 else ""


def check(
    budgets: Sequence[Budget],
    metrics: Mapping[str, float],
    profile: str,
    runs: Sequence[Mapping[str, float]] = (),
) -> list[Verdict]:
    return [check_one(b, metrics, profile, runs) for b in budgets]


def failure_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """One line per failed budget, naming it: what ``--check`` prints before exiting non-zero."""
    return [f"budget {v.status}: {v.budget.id}: {v.detail}" for v in verdicts if v.failed]


def inconclusive_lines(verdicts: Sequence[Verdict]) -> list[str]:
    """One line per budget noise could flip: reported by ``--check``, never a failure."""
    return [
        f"budget inconclusive (noise): {v.budget.id}: {v.detail}"
        for v in verdicts
        if v.status is Status.inconclusive
    ]


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
            "interval": None
            if v.interval is None
            else {
                "low": v.interval.low,
                "high": v.interval.high,
                "pairs": v.interval.pairs,
                "coverage": v.interval.coverage,
            },
        }
        for v in verdicts
    ]
