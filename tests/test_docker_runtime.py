"""The Docker runtime against the real engine: a full run, faults through the real command line, teardown.

Every test removes what it started (a fixture sweeps the scenario's label even when an assertion fails) and
asserts that nothing with the scenario's label is left. Nothing sleeps: "mid-run" means "once a container of
the run is running and the trace has grown", polled against a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cosim import compose
from cosim.loading import load
from cosim.run import run
from cosim.runtimes.docker import remove_by_label
from cosim.service_sources import service_image
from cosim.trace import RunError, Sent, read
from cosim.tracediff import trace_hash
from tests.conftest import ROOT, cosim_resources, invoke_up_session, wait_until

pytestmark = pytest.mark.docker

SCENARIOS = Path(__file__).resolve().parent / "scenarios_docker"
NODE_FAILURE = 4
INTERRUPTED = 130
ENGINE_UNAVAILABLE = 3
IMAGE_BUILD_FAILED = 3
COMMAND_TIMEOUT_S = 120


# -- helpers --------------------------------------------------------------------------------------------------


@pytest.fixture
def swept() -> Iterator[Callable[[str], str]]:
    """Register a scenario name; whatever carries its label is removed after the test, whatever happened."""
    labels: list[str] = []

    def register(name: str) -> str:
        label = f"cosim.scenario={name}"
        labels.append(label)
        return label

    yield register
    for label in labels:
        remove_by_label(label)


@pytest.fixture(scope="module", autouse=True)
def _no_test_images_left() -> Iterator[None]:
    # The test-only images go when the module ends.
    yield
    subprocess.run(["docker", "rmi", "-f", "cosim/test-nocmd:dev", "cosim/does-not-exist:dev"], capture_output=True)


def invoke_up(scenario: str, trace: Path, *extra: str, env: dict[str, str] | None = None
              ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "invoke", "up", str(SCENARIOS / scenario), "--trace", str(trace), "-q", *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S, env={**os.environ, **(env or {})},
    )


def start_up(scenario: str, trace: Path) -> subprocess.Popen[str]:
    """`invoke up` in the background, with Ctrl-C behaving as in a terminal (even if our parent ignores it)."""
    return subprocess.Popen(
        [sys.executable, "-m", "invoke", "up", str(SCENARIOS / scenario), "--trace", str(trace), "-q"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def running_containers(label: str, node: str | None = None) -> list[str]:
    command = ["docker", "ps", "-q", "--filter", f"label={label}", "--filter", "status=running"]
    if node is not None:
        command += ["--filter", f"label=cosim.node={node}"]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()


def trace_lines(path: Path) -> int:
    try:
        with path.open("rb") as handle:
            return sum(1 for _ in handle)
    except OSError:
        return 0


def wait_mid_run(process: subprocess.Popen[str], label: str, trace: Path, *, node: str = "worker",
                 min_lines: int = 40, timeout_s: float = 90.0) -> str:
    """Wait until the run's ``node`` container is running and the trace has grown; returns the container id."""
    containers: list[str] = []

    def going() -> bool:
        containers[:] = running_containers(label, node)
        return bool(containers) and trace_lines(trace) > min_lines

    wait_until(going, process, f"a running {node!r} container with {label} and a growing trace", timeout_s=timeout_s)
    return containers[0]


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, err = process.communicate(timeout=COMMAND_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        out, err = process.communicate()
        pytest.fail(f"`invoke up` did not end after the fault:\n{out}\n{err}")
    return process.returncode, out + err


def assert_failed_cleanly(output: str, returncode: int, expected_code: int, trace: Path, label: str, *,
                          node: str | None, error: str | tuple[str, ...], message: list[str]) -> RunError:
    """The shared promises of every failure: message, exit code, no traceback, an error record last, no leftovers."""
    assert "Traceback" not in output, output
    assert returncode == expected_code, output
    assert "cosim: error:" in output, output
    for part in message:
        assert part in output, f"{part!r} not in:\n{output}"
    last = read(trace).error
    assert last is not None, read(trace).end
    assert last.error in ((error,) if isinstance(error, str) else error), last
    assert last.node == node, last
    assert cosim_resources(label) == ([], []), f"left behind by the run with {label}"
    return last


# -- a whole run ----------------------------------------------------------------------------------------------


def test_pipeline_with_replicas_matches_local_runtime(service_images: dict[str, str], swept, tmp_path: Path) -> None:
    label = swept("docker-pipeline")
    scenario = SCENARIOS / "docker-pipeline.yaml"

    docker_run = run(scenario, runtime="docker", trace_path=tmp_path / "docker.jsonl")
    metrics = json.loads(docker_run.metrics_path.read_text())
    run_id = metrics["environment"]["run_id"]
    # Teardown is done when run() returns: the services exited 0 on SHUTDOWN (or the run would have failed)
    # and compose down removed their containers and the network, without waiting out a stop grace period.
    assert cosim_resources(f"cosim.run={run_id}") == ([], [])

    local_run = run(scenario, runtime="local", trace_path=tmp_path / "local.jsonl")

    # Byte-identical, except the header's environment block (which runtime, which images: not hashed).
    docker_lines = (tmp_path / "docker.jsonl").read_bytes().splitlines(keepends=True)
    local_lines = (tmp_path / "local.jsonl").read_bytes().splitlines(keepends=True)
    assert docker_lines[1:] == local_lines[1:]
    assert trace_hash(tmp_path / "docker.jsonl") == trace_hash(tmp_path / "local.jsonl")
    trace = read(tmp_path / "docker.jsonl")
    environment = trace.header.environment
    assert environment["runtime"] == "docker"
    assert environment["images"] == {service_image("echo"): service_images[service_image("echo")]}
    assert trace.footer is not None and trace.footer.status == "ok"
    assert trace.footer.end_us == docker_run.scenario.duration_us
    sources = {r.source for r in trace.of(Sent)}
    assert {"echo-1", "echo-2", "echo-3", "relay", "sensor-a", "sensor-b"} <= sources  # every node took part
    assert docker_run.sinks["sink"] and docker_run.sinks == local_run.sinks

    assert metrics["runtime"] == "docker"
    assert metrics["environment"]["runtime"] == "docker"
    assert metrics["environment"]["images"] == {service_image("echo"): service_images[service_image("echo")]}
    assert set(metrics["round_trip"]) == {"echo-1", "echo-2", "echo-3", "relay"}
    assert cosim_resources(label) == ([], [])


# -- faults through the command line --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "extra", "message"),
    [
        pytest.param("docker-exit.yaml", (), ["ended without answering", "exit code 3",
                                              "echo: exiting with 3 as configured"], id="exit-3"),
        pytest.param("docker-hang.yaml", ("--watchdog", "3"), ["did not answer within the 3 s watchdog",
                                                               "echo: hanging as configured"], id="hang"),
        pytest.param("docker-garbage.yaml", (), ["not protocol JSON", "'this is not a protocol message'",
                                                 "echo: writing garbage on stdout as configured"], id="garbage"),
    ],
)
def test_misbehaving_service_fails_the_run_cleanly(service_images: dict[str, str], swept, tmp_path: Path,
                                                   scenario: str, extra: tuple[str, ...], message: list[str]) -> None:
    label = swept(scenario.removesuffix(".yaml"))
    trace = tmp_path / "trace.jsonl"
    done = invoke_up(scenario, trace, *extra)
    output = done.stdout + done.stderr
    last = assert_failed_cleanly(output, done.returncode, NODE_FAILURE, trace, label, node="worker",
                                 error="node_failure",
                                 message=["node 'worker'", "while waiting for the reply to ADVANCE to 40000 us",
                                          "last lines of its log:", *message])
    assert "ADVANCE to 40000 us" in last.detail
    assert last.time_us == 39000
    if "hang" in scenario:
        assert "exit code" not in output  # it was still running: no exit code to report


