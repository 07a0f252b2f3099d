"""Small SVG plots rendered on the server: line plots and stacked bar plots.

Why here and not in the browser: the appliance has no internet and ships no JavaScript
library, and matplotlib is not an appliance dependency. A plot is a few hundred bytes of SVG
built from numbers the admin views already return. Every label is XML-escaped (a client or
metric name is data, never markup), and the SVG carries no script: it is served as an image
(``<img src>``), where a browser would not run one anyway.

Each point is a ``<circle class="point" data-series=... data-x=... data-y=...>`` and each bar
segment a ``<rect class="bar" ...>`` with a ``<title>`` tooltip, so tests and readers can
recover the values from the picture.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape, quoteattr

__all__ = ["PALETTE", "PLOTS", "bar_plot", "empty_plot", "line_plot"]

#: Colour-blind-safe (Okabe-Ito), in series order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000")
_MARGIN = {"left": 56, "right": 16, "top": 30, "bottom": 42}
_LEGEND_ROW = 16


def _fmt(value: float) -> str:
    """A short, readable number (axis ticks, tooltips)."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e5 or magnitude < 1e-3:
        return f"{value:.2e}"
    if magnitude >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}"


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values spanning [low, high]."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(count - 1, 1)
    step = 10 ** math.floor(math.log10(raw))
    for mult in (1, 2, 2.5, 5, 10):
        if raw <= step * mult:
            step *= mult
            break
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _frame(width: int, height: int, title: str, legend_rows: int) -> list[str]:
    return [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
        f'height="{height + legend_rows * _LEGEND_ROW}" '
        f'viewBox="0 0 {width} {height + legend_rows * _LEGEND_ROW}" role="img" '
        f'aria-label={quoteattr(title)} font-family="sans-serif" font-size="11">',
        f"<title>{escape(title)}</title>",
        f'<rect width="{width}" height="{height + legend_rows * _LEGEND_ROW}" fill="#fff"/>',
        f'<text class="title" x="{width / 2:.1f}" y="18" text-anchor="middle" '
        f'font-size="13" font-weight="bold">{escape(title)}</text>',
    ]


def empty_plot(
    title: str, message: str = "no data yet", width: int = 640, height: int = 120
) -> str:
    """A plot frame that says there is nothing to draw (yet)."""
    parts = _frame(width, height, title, 0)
    parts.append(
        f'<text class="empty" x="{width / 2:.1f}" y="{height / 2 + 10:.1f}" '
        f'text-anchor="middle" fill="#666">{escape(message)}</text>'
    )
    parts.append("</svg>")
    return "\n".join(parts)


def _axes(
    parts: list[str],
    width: int,
    height: int,
    y_ticks: list[float],
    y_of,
    x_label: str,
    y_label: str,
) -> None:
    left, bottom = _MARGIN["left"], height - _MARGIN["bottom"]
    right = width - _MARGIN["right"]
    for tick in y_ticks:
        y = y_of(tick)
        parts.append(f'<line x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>')
        parts.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#444">'
            f"{escape(_fmt(tick))}</text>"
        )
    parts.append(
        f'<line x1="{left}" x2="{left}" y1="{_MARGIN["top"]}" y2="{bottom}" stroke="#888"/>'
    )
    parts.append(f'<line x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" stroke="#888"/>')
    parts.append(
        f'<text x="{(left + right) / 2:.1f}" y="{height - 8}" text-anchor="middle" '
        f'fill="#333">{escape(x_label)}</text>'
    )
    mid = (_MARGIN["top"] + bottom) / 2
    parts.append(
        f'<text x="14" y="{mid:.1f}" text-anchor="middle" fill="#333" '
        f'transform="rotate(-90 14 {mid:.1f})">{escape(y_label)}</text>'
    )


def _legend(parts: list[str], names: Sequence[str], width: int, height: int) -> None:
    for row, name in enumerate(names):
        y = height + row * _LEGEND_ROW + 4
        colour = PALETTE[row % len(PALETTE)]
        parts.append(
            f'<rect x="{_MARGIN["left"]}" y="{y}" width="10" height="10" fill="{colour}"/>'
        )
        parts.append(
            f'<text class="legend" x="{_MARGIN["left"] + 16}" y="{y + 9}" fill="#333">'
            f"{escape(name)}</text>"
        )


