"""Compose rendering: golden files, determinism, atomic writes, the locked-down spec, `docker compose config`, and
a hash that does not depend on where the files sit.

Golden files: each scenario in tests/golden/scenarios/ renders (with its build contexts under the fixed cache
directory cosim.cli.GOLDEN_CACHE, so that they are the same on every machine) to
tests/golden/compose/<scenario name>.yaml, byte for byte. The tests only compare; after an intended change to
the rendering, or to what goes into an image name (containers/echo, containers/mqtt-broker, the SDKs), regenerate
the files with `invoke golden` and review the diff before committing it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cosim import compose, loading
from cosim.cli import GOLDEN_CACHE
from cosim.model import Scenario
from cosim.run import run
from cosim.service_sources import context_dir, service_image
from cosim.tracediff import trace_hash

from .conftest import own_echo_service

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
GOLDEN_SCENARIOS = sorted((GOLDEN / "scenarios").glob("*.yaml"))
GOLDEN_COMPOSE = GOLDEN / "compose"


def golden_ids() -> list[str]:
    return [path.stem for path in GOLDEN_SCENARIOS]


@pytest.fixture(params=GOLDEN_SCENARIOS, ids=golden_ids())
def golden_scenario(request: pytest.FixtureRequest) -> Scenario:
    return loading.load(request.param)


def test_there_are_golden_scenarios() -> None:
    assert {"replicas", "infrastructure", "environment"} <= set(golden_ids())


def test_matches_golden_file(golden_scenario: Scenario) -> None:
    text = compose.render_text(golden_scenario, GOLDEN_CACHE)
    golden = compose.compose_path(golden_scenario, GOLDEN_COMPOSE)
    assert golden.is_file(), f"{golden} is missing: create it with `invoke golden`"
    assert golden.read_bytes() == text.encode("utf-8"), (
        f"{golden} differs from the rendering; if the change is intended, regenerate with `invoke golden`")


def test_no_stray_golden_files() -> None:
    names = {loading.load(path).name for path in GOLDEN_SCENARIOS}
    assert {path.stem for path in GOLDEN_COMPOSE.glob("*.yaml")} == names


def test_rendering_is_deterministic(golden_scenario: Scenario) -> None:
    first = compose.render_text(golden_scenario, GOLDEN_CACHE)
    again = compose.render_text(loading.load(golden_scenario.path), GOLDEN_CACHE)
    assert first == again


def test_build_context_is_the_staged_service_folder(golden_scenario: Scenario, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # An absolute path in cosim's cache ($COSIM_CACHE_DIR), so the rendered file works from anywhere.
    monkeypatch.setenv("COSIM_CACHE_DIR", str(tmp_path / "cache"))
    spec = yaml.safe_load(compose.render_text(golden_scenario))
    for node in golden_scenario.containers:
        build = spec["services"][node.id]["build"]
        assert node.build is not None
        assert build["context"] == context_dir(node.build, node.source_sha256).as_posix()
        assert build["context"] == f"{tmp_path}/cache/contexts/{node.build.name}-{node.source_sha256[:12]}"
        assert build["dockerfile"] == "Dockerfile"
        assert set(build["args"]) == {"BASE_IMAGE", "NODE_BASE_IMAGE"}


# -- the spec is locked down ---------------------------------------------------------------------------------------


def rendered_spec(scenario: Scenario) -> dict[str, Any]:
    return yaml.safe_load(compose.render_text(scenario, GOLDEN_CACHE))


def test_services_are_the_container_nodes(golden_scenario: Scenario) -> None:
    spec = rendered_spec(golden_scenario)
    assert spec["name"] == f"cosim-{golden_scenario.name}"
    assert list(spec["services"]) == [node.id for node in golden_scenario.containers]


def test_security_defaults(golden_scenario: Scenario) -> None:
    text = compose.render_text(golden_scenario, GOLDEN_CACHE)
    assert "docker.sock" not in text
    spec = yaml.safe_load(text)
    for node in golden_scenario.containers:
        service = spec["services"][node.id]
        assert "ports" not in service, "nothing is published on the host"
        for volume in service.get("volumes", []):
            assert "docker.sock" not in str(volume)
        assert service["cap_drop"] == ["ALL"]
        assert "cap_add" not in service
        assert "no-new-privileges:true" in service["security_opt"]
        user = str(service["user"])
        assert user.split(":")[0] not in ("", "0", "root"), user
        assert service["init"] is True
        assert service.get("privileged", False) is False
        for host_namespace in ("network_mode", "pid", "ipc", "userns_mode"):
            assert host_namespace not in service
        assert service["read_only"] is node.read_only
        assert service["pull_policy"] == "never"
        assert service.get("tty", False) is False
        if node.kind == "service":
            assert service["stdin_open"] is True
            assert service["tty"] is False
        else:
            assert "stdin_open" not in service  # infrastructure does not speak the protocol


def test_one_internal_network(golden_scenario: Scenario) -> None:
    spec = rendered_spec(golden_scenario)
    assert list(spec["networks"]) == [compose.NETWORK]
    network = spec["networks"][compose.NETWORK]
    assert network["internal"] is True
    assert network["labels"] == {"cosim.project": "cosim", "cosim.scenario": golden_scenario.name,
                                 "cosim.run": "${COSIM_RUN_ID:-manual}"}
    for service in spec["services"].values():
        assert service["networks"] == [compose.NETWORK]


def test_labels(golden_scenario: Scenario) -> None:
    spec = rendered_spec(golden_scenario)
    for node_id, service in spec["services"].items():
        assert service["labels"] == {"cosim.project": "cosim", "cosim.scenario": golden_scenario.name,
                                     "cosim.run": "${COSIM_RUN_ID:-manual}", "cosim.node": node_id}


def test_replicas_become_services() -> None:
    spec = rendered_spec(loading.load(GOLDEN / "scenarios" / "replicas.yaml"))
    assert list(spec["services"]) == ["worker-1", "worker-2", "worker-3"]
    for node_id, service in spec["services"].items():
        assert service["environment"] == {"COSIM_NODE_ID": node_id}
        assert service["image"] == service_image("echo")


def test_infrastructure_command() -> None:
    spec = rendered_spec(loading.load(GOLDEN / "scenarios" / "infrastructure.yaml"))
    # The scenario's command replaces the image's whole command line (entrypoint and arguments).
    assert spec["services"]["broker"]["entrypoint"] == ["mosquitto", "-c", "/etc/cosim/mosquitto.conf", "-v"]
    assert spec["services"]["broker"]["command"] == []
    assert "restart" not in spec["services"]["broker"]
    assert spec["services"]["client"]["entrypoint"] == ["python3", "-u", "/app/service.py"]


def test_environment_and_writable_root() -> None:
    spec = rendered_spec(loading.load(GOLDEN / "scenarios" / "environment.yaml"))
    app = spec["services"]["app"]
    assert app["environment"] == {"COSIM_NODE_ID": "app", "ALPHA": "1", "DEBUG": "true", "RATIO": "0.5",
                                  "RETRIES": "3", "ZETA": "last", "LITERAL": "$${HOME}-$$USER $$$$"}
    assert app["entrypoint"] == ["python3", "-u", "/app/service.py", "echo $$VAR"]  # `$$`: no interpolation
    assert all(isinstance(value, str) for value in app["environment"].values())
    assert app["read_only"] is False
    assert app["image"] == "example.org/cosim/app:1.2"


# -- render() writes the file --------------------------------------------------------------------------------------


def test_render_writes_atomically_and_returns_the_path(tmp_path: Path) -> None:
    loaded = loading.load(GOLDEN / "scenarios" / "replicas.yaml")
    out = tmp_path / "compose"  # does not exist yet
    path = compose.render(loaded, compose_dir=out)
    assert path == out / "golden-replicas.yaml"
    expected = compose.render_text(loaded)
    assert path.read_text(encoding="utf-8") == expected
    assert sorted(p.name for p in out.iterdir()) == ["golden-replicas.yaml"]  # no temporary file left

    path.write_text("stale\n")
    before = path.stat().st_ino
    assert compose.render(loaded, compose_dir=out) == path
    assert path.read_text(encoding="utf-8") == expected
    assert path.stat().st_ino != before, "replaced by a rename, never rewritten in place"
    assert sorted(p.name for p in out.iterdir()) == ["golden-replicas.yaml"]

    unchanged = path.stat().st_ino
    assert compose.render(loaded, compose_dir=out) == path
    assert path.stat().st_ino == unchanged  # identical content: left alone


def test_render_twice_gives_identical_bytes(tmp_path: Path) -> None:
    loaded = loading.load(GOLDEN / "scenarios" / "environment.yaml")
    first = compose.render(loaded, compose_dir=tmp_path / "a").read_bytes()
    second = compose.render(loading.load(loaded.path), compose_dir=tmp_path / "a").read_bytes()
    assert first == second


# -- the real Compose CLI accepts the files ---------------------------------------------------------------------


def _compose_version() -> str | None:
    try:
        result = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


@pytest.mark.docker
@pytest.mark.parametrize("scenario_path", GOLDEN_SCENARIOS, ids=golden_ids())
def test_docker_compose_config_accepts_golden(scenario_path: Path, tmp_path: Path) -> None:
    assert _compose_version() is not None, "`docker compose version` failed: the Compose v2 CLI plugin is missing"
    golden = compose.compose_path(loading.load(scenario_path), GOLDEN_COMPOSE)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("COSIM_", "COMPOSE_"))}
    # `config` only parses, interpolates and prints: it creates no container, network or volume.
    result = subprocess.run(["docker", "compose", "-f", str(golden), "config"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    assert set(resolved["services"]) == set(yaml.safe_load(golden.read_text())["services"])
    for service in resolved["services"].values():
        assert Path(service["build"]["context"]).parent == GOLDEN_CACHE / "contexts"
        assert service["build"]["args"]["BASE_IMAGE"] == compose.DEFAULT_BASE_IMAGE
        assert service["labels"]["cosim.run"] == "manual"
        assert "ports" not in service
    if scenario_path.stem == "environment":
        # Compose interpolated nothing the scenario wrote: `config` prints a file, where `$$` stands for one `$`.
        app = resolved["services"]["app"]
        assert app["environment"]["LITERAL"].replace("$$", "$") == "${HOME}-$USER $$"
        assert app["entrypoint"][-1].replace("$$", "$") == "echo $VAR"


def test_invoke_golden_rewrites_nothing_when_the_rendering_matches() -> None:
    """Goldens change only through `invoke golden` (never from a test run); on a clean tree it changes nothing."""
    before = {path: path.read_bytes() for path in GOLDEN_COMPOSE.glob("*.yaml")}
    done = subprocess.run([sys.executable, "-m", "invoke", "golden"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(done.stdout.splitlines()) == sorted(f"unchanged tests/golden/compose/{path.name}" for path in before)
    assert {path: path.read_bytes() for path in GOLDEN_COMPOSE.glob("*.yaml")} == before


# -- the identity of a scenario does not depend on where its files sit ------------------------------------------


def _experiment(directory: Path) -> Path:
    """A scenario and its own service folder (named like the bundled echo) under ``directory``."""
    own_echo_service(directory / "services" / "echo")
    scenario = directory / "scenarios" / "own.yaml"
    scenario.parent.mkdir(parents=True)
    scenario.write_text("""\
