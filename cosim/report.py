"""`invoke report TRACE`: one self-contained HTML page about a run, written beside its trace.

The page holds the run's manifest (the trace header), the wall-clock metrics when the metrics file is there,
and charts drawn as small hand-written inline SVG (cosim.charts): an event timeline per node, the virtual latency per link and
drops per link; the sensor models' plug-ins add their parts (cosim.edge: sensor to verdict latency, each injected
anomaly with its detection). No script, no stylesheet or font from elsewhere: it opens offline. A run that failed
shows where and why.

The scenario file is needed only for those parts (which sensors, which anomalies were injected); it is found by
its SHA-256 (the header's ``scenario_sha256``), so a report never pairs a trace with an edited scenario.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosim import loading, plugins
from cosim import schedule as scheduling
from cosim import trace as traces
from cosim.charts import CYCLE, Chart
from cosim.errors import ScenarioError
from cosim.metrics import speedups
from cosim.model import Scenario
from cosim.resources import data_path
from cosim.run import artifact_paths
from cosim.trace import Action, Delivered, Dropped, Filtered, Footer, RunError, Sent, Trace, Unroutable

SUFFIX = ".report.html"
PERCENTILES = (50, 95, 99)
MAX_LINKS_DRAWN = 12  # latency curves per chart (the table lists every link)

COLOURS = {"sent": "#1f77b4", "delivered": "#2ca02c", "dropped": "#d62728", "unroutable": "#9467bd",
           "anomaly": "#ff7f0e"}


def report_path(trace_path: Path) -> Path:
    """``traces/x.jsonl`` -> ``traces/x.report.html`` (beside the metrics file and the logs)."""
    metrics_path, _ = artifact_paths(trace_path)
    return metrics_path.with_name(metrics_path.name[: -len(".metrics.json")] + SUFFIX)


def write_report(trace_path: Path, *, scenario_path: Path | None = None, output: Path | None = None,
                 loaded: Scenario | None = None) -> Path:
    """``loaded``: the run's scenario as already loaded (`cosim up`), used when its hash is the trace's."""
    return draft_report(trace_path, scenario_path=scenario_path, output=output, loaded=loaded).write()


@dataclass(frozen=True)
class Draft:
    """A report drawn from its trace, all but the metrics, which the run writes last (`cosim up` draws it while
    the runtime tears down); ``write`` adds them from the metrics file and writes the page."""

    trace_path: Path
    target: Path
    parts: tuple[str, ...]  # the page's parts; the metrics go at ``metrics_at``
    metrics_at: int
    title: str

    def write(self) -> Path:
        metrics = _read_metrics(artifact_paths(self.trace_path)[0])
        parts = [*self.parts[:self.metrics_at], "<h2>Metrics</h2>" + _metrics_section(metrics),
                 *self.parts[self.metrics_at:]]
        body = "\n".join(part for part in parts if part)
        self.target.write_text(f"<!DOCTYPE html>\n<html lang=en>\n<head>\n<meta charset=utf-8>\n<title>cosim report: "
                               f"{_e(self.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n"
                               f"</html>\n", encoding="utf-8")
        return self.target


def draft_report(trace_path: Path, *, scenario_path: Path | None = None, output: Path | None = None,
                 loaded: Scenario | None = None) -> Draft:
    """The report of ``trace_path`` but its metrics (see ``write_report``)."""
    trace = traces.read(trace_path)
    scenario: Scenario | None
    if loaded is not None and loaded.sha256 == trace.header.scenario_sha256:
        scenario, scenario_note = loaded, f"scenario file: {loaded.path}"
    else:
        scenario, scenario_note = find_scenario(trace, _read_metrics(artifact_paths(trace_path)[0]), scenario_path)
    parts, metrics_at = _parts(trace, scenario, scenario_note)
    return Draft(trace_path, output or report_path(trace_path), tuple(parts), metrics_at, trace.header.scenario)


def _read_metrics(path: Path) -> dict[str, Any] | None:
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return metrics if isinstance(metrics, dict) else None


def find_scenario(trace: Trace, metrics: Mapping[str, Any] | None,
                  explicit: Path | None = None) -> tuple[Scenario | None, str]:
    """The scenario file whose bytes hash to the header's scenario_sha256, and a note on where it came from."""
    candidates: list[Path] = []
    if explicit is not None:
        candidates.append(explicit)
    if metrics and isinstance(metrics.get("scenario_file"), str):
        candidates.append(Path(metrics["scenario_file"]))
    candidates.append(data_path("scenarios", f"{trace.header.scenario}.yaml"))
    candidates += sorted(data_path("scenarios").glob("*.yaml")) + sorted(trace.path.parent.glob("*.yaml"))
    for candidate in dict.fromkeys(candidates):
        try:
            if hashlib.sha256(candidate.read_bytes()).hexdigest() != trace.header.scenario_sha256:
                continue
            return loading.load(candidate), f"scenario file: {candidate}"
        except (OSError, ScenarioError):
            continue
    return None, ("the scenario file (SHA-256 " + trace.header.scenario_sha256[:12] + "...) was not found, so "
                  "injected anomalies cannot be shown")