def line_plot(
    series: Mapping[str, Sequence[tuple[float, float]]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 240,
) -> str:
    """One line with a marker per point for each named series of (x, y) points.

    Non-finite values are left out (a metric that was NaN is no point, not a crash)."""
    clean = {
        name: [(float(x), float(y)) for x, y in points if math.isfinite(x) and math.isfinite(y)]
        for name, points in series.items()
    }
    clean = {name: points for name, points in clean.items() if points}
    if not clean:
        return empty_plot(title, width=width)
    xs = [x for points in clean.values() for x, _ in points]
    ys = [y for points in clean.values() for _, y in points]
    y_ticks = _ticks(min(0.0, min(ys)) if min(ys) >= 0 else min(ys), max(ys))
    x_low, x_high = min(xs), max(xs)
    if x_high == x_low:
        x_low, x_high = x_low - 1, x_high + 1
    left, right = _MARGIN["left"] + 8, width - _MARGIN["right"] - 8
    top, bottom = _MARGIN["top"], height - _MARGIN["bottom"]
    y_low, y_high = y_ticks[0], y_ticks[-1]

    def x_of(x: float) -> float:
        return left + (x - x_low) / (x_high - x_low) * (right - left)

    def y_of(y: float) -> float:
        return bottom - (y - y_low) / (y_high - y_low) * (bottom - top)

    parts = _frame(width, height, title, len(clean))
    _axes(parts, width, height, y_ticks, y_of, x_label, y_label)
    for x in sorted(set(xs)):
        parts.append(
            f'<text x="{x_of(x):.1f}" y="{bottom + 14}" text-anchor="middle" fill="#444">'
            f"{escape(_fmt(x))}</text>"
        )
    for index, (name, points) in enumerate(clean.items()):
        colour = PALETTE[index % len(PALETTE)]
        path = " ".join(f"{x_of(x):.1f},{y_of(y):.1f}" for x, y in sorted(points))
        parts.append(
            f'<polyline class="line" data-series={quoteattr(name)} fill="none" '
            f'stroke="{colour}" stroke-width="2" points="{path}"/>'
        )
        for x, y in sorted(points):
            parts.append(
                f'<circle class="point" data-series={quoteattr(name)} data-x="{x!r}" '
                f'data-y="{y!r}" cx="{x_of(x):.1f}" cy="{y_of(y):.1f}" r="3.5" '
                f'fill="{colour}"><title>{escape(name)}: {escape(_fmt(x))} → '
                f"{escape(_fmt(y))}</title></circle>"
            )
    _legend(parts, list(clean), width, height)
    parts.append("</svg>")
    return "\n".join(parts)


def bar_plot(
    labels: Sequence[str],
    stacks: Mapping[str, Sequence[float | None]],
    *,
    title: str,
    x_label: str,
    y_label: str,
    width: int = 640,
    height: int = 240,
) -> str:
    """Stacked bars: one bar per label, one segment per named stack (missing values: 0)."""
    if not labels or not stacks:
        return empty_plot(title, width=width)
    names = list(stacks)

    def value(name: str, i: int) -> float:
        values = stacks[name]
        v = values[i] if i < len(values) else None
        return float(v) if v is not None and math.isfinite(float(v)) and v > 0 else 0.0

    totals = [sum(value(n, i) for n in names) for i in range(len(labels))]
    y_ticks = _ticks(0.0, max(totals) or 1.0)
    top, bottom = _MARGIN["top"], height - _MARGIN["bottom"]
    left, right = _MARGIN["left"] + 4, width - _MARGIN["right"] - 4
    slot = (right - left) / len(labels)
    bar = max(min(slot * 0.7, 48.0), 2.0)

    def y_of(y: float) -> float:
        return bottom - y / y_ticks[-1] * (bottom - top)

    parts = _frame(width, height, title, len(names))
    _axes(parts, width, height, y_ticks, y_of, x_label, y_label)
    every = max(1, math.ceil(len(labels) / 20))  # at most ~20 x labels
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar) / 2
        if i % every == 0:
            parts.append(
                f'<text x="{x + bar / 2:.1f}" y="{bottom + 14}" text-anchor="middle" '
                f'fill="#444">{escape(str(label))}</text>'
            )
        base = 0.0
        for index, name in enumerate(names):
            v = value(name, i)
            if v <= 0:
                continue
            colour = PALETTE[index % len(PALETTE)]
            y_top, y_base = y_of(base + v), y_of(base)
            parts.append(
                f'<rect class="bar" data-label={quoteattr(str(label))} '
                f'data-series={quoteattr(name)} data-value="{v!r}" x="{x:.1f}" '
                f'y="{y_top:.1f}" width="{bar:.1f}" height="{max(y_base - y_top, 0.5):.1f}" '
                f'fill="{colour}"><title>{escape(str(label))} · {escape(name)}: '
                f"{escape(_fmt(v))}</title></rect>"
            )
            base += v
    _legend(parts, names, width, height)
    parts.append("</svg>")
    return "\n".join(parts)


