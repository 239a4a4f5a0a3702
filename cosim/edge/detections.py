"""What a vibration-monitoring run found: each injected anomaly, whether it was detected, and how fast.

Works on the ``inference_result`` events that reached a sink (the sink's ``delivered`` trace records), joined
with the anomalies the scenario injected. Latency is virtual: from the sensor's sampling time to the verdict's
arrival at the sink.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cosim import trace as traces
from cosim.model import Scenario, SensorSpec


@dataclass(frozen=True)
class Detection:
    sensor: str
    at_us: int
    duration_us: int
    severity: float
    detected_us: int | None  # arrival of the first "anomaly" verdict for a window inside the anomaly
    sampled_us: int | None  # sampling time of that window

    @property
    def latency_us(self) -> int | None:
        """Sensor to detection: from the flagged window's sampling time to the verdict at the sink."""
        return None if self.detected_us is None or self.sampled_us is None else self.detected_us - self.sampled_us


@dataclass(frozen=True)
class Report:
    detections: tuple[Detection, ...]
    verdicts: int  # inference results that reached a sink
    false_positives: tuple[tuple[str, int], ...]  # (sensor, sampled_us) flagged outside every anomaly
    missed_windows: int  # windows inside an anomaly that reached a sink labelled normal

    @property
    def all_detected(self) -> bool:
        return all(d.detected_us is not None for d in self.detections)


def report(scenario: Scenario, sink_events: Iterable[Mapping[str, Any]]) -> Report:
    """``sink_events``: delivered events (type, time_us, data) that reached any sink, in delivery order."""
    sensors = {node.id: node for node in scenario.nodes if isinstance(node, SensorSpec)}
    verdicts = [e for e in sink_events if e.get("type") == "inference_result" and isinstance(e.get("data"), dict)]

    first: dict[tuple[str, int], tuple[int, int]] = {}
    false_positives: list[tuple[str, int]] = []
    missed = 0
    for event in verdicts:
        data = event["data"]
        sensor, sampled = data.get("sensor"), data.get("sampled_us")
        node = sensors.get(sensor)
        anomaly = node.anomaly_at(sampled) if node is not None and isinstance(sampled, int) else None
        flagged = data.get("label") == "anomaly"
        if anomaly is None:
            if flagged:
                false_positives.append((sensor, sampled))
            continue
        if not flagged:
            missed += 1
            continue
        key = (sensor, anomaly.at_us)
        if key not in first or event["time_us"] < first[key][0]:
            first[key] = (event["time_us"], sampled)
    detections = []
    for sensor, node in sorted(sensors.items()):
        for injected in node.anomalies:
            hit = first.get((sensor, injected.at_us))
            detections.append(Detection(sensor, injected.at_us, injected.duration_us, injected.severity,
                                        hit[0] if hit else None, hit[1] if hit else None))
    return Report(tuple(detections), len(verdicts), tuple(false_positives), missed)


def sink_events_from_trace(trace_path: Path, scenario: Scenario) -> list[dict[str, Any]]:
    """The delivered records whose destination is a sink, read back from a trace file."""
    return sink_events(traces.read(trace_path), scenario)


def sink_events(trace: traces.Trace, scenario: Scenario) -> list[dict[str, Any]]:
    """The delivered records of a trace whose destination is a sink, as the sinks received them."""
    sinks = {node.id for node in scenario.nodes if node.kind == "sink"}
    return [{"record": "delivered", "time_us": record.time_us, "source": record.source, "seq": record.seq,
             "type": record.type, "dest": record.dest, "sent_us": record.sent_us, "data": record.data}
            for record in trace.records if isinstance(record, traces.Delivered) and record.dest in sinks]


def print_summary(scenario: Scenario, sink_events: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    """The detection lines of a run's summary (the sensor plug-in's summary hook)."""
    print_report(report(scenario, sink_events), out)


def print_report(result: Report, out: TextIO) -> None:
    """Detection lines only for a run with a detector (inference verdicts reached a sink): without one, an injected
    anomaly was never evaluated, which is not the same as missed."""
    if not result.verdicts:
        if result.detections:
            out.write(f"  anomalies: {len(result.detections)} injected, none evaluated "
                      f"(no inference verdict reached a sink)\n")
        return
    out.write(f"  detections ({result.verdicts} verdicts reached a sink):\n")
    for d in result.detections:
        window = f"{d.sensor} anomaly at {d.at_us / 1e6:.3f} s (severity {d.severity:g})"
        if d.detected_us is None or d.sampled_us is None or d.latency_us is None:
            out.write(f"    MISSED    {window}\n")
        else:
            out.write(f"    detected  {window}: window sampled at {d.sampled_us / 1e6:.3f} s, verdict at the sink "
                      f"{d.latency_us / 1e3:.3f} ms later\n")
    if result.missed_windows:
        out.write(f"    {result.missed_windows} window(s) inside an anomaly reached the sink labelled normal\n")
    if result.false_positives:
        shown = ", ".join(f"{s}@{t / 1e6:.3f}s" for s, t in result.false_positives[:5])
        out.write(f"    {len(result.false_positives)} normal window(s) flagged as anomalies: {shown}\n")
    else:
        out.write("    no normal window flagged\n")