# -- numbers ----------------------------------------------------------------------------------------------------


def percentile(ordered: Sequence[int], q: float) -> int:
    """Nearest-rank percentile of sorted values."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass(frozen=True)
class LinkStats:
    source: str
    dest: str
    latencies_us: tuple[int, ...]  # sorted
    dropped: int

    @property
    def name(self) -> str:
        return f"{self.source} → {self.dest}"

    @property
    def delivered(self) -> int:
        return len(self.latencies_us)

    @property
    def loss(self) -> float | None:
        settled = self.delivered + self.dropped
        return self.dropped / settled if settled else None


def link_stats(trace: Trace) -> list[LinkStats]:
    latencies: dict[tuple[str, str], list[int]] = defaultdict(list)
    dropped: Counter[tuple[str, str]] = Counter()
    for record in trace.records:
        if isinstance(record, Delivered):
            latencies[(record.source, record.dest)].append(record.latency_us)
        elif isinstance(record, Dropped):
            dropped[(record.source, record.dest)] += 1
    return [LinkStats(s, d, tuple(sorted(latencies[(s, d)])), dropped[(s, d)])
            for s, d in sorted(set(latencies) | set(dropped))]


# -- charts -----------------------------------------------------------------------------------------------------


def seconds_axis(chart: Chart, duration_us: int) -> None:
    chart.x_range = (0, duration_us / 1e6)
    chart.x_label = "virtual time (s)"
    chart.x_grid = True


def row_height(rows: int, per_row: float) -> float:
    return max(60.0, per_row * rows + 10)


def timeline_chart(trace: Trace) -> str:
    """Per node: when it sent (its emissions), received (deliveries to it) and lost events (drops of its
    emissions, at emission time); the failure, if any, as a red line."""
    nodes = [node for node, kind in trace.header.nodes.items() if kind != "infrastructure"]
    rows = {node: index for index, node in enumerate(reversed(nodes))}
    series: dict[str, dict[str, list[float]]] = {kind: defaultdict(list) for kind in ("sent", "delivered", "dropped", "unroutable")}
    for record in trace.records:
        if isinstance(record, Delivered):
            series["delivered"][record.dest].append(record.time_us / 1e6)
        elif isinstance(record, Sent):
            series["sent"][record.source].append(record.time_us / 1e6)
        elif isinstance(record, Dropped):
            series["dropped"][record.source].append(record.time_us / 1e6)
        elif isinstance(record, Unroutable):
            series["unroutable"][record.source].append(record.time_us / 1e6)
    chart = Chart("events per node over virtual time", (0, 1), (-0.6, len(nodes) - 0.4), rows=list(rows),
                  plot_height=row_height(len(nodes), 40))
    seconds_axis(chart, trace.header.duration_us)
    offsets = {"sent": 0.27, "delivered": 0.0, "dropped": -0.27, "unroutable": -0.27}
    for kind, by_node in series.items():
        drawn = False
        for node, times in by_node.items():
            if node in rows:
                # One path of tick marks per node and kind (a mark per pixel column, however many events).
                chart.ticks(times, rows[node] + offsets[kind], COLOURS[kind])
                drawn = True
        if drawn:
            chart.add_legend(kind, COLOURS[kind], "tick")
    if trace.error is not None:
        chart.vline(trace.error.time_us / 1e6, COLOURS["dropped"], dash="6 3", width=1.5)
        chart.add_legend(f"run failed ({trace.error.error})", COLOURS["dropped"], dash="6 3")
    actions = trace.of(Action)
    for action in actions:  # the schedule's changes, so their effects line up
        chart.vline(action.time_us / 1e6, "#7a5195", dash="2 2")
    if actions:
        chart.add_legend("schedule action", "#7a5195", dash="2 2")
    return chart.svg()


def latency_chart(curves: Sequence[tuple[str, Sequence[int]]], title: str) -> str:
    """CDF of virtual latency per route, p50/p95/p99 marked on each curve."""
    drawn = [(name, values) for name, values in curves[:MAX_LINKS_DRAWN] if values]
    high = max((values[-1] for _, values in drawn), default=1) / 1e3
    low = min((values[0] for _, values in drawn), default=0) / 1e3
    pad = (high - low) * 0.05 or 0.5
    chart = Chart(title, (low - pad, high + pad), (0, 1.02), x_label="virtual latency (ms)",
                  y_label="fraction of events", legend_at="right", x_grid=True, y_grid=True)
    markers = {50: "o", 95: "s", 99: "^"}
    for index, (name, values) in enumerate(drawn):
        colour = CYCLE[index % len(CYCLE)]
        n = len(values)
        points = [(values[0] / 1e3, 0.0)] + [(v / 1e3, (i + 1) / n) for i, v in enumerate(values)]
        chart.line(points, colour, step=True)
        for q in PERCENTILES:
            chart.marker(percentile(values, q) / 1e3, q / 100, markers[q], colour)
        chart.add_legend(name, colour)
    for q in PERCENTILES:
        chart.add_legend(f"p{q}", "#444444", markers[q])
    return chart.svg()


def drops_chart(links: Sequence[LinkStats]) -> str:
    names = [link.name for link in reversed(links)]
    widest = max((link.delivered + link.dropped for link in links), default=1) or 1
    chart = Chart("drops and losses per link", (0, widest * 1.15), (-0.6, len(links) - 0.4), rows=names,
                  x_label="events on the link", plot_height=row_height(len(links), 30))
    for index, link in enumerate(reversed(links)):
        chart.rect(0, index - 0.4, link.delivered, 0.8, COLOURS["delivered"])
        if link.dropped:
            chart.rect(link.delivered, index - 0.4, link.dropped, 0.8, COLOURS["dropped"])
            if link.loss is not None:
                chart.text(link.delivered + link.dropped + widest * 0.01, index,
                           f"{link.dropped} lost ({link.loss:.1%})")
    chart.add_legend("delivered", COLOURS["delivered"], "box")
    chart.add_legend("dropped (loss)", COLOURS["dropped"], "box")
    return chart.svg()


# -- page -------------------------------------------------------------------------------------------------------

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 2em; border-bottom: 1px solid #ddd; }
.sub { color: #666; margin-top: 0; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { text-align: left; padding: 0.2em 0.8em 0.2em 0; vertical-align: top; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
tr + tr td { border-top: 1px solid #eee; }
code { font-size: 0.95em; word-break: break-all; }
.failed { background: #fdecea; border-left: 4px solid #d62728; padding: 0.6em 1em; }
.ok { background: #edf7ed; border-left: 4px solid #2ca02c; padding: 0.6em 1em; }
.note { color: #666; font-size: 0.9em; }
figure { margin: 1em 0; } svg { max-width: 100%; height: auto; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def html_table(header: Sequence[str], rows: Iterable[Sequence[Any]], numeric: Iterable[int] = ()) -> str:
    numeric = set(numeric)
    head = "".join(f'<th{" class=n" if i in numeric else ""}>{_e(h)}</th>' for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f'<td{" class=n" if i in numeric else ""}>{_e(c)}</td>' for i, c in enumerate(row))
                   + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _pairs(rows: Iterable[tuple[str, Any]]) -> str:
    return "<table>" + "".join(f"<tr><th>{_e(k)}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"


def _environment(environment: Mapping[str, Any]) -> str:
    rows = []
    for key, value in environment.items():
        if isinstance(value, Mapping) and value:
            inner = "; ".join(f"{k} {json.dumps(v) if not isinstance(v, str) else v}" if not isinstance(v, Mapping)
                              else f"{k}: " + ", ".join(f"{a} {b}" for a, b in v.items()) for k, v in value.items())
            rows.append((key, f"<code>{_e(inner)}</code>"))
        else:
            rows.append((key, f"<code>{_e(value)}</code>"))
    return _pairs(rows)


def _outcome(trace: Trace) -> str:
    header = trace.header
    end = trace.end
    if isinstance(end, Footer):
        executed = (f" ({end.executed['steps']} executed, {end.executed['skipped']} skipped: {header.advance} advance)"
                    if end.executed else "")
        return (f'<p class=ok>Completed: {header.duration_us / 1e6:g} s of virtual time in {end.steps} steps'
                f'{executed}; {end.in_flight} event(s) still on a link at the end.</p>')
    if isinstance(end, RunError):
        node = f" at node <b>{_e(end.node)}</b>" if end.node else ""
        step = end.time_us // header.quantum_us
        return (f'<div class=failed><b>This run failed</b>{node}: <code>{_e(end.error)}</code> at virtual time '
                f'{end.time_us / 1e6:g} s (after step {step} of {header.duration_us // header.quantum_us}).'
                f'<br>{_e(end.detail)}<br><span class=note>Every record before the failure is kept; the charts '
                f'show the run up to it.</span></div>')
    return ('<div class=failed><b>The trace is incomplete</b>: it has neither a footer nor an error record (the '
            'run was killed before it could finish the trace).</div>')


def _counts(trace: Trace) -> dict[str, int]:
    counts = Counter(type(r).__name__.lower() for r in trace.records)
    return {kind: counts.get(kind, 0) for kind in ("sent", "delivered", "dropped", "unroutable")}


def _schedule_section(trace: Trace) -> str:
    """The schedule's actions as applied (one row each), and the drops by reason: what each change cost."""
    actions = trace.of(Action)
    reasons = Counter(record.reason for record in trace.of(Dropped))
    filtered = len(trace.of(Filtered))
    if not actions and not filtered and set(reasons) <= {"loss"}:
        return ""
    rows = [(f"{a.time_us / 1e6:.3f}", scheduling.describe({"action": a.action, "time_us": a.time_us, **a.details}))
            for a in actions]
    drops = ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) or "none"
    return ("<h2>Schedule</h2>" + html_table(("at s", "action"), rows, numeric=(0,))
            + f"<p>Dropped by reason: {_e(drops)}. Filtered by a route's <code>during</code> windows: {filtered}.</p>")


