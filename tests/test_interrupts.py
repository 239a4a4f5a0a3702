"""Ctrl-C as a terminal sends it: SIGINT to the whole process group of `invoke up` (started in a session of its
own, as a shell job is), mid-run and during start-up, on the local runtime and in Docker, and a second Ctrl-C
while the first is being handled. Every case: exit 130, one error line, no traceback, the trace ends with an
`interrupted` record, and nothing is left running. Nothing sleeps: each moment is a condition polled with a
deadline."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from .conftest import ROOT, cosim_resources, invoke_up_session, wait_until

INTERRUPTED = 130
DEADLINE_S = 120.0
ECHO = ROOT / "containers" / "echo"


def ctrl_c(process: subprocess.Popen[str]) -> None:
    os.killpg(process.pid, signal.SIGINT)  # what the terminal does: the whole foreground process group


def finish(process: subprocess.Popen[str]) -> tuple[int, str]:
    try:
        out, err = process.communicate(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        pytest.fail(f"`invoke up` did not end after Ctrl-C:\n{out}\n{err}")
    return process.returncode, err


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def processes_with(marker: str) -> list[int]:
    """Live processes whose command line contains ``marker`` (the services a run started)."""
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
        except OSError:
            continue
    return found


def assert_interrupted(returncode: int, stderr: str, trace: Path, *, starting: bool | None) -> dict[str, Any]:
    assert "Traceback" not in stderr, stderr
    assert returncode == INTERRUPTED, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("cosim: error:")]
    expected = {True: ("cosim: error: interrupted while starting the scenario; nothing was simulated",),
                False: ("cosim: error: interrupted at virtual time ",),
                None: ("cosim: error: interrupted while starting the scenario; nothing was simulated",
                       "cosim: error: interrupted at virtual time ")}[starting]
    assert len(errors) == 1 and errors[0].startswith(expected), stderr
    last = json.loads(trace.read_text(encoding="utf-8").splitlines()[-1])
    assert (last["record"], last["error"], last["node"]) == ("error", "interrupted", None), last
    return last


# -- the local runtime ------------------------------------------------------------------------------------------


def local_scenario(tmp_path: Path, marker: str, *, broker_that_never_listens: bool = False) -> Path:
    """A long local run whose processes carry ``marker`` on their command line (so the test can find them)."""
    infrastructure = f"""\
  - id: broker
    kind: infrastructure
    build: {ROOT / "containers" / "mqtt-broker"}
    port: 1883
    local_command: ["{{python}}", "-c", "import threading; threading.Event().wait()", "{marker}"]
""" if broker_that_never_listens else ""
    path = tmp_path / "long-local.yaml"
    path.write_text(f"""\
name: ctrl-c-local
seed: 5
duration_us: 600_000_000
quantum_us: 1000
nodes:
  - {{id: sensor, kind: sensor, period_us: 5000, links: [{{to: echo, latency_us: 2000}}]}}
  - id: echo
    kind: service
    build: {ECHO}
    local_command: ["{{python}}", "-u", "{ECHO / "service.py"}", "{marker}"]
{infrastructure}  - {{id: sink, kind: sink}}
routes:
  - {{from: sensor, to: [echo]}}
  - {{from: echo, to: [sink]}}
""", encoding="utf-8")
    return path


@pytest.mark.parametrize("presses", [1, 2], ids=["once", "twice"])
def test_ctrl_c_mid_run_on_the_local_runtime(tmp_path: Path, presses: int) -> None:
    marker = f"cosim-test-{secrets.token_hex(6)}"
    trace = tmp_path / "trace.jsonl"
    with invoke_up_session(local_scenario(tmp_path, marker), trace, "--runtime", "local") as process:
        wait_until(lambda: size(trace) > 5000 and bool(processes_with(marker)), process, "the run got going")
        for _ in range(presses):  # twice: the second arrives while the first is being handled
            ctrl_c(process)
        returncode, stderr = finish(process)
    last = assert_interrupted(returncode, stderr, trace, starting=False)
    assert last["time_us"] > 0
    assert processes_with(marker) == []


def test_ctrl_c_during_start_up_on_the_local_runtime(tmp_path: Path) -> None:
    """Interrupted while the runtime waits for an infrastructure node to listen (it never will)."""
    marker = f"cosim-test-{secrets.token_hex(6)}"
    trace = tmp_path / "trace.jsonl"
    scenario = local_scenario(tmp_path, marker, broker_that_never_listens=True)
    with invoke_up_session(scenario, trace, "--runtime", "local") as process:
        wait_until(lambda: bool(processes_with(marker)), process, "the infrastructure process started")
        ctrl_c(process)
        returncode, stderr = finish(process)
    assert_interrupted(returncode, stderr, trace, starting=True)
    assert [json.loads(line)["record"] for line in trace.read_text().splitlines()] == ["header", "error"]
    assert processes_with(marker) == []


# -- Docker -----------------------------------------------------------------------------------------------------


def docker_scenario(tmp_path: Path, name: str) -> Path:
    text = (ROOT / "tests" / "scenarios_docker" / "docker-long.yaml").read_text(encoding="utf-8")
    text = text.replace("name: docker-long\n", f"name: {name}\n").replace("build: ../../containers/echo",
                                                                          f"build: {ECHO}")
    path = tmp_path / f"{name}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def containers(label: str, *, running: bool = False) -> list[str]:
    command = ["docker", "ps", "-q", "--filter", f"label={label}"] + (["--filter", "status=running"] if running
                                                                      else ["-a"])
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()


@pytest.fixture
def swept_label() -> Any:
    labels: list[str] = []

    def register(name: str) -> str:
        labels.append(f"cosim.scenario={name}")
        return labels[-1]

    yield register
    from cosim.runtimes.docker import remove_by_label

    for label in labels:
        remove_by_label(label)


@pytest.mark.docker
def test_ctrl_c_during_start_up_in_docker(tmp_path: Path, service_images: dict[str, str], swept_label: Any) -> None:
    label = swept_label("ctrl-c-docker-start")
    trace = tmp_path / "trace.jsonl"
    with invoke_up_session(docker_scenario(tmp_path, "ctrl-c-docker-start"), trace) as process:
        # The first container of the run exists: `docker compose up` is creating the project.
        wait_until(lambda: bool(containers(label)), process, "a container of the run was created")
        ctrl_c(process)  # reaches `docker compose up` too: it is in the same process group
        returncode, stderr = finish(process)
    # Start-up or INIT, depending on how far compose got before the signal: both must end the same way.
    last = assert_interrupted(returncode, stderr, trace, starting=None)
    assert last["time_us"] == 0 or "interrupted at virtual time" in stderr
    assert cosim_resources(label) == ([], [])


@pytest.mark.docker
def test_a_second_ctrl_c_during_teardown_in_docker(tmp_path: Path, service_images: dict[str, str],
                                                   swept_label: Any) -> None:
    label = swept_label("ctrl-c-docker-twice")
    trace = tmp_path / "trace.jsonl"
    with invoke_up_session(docker_scenario(tmp_path, "ctrl-c-docker-twice"), trace) as process:
        wait_until(lambda: len(containers(label, running=True)) == 2 and size(trace) > 5000, process,
                   "the run got going")
        ctrl_c(process)
        # Teardown has begun once a container of the run is no longer running: press again.
        wait_until(lambda: len(containers(label, running=True)) < 2, process, "the teardown began")
        ctrl_c(process)
        returncode, stderr = finish(process)
    assert_interrupted(returncode, stderr, trace, starting=False)
    assert cosim_resources(label) == ([], [])