def test_docker_kill_mid_run(service_images: dict[str, str], swept, tmp_path: Path) -> None:
    label = swept("docker-long")
    trace = tmp_path / "trace.jsonl"
    process = start_up("docker-long.yaml", trace)
    try:
        container = wait_mid_run(process, label, trace)
        subprocess.run(["docker", "kill", container], capture_output=True, check=True)
        returncode, output = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    last = assert_failed_cleanly(output, returncode, NODE_FAILURE, trace, label, node="worker",
                                 error="node_failure",
                                 message=["node 'worker'", "ended without answering", "exit code 137"])
    assert re.search(r"while waiting for the reply to ADVANCE to \d+ us", output), output
    assert re.search(r"ADVANCE to \d+ us", last.detail)
    assert last.time_us > 0


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_interrupt_mid_run_tears_down(service_images: dict[str, str], swept, tmp_path: Path,
                                      signum: signal.Signals) -> None:
    label = swept("docker-long")
    trace = tmp_path / "trace.jsonl"
    process = start_up("docker-long.yaml", trace)
    try:
        wait_mid_run(process, label, trace)
        process.send_signal(signum)
        returncode, output = finish(process)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    last = assert_failed_cleanly(output, returncode, INTERRUPTED, trace, label, node=None, error="interrupted",
                                 message=["interrupted at virtual time", "the trace so far is kept"])
    assert last.time_us > 0