@dataclass(frozen=True)
class SenderStats:
    """One sender on one ns-3 segment: ns-3's latencies (arrival - emission) and its losses by reason."""

    segment: str
    source: str
    latencies_us: tuple[int, ...]  # sorted
    drops: Mapping[str, int]  # reason -> count

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    @property
    def loss(self) -> float | None:
        settled = len(self.latencies_us) + self.dropped
        return self.dropped / settled if settled else None


def segment_stats(trace: Trace) -> list[SenderStats]:
    """Per (segment, sender): the contention a medium shows, from the records of events that travelled on it."""
    latencies: dict[tuple[str, str], list[int]] = defaultdict(list)
    drops: dict[tuple[str, str], Counter[str]] = defaultdict(Counter)
    for record in trace.records:
        if isinstance(record, Delivered) and record.segment is not None:
            latencies[(record.segment, record.source)].append(record.network_latency_us)
        elif isinstance(record, Dropped) and record.segment is not None:
            drops[(record.segment, record.source)][record.reason] += 1
    return [SenderStats(segment, source, tuple(sorted(latencies[(segment, source)])), dict(drops[(segment, source)]))
            for segment, source in sorted(set(latencies) | set(drops))]


def _segments_section(trace: Trace) -> str:
    """Latency and loss per sender on each ns-3 segment (empty without segments)."""
    senders = segment_stats(trace)
    if not senders:
        return ""
    curves = [(f"{sender.source} ({sender.segment})", sender.latencies_us) for sender in senders]
    rows = [(sender.segment, sender.source, len(sender.latencies_us),
             *(f"{percentile(sender.latencies_us, q) / 1e3:.3f}" if sender.latencies_us else "" for q in (50, 95)),
             f"{sender.latencies_us[-1] / 1e3:.3f}" if sender.latencies_us else "", sender.dropped,
             f"{sender.loss:.2%}" if sender.loss is not None else "",
             ", ".join(f"{n} {reason}" for reason, n in sorted(sender.drops.items()))) for sender in senders]
    chart = (f"<figure>{latency_chart(curves, 'ns-3 latency per sender (CDF)')}</figure>"
             if any(values for _, values in curves) else "")
    return ("<h2>Network segments (ns-3)</h2><p class=note>Latency on the segment as ns-3 computed it (arrival - "
            "emission; each event is delivered one quantum after its arrival), and the losses with ns-3's reasons.</p>"
            + chart + html_table(("segment", "sender", "delivered", "p50 ms", "p95 ms", "max ms", "dropped", "loss",
                                  "drop reasons"), rows, numeric=range(2, 8)))


