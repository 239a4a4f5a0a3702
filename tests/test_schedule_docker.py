"""The schedule on the Docker runtime: a crash kills the real container and a restart is a new container of that
service (attached, INIT again); the broker's container too. Each run gives the local runtime's records."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosim.run import run
from tests.conftest import ROOT, assert_same_simulation, cosim_resources
from tests.test_schedule import BROKER_CRASH, check_broker_crash, records

CHAOS = ROOT / "scenarios" / "chaos.yaml"


@pytest.mark.docker
def test_chaos_on_docker_crashes_and_restarts_the_gateway_container_like_the_local_run(
        service_images: dict[str, str], tmp_path: Path) -> None:
    docker = run(CHAOS, runtime="docker", trace_path=tmp_path / "docker.jsonl", watchdog_s=60.0)
    local = run(CHAOS, runtime="local", trace_path=tmp_path / "local.jsonl", watchdog_s=60.0)
    assert_same_simulation(local.trace_path, docker.trace_path)
    trace = records(docker.trace_path)
    restart = next(r for r in trace if r["record"] == "action" and r["action"] == "restart")
    assert restart["node"] == "gateway" and restart["restart"] == 1 and restart["lost"] > 0
    assert docker.result.dropped["node_down"] == restart["lost"] and docker.result.dropped["partition"] > 0
    # The restarted gateway forwards again: readings sent after 6.5 s reach the classifier.
    forwarded = [r for r in trace if r["record"] == "sent" and r["source"] == "gateway"]
    assert [r for r in forwarded if r["time_us"] > 6_500_000]
    log = (tmp_path / "docker.logs" / "gateway.log").read_text(encoding="utf-8")
    assert log.count("connected to MQTT broker") == 2  # two containers, each connected once
    assert cosim_resources(f"cosim.run={docker.metrics.environment['run_id']}") == ([], [])


@pytest.mark.docker
def test_the_broker_container_crashes_and_a_new_one_takes_over(service_images: dict[str, str], tmp_path: Path) -> None:
    docker = run(BROKER_CRASH, runtime="docker", trace_path=tmp_path / "docker.jsonl", watchdog_s=60.0)
    check_broker_crash(records(docker.trace_path))
    local = run(BROKER_CRASH, runtime="local", trace_path=tmp_path / "local.jsonl", watchdog_s=60.0)
    assert_same_simulation(local.trace_path, docker.trace_path)
    log = (tmp_path / "docker.logs" / "gateway.log").read_text(encoding="utf-8")
    assert log.count("connected to MQTT broker mqtt-broker:1883") == 2  # at INIT, and to the new container
    assert cosim_resources(f"cosim.run={docker.metrics.environment['run_id']}") == ([], [])
