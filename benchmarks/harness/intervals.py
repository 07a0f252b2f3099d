"""Confidence intervals for a ratio of two timings taken in alternating pairs (issue 20).

A budget compares metric / baseline. On a shared machine one pair of figures can land on either
side of a limit by noise alone, so the budget is judged on an interval instead: each pair
``(metric_i, baseline_i)`` was measured in the same pass, the passes alternating, so load drift
hits both figures of a pair alike and cancels in ``log(metric_i / baseline_i)``.

The interval is the Wilcoxon signed-rank (Hodges-Lehmann) interval of those log ratios: the
sorted Walsh averages ``(x_i + x_j) / 2, i <= j``, cut at the exact critical value of the
signed-rank statistic. It assumes only that the log ratios are independent and symmetric about
their centre (no normality: timing noise is skewed in seconds, far less so in logs), it is exact
(no bootstrap randomness, so a re-render of the same results gives the same verdict), and the
centre it reports (the median of the Walsh averages) is not moved by one outlier pass.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

#: Two-sided confidence of every budget interval.
CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class RatioInterval:
    """``estimate`` and ``[low, high]`` on the ratio scale; ``coverage`` is the exact level."""

    pairs: int
    estimate: float
    low: float
    high: float
    coverage: float


def signed_rank_cdf(n: int) -> list[float]:
    """``P(T+ <= w)`` for ``w = 0 .. n(n+1)/2`` under the null (exact, by counting subsets)."""
    total = n * (n + 1) // 2
    counts = [1] + [0] * total
    for rank in range(1, n + 1):
        for w in range(total, rank - 1, -1):
            counts[w] += counts[w - rank]
    cdf, running = [], 0
    for c in counts:
        running += c
        cdf.append(running / 2**n)
    return cdf


def critical_rank(n: int, confidence: float = CONFIDENCE) -> int:
    """The largest ``c`` with ``P(T+ <= c - 1) <= (1 - confidence) / 2``; 0 if none exists.

    The interval is then ``[W_(c), W_(N + 1 - c)]`` of the N sorted Walsh averages, with exact
    coverage ``1 - 2 P(T+ <= c - 1)``.
    """
    tail = (1 - confidence) / 2
    cdf = signed_rank_cdf(n)
    c = 0
    while c < len(cdf) and cdf[c] <= tail + 1e-12:
        c += 1
    return c


def walsh_averages(values: Sequence[float]) -> list[float]:
    n = len(values)
    return sorted((values[i] + values[j]) / 2 for i in range(n) for j in range(i, n))


def ratio_interval(
    pairs: Sequence[tuple[float, float]], confidence: float = CONFIDENCE
) -> RatioInterval | None:
    """The interval of ``metric / baseline`` from paired positive timings.

    None when there are too few usable pairs for the requested confidence (fewer than 6 at
    95 %): a verdict then cannot be drawn from noise, and the caller says so.
    """
    logs = [
        math.log(m / b)
        for m, b in pairs
        if math.isfinite(m) and math.isfinite(b) and m > 0 and b > 0
    ]
    n = len(logs)
    if n == 0:
        return None
    c = critical_rank(n, confidence)
    if c == 0:
        return None
    walsh = walsh_averages(logs)
    size = len(walsh)
    mid = size // 2
    centre = walsh[mid] if size % 2 else (walsh[mid - 1] + walsh[mid]) / 2
    coverage = 1 - 2 * (signed_rank_cdf(n)[c - 1])
    return RatioInterval(
        pairs=n,
        estimate=math.exp(centre),
        low=math.exp(walsh[c - 1]),
        high=math.exp(walsh[size - c]),
        coverage=coverage,
    )