def _metrics_section(metrics: Mapping[str, Any] | None) -> str:
    if metrics is None:
        return "<p class=note>No metrics file beside the trace.</p>"
    overhead = metrics.get("coordinator_overhead") or {}
    rows = [(f"speed-up, {name}", text) for name, text in speedups(metrics)]
    rows.append(("steps executed", _e(metrics.get("steps"))
                 + (f" ({_e(metrics['advance'])} advance: {_e(metrics.get('quanta_skipped'))} quanta skipped, "
                    f"{_e(metrics.get('advances'))} ADVANCE messages)" if metrics.get("advance") else "")))
    if overhead.get("share") is not None:
        rows.append(("coordinator overhead", f"{overhead['share'] * 100:.1f}% of the step loop, "
                                             f"{overhead['per_step_us']:.1f} µs CPU per step"))
    round_trips = [(node, s["count"], f"{s['p50_us']:.0f}", f"{s['p95_us']:.0f}", f"{s['p99_us']:.0f}", f"{s['mean_us']:.0f}")
                   for node, s in sorted((metrics.get("round_trip") or {}).items()) if s]
    table = html_table(("service", "steps", "p50 µs", "p95 µs", "p99 µs", "mean µs"), round_trips, numeric=range(1, 6))
    return (_pairs(rows) + "<h3>ADVANCE → DONE round trip per service (wall clock)</h3>" + table
            + "<p class=note>Wall-clock measurements of this run: they vary between runs and are not in the trace.</p>")


