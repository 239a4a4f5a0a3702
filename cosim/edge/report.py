"""What the vibration demo adds to `invoke report`: the sensor-to-verdict latency beside the per-link latencies, and
a section on each injected anomaly and its detection. Only for a run where classifier verdicts reached a sink.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from cosim.edge import detections
from cosim.model import Scenario, SensorSpec
from cosim.plugins import ReportParts
from cosim.report import COLOURS, html_table, latency_chart, latency_rows, new_figure, seconds_axis, svg_of
from cosim.trace import Trace


def report_parts(trace: Trace, scenario: Scenario) -> ReportParts | None:
    """The sensor plug-in's report hook: None when no verdict reached a sink (not a vibration-monitoring run)."""
    verdicts, result = _vibration(trace, scenario)
    if result is None:
        return None
    latency = []
    end_to_end = _end_to_end(verdicts, scenario)
    if end_to_end:
        latency.append(f"<figure>{latency_chart(end_to_end, 'end to end: sensor sampling to verdict at the sink (CDF)')}</figure>")
        latency.append(html_table(("route", "verdicts", "p50 ms", "p95 ms", "p99 ms", "max ms"), latency_rows(end_to_end),
                                  numeric=range(1, 6)))
    sections = ["<h2>Anomaly detection</h2>"]
    sections.append(f"<figure>{detections_chart(scenario, result, verdicts, trace.header.duration_us)}</figure>")
    rows = [(d.sensor, f"{d.at_us / 1e6:.3f}", f"{d.duration_us / 1e6:.3f}", f"{d.severity:g}",
             "MISSED" if d.latency_us is None else "detected",
             "" if d.detected_us is None else f"{d.detected_us / 1e6:.3f}",
             "" if d.latency_us is None else f"{d.latency_us / 1e3:.3f}") for d in result.detections]
    sections.append(html_table(("sensor", "anomaly at s", "for s", "severity", "outcome", "verdict at sink s",
                                "latency ms"), rows, numeric=(1, 2, 3, 5, 6)))
    sections.append(f"<p>{result.verdicts} verdicts reached a sink; {len(result.false_positives)} normal window(s) "
                    f"flagged; {result.missed_windows} window(s) inside an anomaly labelled normal.</p>")
    return ReportParts(latency=latency, sections=sections)


def detections_chart(scenario: Scenario, result: detections.Report,
                     verdicts: Sequence[Mapping[str, Any]], duration_us: int) -> str:
    """Per sensor: injected anomaly windows, the windows the classifier flagged, and the first detection."""
    sensors = [node for node in scenario.nodes if isinstance(node, SensorSpec)]
    rows = {sensor.id: index for index, sensor in enumerate(reversed(sensors))}
    figure = new_figure(10, 0.6 * len(sensors) + 1.5)
    axes = figure.add_subplot()
    for sensor in sensors:
        spans = [(a.at_us / 1e6, a.duration_us / 1e6) for a in sensor.anomalies]
        axes.broken_barh(spans, (rows[sensor.id] - 0.3, 0.6), color=COLOURS["anomaly"], alpha=0.35)
    flagged = [(v["data"]["sampled_us"] / 1e6, rows[v["data"]["sensor"]]) for v in verdicts
               if v["data"].get("label") == "anomaly" and v["data"].get("sensor") in rows
               and isinstance(v["data"].get("sampled_us"), int)]
    if flagged:
        axes.plot(*zip(*flagged), "|", color=COLOURS["dropped"], markersize=12, label="window flagged as anomaly")
    for d in result.detections:
        if d.detected_us is not None:
            axes.plot(d.detected_us / 1e6, rows[d.sensor] + 0.38, "v", color="black", markersize=6)
        else:
            axes.annotate("missed", (d.at_us / 1e6, rows[d.sensor] + 0.34), color=COLOURS["dropped"], fontsize=8)
    axes.plot([], [], "v", color="black", label="first detection (verdict at the sink)")
    axes.fill_between([], [], color=COLOURS["anomaly"], alpha=0.35, label="injected anomaly")
    axes.set_yticks(list(rows.values()), list(rows.keys()))
    axes.set_ylim(-0.6, len(sensors) - 0.2)
    seconds_axis(axes, duration_us)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.3), ncol=3, frameon=False, fontsize=8)
    axes.set_title("injected anomalies and their detection")
    return svg_of(figure)


def _vibration(trace: Trace, scenario: Scenario) -> tuple[list[dict[str, Any]], detections.Report | None]:
    """The verdicts that reached a sink and the detection report, when the trace has verdicts (else None)."""
    events = detections.sink_events_from_trace(trace.path, scenario)
    result = detections.report(scenario, events)
    if not result.verdicts:
        return [], None  # no classifier verdict reached a sink: not a vibration-monitoring run
    verdicts = [e for e in events if e.get("type") == "inference_result" and isinstance(e.get("data"), dict)]
    return verdicts, result


def _end_to_end(verdicts: Sequence[Mapping[str, Any]], scenario: Scenario) -> list[tuple[str, list[int]]]:
    """Per sensor: from sampling the window to the verdict's arrival at the sink (virtual)."""
    by_route: dict[str, list[int]] = defaultdict(list)
    for verdict in verdicts:
        data = verdict["data"]
        if isinstance(data.get("sampled_us"), int) and isinstance(data.get("sensor"), str):
            by_route[f"{data['sensor']} → {verdict.get('dest', 'sink')}"].append(verdict["time_us"] - data["sampled_us"])
    return [(name, sorted(values)) for name, values in sorted(by_route.items())]
