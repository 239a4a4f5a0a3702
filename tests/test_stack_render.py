"""The Swarm stack file: cosim's compose file plus `deploy:` sections, minus what Swarm does not take; and the
scenario's `placement`, which only the Swarm runtime reads."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from cosim import compose, loading
from cosim.model import Scenario
from cosim.runtimes.swarm import stack

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def distributed() -> Scenario:
    return loading.load(ROOT / "scenarios" / "distributed.yaml")


def test_every_service_gets_one_replica_no_restart_dnsrr_and_its_placement(distributed: Scenario) -> None:
    spec = stack.stack_spec(distributed)
    sites = {"mqtt-broker": "site-1", "gateway": "site-2", "inference": "site-3"}
    assert sorted(spec["services"]) == sorted(sites)
    for node_id, site in sites.items():
        assert spec["services"][node_id]["deploy"] == {
            "mode": "replicated", "replicas": 1, "endpoint_mode": "dnsrr", "restart_policy": {"condition": "none"},
            "labels": compose.labels(distributed, node_id),
            "placement": {"constraints": [f"node.labels.site == {site}"]},
        }
    assert spec["networks"][compose.NETWORK] == {"internal": True, "labels": compose.labels(distributed),
                                                 "driver": "overlay"}
    assert spec["version"] == stack.STACK_FILE_VERSION and "name" not in spec


def test_the_rest_is_the_compose_service_minus_what_swarm_does_not_take(distributed: Scenario) -> None:
    composed = compose.compose_spec(distributed)["services"]
    for node_id, service in stack.stack_spec(distributed)["services"].items():
        expected = {key: value for key, value in composed[node_id].items() if key not in stack.UNSUPPORTED}
        assert {key: value for key, value in service.items() if key != "deploy"} == expected
        assert service["cap_drop"] == ["ALL"] and service["read_only"] is True and service["user"] and service["init"]


def test_images_can_be_a_registrys(distributed: Scenario) -> None:
    tag = distributed.containers[0].image
    spec = stack.stack_spec(distributed, {tag: f"registry.example:5000/{tag}"})
    assert spec["services"][distributed.containers[0].id]["image"] == f"registry.example:5000/{tag}"


def test_placement_changes_nothing_for_the_compose_runtime(distributed: Scenario) -> None:
    default = loading.load(ROOT / "scenarios" / "default.yaml")
    assert [node.placement for node in default.containers] == [(), (), ()]
    assert all(node.placement for node in distributed.containers)
    # The same compose services apart from the scenario's name in the labels: placement does not reach them.
    rename = compose.render_text(default).split("\n", 2)[2].replace("cosim.scenario: default", "cosim.scenario: distributed")
    assert compose.render_text(distributed).split("\n", 2)[2].replace("name: cosim-distributed", "name: cosim-default") \
        == rename


def test_render_writes_a_file_docker_stack_reads(distributed: Scenario, tmp_path: Path) -> None:
    path = stack.render(distributed, tmp_path / "stack.yaml")
    assert yaml.safe_load(path.read_text()) == stack.stack_spec(distributed)


def test_resources_become_compose_limits_and_the_stacks_deploy_limits(distributed: Scenario,
                                                                      tmp_path: Path) -> None:
    """`resources` on a node: compose `cpus`, `mem_limit` and `memswap_limit` (= memory: no swap to hide a shortage),
    the stack's `deploy.resources.limits`, and a different compose hash (the trace header's `compose_sha256`)."""
    text = (ROOT / "scenarios" / "distributed.yaml").read_text(encoding="utf-8").replace("../", str(ROOT) + "/")
    limited_path = tmp_path / "distributed.yaml"
    limited_path.write_text(text.replace("  - id: gateway\n", "  - id: gateway\n    resources: {cpus: 0.5, memory: 64M}\n"),
                            encoding="utf-8")
    limited = loading.load(limited_path)
    services = compose.compose_spec(limited)["services"]
    assert {key: services["gateway"][key] for key in compose.LIMIT_KEYS} == {
        "cpus": 0.5, "mem_limit": "64m", "memswap_limit": "64m"}
    assert not any(key in services["inference"] for key in compose.LIMIT_KEYS)  # only where the scenario says so
    stacked = stack.stack_spec(limited)["services"]["gateway"]
    assert stacked["deploy"]["resources"] == {"limits": {"cpus": "0.5", "memory": "64m"}}
    assert not any(key in stacked for key in compose.LIMIT_KEYS)
    unlimited_path = tmp_path / "unlimited.yaml"
    unlimited_path.write_text(text, encoding="utf-8")
    assert compose.sha256(limited) != compose.sha256(loading.load(unlimited_path))
