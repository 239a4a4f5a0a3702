"""What the vibration demo adds to `invoke report`: the sensor-to-verdict latency beside the per-link latencies, and
a section on each injected anomaly and its detection. Only for a run where classifier verdicts reached a sink.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from cosim.charts import Chart
from cosim.edge import detections
from cosim.model import Scenario, SensorSpec
from cosim.plugins import ReportParts
from cosim.report import COLOURS, html_table, latency_chart, latency_rows, row_height, seconds_axis
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
    chart = Chart("injected anomalies and their detection", (0, 1), (-0.6, len(sensors) - 0.2), rows=list(rows),
                  plot_height=row_height(len(sensors), 44))
    seconds_axis(chart, duration_us)
    for sensor in sensors:
        for anomaly in sensor.anomalies:
            chart.rect(anomaly.at_us / 1e6, rows[sensor.id] - 0.3, anomaly.duration_us / 1e6, 0.6, COLOURS["anomaly"],
                       opacity=0.35)
    flagged: dict[int, list[float]] = defaultdict(list)
    for v in verdicts:
        data = v["data"]
        if data.get("label") == "anomaly" and data.get("sensor") in rows and isinstance(data.get("sampled_us"), int):
            flagged[rows[data["sensor"]]].append(data["sampled_us"] / 1e6)
    for row, times in sorted(flagged.items()):
        chart.ticks(times, row, COLOURS["dropped"], half_px=8.0, width=1.2)
    if flagged:
        chart.add_legend("window flagged as anomaly", COLOURS["dropped"], "tick")
    for d in result.detections:
        if d.detected_us is not None:
            chart.marker(d.detected_us / 1e6, rows[d.sensor] + 0.38, "v", "black", size=7)
        else:
            chart.text(d.at_us / 1e6, rows[d.sensor] + 0.34, "missed", colour=COLOURS["dropped"])
    chart.add_legend("first detection (verdict at the sink)", "black", "v")
    chart.add_legend("injected anomaly", COLOURS["anomaly"], "box", opacity=0.35)
    return chart.svg()


def _vibration(trace: Trace, scenario: Scenario) -> tuple[list[dict[str, Any]], detections.Report | None]:
    """The verdicts that reached a sink and the detection report, when the trace has verdicts (else None)."""
    events = detections.sink_events(trace, scenario)
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