def latency_rows(curves: Sequence[tuple[str, Sequence[int]]]) -> list[tuple[Any, ...]]:
    return [(name, len(values), *(f"{percentile(values, q) / 1e3:.3f}" for q in PERCENTILES),
             f"{values[-1] / 1e3:.3f}") for name, values in curves if values]


def _parts(trace: Trace, scenario: Scenario | None, scenario_note: str = "") -> tuple[list[str], int]:
    """The page's parts but its metrics, and where those go."""
    header = trace.header
    counts = _counts(trace)
    links = link_stats(trace)
    hops = [(link.name, link.latencies_us) for link in links]
    parts = [f"<h1>cosim run: {_e(header.scenario)}</h1>"]
    if scenario is not None and scenario.description:
        parts.append(f"<p class=sub>{_e(scenario.description)}</p>")
    parts.append(f"<p class=sub>trace <code>{_e(trace.path)}</code></p>")
    parts.append(_outcome(trace))
    parts.append(html_table(("sent", "delivered", "dropped", "unroutable"), [list(counts.values())], numeric=range(4)))

    parts.append("<h2>Manifest</h2>")
    parts.append(_pairs([
        ("scenario", _e(header.scenario)), ("scenario SHA-256", f"<code>{_e(header.scenario_sha256)}</code>"),
        ("compose SHA-256", f"<code>{_e(header.compose_sha256)}</code>"), ("seed", _e(header.seed)),
        ("duration", f"{header.duration_us / 1e6:g} s virtual ({header.duration_us} µs)"),
        ("quantum", f"{header.quantum_us} µs ({header.duration_us // header.quantum_us} steps)"),
        ("advance", _e(header.advance)),
        ("nodes", _e(", ".join(f"{node} ({kind})" for node, kind in header.nodes.items()))),
        ("versions", f"cosim {_e(header.cosim)}, protocol {_e(header.protocol)}, trace format {_e(header.format)}"),
    ]))
    if header.environment:
        parts.append("<h3>Environment (not hashed)</h3>" + _environment(header.environment))
    parts.append(f"<p class=note>{_e(scenario_note)}</p>" if scenario_note else "")

    parts.append(_schedule_section(trace))
    metrics_at = len(parts)

    parts.append("<h2>Event timeline</h2>")
    parts.append(f"<figure>{timeline_chart(trace)}</figure>")

    parts.append("<h2>Virtual latency per route</h2>")
    if any(values for _, values in hops):
        parts.append(f"<figure>{latency_chart(hops, 'virtual latency per link (CDF)')}</figure>")
        parts.append(html_table(("route", "delivered", "p50 ms", "p95 ms", "p99 ms", "max ms"), latency_rows(hops),
                                numeric=range(1, 6)))
    else:
        parts.append("<p class=note>No event was delivered.</p>")

    added = _plugin_parts(trace, scenario)
    for addition in added:
        parts.extend(addition.latency)

    parts.append(_segments_section(trace))

    parts.append("<h2>Drops and losses per link</h2>")
    if links:
        parts.append(f"<figure>{drops_chart(links)}</figure>")
        parts.append(html_table(("link", "delivered", "dropped", "loss"),
                                [(link.name, link.delivered, link.dropped,
                                  f"{link.loss:.2%}" if link.loss is not None else "") for link in links],
                                numeric=range(1, 4)))
        if trace.footer is not None and trace.footer.in_flight:
            parts.append(f"<p class=note>{trace.footer.in_flight} event(s) were still on a link at the end (sent, "
                         "neither delivered nor dropped).</p>")
    else:
        parts.append("<p class=note>No event travelled on a link.</p>")

    for addition in added:
        parts.extend(addition.sections)
    return parts, metrics_at


def _plugin_parts(trace: Trace, scenario: Scenario | None) -> list[plugins.ReportParts]:
    """What the scenario's sensor plug-ins add to the page (e.g. cosim.edge: the detections); none without the file."""
    found: list[plugins.ReportParts] = []
    if scenario is None:
        return found
    for plugin in plugins.used_by(scenario):
        if plugin.report is not None and (parts := plugin.report(trace, scenario)) is not None:
            found.append(parts)
    return found
