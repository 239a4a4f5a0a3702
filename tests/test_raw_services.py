"""The coordinator's own checks on what a service answers, reached by a service that does not use the Python
adapter (tests/services/raw/service.py, stdlib only, as a Node.js or jq service would be): each rule it breaks
must end the run with a node failure naming the node and the rule, on the local runtime and through Docker."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosim.errors import NodeFailure
from cosim.run import run
from cosim.service_sources import image_name

from .conftest import ROOT, cosim_resources

RAW = ROOT / "tests" / "services" / "raw"
WATCHDOG_S = 3.0

# rule broken -> what the failure says (the node, then the problem)
RULES = {
    "ready-protocol": "answered READY for protocol 2; cosim speaks 1",
    "done-time": "answered DONE for 1001 us, expected 1000 us",
    "event-after-window": "DONE events[0] is stamped 1001 us, outside the window (0, 1000]",
    "event-before-window": "DONE events[0] is stamped 0 us, outside the window (0, 1000]",
    "event-time-not-integer": "DONE events[0] is stamped '1000' us, outside the window (0, 1000]",
    "event-not-object": "DONE events[0] is not an object with a string 'type'",
    "event-without-type": "DONE events[0] is not an object with a string 'type'",
    "events-not-list": "answered DONE whose events is not a list: dict",
    "non-object-line": "wrote a JSON value that is not a message object: '[1,2,3]'",
    "not-json": "wrote a line on stdout that is not protocol JSON: 'tick at 1000'",
    "number-out-of-range": "wrote a line on stdout that is not protocol JSON: '{\"events\":[{\"data\":{\"value\":1E400}",
    "wrong-reply-type": "answered 'READY' out of protocol, expected DONE",
    "no-exit-after-shutdown": f"did not exit within {WATCHDOG_S:g} s of SHUTDOWN",
    "exit-code-after-shutdown": "exited with code 5 after SHUTDOWN; while waiting for the reply to SHUTDOWN; exit code 5",
}


@pytest.fixture(scope="module", autouse=True)
def _no_test_image_left() -> Iterator[None]:
    # The test-only image goes when the module ends.
    yield
    if shutil.which("docker"):
        subprocess.run(["docker", "rmi", "-f", image_name(RAW)], capture_output=True)


def raw_scenario(directory: Path, rule: str) -> Path:
    path = directory / "raw.yaml"
    path.write_text(f"""\
name: raw-{rule}
seed: 1
duration_us: 3000
quantum_us: 1000
nodes:
  - {{id: raw, kind: service, build: {RAW}, config: {{break: {rule}}}}}
  - {{id: sink, kind: sink}}
routes:
  - {{from: raw, to: [sink]}}
""", encoding="utf-8")
    return path


def assert_fails_with(tmp_path: Path, rule: str, runtime: str) -> dict:
    trace = tmp_path / "trace.jsonl"
    with pytest.raises(NodeFailure) as failure:
        run(raw_scenario(tmp_path, rule), runtime=runtime, trace_path=trace, watchdog_s=WATCHDOG_S)
    assert failure.value.node == "raw"
    assert str(failure.value).startswith(f"node 'raw': {RULES[rule]}"), str(failure.value)
    assert f"raw: breaking '{rule}'" in failure.value.log_tail  # its own stderr, for the user
    last = json.loads(trace.read_text(encoding="utf-8").splitlines()[-1])
    assert (last["record"], last["error"], last["node"]) == ("error", "node_failure", "raw")
    assert RULES[rule].split(";")[0] in last["detail"]
    return last


@pytest.mark.parametrize("rule", list(RULES))
def test_the_coordinator_refuses_a_raw_service_breaking(tmp_path: Path, rule: str) -> None:
    assert_fails_with(tmp_path, rule, "local")


def test_the_raw_service_passes_when_it_breaks_nothing(tmp_path: Path) -> None:
    summary = run(raw_scenario(tmp_path, "nothing"), runtime="local", trace_path=tmp_path / "t.jsonl",
                  watchdog_s=WATCHDOG_S)
    assert [(e["sent_us"], e["time_us"]) for e in summary.sinks["sink"]] == [(1000, 2000), (2000, 3000)]
    assert json.loads((tmp_path / "t.jsonl").read_text().splitlines()[-1])["status"] == "ok"


@pytest.mark.docker
@pytest.mark.parametrize("rule", ["event-after-window", "exit-code-after-shutdown"])
def test_the_coordinator_refuses_a_raw_service_in_docker(tmp_path: Path, service_images: dict[str, str],
                                                         rule: str) -> None:
    try:
        assert_fails_with(tmp_path, rule, "docker")
    finally:
        assert cosim_resources(f"cosim.scenario=raw-{rule}") == ([], [])


# -- scenario strings reach the service exactly as written (no Compose interpolation) ----------------------------

AS_WRITTEN = {
    "RAW_LEAK": "${HOME}-$USER",
    "RAW_DOLLARS": "$$ and $ and $$$",
    "RAW_DEFAULT": "${UNSET_IN_COSIM_TESTS:-fallback}",
    "RAW_PLAIN": "no dollar at all",
}
ARGS = ["echo $VAR", "${HOME}", "$$"]


def as_written_scenario(directory: Path) -> Path:
    path = directory / "as-written.yaml"
    environment = json.dumps(AS_WRITTEN)
    path.write_text(f"""\
name: raw-as-written
seed: 1
duration_us: 2000
quantum_us: 1000
nodes:
  - id: raw
    kind: service
    build: {RAW}
    command: {json.dumps(["python3", "-u", "/app/service.py", *ARGS])}
    local_command: {json.dumps(["{python}", "-u", str(RAW / "service.py"), *ARGS])}
    environment: {environment}
  - {{id: sink, kind: sink}}
routes:
  - {{from: raw, to: [sink]}}
""", encoding="utf-8")
    return path


def seen_by_the_service(tmp_path: Path, runtime: str) -> dict:
    trace = tmp_path / f"{runtime}.jsonl"
    run(as_written_scenario(tmp_path), runtime=runtime, trace_path=trace, watchdog_s=20)
    header = json.loads(trace.read_text(encoding="utf-8").splitlines()[0])
    return header["environment"]["services"]["raw"]


def test_scenario_strings_reach_a_local_service_as_written(tmp_path: Path) -> None:
    assert seen_by_the_service(tmp_path, "local") == {"env": AS_WRITTEN, "argv": ARGS}


@pytest.mark.docker
def test_scenario_strings_reach_a_container_as_written(tmp_path: Path, service_images: dict[str, str]) -> None:
    try:
        assert seen_by_the_service(tmp_path, "docker") == {"env": AS_WRITTEN, "argv": ARGS}
    finally:
        assert cosim_resources("cosim.scenario=raw-as-written") == ([], [])