# ---- the console's plots, from the admin views' data ------------------------------------


def metric_plot(versions: Sequence[Mapping]) -> str:
    """Each gate metric across model versions (``versions`` view, oldest first)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for item in versions:
        for metric, value in (item.get("metrics") or {}).items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                series.setdefault(str(metric), []).append((float(item["version"]), float(value)))
    return line_plot(
        series, title="Gate metrics per model version", x_label="model version", y_label="metric"
    )


def phase_plot(rounds: Sequence[Mapping]) -> str:
    """Seconds spent in each phase, per round (``rounds`` view, newest first: drawn oldest
    first)."""
    ordered = list(reversed(rounds))
    phases: list[str] = []
    for item in ordered:
        for phase in item.get("phases") or ():
            if phase.get("phase") not in phases:
                phases.append(str(phase.get("phase")))
    stacks: dict[str, list[float | None]] = {p: [] for p in phases}
    for item in ordered:
        seconds = {str(p.get("phase")): p.get("seconds") for p in item.get("phases") or ()}
        for p in phases:
            stacks[p].append(seconds.get(p))
    labels = [str(item.get("number")) for item in ordered]
    return bar_plot(
        labels, stacks, title="Round time per phase", x_label="round", y_label="seconds"
    )


def epsilon_plot(privacy: Mapping) -> str:
    """Cumulative ε over rounds, one line per run (``privacy`` view)."""
    series: dict[str, list[tuple[float, float]]] = {}
    for run in privacy.get("runs") or ():
        name = f"run {run.get('run_id')}" if run.get("run_id") else "federation"
        points = [
            (float(p["round"]), float(p["epsilon_cumulative"]))
            for p in run.get("series") or ()
            if p.get("round") is not None and p.get("epsilon_cumulative") is not None
        ]
        if points:
            series[name] = points
    return line_plot(
        series, title="Privacy budget spent (ε, cumulative)", x_label="round", y_label="ε"
    )


def clients_plot(rounds: Sequence[Mapping]) -> str:
    """Clients at the first phase and at the last, per round (``rounds`` view)."""
    ordered = list(reversed(rounds))
    series = {
        "members": [
            (float(r["number"]), float(r["members"]))
            for r in ordered
            if r.get("members") is not None
        ],
        "survivors": [
            (float(r["number"]), float(r["survivors"]))
            for r in ordered
            if r.get("survivors") is not None
        ],
    }
    return line_plot(series, title="Clients per round", x_label="round", y_label="clients")


#: Plot name -> (the admin view it reads, its arguments, the renderer).
PLOTS = {
    "metrics": ("versions", {}, metric_plot),
    "phases": ("rounds", {"limit": 30}, phase_plot),
    "epsilon": ("privacy", {}, epsilon_plot),
    "clients": ("rounds", {"limit": 50}, clients_plot),
}
