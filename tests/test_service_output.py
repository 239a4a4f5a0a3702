"""What a service writes besides the protocol, with real Node.js and Python processes: a stray line on stdout fails
the run naming the node and the line, except a Python service's print() on the adapter, which goes to its log; and
a failing node's log tail keeps the start of its stack trace (where, as well as what)."""

from __future__ import annotations

import shutil
import subprocess
import textwrap
from pathlib import Path

import pytest

from cosim.errors import NodeFailure
from cosim.run import run
from cosim.runtimes.docker.base_image import LOCAL_BASE_IMAGE
from cosim.runtimes.docker.engine import stderr_tail
from cosim.tails import LINE_CHARS, TRACE_TAIL_LINES, log_tail

from .conftest import ROOT

NODE = shutil.which("node") or "/usr/bin/node"

# Both answer INIT, then crash on the first ADVANCE twenty calls deep (a trace of more than the tail's 15 lines).
NODE_SERVICE = """\
const readline = require("readline");
console.error("crash.js: started");
function a(n) { return n === 0 ? fail() : b(n - 1); }
function b(n) { return a(n); }
function fail() {
  throw new Error("sensor value out of range");
}
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  const message = JSON.parse(line);
  if (message.type === "INIT") {
    process.stdout.write(JSON.stringify({ type: "READY", protocol: 1, time_us: 0, capabilities: [] }) + "\\n");
  } else {
    a(20);
  }
});
"""

PYTHON_SERVICE = """\
import json
import sys


def a(n):
    return fail() if n == 0 else b(n - 1)


def b(n):
    return a(n)


def fail():
    raise ValueError("sensor value out of range")


print("crash.py: started", file=sys.stderr, flush=True)
for line in sys.stdin:
    if json.loads(line)["type"] == "INIT":
        print(json.dumps({"type": "READY", "protocol": 1, "time_us": 0, "capabilities": []}), flush=True)
    else:
        a(20)
"""


