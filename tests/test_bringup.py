"""Docker bring-up: a deadline that `compose up` of several containers exceeds, for real, ends the run with one line
naming each container that is not up and its state, the trace's error record kept and the engine left clean; and
the run's inspections go through the engine API in one listing (no per-container CLI process)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cosim.runtimes.docker import api
from cosim.trace import read

from .conftest import ROOT, cosim_resources

ECHO = ROOT / "containers" / "echo"
REPLICAS = 8


def several_services(tmp_path: Path, name: str) -> Path:
    """A sensor feeding eight echo containers (replicas) and a sink: eight containers to bring up."""
    scenario = tmp_path / f"{name}.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": name, "seed": 1, "duration_us": 20_000, "quantum_us": 1000,
        "nodes": [{"id": "source", "kind": "sensor", "period_us": 5000},
                  {"id": "echo", "kind": "service", "build": str(ECHO), "replicas": REPLICAS},
                  {"id": "sink", "kind": "sink"}],
        "routes": [{"from": "source", "to": ["echo"]}, {"from": "echo", "to": ["sink"]}]}), encoding="utf-8")
    return scenario


def up(scenario: Path, trace: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", "up", str(scenario), "--trace", str(trace), "-q"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **env})


@pytest.mark.docker
def test_a_bring_up_past_its_deadline_names_who_is_not_up_and_removes_everything(tmp_path: Path) -> None:
    scenario = several_services(tmp_path, "bringup-deadline")
    trace = tmp_path / "trace.jsonl"
    subprocess.run([sys.executable, "-m", "invoke", "images", str(scenario)], cwd=ROOT, check=True,
                   capture_output=True, timeout=600)  # the images first: the deadline is for bring-up alone
    try:
        # `compose up` of eight containers takes well over half a second on any engine (each is created,
        # attached to the network and started): the deadline cuts it short, wherever it has got to.
        result = up(scenario, trace, COSIM_BRINGUP_TIMEOUT="0.5")
        assert "Traceback" not in result.stdout + result.stderr, result.stderr
        assert result.returncode == 1, result.stdout + result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("cosim: error:")]
        assert len(errors) == 1, result.stderr
        found = re.fullmatch(r"cosim: error: bring-up of scenario 'bringup-deadline' did not finish within "
                             r"0\.\d s \(\$COSIM_BRINGUP_TIMEOUT\): (\d+) of 8 container\(s\) not up: (.+); "
                             r"everything was removed", errors[0])
        assert found is not None, errors[0]
        named = re.findall(r"(echo-\d+) \((created|not created|restarting|exited|removing|dead|paused)\)",
                           found.group(2))
        assert len(named) == int(found.group(1)) >= 1, errors[0]
        assert {node for node, _ in named} <= {f"echo-{index}" for index in range(1, REPLICAS + 1)}
        error = read(trace).error  # the trace so far: its header and the error record
        assert error is not None and error.error == "start_failed" and "did not finish within" in error.detail
    finally:
        assert cosim_resources("cosim.scenario=bringup-deadline") == ([], [])


def test_a_bad_deadline_is_named_before_anything_starts(tmp_path: Path) -> None:
    result = up(several_services(tmp_path, "bringup-bad"), tmp_path / "trace.jsonl", COSIM_BRINGUP_TIMEOUT="soon")
    assert "Traceback" not in result.stderr and result.returncode != 0
    assert "COSIM_BRINGUP_TIMEOUT" in result.stderr and "'soon'" in result.stderr, result.stderr


@pytest.mark.docker
def test_the_engine_api_and_the_cli_give_the_same_container_documents() -> None:
    """One inspection path per engine kind: on the socket (a request each) and through `docker inspect` (one call
    for all), the same documents; a missing container is absent, not an error."""
    images = subprocess.run(["docker", "image", "ls", "-q", "--filter", "reference=cosim/*"], capture_output=True,
                            text=True, check=True).stdout.split()
    if not images:
        pytest.skip("no cosim image on this engine yet")
    done = subprocess.run(["docker", "create", "--label", "cosim.test=api", images[0], "true"], capture_output=True,
                          text=True, check=True)
    container = done.stdout.strip()
    try:
        socket_engine = api.default_engine()
        assert socket_engine.socket_path is not None
        cli_engine = api.Engine(None)
        by_socket = socket_engine.containers([container, "cosim-no-such-container"])
        by_cli = cli_engine.containers([container, "cosim-no-such-container"])
        assert list(by_socket) == list(by_cli) == [container]
        assert by_socket[container]["Id"] == by_cli[container]["Id"] == container
        assert api.labels(by_socket[container])["cosim.test"] == "api"
        listed = socket_engine.listed("cosim.test=api")
        assert [(c["Id"], api.labels(c)["cosim.test"]) for c in listed] == [(container, "api")]
        assert [c["Id"] for c in cli_engine.listed("cosim.test=api")] == [container]
        assert listed[0]["State"] == cli_engine.listed("cosim.test=api")[0]["State"]
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