@pytest.mark.parametrize(
    ("scenario", "expected_code", "message"),
    [
        pytest.param("docker-bad-command.yaml", NODE_FAILURE, ["exit code 127", "/nonexistent"], id="bad-command"),
        pytest.param("docker-crash-at-start.yaml", NODE_FAILURE,
                     ["exit code 1", "No module named 'encodings'"], id="crash-at-start"),
        pytest.param("docker-bad-image.yaml", IMAGE_BUILD_FAILED,
                     ["Cannot build image cosim/does-not-exist:dev", "this build fails on purpose"], id="bad-image"),
    ],
)
def test_service_that_cannot_start(service_images: dict[str, str], swept, tmp_path: Path, scenario: str,
                                   expected_code: int, message: list[str]) -> None:
    label = swept(scenario.removesuffix(".yaml"))
    trace = tmp_path / "trace.jsonl"
    done = invoke_up(scenario, trace)
    output = done.stdout + done.stderr
    # Seen at start-up (start_failed) or, when the container was still running as it was inspected, by the
    # coordinator when the service does not answer INIT (node_failure): a race between the two is fine.
    last = assert_failed_cleanly(output, done.returncode, expected_code, trace, label, node="starter",
                                 error=("start_failed", "node_failure"), message=["node 'starter'", *message])
    assert last.time_us == 0
    assert read(trace).records == ()  # nothing was simulated: a header and the error


# -- leftovers and a missing engine ---------------------------------------------------------------------------


def test_down_removes_leftovers_but_not_live_runs(service_images: dict[str, str], swept, tmp_path: Path) -> None:
    leftover_label = swept("docker-leftover")
    live_label = swept("docker-long")
    # A leftover: the scenario's compose project brought up by hand, as a crashed run would have left it.
    compose_file = compose.render(load(SCENARIOS / "docker-leftover.yaml"))
    project = f"cosim-leftover-test-{secrets.token_hex(3)}"
    subprocess.run(["docker", "compose", "-p", project, "-f", str(compose_file), "up", "-d", "--quiet-pull"],
                   cwd=ROOT, capture_output=True, text=True, check=True,
                   env={**os.environ, "COSIM_RUN_ID": f"leftover-test-{secrets.token_hex(3)}"})
    containers, networks = cosim_resources(leftover_label)
    assert len(containers) == 2 and len(networks) == 1

    trace = tmp_path / "live.jsonl"
    live = start_up("docker-long.yaml", trace)
    try:
        wait_mid_run(live, live_label, trace)
        live_containers = cosim_resources(live_label)

        down = subprocess.run([sys.executable, "-m", "invoke", "down"], cwd=ROOT, capture_output=True, text=True,
                              timeout=COMMAND_TIMEOUT_S)
        assert down.returncode == 0, down.stdout + down.stderr
        counts = re.search(r"removed (\d+) container\(s\) and (\d+) network\(s\)", down.stdout)
        assert counts, down.stdout
        assert int(counts[1]) >= 2 and int(counts[2]) >= 1  # ours, plus whatever else earlier runs left
        assert cosim_resources(leftover_label) == ([], [])
        assert cosim_resources(live_label) == live_containers  # a run in progress is not a leftover

        live.send_signal(signal.SIGINT)
        returncode, output = finish(live)
    finally:
        if live.poll() is None:
            live.kill()
            live.communicate()
    assert returncode == INTERRUPTED, output
    assert cosim_resources(live_label) == ([], [])


