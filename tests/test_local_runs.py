"""Whole runs on the local runtime: byte-identical traces, the trace's header and footer, metrics, the CLI."""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import platform
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cosim import __version__, compose, loading, protocol
from cosim.run import CompletedRun, run
from cosim.seeds import node_seed

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = ROOT / "tests" / "scenarios_local"
PIPELINE = SCENARIOS / "pipeline.yaml"
FAILING = SCENARIOS / "failing.yaml"

TRACE_FIELDS = {"record", "seq", "source", "dest", "sent_us", "features", "truth", "counts", "scenario_sha256"}
# Wall-clock measurements (the runtime facts under "environment" appear in both, by design).
METRICS_FIELDS = {"wall_s", "round_trip", "speedup_step_loop", "speedup_whole_run", "coordinator_overhead", "p50_us",
                  "step_loop_s"}


def run_local(scenario: Path, trace: Path) -> CompletedRun:
    return run(scenario, runtime="local", trace_path=trace, watchdog_s=20.0)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def keys(value: Any) -> Iterator[str]:
    """Every mapping key anywhere in a JSON value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from keys(item)
    elif isinstance(value, list):
        for item in value:
            yield from keys(item)


def reseeded(tmp_path: Path, seed: int) -> Path:
    """pipeline.yaml with another seed, written elsewhere (so its build path is made absolute)."""
    text = PIPELINE.read_text(encoding="utf-8")
    assert "seed: 42\n" in text and "build: ../../containers/echo\n" in text
    text = text.replace("seed: 42\n", f"seed: {seed}\n").replace(
        "build: ../../containers/echo\n", f"build: {ROOT / 'containers' / 'echo'}\n")
    path = tmp_path / f"pipeline-{seed}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory) -> CompletedRun:
    return run_local(PIPELINE, tmp_path_factory.mktemp("first") / "pipeline.jsonl")


def test_two_runs_give_byte_identical_traces(first_run: CompletedRun, tmp_path: Path) -> None:
    second = run_local(PIPELINE, tmp_path / "again.jsonl")
    first_bytes = first_run.trace_path.read_bytes()
    assert first_bytes == second.trace_path.read_bytes()
    # ...and the run did something worth comparing: sensors, both replicas, anomalies, drops, the sink.
    trace = records(first_run.trace_path)
    assert {r["dest"] for r in trace if r["record"] == "delivered"} == {"echo-1", "echo-2", "sink"}
    assert any(r["record"] == "dropped" for r in trace)
    assert {r["source"] for r in trace if r["record"] == "sent"} == {"sensor-a", "sensor-b", "echo-1", "echo-2"}
    got = first_run.sinks["sink"]
    assert {e["data"]["data"]["truth"] for e in got if e["type"] == "echo"} == {"normal", "anomaly"}
    assert {e["type"] for e in got} == {"echo", "tick"}
    # Each service got its own seed in INIT, derived from the scenario seed and its id.
    for replica in ("echo-1", "echo-2"):
        ticks = [r["data"]["value"] for r in trace if r["record"] == "sent" and r["source"] == replica
                 and r["type"] == "tick"]
        rng = random.Random(node_seed(42, replica))
        assert ticks == [rng.randrange(1_000_000) for _ in range(20)]


def test_another_seed_gives_another_trace(first_run: CompletedRun, tmp_path: Path) -> None:
    other = run_local(reseeded(tmp_path, 43), tmp_path / "other.jsonl")
    same = run_local(reseeded(tmp_path, 42), tmp_path / "same.jsonl")

    def body(path: Path) -> list[str]:
        return path.read_text(encoding="utf-8").splitlines()[1:]  # past the header

    assert body(same.trace_path) == body(first_run.trace_path)  # the copy itself changes nothing but the header
    assert body(other.trace_path) != body(first_run.trace_path)
    assert records(other.trace_path)[0]["seed"] == 43


# cosim's runtime dependencies (pyproject.toml), whose versions the header's environment names.
COSIM_DEPENDENCIES = ("invoke", "jsonschema", "paho-mqtt", "python-on-whales", "pyyaml", "rich")  # not the extras


def test_trace_header_identifies_the_run(first_run: CompletedRun) -> None:
    header = records(first_run.trace_path)[0]
    assert header == {
        "record": "header", "format": "cosim-trace/1", "scenario": "local-pipeline",
        "scenario_sha256": hashlib.sha256(PIPELINE.read_bytes()).hexdigest(), "seed": 42,
        "compose_sha256": compose.sha256(loading.load(PIPELINE)),  # the machine-free identity
        "duration_us": 200_000, "quantum_us": 1000, "protocol": protocol.VERSION, "cosim": __version__,
        "barrier_groups": {}, "advance": "next-event",
        "nodes": {"echo-1": "service", "echo-2": "service", "sensor-a": "sensor", "sensor-b": "sensor",
                  "sink": "sink"},
        # Not hashed: what may differ between machines and runtimes.
        "environment": {"runtime": "local", "python": platform.python_version(), "services": {},
                        "dependencies": {name: importlib.metadata.version(name) for name in COSIM_DEPENDENCIES}},
    }


def test_footer_counts_match_the_records(first_run: CompletedRun) -> None:
    trace = records(first_run.trace_path)
    assert [r["record"] for r in trace].count("header") == 1
    footer = trace[-1]
    assert (footer["record"], footer["status"], footer["end_us"], footer["steps"]) == ("footer", "ok", 200_000, 200)
    assert footer["in_flight"] >= 0
    kinds = Counter(r["record"] for r in trace[1:-1])
    assert set(kinds) <= {"sent", "delivered", "dropped", "unroutable"}
    assert footer["counts"] == {kind: kinds.get(kind, 0) for kind in ("sent", "delivered", "dropped", "unroutable")}
    assert footer["counts"] == first_run.result.counts
    assert min(footer["counts"]["sent"], footer["counts"]["delivered"], footer["counts"]["dropped"]) > 0


def test_trace_is_canonical_json(first_run: CompletedRun) -> None:
    data = first_run.trace_path.read_bytes()
    assert data.endswith(b"\n") and b"\r" not in data
    for line in data.decode("utf-8").splitlines():
        assert line == json.dumps(json.loads(line), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def test_metrics_sit_beside_the_trace_and_stay_apart_from_it(first_run: CompletedRun) -> None:
    metrics_path = first_run.trace_path.with_name("pipeline.metrics.json")
    assert first_run.metrics_path == metrics_path and metrics_path.is_file()
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    assert metrics["scenario"] == "local-pipeline" and metrics["runtime"] == "local"
    # Next-event advance (the default): the executed steps and the skipped quanta make up the run's 200 quanta.
    assert metrics["advance"] == "next-event" and metrics["steps"] + metrics["quanta_skipped"] == 200
    assert 0 < metrics["steps"] < 200 and metrics["advances"] < 2 * 200
    assert set(metrics["round_trip"]) == {"echo-1", "echo-2"}
    assert not set(keys(metrics)) & TRACE_FIELDS  # no trace records or event content in the metrics
    trace_keys = set(keys(records(first_run.trace_path)))
    assert not trace_keys & METRICS_FIELDS  # and nothing measured on the wall clock in the trace
    assert (first_run.trace_path.parent / "pipeline.logs" / "echo-1.log").is_file()


# -- the CLI -------------------------------------------------------------------------------------------------


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_invoke_up_local_writes_the_trace(first_run: CompletedRun, tmp_path: Path) -> None:
    trace = tmp_path / "cli.jsonl"
    done = invoke("up", str(PIPELINE), "--runtime", "local", "--trace", str(trace))
    assert done.returncode == 0, done.stderr
    assert "local-pipeline" in done.stdout and str(trace) in done.stdout
    assert trace.read_bytes() == first_run.trace_path.read_bytes()  # the CLI runs the same deterministic run
    assert (tmp_path / "cli.metrics.json").is_file()


def test_invoke_up_of_a_failing_scenario_names_the_node(tmp_path: Path) -> None:
    trace = tmp_path / "failing.jsonl"
    done = invoke("up", str(FAILING), "--runtime", "local", "--trace", str(trace))
    assert done.returncode == 4
    assert "Traceback" not in done.stderr + done.stdout
    assert "cosim: error: node 'echo'" in done.stderr
    assert "ADVANCE to 3000 us" in done.stderr and "exit code 3" in done.stderr
    assert "echo: exiting with 3 as configured" in done.stderr
    last = records(trace)[-1]
    assert (last["record"], last["node"], last["error"]) == ("error", "echo", "node_failure")
    assert records(trace)[0]["record"] == "header"


def test_each_run_has_its_own_service_logs(tmp_path: Path) -> None:
    """A failure's "last lines of its log" must come from this run, never an earlier one."""
    from cosim.errors import NodeFailure

    trace = tmp_path / "failing.jsonl"
    logs = tmp_path / "failing.logs"
    with pytest.raises(NodeFailure):
        run_local(FAILING, trace)
    first = (logs / "echo.log").read_text(encoding="utf-8")
    assert first.count("echo: exiting with 3 as configured") == 1, first
    (logs / "a-node-of-an-older-scenario.log").write_text("stale\n", encoding="utf-8")
    with pytest.raises(NodeFailure) as failure:
        run_local(FAILING, trace)
    assert (logs / "echo.log").read_text(encoding="utf-8") == first  # the second run's log only
    assert failure.value.log_tail.count("echo: exiting with 3 as configured") == 1
    assert not (logs / "a-node-of-an-older-scenario.log").exists()


