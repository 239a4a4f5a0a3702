"""Infrastructure from a prebuilt image (no `build:`), as a user with a registry would use eclipse-mosquitto."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosim import compose
from cosim import scenario as scenarios
from cosim.errors import ScenarioError
from cosim.run import run

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


PREBUILT = "{id: mqtt-broker, kind: infrastructure, image: cosim/mqtt-broker:dev, port: 1883}"


def test_infrastructure_needs_build_or_image(tmp_path: Path) -> None:
    path = write_scenario(tmp_path, "{id: mqtt-broker, kind: infrastructure, port: 1883}")
    with pytest.raises(ScenarioError) as error:
        scenarios.load(path)
    assert str(error.value) == (f"{path}:7: nodes[1]: needs `build` (a service directory with a Dockerfile) "
                                f"or `image` (a prebuilt image)")


def test_prebuilt_image_renders_without_build_and_pulls_when_missing(tmp_path: Path) -> None:
    spec = compose.compose_spec(scenarios.load(write_scenario(tmp_path, PREBUILT)))
    broker = spec["services"]["mqtt-broker"]
    assert broker["image"] == "cosim/mqtt-broker:dev" and "build" not in broker
    assert broker["pull_policy"] == "missing"
    assert spec["services"]["gateway"]["pull_policy"] == "never"


@pytest.mark.docker
def test_a_prebuilt_broker_image_runs_in_docker(tmp_path: Path, service_images: dict[str, str]) -> None:
    summary = run(write_scenario(tmp_path, PREBUILT), runtime="docker", trace_path=tmp_path / "trace.jsonl")
    header = json.loads((tmp_path / "trace.jsonl").read_text(encoding="utf-8").splitlines()[0])
    assert header["environment"]["images"]["cosim/mqtt-broker:dev"] == service_images["cosim/mqtt-broker:dev"]
    received = [e for e in summary.sinks["sink"] if e["type"] == "mqtt_received"]
    assert len(received) == 9 and {e["data"]["topic"] for e in received} == {"plant/sensor"}
    assert cosim_resources("cosim.scenario=prebuilt-broker") == ([], [])