def one_service(tmp_path: Path, script: str, text: str, command: list[str]) -> Path:
    """A scenario of one service (node "svc", run locally as ``command`` + the script) and a sink. A Python script
    finds protocol_adapter.py beside it, copied as a user's own service would."""
    service = tmp_path / "svc"
    service.mkdir()
    shutil.copy(ROOT / "containers" / "protocol_adapter.py", service)
    (service / script).write_text(text, encoding="utf-8")
    (service / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")  # a service folder has one
    scenario = tmp_path / "svc.yaml"
    scenario.write_text(textwrap.dedent(f"""\
        name: svc
        seed: 1
        duration_us: 3000
        quantum_us: 1000
        nodes:
          - {{id: svc, kind: service, build: {service}, local_command: {command + [str(service / script)]}}}
          - {{id: sink, kind: sink}}
        routes:
          - {{from: svc, to: [sink]}}
        """), encoding="utf-8")
    return scenario


def failure(scenario: Path) -> NodeFailure:
    with pytest.raises(NodeFailure) as caught:
        run(scenario, runtime="local", trace_path=scenario.with_suffix(".jsonl"), watchdog_s=10)
    assert caught.value.node == "svc"
    return caught.value


def crash(tmp_path: Path, script: str, text: str, command: list[str]) -> NodeFailure:
    return failure(one_service(tmp_path, script, text, command))


# -- stray output on stdout -----------------------------------------------------------------------------------

NODE_CHATTY = NODE_SERVICE.replace("    a(20);", '''    console.log("got " + message.type);
    process.stdout.write(JSON.stringify({ type: "DONE", time_us: message.time_us, events: [] }) + "\\n");''')


def test_a_stray_line_on_stdout_fails_the_run_naming_the_node_and_the_line(tmp_path: Path) -> None:
    failed = failure(one_service(tmp_path, "chatty.js", NODE_CHATTY, [NODE]))
    assert str(failed).startswith("node 'svc': wrote a line on stdout that is not protocol JSON: 'got ADVANCE'; "
                                  "while waiting for the reply to ADVANCE to 1000 us"), str(failed)


def test_print_in_a_python_service_on_the_adapter_goes_to_its_log(tmp_path: Path) -> None:
    chatty = (ROOT / "tests" / "services" / "chatty.py").read_text(encoding="utf-8")
    scenario = one_service(tmp_path, "chatty.py", chatty, ["{python}", "-u"])
    completed = run(scenario, runtime="local", trace_path=tmp_path / "svc.jsonl")
    # the run went on: its outputs at 1 and 2 ms reached the sink (the one at 3 ms would arrive after the end)
    assert [event["type"] for event in completed.sinks["sink"]] == ["said"] * 2
    log = (tmp_path / "svc.logs" / "svc.log").read_text(encoding="utf-8")
    assert "chatty: stray print in on_init for svc" in log and "chatty: stray print while advancing to 3000" in log


def test_a_print_before_the_adapter_runs_still_fails_the_run(tmp_path: Path) -> None:
    early = "print('early banner')\nfrom protocol_adapter import serve\nserve(lambda current, target, events: [])\n"
    scenario = one_service(tmp_path, "early.py", early, ["{python}", "-u"])
    assert str(failure(scenario)).startswith(
        "node 'svc': wrote a line on stdout that is not protocol JSON: 'early banner'; while waiting for the reply to INIT")


# -- the log tail of a crash ----------------------------------------------------------------------------------


def test_a_node_crash_shows_its_file_line_source_and_error(tmp_path: Path) -> None:
    failed = crash(tmp_path, "crash.js", NODE_SERVICE, [NODE])
    lines = failed.log_tail.splitlines()
    location = f"{tmp_path / 'svc' / 'crash.js'}:6"
    assert lines[0] == location, failed.log_tail  # the trace's first line: where it was thrown
    assert lines[1].strip() == 'throw new Error("sensor value out of range");'
    assert lines[2].strip() == "^"
    assert "Error: sensor value out of range" in lines and lines[-1].startswith("Node.js v")
    assert "crash.js: started" not in lines  # what came before the trace stays out
    assert len(lines) <= TRACE_TAIL_LINES
    assert f"last lines of its log:\n    {location}\n" in str(failed)


def test_a_python_crash_shows_its_traceback_from_the_start(tmp_path: Path) -> None:
    failed = crash(tmp_path, "crash.py", PYTHON_SERVICE, ["{python}", "-u"])
    lines = failed.log_tail.splitlines()
    assert lines[0] == "Traceback (most recent call last):", failed.log_tail
    assert lines[-1] == "ValueError: sensor value out of range"
    assert len(lines) <= TRACE_TAIL_LINES and "crash.py: started" not in lines


@pytest.mark.docker
def test_a_container_crash_shows_its_traceback_from_the_start() -> None:
    """What a Docker node's failure quotes: the container's stderr, as the engine keeps it."""
    crashing = PYTHON_SERVICE.replace('for line in sys.stdin:', 'for line in [\'{"type": "ADVANCE"}\']:')
    started = subprocess.run(["docker", "run", "-d", "--label", "cosim.test=tails", LOCAL_BASE_IMAGE,
                              "python3", "-c", crashing], capture_output=True, text=True, check=True)
    container = started.stdout.strip()
    try:
        assert subprocess.run(["docker", "wait", container], capture_output=True, text=True).stdout.strip() == "1"
        lines = stderr_tail(container, 15).splitlines()
        assert lines[0] == "Traceback (most recent call last):" and lines[-1] == "ValueError: sensor value out of range"
        assert "crash.py: started" not in lines
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)


def python_trace(frames: int) -> list[str]:
    return (["Traceback (most recent call last):"]
            + [f'  File "/app/service.py", line {n}, in f{n}\n    f{n + 1}()' for n in range(frames)]
            + ["RuntimeError: deep"])


def test_a_tail_inside_the_trace_is_unchanged_and_an_earlier_trace_stays_out() -> None:
    log = "\n".join(["starting", *python_trace(2)])
    assert log_tail(log, 15) == log
    # a trace that ended long before the last lines is not theirs
    earlier = "\n".join([*python_trace(3), *(f"step {n}" for n in range(20))])
    assert log_tail(earlier, 5) == "\n".join(f"step {n}" for n in range(15, 20))


def test_a_long_trace_keeps_its_start_and_end_with_the_middle_left_out() -> None:
    lines = "\n".join(python_trace(60)).splitlines()  # 122 lines
    tail = log_tail("\n".join(["starting", *lines]), 15).splitlines()
    assert TRACE_TAIL_LINES - 3 <= len(tail) <= TRACE_TAIL_LINES
    assert tail[0] == "Traceback (most recent call last):" and tail[-1] == "RuntimeError: deep"
    assert tail[1] == f"    ... ({len(lines) - len(tail) + 1} lines left out)"  # all but the kept ones
    assert tail[2].startswith("  File ") and tail[2:] == lines[-(len(tail) - 2):]  # from a frame's first line on


def test_a_long_line_is_cut_short() -> None:
    node_trace = ["/app/bundle.min.js:1", "x" * 100_000, "      ^", "", "TypeError: y is not a function",
                  *(f"    at f{n} (/app/bundle.min.js:1:{n})" for n in range(20))]
    tail = log_tail("\n".join(node_trace), 15).splitlines()
    assert tail[0] == "/app/bundle.min.js:1" and tail[1] == "x" * LINE_CHARS + " ..."
    assert len(tail) == len(node_trace)