# -- the summary `invoke up` prints ------------------------------------------------------------------------------


def invoke_up_local(scenario: Path, trace: Path) -> list[str]:
    done = subprocess.run([sys.executable, "-m", "invoke", "up", str(scenario), "--runtime", "local", "--quiet",
                           "--trace", str(trace)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout.splitlines()


def assert_summary_matches_the_trace(lines: list[str], scenario: Path, trace: Path) -> dict[str, Any]:
    """The lines every summary has, checked against the trace and the metrics file the run wrote."""
    loaded = loading.load(scenario)
    footer = records(trace)[-1]
    counts = footer["counts"]
    assert lines[0] == (f"cosim: scenario '{loaded.name}' ran on the local runtime: {loaded.duration_us / 1e6:g} s "
                        f"virtual, {loaded.steps} steps")
    assert re.fullmatch(r"  speed-up: step loop [\d.]+x real time \(\d+\.\d\d s wall\); whole run [\d.]+x real time "
                        r"\(\d+\.\d\d s wall, with start and teardown\)", lines[1]), lines[1]
    assert lines[2] == (f"  events: {counts['sent']} sent, {counts['delivered']} delivered, {counts['dropped']} "
                        f"dropped, {counts['unroutable']} unroutable")
    for sink in (node.id for node in loaded.nodes if node.kind == "sink"):
        received = sum(1 for r in records(trace) if r["record"] == "delivered" and r["dest"] == sink)
        assert f"  sink {sink!r} received {received} event(s)" in lines
    metrics_path = trace.with_name(trace.name.removesuffix(".jsonl") + ".metrics.json")
    report_path = trace.with_name(trace.name.removesuffix(".jsonl") + ".report.html")
    assert lines[-3:] == [f"  trace:   {trace}", f"  metrics: {metrics_path}", f"  report:  {report_path}"]
    assert report_path.is_file()
    metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    for node_id in metrics["round_trip"]:
        assert any(line.startswith(f"  {node_id}: ADVANCE->DONE p50 ") for line in lines), node_id
    return counts


def test_the_summary_of_a_scenario_without_a_detector_reports_no_detections(tmp_path: Path) -> None:
    trace = tmp_path / "pipeline.jsonl"
    lines = invoke_up_local(PIPELINE, trace)
    assert_summary_matches_the_trace(lines, PIPELINE, trace)
    # Its sensors inject anomalies, but nothing classifies them: nothing was missed, nothing was evaluated.
    assert not any("MISSED" in line or "detect" in line for line in lines), lines
    assert "  anomalies: 2 injected, none evaluated (no inference verdict reached a sink)" in lines


def test_the_summary_of_the_default_scenario_reports_each_anomaly(tmp_path: Path) -> None:
    from cosim.edge import detections
    from tests.skip_policy import host_tool

    host_tool("mosquitto")  # the default scenario's broker, on the local runtime

    scenario = ROOT / "scenarios" / "default.yaml"
    trace = tmp_path / "default.jsonl"
    lines = invoke_up_local(scenario, trace)
    assert_summary_matches_the_trace(lines, scenario, trace)
    loaded = loading.load(scenario)
    report = detections.report(loaded, detections.sink_events_from_trace(trace, loaded))
    assert report.verdicts > 0 and report.all_detected
    assert f"  detections ({report.verdicts} verdicts reached a sink):" in lines
    for found in report.detections:
        assert (f"    detected  {found.sensor} anomaly at {found.at_us / 1e6:.3f} s (severity {found.severity:g}): "
                f"window sampled at {found.sampled_us / 1e6:.3f} s, verdict at the sink "
                f"{found.latency_us / 1e3:.3f} ms later") in lines
    assert sum(line.startswith("    detected  ") for line in lines) == len(report.detections) == 3
    assert not any("MISSED" in line for line in lines)


def test_a_sensor_model_is_a_plug_in_that_makes_the_readings_and_adds_to_the_summary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cosim.plugins: a sensor names its model; the registered plug-in makes each reading's fields, sets the default
    event type, and its summary hook runs for a scenario that uses it (and only then)."""
    from cosim import plugins
    from cosim.cli import print_summary

    seen: list[int] = []
    ramp = plugins.SensorPlugin(
        name="ramp", event_type="level", reading=lambda rng, severity: {"level": round(rng.random(), 6), "severity": severity},
        summary=lambda scenario, sink_events, out: (seen.append(len(sink_events)),
                                                    out.write(f"  ramp: {len(sink_events)} level(s) reached a sink\n")))
    monkeypatch.setattr(plugins, "_registered", plugins.sensor_models())  # this test's registration ends with it
    plugins.register(ramp)
    scenario_path = tmp_path / "ramp.yaml"
    scenario_path.write_text(
        "name: ramp\nseed: 3\nduration_us: 10000\nquantum_us: 1000\nnodes:\n"
        "  - {id: tank, kind: sensor, model: ramp, period_us: 2000, anomalies: [{at_us: 4000, severity: 0.5}],\n"
        "     links: [{to: out, latency_us: 1000}]}\n"
        "  - {id: out, kind: sink}\n"
        "routes:\n  - {from: tank, to: [out]}\n")
    completed = run(str(scenario_path), runtime="local", trace_path=str(tmp_path / "ramp.jsonl"))
    received = completed.sinks["out"]
    assert [e["type"] for e in received] == ["level"] * 4  # read at 2, 4, 6, 8 ms (10 ms arrives after the end)
    assert [e["data"]["truth"] for e in received] == ["normal", "anomaly", "normal", "normal"]
    assert all(set(e["data"]) == {"sensor", "window", "sampled_us", "level", "severity", "truth"} for e in received)
    assert [e["data"]["severity"] for e in received] == [0.0, 0.5, 0.0, 0.0]  # the anomaly reached the model
    out = io.StringIO()
    print_summary(completed, out)
    assert "  ramp: 4 level(s) reached a sink\n" in out.getvalue() and seen == [4]
    assert "detections" not in out.getvalue() and "anomalies:" not in out.getvalue()  # vibration is not used


def test_the_built_in_uniform_sensor_model_sends_one_seeded_value_per_reading(tmp_path: Path) -> None:
    """`model: uniform` (part of cosim, no application): a `reading` event per period with one seeded value in
    [0, 1); the same seed gives the same values, another seed others."""
    def values(seed: int) -> list[float]:
        path = tmp_path / f"uniform-{seed}.yaml"
        path.write_text(
            f"name: uniform\nseed: {seed}\nduration_us: 20000\nquantum_us: 1000\nnodes:\n"
            "  - {id: probe, kind: sensor, model: uniform, period_us: 4000, links: [{to: out, latency_us: 1000}]}\n"
            "  - {id: out, kind: sink}\nroutes:\n  - {from: probe, to: [out]}\n")
        received = run(str(path), runtime="local", trace_path=str(tmp_path / f"uniform-{seed}.jsonl")).sinks["out"]
        assert [e["type"] for e in received] == ["reading"] * 4  # read at 4, 8, 12, 16 ms
        assert all(set(e["data"]) == {"sensor", "window", "sampled_us", "value", "severity", "truth"} for e in received)
        return [e["data"]["value"] for e in received]

    first = values(5)
    assert all(0.0 <= value < 1.0 for value in first) and len(set(first)) == 4
    assert values(5) == first and values(6) != first


# -- where a service runs, and how it finds the SDKs ------------------------------------------------------------


NODE_SERVICE = """\
// A protocol echo that needs the Node SDK and a file beside it (read relative to its working directory).
const sdk = require("cosim-service");
const tag = require("fs").readFileSync("tag.txt", "utf8").trim();
const readline = require("readline");
const send = (msg) => process.stdout.write(JSON.stringify(msg) + "\\n");
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const msg = JSON.parse(line);
  if (msg.type === "INIT") send({ type: "READY", protocol: 1, time_us: 0, capabilities: [sdk.name, tag] });
  else if (msg.type === "ADVANCE") send({ type: "DONE", time_us: msg.time_us, events: msg.events.map((e) =>
    ({ type: "echo", time_us: e.time_us, data: { sdk: sdk.name, tag } })) });
  else if (msg.type === "SHUTDOWN") process.exit(0);
});
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="needs node on the host")
def test_a_local_command_runs_in_its_folder_and_finds_the_node_sdk(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from cosim import service_sources

    sdk = tmp_path / "sdk"
    (sdk / "node").mkdir(parents=True)
    (sdk / "node" / "package.json").write_text('{"name": "cosim-service", "main": "index.js"}\n')
    (sdk / "node" / "index.js").write_text('module.exports = { name: "fake-node-sdk" };\n')
    monkeypatch.setattr(service_sources, "sdk_dir", lambda: sdk)
    monkeypatch.setenv(service_sources.CACHE_ENV, str(tmp_path / "cache"))
    folder = tmp_path / "services" / "js"
    folder.mkdir(parents=True)
    (folder / "echo.js").write_text(NODE_SERVICE)
    (folder / "tag.txt").write_text("from-its-folder\n")
    (folder / "Dockerfile").write_text("FROM scratch\n")
    scenario = tmp_path / "scenarios" / "js.yaml"
    scenario.parent.mkdir()
    scenario.write_text("""\
name: js-local
seed: 1
duration_us: 10000
nodes:
  - {id: sensor, kind: sensor, period_us: 5000}
  - {id: js, kind: service, build: ../services/js, local_command: [node, echo.js]}
  - {id: out, kind: sink}
routes:
  - {from: sensor, to: [js]}
  - {from: js, to: [out]}
""")
    done = run_local(scenario, tmp_path / "trace.jsonl")
    received = [event["data"] for event in done.sinks["out"]]
    assert received and all(data == {"sdk": "fake-node-sdk", "tag": "from-its-folder"} for data in received)
    assert not (folder / "node_modules").exists()  # nothing written into the service folder