name: own-echo
seed: 7
duration_us: 20000
quantum_us: 1000
nodes:
  - {id: sensor, kind: sensor, period_us: 5000, links: [{to: echo, latency_us: 1000}]}
  - {id: echo, kind: service, build: ../services/echo, config: {tick_us: 3000}}
  - {id: out, kind: sink}
routes:
  - {from: sensor, to: [echo]}
  - {from: echo, to: [out]}
""", encoding="utf-8")
    return scenario


def test_the_same_experiment_in_two_directories_has_one_compose_hash(tmp_path: Path) -> None:
    first, second = loading.load(_experiment(tmp_path / "a")), loading.load(_experiment(tmp_path / "x" / "y" / "b"))
    assert compose.sha256(first) == compose.sha256(second)
    assert compose.render_text(first) == compose.render_text(second)  # the context is named by content too
    assert compose.render_text(first, tmp_path / "one") != compose.render_text(first, tmp_path / "two")
    assert compose.sha256(first) != compose.sha256(loading.load(ROOT / "tests" / "golden" / "scenarios"
                                                                 / "replicas.yaml"))
    assert first.node("echo").image != service_image("echo")  # never the bundled image
    service = tmp_path / "a" / "services" / "echo" / "service.py"
    service.write_text(service.read_text() + "\n# changed\n")
    changed = loading.load(tmp_path / "a" / "scenarios" / "own.yaml")
    assert compose.sha256(changed) != compose.sha256(second)  # what a service is made of is part of the identity


def test_the_same_experiment_in_two_directories_gives_one_trace_hash(tmp_path: Path) -> None:
    traces = []
    for where in ("a", "elsewhere/b"):
        scenario = _experiment(tmp_path / where)
        traces.append(tmp_path / where / "trace.jsonl")
        run(scenario, runtime="local", trace_path=traces[-1])
    assert trace_hash(traces[0]) == trace_hash(traces[1])
    assert traces[0].read_bytes().split(b"\n", 1)[1] == traces[1].read_bytes().split(b"\n", 1)[1]
