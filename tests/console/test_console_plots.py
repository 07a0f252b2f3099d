"""The console's server-rendered SVG plots: the right points and values, escaped labels."""

from __future__ import annotations

import xml.etree.ElementTree as ET

from sealagg.appliance.console import plots

SVG = "{http://www.w3.org/2000/svg}"


def _parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # our own output: a parse error is a failed test


def _points(root: ET.Element) -> list[tuple[str, float, float]]:
    return [
        (c.get("data-series"), float(c.get("data-x")), float(c.get("data-y")))
        for c in root.iter(f"{SVG}circle")
        if c.get("class") == "point"
    ]


def test_line_plot_has_one_point_per_value_per_series() -> None:
    svg = plots.line_plot(
        {"accuracy": [(1, 0.5), (2, 0.75), (3, 0.9)], "loss": [(1, 1.2), (3, 0.4)]},
        title="t",
        x_label="version",
        y_label="metric",
    )
    root = _parse(svg)
    assert sorted(_points(root)) == sorted(
        [
            ("accuracy", 1, 0.5),
            ("accuracy", 2, 0.75),
            ("accuracy", 3, 0.9),
            ("loss", 1, 1.2),
            ("loss", 3, 0.4),
        ]
    )
    lines = [p for p in root.iter(f"{SVG}polyline") if p.get("class") == "line"]
    assert [len(p.get("points").split()) for p in lines] == [3, 2]
    # Higher values are drawn higher (smaller y): 0.9 above 0.5.
    ys = {float(c.get("data-y")): float(c.get("cy")) for c in root.iter(f"{SVG}circle")}
    assert ys[0.9] < ys[0.5]


def test_non_finite_values_are_left_out_and_no_data_says_so() -> None:
    svg = plots.line_plot({"m": [(1, float("nan")), (2, 1.0)]}, title="t", x_label="x", y_label="y")
    assert [p[1:] for p in _points(_parse(svg))] == [(2.0, 1.0)]
    empty = _parse(plots.line_plot({"m": []}, title="nothing", x_label="x", y_label="y"))
    assert [t.text for t in empty.iter(f"{SVG}text") if t.get("class") == "empty"] == [
        "no data yet"
    ]


def test_labels_are_escaped() -> None:
    hostile = '<script>alert("x")</script> & "quoted"'
    svg = plots.line_plot({hostile: [(1, 2)]}, title=hostile, x_label=hostile, y_label="y")
    assert "<script>" not in svg
    root = _parse(svg)  # well-formed XML: nothing broke out of a text node or attribute
    assert root.find(f"{SVG}title").text == hostile
    assert [c.get("data-series") for c in root.iter(f"{SVG}circle")] == [hostile]
    bars = plots.bar_plot(["<b>1</b>"], {hostile: [3.0]}, title="b", x_label="x", y_label="y")
    assert "<b>" not in bars and "<script>" not in bars
    assert [r.get("data-series") for r in _parse(bars).iter(f"{SVG}rect") if r.get("class")] == [
        hostile
    ]


def test_stacked_bars_carry_each_phase_of_each_round() -> None:
    rounds = [  # the rounds view: newest first
        {
            "number": 2,
            "phases": [
                {"phase": "advertise_keys", "seconds": 1.5},
                {"phase": "masked_input", "seconds": 0.5},
            ],
        },
        {
            "number": 1,
            "phases": [
                {"phase": "advertise_keys", "seconds": 2.0},
                {"phase": "masked_input", "seconds": None},
            ],
        },
    ]
    root = _parse(plots.phase_plot(rounds))
    bars = [
        (r.get("data-label"), r.get("data-series"), float(r.get("data-value")))
        for r in root.iter(f"{SVG}rect")
        if r.get("class") == "bar"
    ]
    assert bars == [
        ("1", "advertise_keys", 2.0),
        ("2", "advertise_keys", 1.5),
        ("2", "masked_input", 0.5),
    ]
    legend = [t.text for t in root.iter(f"{SVG}text") if t.get("class") == "legend"]
    assert legend == ["advertise_keys", "masked_input"]


def test_view_plots_read_the_view_keys() -> None:
    versions = [
        {"version": 1, "metrics": {}},
        {"version": 2, "metrics": {"accuracy": 0.8, "note": "text is no point"}},
        {"version": 3, "metrics": {"accuracy": 0.85}},
    ]
    assert _points(_parse(plots.metric_plot(versions))) == [
        ("accuracy", 2.0, 0.8),
        ("accuracy", 3.0, 0.85),
    ]
    privacy = {
        "runs": [
            {
                "run_id": "r1",
                "series": [
                    {"round": 1, "epsilon_cumulative": 0.4},
                    {"round": 2, "epsilon_cumulative": 0.7},
                ],
            }
        ]
    }
    assert _points(_parse(plots.epsilon_plot(privacy))) == [
        ("run r1", 1.0, 0.4),
        ("run r1", 2.0, 0.7),
    ]
    rounds = [{"number": 2, "members": 4, "survivors": 3}, {"number": 1, "members": 4}]
    assert sorted(_points(_parse(plots.clients_plot(rounds)))) == [
        ("members", 1.0, 4.0),
        ("members", 2.0, 4.0),
        ("survivors", 2.0, 3.0),
    ]
