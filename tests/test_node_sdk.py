"""The Node.js SDK (sdk/node, npm name cosim-service): its JSON encoder writes cosim's canonical bytes, and its
Service speaks the protocol as docs/protocol.md says (what `cosim conformance` does not already check)."""

from __future__ import annotations

import importlib.util
import json
import random
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cosim import conformance, protocol
from cosim.run import run
from tests.service_process import ServiceProcess
from tests.skip_policy import host_tool

from .conftest import ROOT

SDK = ROOT / "sdk" / "node"


@pytest.fixture(scope="module")
def node() -> str:
    return host_tool("node")


def run_node(node: str, script: str, stdin: str) -> str:
    done = subprocess.run([node, "-e", script, str(SDK / "index.js")], input=stdin, capture_output=True, text=True,
                          timeout=60, check=True)
    return done.stdout


def _random_value(rng: random.Random, depth: int = 0) -> Any:
    kinds = ["int", "float", "str", "bool", "null"] + (["list", "dict"] if depth < 3 else [])
    kind = rng.choice(kinds)
    if kind == "int":
        return rng.randrange(-(1 << 53) + 1, 1 << 53)
    if kind == "float":
        value = rng.choice([rng.uniform(-1e3, 1e3), rng.uniform(-1, 1) * 10 ** rng.randrange(-30, 30)])
        return value if value != int(value) else 0.5  # an integral float is JavaScript's integer (see README)
    if kind == "str":
        return "".join(rng.choice("aZ09 \"\\\n\t\x01\x1f\x7féü€\u2028\ufffe\U0001F600") for _ in range(rng.randrange(6)))
    if kind == "bool":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "list":
        return [_random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    keys = ["a", "B", "é", "\uffff", "\U00010000", "_", "aa", "0", "10", "9"]
    return {rng.choice(keys): _random_value(rng, depth + 1) for _ in range(rng.randrange(5))}


def test_the_encoder_writes_the_bytes_cosim_writes(node: str) -> None:
    rng = random.Random(23)
    values = [_random_value(rng) for _ in range(400)] + [{"z": 1, "a": {"y": [1, 2.5, None]}}, "", [], {}]
    script = ("const { encode } = require(process.argv[1]);"
              "const lines = require('fs').readFileSync(0, 'utf8').split('\\n').filter(Boolean);"
              "process.stdout.write(lines.map((l) => encode(JSON.parse(l))).join(''));")
    got = run_node(node, script, "".join(json.dumps(v) + "\n" for v in values))
    assert got.split("\n") == [protocol.canonical(v) for v in values] + [""]  # (not splitlines: U+2028 is in a value)


def test_floats_are_written_as_python_writes_them(node: str) -> None:
    rng = random.Random(5)
    doubles = [struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0] for _ in range(3000)]
    doubles += [1.0, -0.0, 0.0, 1e16, 1e15, 1e-4, 1e-5, 2.0 ** 53, 2.0 ** 60, 5e-324, 1.7976931348623157e308, 123.0]
    doubles = [d for d in doubles if d == d and d not in (float("inf"), float("-inf"))]
    script = ("const { encode, float } = require(process.argv[1]);"
              "const lines = require('fs').readFileSync(0, 'utf8').split('\\n').filter(Boolean);"
              "process.stdout.write(lines.map((l) => encode([float(Number(l))])).join(''));")
    got = run_node(node, script, "".join(repr(d) + "\n" for d in doubles))
    assert got.splitlines() == [protocol.canonical([d]) for d in doubles]


def test_nan_and_other_values_that_are_not_json_are_refused(node: str) -> None:
    script = ("const { encode } = require(process.argv[1]); const cycle = {}; cycle.self = cycle;"
              "for (const v of [NaN, Infinity, new Map(), cycle]) {"
              "  try { encode({ v }); console.log('encoded'); } catch (e) { console.log(e.constructor.name); } }"
              "console.log(encode({ big: 12345678901234567890n, u: undefined, f: () => 1 }).trim());")
    assert run_node(node, script, "").splitlines() == ["TypeError"] * 4 + ['{"big":12345678901234567890}']


