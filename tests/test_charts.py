"""The report's hand-written SVG charts: round ticks, bounded size however many marks, the same bytes every time."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree

from cosim.charts import Chart, nice_ticks


def test_ticks_are_round_and_cover_the_range() -> None:
    assert nice_ticks(0, 10) == [0, 2, 4, 6, 8, 10]
    assert nice_ticks(0, 1.02, count=5) == [0, 0.25, 0.5, 0.75, 1.0]
    assert nice_ticks(12.3, 23.9) == [14, 16, 18, 20, 22]
    assert nice_ticks(5, 5) == [5]


def test_many_events_make_a_chart_of_bounded_size() -> None:
    """Tick marks on the same pixel are drawn once: a timeline of 200,000 events is as large as one of a few
    thousand, and stays a valid SVG document."""

    def timeline(events: int) -> str:
        chart = Chart("events", (0, 600), (-0.6, 0.6), rows=["node"])
        chart.ticks((index * 600 / events for index in range(events)), 0, "#1f77b4")
        chart.add_legend("sent", "#1f77b4", "tick")
        return chart.svg()

    many, few = timeline(200_000), timeline(5_000)
    assert len(many) == len(few) < 100_000
    ElementTree.fromstring(many)  # well-formed
    assert many.count("<svg") == 1 and not re.search(r"href|url\(|<script|<image", many)


def test_the_same_input_gives_the_same_bytes() -> None:
    def chart() -> str:
        drawn = Chart("latency", (0, 5), (0, 1.02), x_label="ms", y_label="fraction", legend_at="right")
        drawn.line([(0.5, 0.0), (1.0, 0.5), (2.0, 1.0)], "#ff7f0e", step=True)
        drawn.marker(1.0, 0.5, "o", "#ff7f0e")
        drawn.band([0, 1, 2], [0.1, 0.2, 0.3], [0.4, 0.5, 0.6], "#2ca02c")
        drawn.error_bar(1, 0.2, 0.5, "#2ca02c")
        drawn.text(1, 0.9, "a <label> & more")
        drawn.add_legend("a → b", "#ff7f0e")
        return drawn.svg()

    first = chart()
    assert first == chart()
    assert "a &lt;label&gt; &amp; more" in first
    ElementTree.fromstring(first)
