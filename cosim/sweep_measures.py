"""The numbers a sweep takes from each run's trace (one row of results.csv), all in virtual time, so that the same
trace always gives the same row.

Built in (every name below is a column):

- ``sent``, ``delivered``, ``dropped``, ``unroutable``, ``filtered``; ``dropped.<reason>`` per drop reason
  (``loss``, ``partition``, ...);
- ``latency_p50_us``, ``latency_p95_us``, ``latency_p99_us`` over every delivery, and per route
  (``latency_p95_us[pump-1>gateway]``; a route is a link a delivered event took, source > destination), nearest-rank;
- ``sensor_to_sink_p50_us`` ... where events reaching a sink carry their sensor's ``sampled_us``;
- ``segment_latency_p50_us`` ... (ns-3's arrival - emission, over every hop on a network segment) and
  ``segment_loss`` (the share of segment hops dropped) when the scenario has segments;
- ``detections_found``, ``detections_missed``, ``false_positives``, ``detection_latency_mean_us`` when a sensor
  uses the vibration model (cosim.edge);
- ``node_failures``: crashes applied by the schedule plus 1 when the run ended with a node's failure;
  ``completed``: 1 for a run with a footer, else 0.

A user's own measure is ``module:function``: ``function(trace)`` gets the run's ``cosim.trace.Trace`` and returns
a dict of numbers; its keys become columns as they are.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from cosim import trace as tracing
from cosim.errors import UsageError
from cosim.model import Scenario, SensorSpec
from cosim.report import PERCENTILES, percentile
from cosim.trace import Action, Delivered, Dropped, Filtered, Sent, Trace, Unroutable


def measure(trace_path: Path, scenario_path: Path, user: Sequence[Callable[[Trace], Mapping[str, Any]]] = ()
            ) -> dict[str, float]:
    """Every built-in measure of the run, then the user's (which may not reuse a built-in name)."""
    from cosim import loading

    trace = tracing.read(trace_path)
    scenario = loading.load(scenario_path)
    values = builtin(trace, scenario)
    for function in user:
        name = f"{function.__module__}:{function.__qualname__}"
        produced = function(trace)
        if not isinstance(produced, Mapping):
            raise UsageError(f"--measure {name} returned {type(produced).__name__}, not a dict of numbers")
        for key, value in produced.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UsageError(f"--measure {name}: {key!r} is {value!r}, not a number")
            if key in values:
                raise UsageError(f"--measure {name}: {key!r} is a built-in measure's name; call it something else")
            values[str(key)] = value
    return values


def builtin(trace: Trace, scenario: Scenario | None) -> dict[str, float]:
    counts: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    latencies: list[int] = []
    per_route: dict[str, list[int]] = defaultdict(list)
    sinks = {node.id for node in scenario.nodes if node.kind == "sink"} if scenario is not None else set()
    sensor_to_sink: list[int] = []
    on_segments: list[int] = []  # ns-3's latencies (arrival - emission) of the segment hops
    segment_drops = 0
    crashes = 0
    kinds = {Sent: "sent", Delivered: "delivered", Dropped: "dropped", Unroutable: "unroutable", Filtered: "filtered"}
    for record in trace.records:
        if isinstance(record, Action):
            crashes += record.action == "crash"
            continue
        counts[kinds[type(record)]] += 1
        if isinstance(record, Delivered):
            latencies.append(record.latency_us)
            per_route[f"{record.source}>{record.dest}"].append(record.latency_us)
            if record.segment is not None:
                on_segments.append(record.network_latency_us)
            sampled = record.data.get("sampled_us") if isinstance(record.data, dict) else None
            if record.dest in sinks and isinstance(sampled, int):
                sensor_to_sink.append(record.time_us - sampled)
        elif isinstance(record, Dropped):
            reasons[record.reason] += 1
            segment_drops += record.segment is not None
    values: dict[str, float] = {kind: counts[kind] for kind in ("sent", "delivered", "dropped", "unroutable",
                                                                 "filtered")}
    values.update({f"dropped.{reason}": n for reason, n in sorted(reasons.items())})
    values.update(_percentiles("latency", latencies))
    for route, samples in sorted(per_route.items()):
        values.update({f"{key}[{route}]": value for key, value in _percentiles("latency", samples).items()})
    values.update(_percentiles("sensor_to_sink", sensor_to_sink))
    if on_segments or segment_drops:
        values.update(_percentiles("segment_latency", on_segments))
        values["segment_loss"] = segment_drops / (len(on_segments) + segment_drops)
    values["node_failures"] = crashes + (1 if trace.error is not None and trace.error.node else 0)
    values["completed"] = 1 if trace.footer is not None else 0
    if scenario is not None and any(isinstance(n, SensorSpec) and n.model == "vibration" for n in scenario.nodes):
        values.update(detections(trace, scenario))
    return values


def _percentiles(prefix: str, samples: list[int]) -> dict[str, float]:
    if not samples:
        return {}
    ordered = sorted(samples)
    return {f"{prefix}_p{q}_us": percentile(ordered, q) for q in PERCENTILES}


def detections(trace: Trace, scenario: Scenario) -> dict[str, float]:
    """What the vibration model's anomalies came to (cosim.edge.detections, on the events that reached a sink)."""
    from cosim.edge.detections import report

    sinks = {node.id for node in scenario.nodes if node.kind == "sink"}
    events = [{"type": r.type, "time_us": r.time_us, "data": r.data} for r in trace.of(Delivered) if r.dest in sinks]
    result = report(scenario, events)
    found = [d for d in result.detections if d.detected_us is not None]
    latencies = [d.latency_us for d in found if d.latency_us is not None]
    values: dict[str, float] = {"detections_found": len(found),
                                "detections_missed": len(result.detections) - len(found),
                                "false_positives": len(result.false_positives)}
    if latencies:
        values["detection_latency_mean_us"] = math.fsum(latencies) / len(latencies)
    return values
