"""The edge scenarios end to end: real Mosquitto, the paho-mqtt gateway and ONNX Runtime, in virtual time.

Every assertion reads the trace file back (not in-memory state): anomalies detected, no false alarm, the model's
hash on every verdict, readings through the gateway, the same bytes on the local and the Docker runtime and from
run to run, and an independent MQTT client seeing the real messages while a Docker run is going.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cosim.edge import detections
from cosim.loading import load
from cosim.model import Scenario
from cosim.run import CompletedRun, run
from cosim.service_sources import service_image

from .conftest import assert_same_simulation, cosim_resources, invoke_up_session

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "scenarios" / "default.yaml"
REPLICAS = ROOT / "scenarios" / "replicas.yaml"
MODEL_SHA256 = hashlib.sha256((ROOT / "containers" / "ml-inference" / "model.onnx").read_bytes()).hexdigest()
SENSORS = ("pump-1", "pump-2", "fan-1")
WATCHDOG_S = 30.0
OBSERVER_DEADLINE_S = 120.0  # wall clock: the run must get going and the client must see its messages by then


def mosquitto_missing() -> bool:
    return (shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/local/sbin:/usr/sbin:/sbin")) is None


def needs_mosquitto(test: Any) -> Any:
    """Marks a test that runs the local runtime with a real broker; skipped (with the reason) without one."""
    skip = pytest.mark.skipif(mosquitto_missing(),
                              reason="needs `mosquitto` on the host (apt-get install mosquitto)")
    return pytest.mark.mosquitto(skip(test))


def run_quietly(scenario: Path, runtime: str, trace: Path, **kwargs: Any) -> CompletedRun:
    return run(scenario, runtime=runtime, trace_path=trace, watchdog_s=WATCHDOG_S, **kwargs)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def environment(summary: CompletedRun) -> dict[str, Any]:
    """The runtime manifest from the metrics file beside the trace."""
    return json.loads(summary.metrics_path.read_text(encoding="utf-8"))["environment"]


def scenario_copy(source: Path, tmp_path: Path, replace: dict[str, str]) -> Path:
    """``source`` written into tmp_path with ``replace`` applied and its `build:` paths made absolute."""
    text = source.read_text(encoding="utf-8")
    for old, new in {"build: ../containers/": f"build: {ROOT / 'containers'}/", **replace}.items():
        assert old in text, f"{source.name} no longer contains {old!r}"
        text = text.replace(old, new)
    path = tmp_path / source.name
    path.write_text(text, encoding="utf-8")
    return path


def assert_edge_trace(trace_path: Path, scenario: Scenario, inference_nodes: set[str]) -> None:
    """What the trace of a vibration-monitoring run must show, read back from the file."""
    trace = records(trace_path)
    assert trace[0]["record"] == "header" and trace[-1]["record"] == "footer", trace[-1]
    assert trace[-1]["status"] == "ok" and trace[-1]["end_us"] == scenario.duration_us

    # Every reading that reached the gateway went through the broker and came back on its sensor's topic.
    to_gateway = [r for r in trace if r["record"] == "delivered" and r["dest"] == "gateway"]
    from_gateway = [r for r in trace if r["record"] == "sent" and r["source"] == "gateway"]
    assert to_gateway and {r["type"] for r in to_gateway} == {"inference_request"}
    assert {r["type"] for r in from_gateway} == {"mqtt_received"}
    assert len(from_gateway) == len(to_gateway)  # QoS 1, one subscription: each reading exactly once
    for record in from_gateway:
        data = record["data"]
        origin = data["origin"]
        assert origin is not None, f"a message the gateway did not publish: {data}"
        assert data["topic"] == f"plant/{origin['source']}/vibration"
        assert data["payload"]["sensor"] == origin["source"]
    assert {r["data"]["origin"]["source"] for r in from_gateway} == set(SENSORS)

    # The verdicts that reached the operator: all anomalies found, no false alarm, the model identified.
    sink_events = detections.sink_events_from_trace(trace_path, scenario)
    verdicts = [e for e in sink_events if e["type"] == "inference_result"]
    assert verdicts and len(verdicts) == len(sink_events), [e for e in sink_events if e["type"] != "inference_result"]
    assert {e["source"] for e in verdicts} == inference_nodes
    assert {e["data"]["model_sha256"] for e in verdicts} == {MODEL_SHA256}
    assert {e["data"]["label"] for e in verdicts} == {"normal", "anomaly"}
    result = detections.report(scenario, sink_events)
    assert result.verdicts == len(verdicts)
    assert result.detections and result.all_detected, [d for d in result.detections if d.detected_us is None]
    assert result.false_positives == ()
    for detection in result.detections:  # found within the anomaly, a few virtual milliseconds after sampling
        assert detection.at_us <= detection.sampled_us < detection.at_us + detection.duration_us
        assert 0 < detection.latency_us < 100_000


def assert_nothing_left(label: str) -> None:
    assert cosim_resources(label) == ([], []), f"containers/networks left with label {label}"


# -- the default scenario through Docker, once for the module ---------------------------------------


@pytest.fixture(scope="module")
def docker_default(service_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> CompletedRun:
    return run_quietly(DEFAULT, "docker", tmp_path_factory.mktemp("docker-default") / "default.jsonl")


@pytest.mark.docker
def test_default_scenario_in_docker_detects_every_anomaly(docker_default: CompletedRun) -> None:
    scenario = load(DEFAULT)
    assert_edge_trace(docker_default.trace_path, scenario, {"inference"})
    # The trace is all there is: what it says agrees with what the run held in memory.
    assert len(detections.sink_events_from_trace(docker_default.trace_path, scenario)) == len(
        docker_default.sinks["alerts"])


@pytest.mark.docker
def test_docker_run_manifest_and_cleanup(docker_default: CompletedRun, service_images: dict[str, str]) -> None:
    env = environment(docker_default)
    assert env["runtime"] == "docker"
    assert env["project"] == f"cosim-{env['run_id']}" and env["run_id"].startswith("default-")
    tags = {service_image("mqtt-broker"), service_image("mqtt-gateway"), service_image("ml-inference")}
    assert env["images"] == {tag: service_images[tag] for tag in tags}
    header = records(docker_default.trace_path)[0]
    assert header["scenario"] == "default" and header["scenario_sha256"] == load(DEFAULT).sha256
    assert "run_id" not in json.dumps(header)  # nothing run-specific in the trace
    assert_nothing_left(f"cosim.run={env['run_id']}")
    assert_nothing_left(f"com.docker.compose.project={env['project']}")


@pytest.mark.docker
@needs_mosquitto
def test_local_trace_equals_docker_trace(docker_default: CompletedRun, tmp_path: Path) -> None:
    local = run_quietly(DEFAULT, "local", tmp_path / "default-local.jsonl")
    assert_same_simulation(local.trace_path, docker_default.trace_path)


# -- an independent MQTT client during a Docker run ----------------------------------------------------


@dataclass
class Observer:
    """Runs `mosquitto_sub` inside the broker container of the run that is going, from another thread."""

    scenario: str
    known: set[str]  # containers of this scenario that existed before the run: not ours
    running: threading.Event = field(default_factory=threading.Event)
    project: str | None = None
    run_label: str | None = None
    output: subprocess.CompletedProcess[str] | None = None
    error: str | None = None

    def progress(self, now_us: int, duration_us: int) -> None:
        self.running.set()  # every container is up and has answered INIT

    def __call__(self) -> None:
        try:
            if not self.running.wait(OBSERVER_DEADLINE_S):
                self.error = f"the run did not start stepping within {OBSERVER_DEADLINE_S:g} s"
                return
            found = [c for c in broker_containers(self.scenario) if c[0] not in self.known]
            if len(found) != 1:
                self.error = f"expected one new running mqtt-broker container of {self.scenario!r}, found {found}"
                return
            _, self.project, self.run_label = found[0]
            self.output = subprocess.run(
                ["docker", "compose", "-p", self.project, "exec", "-T", "mqtt-broker",
                 "mosquitto_sub", "-h", "localhost", "-t", "plant/#", "-v", "-C", "5", "-W", "60"],
                capture_output=True, text=True, timeout=OBSERVER_DEADLINE_S)
        except Exception as exc:  # reported by the test, not lost in the thread
            self.error = f"{type(exc).__name__}: {exc}"


def broker_containers(scenario: str) -> list[tuple[str, str, str]]:
    """(id, compose project, cosim.run) of each running mqtt-broker container of ``scenario``."""
    done = subprocess.run(
        ["docker", "ps", "--no-trunc", "--filter", f"label=cosim.scenario={scenario}",
         "--filter", "label=cosim.node=mqtt-broker", "--filter", "status=running",
         "--format", '{{.ID}} {{.Label "com.docker.compose.project"}} {{.Label "cosim.run"}}'],
        capture_output=True, text=True, check=True)
    return [tuple(line.split()) for line in done.stdout.splitlines() if line.strip()]  # type: ignore[misc]


@pytest.fixture(scope="module")
def observed_docker_run(service_images: dict[str, str],
                        tmp_path_factory: pytest.TempPathFactory) -> tuple[CompletedRun, Observer]:
    """The default scenario in Docker a second time, with `mosquitto_sub` watching the broker meanwhile."""
    observer = Observer("default", {c[0] for c in broker_containers("default")})
    thread = threading.Thread(target=observer, name="mqtt-observer", daemon=True)
    thread.start()
    try:
        # In the main thread: run() installs a SIGTERM handler, which Python allows only there.
        summary = run_quietly(DEFAULT, "docker", tmp_path_factory.mktemp("observed") / "default.jsonl",
                              progress=observer.progress)
    finally:
        observer.running.set()  # a run that failed to start must not keep the observer waiting
        thread.join(OBSERVER_DEADLINE_S + 10)
    assert not thread.is_alive(), "mosquitto_sub did not finish"
    return summary, observer


@pytest.mark.docker
def test_independent_mqtt_client_sees_the_readings(observed_docker_run: tuple[CompletedRun, Observer]) -> None:
    summary, observer = observed_docker_run
    assert observer.error is None, observer.error
    assert observer.output is not None
    assert observer.output.returncode == 0, observer.output.stderr
    lines = observer.output.stdout.splitlines()
    assert len(lines) == 5, observer.output.stdout
    for line in lines:
        topic, _, payload = line.partition(" ")
        assert topic in {f"plant/{sensor}/vibration" for sensor in SENSORS}, line
        message = json.loads(payload)  # what the gateway publishes: the reading in its virtual-time envelope
        assert set(message) == {"type", "time_us", "source", "seq", "data", "node", "node_seq", "window_us"}
        assert message["node"] == "gateway" and message["time_us"] <= message["window_us"]
        assert message["type"] == "inference_request" and topic == f"plant/{message['source']}/vibration"
        assert message["data"]["sensor"] == message["source"] and len(message["data"]["features"]) == 4
    env = environment(summary)
    assert (observer.project, observer.run_label) == (env["project"], env["run_id"])
    # The run is over: nothing of it is left.
    assert_nothing_left(f"cosim.run={env['run_id']}")
    assert_nothing_left(f"com.docker.compose.project={env['project']}")


@pytest.mark.docker
def test_two_docker_runs_give_identical_traces(docker_default: CompletedRun,
                                               observed_docker_run: tuple[CompletedRun, Observer]) -> None:
    second, _ = observed_docker_run
    assert environment(second)["run_id"] != environment(docker_default)["run_id"]
    # ...even with an outside subscriber on the broker during the second one.
    assert second.trace_path.read_bytes() == docker_default.trace_path.read_bytes()


# -- three inference replicas ------------------------------------------------------------------------------


@pytest.mark.docker
@needs_mosquitto
def test_replicas_round_robin_in_docker_equals_local(service_images: dict[str, str], tmp_path: Path) -> None:
    scenario = load(REPLICAS)
    docker_run = run_quietly(REPLICAS, "docker", tmp_path / "replicas-docker.jsonl")
    replicas = {"inference-1", "inference-2", "inference-3"}
    assert_edge_trace(docker_run.trace_path, scenario, replicas)
    # The gateway's messages went to the replicas in turn.
    to_inference = sorted((r for r in records(docker_run.trace_path)
                           if r["record"] == "delivered" and r["source"] == "gateway"), key=lambda r: r["seq"])
    assert [r["dest"] for r in to_inference] == [f"inference-{i % 3 + 1}" for i in range(len(to_inference))]
    assert_nothing_left(f"cosim.run={environment(docker_run)['run_id']}")

    local = run_quietly(REPLICAS, "local", tmp_path / "replicas-local.jsonl")
    assert_same_simulation(local.trace_path, docker_run.trace_path)


@pytest.mark.docker
@pytest.mark.browser
def test_report_of_the_docker_run_renders_in_chromium(docker_default: CompletedRun, tmp_path: Path) -> None:
    from cosim.report import write_report

    from .browser import assert_report_renders

    report = write_report(docker_default.trace_path, output=tmp_path / "default.report.html")
    assert "<code>docker</code>" in report.read_text(encoding="utf-8")  # the runtime, from the environment block
    assert_report_renders(report, tmp_path / "default.png", charts=5)


# -- the local runtime without mosquitto ------------------------------------------------------------------


def test_local_run_without_mosquitto_says_what_to_install(tmp_path: Path) -> None:
    scenario = scenario_copy(DEFAULT, tmp_path,
                             {"local_command: [mosquitto,": "local_command: [mosquitto-not-installed,"})
    trace = tmp_path / "missing.jsonl"
    done = subprocess.run([sys.executable, "-m", "invoke", "up", str(scenario), "--runtime", "local",
                           "--trace", str(trace), "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "Traceback" not in output, output
    message = [line for line in done.stderr.splitlines() if "mosquitto-not-installed" in line]
    assert len(message) == 1, done.stderr
    assert "'mqtt-broker'" in message[0] and "install" in message[0] and "--runtime docker" in message[0]
    assert len(done.stderr.strip().splitlines()) <= 2, done.stderr
    assert records(trace)[-1]["record"] == "error"  # the trace says the run never started


# -- the broker dies mid-run: the error names it first, then the gateway's symptom ---------------------------------

BROKER_KILLED = "infrastructure node 'mqtt-broker' exited (137, killed); then node 'gateway': "


def broker_kill_scenario(tmp_path: Path) -> Path:
    # Its own name, so that the label used to find its broker container is this test's alone.
    return scenario_copy(DEFAULT, tmp_path, {"name: default\n": "name: default-broker-killed\n"})


def assert_broker_named_first(trace: Path, stderr: str) -> None:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("cosim: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"cosim: error: {BROKER_KILLED}"), stderr
    last = records(trace)[-1]
    assert (last["record"], last["error"], last["node"]) == ("error", "infrastructure_exited", "mqtt-broker"), last
    assert last["detail"].startswith(BROKER_KILLED) and last["time_us"] > 0, last


def child_processes_named(name: str) -> list[int]:
    """Our own child processes called ``name`` (from /proc; the local runtime starts the broker as our child)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)
            command = fields[0].split("(", 1)[1]
            parent = int(fields[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if command == name and parent == os.getpid():
            found.append(int(stat.parent.name))
    return found


@needs_mosquitto
def test_a_local_broker_killed_mid_run_is_named_before_the_gateway(tmp_path: Path) -> None:
    from cosim.errors import InfrastructureExited

    killed: list[int] = []

    def kill_broker_at_3_s(now_us: int, duration_us: int) -> None:
        if now_us == 3_000_000:
            brokers = child_processes_named("mosquitto")
            assert len(brokers) == 1, brokers
            os.kill(brokers[0], signal.SIGKILL)
            killed.extend(brokers)

    trace = tmp_path / "killed.jsonl"
    with pytest.raises(InfrastructureExited) as failure:
        run_quietly(broker_kill_scenario(tmp_path), "local", trace, progress=kill_broker_at_3_s)
    assert killed
    assert str(failure.value).startswith(BROKER_KILLED), str(failure.value)
    assert failure.value.symptom.node == "gateway"
    assert_broker_named_first(trace, f"cosim: error: {failure.value}")


@pytest.mark.docker
def test_a_docker_broker_killed_mid_run_is_named_before_the_gateway(tmp_path: Path,
                                                                    service_images: dict[str, str]) -> None:
    label = "cosim.scenario=default-broker-killed"
    trace = tmp_path / "killed.jsonl"
    with invoke_up_session(broker_kill_scenario(tmp_path), trace) as process:
        deadline = time.monotonic() + 120
        broker: list[str] = []
        while not broker:  # the broker's container is up and the run has simulated something
            assert time.monotonic() < deadline and process.poll() is None, "the run never got going"
            ids = subprocess.run(["docker", "ps", "-q", "--filter", f"label={label}", "--filter",
                                  "label=cosim.node=mqtt-broker", "--filter", "status=running"],
                                 capture_output=True, text=True, check=True).stdout.split()
            if ids and trace.exists() and trace.stat().st_size > 20_000:
                broker = ids
            else:
                try:
                    process.wait(timeout=0.1)  # paces the polling; ends it at once if the run ends
                except subprocess.TimeoutExpired:
                    pass
        subprocess.run(["docker", "kill", broker[0]], capture_output=True, check=True)
        _, stderr = process.communicate(timeout=120)
    assert process.returncode == 4, stderr
    assert_broker_named_first(trace, stderr)
    assert_nothing_left(label)