SERVICE = """
"use strict";
const { Service, run } = require(process.env.COSIM_SDK);
class Probe extends Service {
  init() { console.log("a stray console.log"); process.stdout.write("a stray write\\n"); }
  advance(current, target, events) {
    if (this.config.bad_output) return [{ time_us: target }];
    if (this.config.nan) return [{ type: "x", data: { v: NaN } }];
    // every input answered 2500 us later (held across windows), and one output without a time (the window end)
    return events.map((e) => ({ type: "late", time_us: e.time_us + 2500 })).concat([{ type: "end" }]);
  }
}
run(new Probe());
"""


@pytest.fixture
def probe(node: str, tmp_path: Path) -> list[str]:
    path = tmp_path / "probe.js"
    path.write_text(SERVICE, encoding="utf-8")
    return [node, str(path)]


def _session(command: list[str]) -> ServiceProcess:
    return ServiceProcess(command=command, env={"COSIM_SDK": str(SDK / "index.js")})


def test_outputs_after_the_window_are_held_and_promised_and_stray_output_goes_to_stderr(probe: list[str]) -> None:
    with _session(probe) as service:
        ready = service.init({})
        assert ready == {"type": "READY", "protocol": 1, "time_us": 0, "capabilities": []}  # no hooks, no claims
        event = {"type": "in", "time_us": 500, "source": "s", "seq": 0, "sent_us": 0, "data": None}
        assert service.advance(1000, [event])["events"] == [{"type": "end", "time_us": 1000}]
        assert service.advance(2000, [])["events"] == [{"type": "end", "time_us": 2000}]
        assert service.advance(3000, [])["events"] == [{"type": "late", "time_us": 3000}, {"type": "end",
                                                                                            "time_us": 3000}]
        assert service.shutdown() == 0
        assert "a stray console.log\na stray write\n" in service.stderr()


@pytest.mark.parametrize("request_, code, fatal", [
    ({"type": "INIT", "protocol": 2, "time_us": 0, "node_id": "p", "seed": 1, "config": {}, "endpoints": {}},
     "protocol_version", True),
    ({"type": "CONFIGURE", "time_us": 0, "config": {}}, "unsupported", False),
    ({"type": "SNAPSHOT", "time_us": 0}, "unsupported", False),
    ({"type": "ADVANCE", "time_us": 1000, "events": [{"time_us": 1001}]}, "event_outside_window", False),
    ({"type": "ADVANCE", "time_us": 1000, "events": {}}, "bad_message", False),
    ([1, 2], "bad_message", False),
    ({"no": "type"}, "bad_message", False),
])
def test_requests_it_cannot_carry_out_are_answered_with_error(probe: list[str], request_: Any, code: str,
                                                             fatal: bool) -> None:
    with _session(probe) as service:
        if not (isinstance(request_, dict) and request_.get("type") == "INIT"):
            service.init({})
        reply = service.request(json.dumps(request_))
        assert (reply["type"], reply["error"], reply["fatal"]) == ("ERROR", code, fatal)
        if fatal:
            assert service.proc.wait(timeout=10) == 1
        else:
            assert service.advance(1000, [])["type"] == "DONE"


@pytest.mark.parametrize("config, code", [({"bad_output": True}, "bad_output"), ({"nan": True}, "bad_output")])
def test_outputs_that_break_the_protocol_end_it(probe: list[str], config: dict[str, Any], code: str) -> None:
    with _session(probe) as service:
        service.init(config)
        reply = service.advance(1000, [])
        assert (reply["type"], reply["error"], reply["fatal"]) == ("ERROR", code, True)
        assert service.proc.wait(timeout=10) == 1


def test_a_line_that_is_not_utf8_is_bad_json_and_end_of_input_ends_it_with_0(probe: list[str]) -> None:
    with _session(probe) as service:
        service.init({})
        assert service.proc.stdin is not None
        service.proc.stdin.write(b'{"type": "\xff"}\n')
        service.proc.stdin.flush()
        assert service.receive()["error"] == "bad_json"
        service.proc.stdin.close()
        assert service.proc.wait(timeout=10) == 0