def test_missing_engine_is_one_clear_sentence(service_images: dict[str, str], swept, tmp_path: Path) -> None:
    label = swept("docker-exit")
    trace = tmp_path / "trace.jsonl"
    no_engine = {"DOCKER_HOST": "unix:///nonexistent.sock"}
    done = invoke_up("docker-exit.yaml", trace, env=no_engine)
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == ENGINE_UNAVAILABLE, output
    errors = [line for line in output.splitlines() if line.strip()]
    assert errors == [errors[0]] and errors[0].startswith("cosim: error: Docker Engine is not running or not "
                                                          "reachable at DOCKER_HOST=unix:///nonexistent.sock"), output
    parsed = read(trace)
    assert parsed.records == () and parsed.error is not None  # a header and the error
    last = parsed.error
    assert last.error == "start_failed" and last.node is None and "not reachable" in last.detail

    down = subprocess.run([sys.executable, "-m", "invoke", "down"], cwd=ROOT, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT_S, env={**os.environ, **no_engine})
    assert "Traceback" not in down.stdout + down.stderr
    assert down.returncode == ENGINE_UNAVAILABLE
    assert "not reachable" in down.stderr + down.stdout
    assert cosim_resources(label) == ([], [])


# -- runs whose coordinator was killed are reaped by the next run; live runs never -------------------------------


def long_scenario_named(tmp_path: Path, name: str) -> Path:
    """docker-long under a name of this test's own, so that its labels are nobody else's."""
    text = (SCENARIOS / "docker-long.yaml").read_text(encoding="utf-8")
    text = text.replace("name: docker-long\n", f"name: {name}\n")
    text = text.replace("build: ../../containers/echo", f"build: {ROOT / 'containers' / 'echo'}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def run_ids(label: str) -> set[str]:
    done = subprocess.run(["docker", "ps", "-a", "--filter", f"label={label}", "--format",
                           '{{.Label "cosim.run"}}'], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_a_run_whose_coordinator_was_killed_is_reaped_by_the_next_run(service_images: dict[str, str], swept,
                                                                      tmp_path: Path) -> None:
    orphan_label, live_label = swept("reaper-orphan"), swept("reaper-live")
    with contextlib.ExitStack() as sessions:
        orphan = sessions.enter_context(invoke_up_session(long_scenario_named(tmp_path, "reaper-orphan"),
                                                          tmp_path / "orphan.jsonl"))
        wait_mid_run(orphan, orphan_label, tmp_path / "orphan.jsonl")
        (orphan_run,) = run_ids(orphan_label)
        os.kill(orphan.pid, signal.SIGKILL)  # kill -9: no teardown at all
        orphan.communicate(timeout=COMMAND_TIMEOUT_S)
        orphan_containers, orphan_networks = cosim_resources(f"cosim.run={orphan_run}")
        assert len(orphan_containers) == 2 and len(orphan_networks) == 1  # left behind, still running

        # The next `invoke up` reaps it before starting, and says so.
        live = sessions.enter_context(invoke_up_session(long_scenario_named(tmp_path, "reaper-live"),
                                                        tmp_path / "live.jsonl"))
        wait_mid_run(live, live_label, tmp_path / "live.jsonl")
        assert cosim_resources(f"cosim.run={orphan_run}") == ([], [])
        (live_run,) = run_ids(live_label)
        live_resources = cosim_resources(f"cosim.run={live_run}")

        # Another run starting and ending meanwhile reaps nothing of the live one.
        done = invoke_up("docker-pipeline.yaml", tmp_path / "pipeline.jsonl")
        assert done.returncode == 0, done.stdout + done.stderr
        assert live_run not in done.stderr and orphan_run not in done.stderr
        assert cosim_resources(f"cosim.run={live_run}") == live_resources
        assert len(running_containers(f"cosim.run={live_run}")) == 2

        os.killpg(live.pid, signal.SIGINT)
        returncode, output = finish(live)
        assert returncode == INTERRUPTED, output
        assert f"cosim: removed 2 container(s) and 1 network(s) of run {orphan_run}, whose coordinator is gone" in output
    assert cosim_resources(orphan_label) == ([], []) and cosim_resources(live_label) == ([], [])
