"""Infrastructure from a prebuilt image (no `build:`), as a user with a registry would use eclipse-mosquitto."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from cosim import compose, loading
from cosim.errors import ScenarioError
from cosim.run import run
from cosim.service_sources import service_image

from .conftest import ROOT, cosim_resources

CONTAINERS = ROOT / "containers"


def write_scenario(directory: Path, broker: str) -> Path:
    path = directory / "prebuilt.yaml"
    path.write_text(f"""\
name: prebuilt-broker
seed: 5
duration_us: 200_000
quantum_us: 1_000
nodes:
  - {{id: sensor, kind: sensor, period_us: 20_000, links: [{{to: gateway, latency_us: 2_000}}]}}
  - {broker}
  - id: gateway
    kind: service
    build: {CONTAINERS / "mqtt-gateway"}
    config: {{broker: mqtt-broker, topic: "plant/{{source}}", subscribe: ["plant/#"]}}
  - {{id: sink, kind: sink}}
routes:
  - {{from: sensor, to: [gateway]}}
  - {{from: gateway, to: [sink]}}
""", encoding="utf-8")
    return path


BROKER = service_image("mqtt-broker")
PREBUILT = "{id: mqtt-broker, kind: infrastructure, image: " + BROKER + ", port: 1883}"


def test_infrastructure_needs_build_or_image(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, "{id: mqtt-broker, kind: infrastructure, port: 1883}")
    with pytest.raises(ScenarioError) as error:
        loading.load(path)
    assert str(error.value) == (f"{path}:7: nodes[1]: needs `build` (a service directory with a Dockerfile) "
                                f"or `image` (a prebuilt image)")


def test_prebuilt_image_renders_without_build_and_with_pull_policy_missing(tmp_path: Path) -> None:
    spec = compose.compose_spec(loading.load(write_scenario(tmp_path, PREBUILT)))
    broker = spec["services"]["mqtt-broker"]
    assert broker["image"] == BROKER and "build" not in broker
    assert broker["pull_policy"] == "missing"
    assert spec["services"]["gateway"]["pull_policy"] == "never"


@pytest.mark.docker
def test_a_prebuilt_broker_image_runs_in_docker(tmp_path: Path, service_images: dict[str, str]) -> None:
    summary = run(write_scenario(tmp_path, PREBUILT), runtime="docker", trace_path=tmp_path / "trace.jsonl")
    header = json.loads((tmp_path / "trace.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert header["environment"]["images"][BROKER] == service_images[BROKER]
    received = [e for e in summary.sinks["sink"] if e["type"] == "mqtt_received"]
    assert len(received) == 9 and {e["data"]["topic"] for e in received} == {"plant/sensor"}
    assert cosim_resources("cosim.scenario=prebuilt-broker") == ([], [])


# -- the pull path: no registry is reachable from this machine, so what is tested is that the pull is attempted and
# its failure reported clearly (naming the node and the image), within COSIM_PULL_TIMEOUT; a successful pull needs
# a registry and is not tested here.

def invoke_up(scenario: Path, trace: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", "up", str(scenario), "--trace", str(trace), "-q"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, **env})


def assert_pull_failed(done: subprocess.CompletedProcess[str], image: str, reason: str, trace: Path) -> None:
    output = done.stdout + done.stderr
    assert "Traceback" not in output, output
    assert done.returncode == 3, output
    assert f"image {image}: pulling" in done.stderr  # the pull was attempted
    errors = [line for line in done.stderr.splitlines() if line.startswith("cosim: error:")]
    assert len(errors) == 1, output
    assert errors[0].startswith(f"cosim: error: node 'mqtt-broker': image {image} is not here and cannot be "
                                f"pulled ("), output
    assert errors[0].endswith(f"{reason}); pull or load it by hand, or give the node a `build:` directory"), output
    last = json.loads(trace.read_text(encoding="utf-8").splitlines()[-1])
    assert (last["error"], last["node"]) == ("start_failed", "mqtt-broker")
    assert cosim_resources("cosim.scenario=prebuilt-broker") == ([], [])


@pytest.mark.docker
def test_a_missing_prebuilt_image_from_an_unknown_registry_is_one_clear_error(tmp_path: Path,
                                                                             service_images: dict[str, str]) -> None:
    image = "registry.invalid/cosim/no-such-broker:1"
    scenario = write_scenario(tmp_path, f"{{id: mqtt-broker, kind: infrastructure, image: {image}, port: 1883}}")
    done = invoke_up(scenario, tmp_path / "trace.jsonl")
    assert_pull_failed(done, image, "no such host", tmp_path / "trace.jsonl")


@pytest.mark.docker
def test_a_pull_from_a_silent_registry_gives_up_at_the_pull_timeout(tmp_path: Path,
                                                                   service_images: dict[str, str]) -> None:
    # A registry that accepts connections and never answers (the engine shares this host's loopback).
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        image = f"127.0.0.1:{silent.getsockname()[1]}/cosim/no-such-broker:1"
        scenario = write_scenario(tmp_path, f"{{id: mqtt-broker, kind: infrastructure, image: \"{image}\", port: 1883}}")
        done = invoke_up(scenario, tmp_path / "trace.jsonl", COSIM_PULL_TIMEOUT="3")
    assert_pull_failed(done, image, "no answer within 3 s", tmp_path / "trace.jsonl")