def test_the_package_is_complete_and_dependency_free() -> None:
    package = json.loads((SDK / "package.json").read_text(encoding="utf-8"))
    assert (package["name"], package["version"], package["license"], package["main"]) == \
        ("cosim-service", "0.1.0", "MIT", "index.js")
    assert "dependencies" not in package
    assert (SDK / "README.md").is_file()


ASYNC_SERVICE = """
"use strict";
const { Service, run } = require(process.env.COSIM_SDK);
const later = () => new Promise((resolve) => setImmediate(resolve));
class Slow extends Service {
  async init() { await later(); return { sdk: "node" }; }
  async advance(current, target, events) { await later(); return [{ type: "t", data: { n: events.length } }]; }
  async wakeup(target) { await later(); return target + 500; }
}
run(new Slow());
"""


def test_hooks_may_be_async_and_requests_are_answered_in_order(node: str, tmp_path: Path) -> None:
    path = tmp_path / "slow.js"
    path.write_text(ASYNC_SERVICE, encoding="utf-8")
    with _session([node, str(path)]) as service:
        init = {"type": "INIT", "protocol": 1, "time_us": 0, "node_id": "s", "seed": 1, "config": {}, "endpoints": {}}
        # every request written at once: each is answered only after the previous one's hooks have finished
        service.send("\n".join(json.dumps(m) for m in [init, *({"type": "ADVANCE", "time_us": t, "events": []}
                                                                for t in (1000, 2000, 3000))]))
        replies = [service.receive() for _ in range(4)]
        assert replies[0]["info"] == {"sdk": "node"} and replies[0]["next_us"] == 500
        assert [(r["time_us"], r["next_us"], r["events"]) for r in replies[1:]] == [
            (t, t + 500, [{"type": "t", "time_us": t, "data": {"n": 0}}]) for t in (1000, 2000, 3000)]


TEMPLATES = ROOT / "cosim" / "templates"
SCENARIO = """\
name: alarms
seed: 7
duration_us: 1500000
quantum_us: 1000
nodes:
  - id: sensor
    kind: sensor
    model: uniform
    period_us: 50000
    links:
      - {{to: alarm, latency_us: 2000}}
  - id: alarm
    kind: service
    build: {build}
    local_command: {command}
    config: {{threshold: 0.7}}
  - id: sink
    kind: sink
routes:
  - {{from: sensor, to: [alarm]}}
  - {{from: alarm, to: [sink]}}
"""


def _template_run(tmp_path: Path, lang: str, command: list[str], advance: str) -> list[bytes]:
    folder = tmp_path / lang / "alarm"
    for source in (TEMPLATES / f"service-{lang}").iterdir():
        if source.is_file():
            (folder / source.name).parent.mkdir(parents=True, exist_ok=True)
            (folder / source.name).write_text(source.read_text(encoding="utf-8").replace("{{name}}", "alarm"),
                                              encoding="utf-8")
    scenario = tmp_path / lang / "alarms.yaml"
    scenario.write_text(SCENARIO.format(build=folder, command=json.dumps(command)), encoding="utf-8")
    trace = tmp_path / f"{lang}-{advance}.jsonl"
    run(scenario, runtime="local", trace_path=trace, advance=advance)
    # Every record after the header (which names the paths), and the footer without its `executed` counts (which
    # differ between the advance modes, by design).
    records = trace.read_bytes().split(b"\n")[1:]
    footer = json.loads(records[-2])
    footer.pop("executed")
    return records[:-2] + [protocol.canonical(footer).encode()]


def test_the_node_and_python_templates_write_the_same_trace_records(node: str, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The same service in two languages, on the two SDKs: byte-identical records, in both advance modes."""
    if not (TEMPLATES / "service-python").is_dir() or importlib.util.find_spec("cosim_service") is None:
        pytest.skip("needs the Python SDK (cosim_service) and its service template")
    monkeypatch.setenv("NODE_PATH", str(conformance.node_environment(tmp_path)["NODE_PATH"]))
    python = _template_run(tmp_path, "python", [sys.executable, "-u", "service.py"], "next-event")
    assert any(b'"type":"alarm"' in line for line in python) and any(b'"type":"heartbeat"' in line for line in python)
    for advance in ("next-event", "fixed"):
        assert _template_run(tmp_path, "node", ["node", "service.js"], advance) == python
