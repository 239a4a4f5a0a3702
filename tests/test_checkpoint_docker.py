"""Checkpoint and resume on Docker and across runtimes (the real engine): a run checkpointed at T and resumed, in
either runtime, gives the uninterrupted run's records byte for byte; every container is removed after each part."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosim.run import CompletedRun, resume, run
from tests.conftest import ROOT, assert_same_simulation, cosim_resources

pytestmark = pytest.mark.docker


def checkpoint(scenario: Path, runtime: str, at: int, tmp_path: Path, name: str) -> tuple[Path, CompletedRun]:
    written: list[Path] = []
    done = run(scenario, runtime=runtime, trace_path=tmp_path / f"{name}.jsonl", checkpoint_at=str(at),
               stop_after_checkpoint=True, checkpoint_dir=tmp_path / name,
               checkpoint_written=lambda path, size, seconds: written.append(path))
    return written[0], done


def assert_nothing_left(*runs: CompletedRun) -> None:
    """The Docker runs' containers and networks are gone (by run id: other runs of the scenario may be live)."""
    for done in runs:
        if done.runtime == "docker":
            run_id = json.loads(done.metrics_path.read_text())["environment"]["run_id"]
            assert cosim_resources(f"cosim.run={run_id}") == ([], [])


@pytest.mark.parametrize("first, then", [("local", "docker"), ("docker", "local"), ("docker", "docker")])
def test_checkpoint_in_one_runtime_resume_in_another(tmp_path: Path, first: str, then: str) -> None:
    scenario = ROOT / "tests" / "scenarios_docker" / "docker-pipeline.yaml"
    plain = run(scenario, runtime="local", trace_path=tmp_path / "plain.jsonl")
    taken, stopped = checkpoint(scenario, first, 150_000, tmp_path, "ck")
    resumed = resume(taken, runtime=then, trace_path=tmp_path / "resumed.jsonl")
    assert_same_simulation(plain.trace_path, resumed.trace_path)
    assert_nothing_left(stopped, resumed)


def test_default_scenario_checkpointed_and_resumed_on_docker(tmp_path: Path) -> None:
    """Mosquitto, the gateway and ONNX Runtime in containers; a fresh broker and fresh services on resume."""
    scenario = ROOT / "scenarios" / "default.yaml"
    plain = run(scenario, runtime="local", trace_path=tmp_path / "plain.jsonl")
    taken, stopped = checkpoint(scenario, "docker", 5_000_000, tmp_path, "ck")
    resumed = resume(taken, runtime="docker", trace_path=tmp_path / "resumed.jsonl")
    assert_same_simulation(plain.trace_path, resumed.trace_path)
    assert resumed.trace_path.read_text().count('"record":"header"') == 1
    assert_nothing_left(stopped, resumed)
