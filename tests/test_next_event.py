"""Next-event time advance (docs/protocol.md §13): the same trace records as fixed steps, fewer steps and ADVANCEs,
promises checked. Real processes (local runtime) and containers (Docker)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from protocol_adapter import CoordinatorProtocolAdapter  # noqa: E402  (containers/ is on the path: conftest)

from cosim import protocol
from cosim.coordinator import Coordinator
from cosim.determinism import gate, plan_modes
from cosim.errors import BrokenPromise, OptionError, ScenarioError
from cosim.loading import load
from cosim.nodes import SensorModel, SinkModel
from cosim.run import CompletedRun, run
from cosim.trace import TraceWriter, read
from cosim.tracediff import trace_hash

from .conftest import ROOT, cosim_resources

LOCAL = ROOT / "tests" / "scenarios_local"
MIXED = LOCAL / "mixed.yaml"
SERVICES = ROOT / "tests" / "services"
BUNDLED = sorted((ROOT / "scenarios").glob("*.yaml"))
SCHEDULED = sorted((ROOT / "tests" / "scenarios_schedule").glob("*.yaml"))  # the schedule acting on idle nodes


def both_modes(scenario: Path, tmp_path: Path, runtime: str = "local") -> dict[str, CompletedRun]:
    return {mode: run(scenario, runtime=runtime, trace_path=tmp_path / f"{scenario.stem}-{runtime}-{mode}.jsonl",
                      advance=mode, watchdog_s=60.0)
            for mode in ("fixed", "next-event")}


def assert_same_records(fixed: Path, next_event: Path) -> None:
    """Every record between header and footer byte-identical; the header differs only in ``advance`` (and the
    unhashed environment), the footer only in ``executed``."""
    lines_f, lines_n = fixed.read_bytes().split(b"\n"), next_event.read_bytes().split(b"\n")
    assert len(lines_f) == len(lines_n) and lines_f[1:-2] == lines_n[1:-2], f"{fixed} and {next_event} differ"
    header_f, header_n = json.loads(lines_f[0]), json.loads(lines_n[0])
    assert (header_f.pop("advance"), header_n.pop("advance")) == ("fixed", "next-event")
    header_f.pop("environment"), header_n.pop("environment")
    assert header_f == header_n
    footer_f, footer_n = json.loads(lines_f[-2]), json.loads(lines_n[-2])
    executed_f, executed_n = footer_f.pop("executed"), footer_n.pop("executed")
    assert footer_f == footer_n and footer_f["record"] == "footer"
    assert executed_f["steps"] == footer_f["steps"] and executed_f["skipped"] == 0
    assert executed_n["steps"] + executed_n["skipped"] == footer_n["steps"]
    assert trace_hash(fixed, across_modes=True) == trace_hash(next_event, across_modes=True)
    assert trace_hash(fixed) != trace_hash(next_event)  # the mode is part of the run's identity


def write_scenario(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nseed: 5\n" + body.replace("SERVICES", SERVICES.as_posix())
                    .replace("ECHO", (ROOT / "containers" / "echo").as_posix()), encoding="utf-8")
    return path


def sensor_to_promiser(tmp_path: Path, name: str, duration_us: int, sensor: str, latency_us: int, config: str) -> Path:
    """sensor -> a promiser service (tests/services/promiser.py, with ``config``) -> sink."""
    return write_scenario(tmp_path, name, f"""duration_us: {duration_us}
quantum_us: 1000
nodes:
  - {{id: sensor, kind: sensor, {sensor}, links: [{{to: promiser, latency_us: {latency_us}}}]}}
  - id: promiser
    kind: service
    build: ECHO
    local_command: ["{{python}}", "-u", "SERVICES/promiser.py"]
    config: {config}
  - {{id: sink, kind: sink}}
routes:
  - {{from: sensor, to: [promiser]}}
  - {{from: promiser, to: [sink]}}
""")


def data_of(trace: Path, kind: str, event_type: str) -> list[tuple[int, Any]]:
    return [(r["time_us"], r["data"]) for r in map(json.loads, trace.read_text(encoding="utf-8").splitlines())
            if r["record"] == kind and r.get("type") == event_type]


# -- equivalence: the same records in both modes ---------------------------------------------------------------

@pytest.mark.parametrize("scenario", [*BUNDLED, LOCAL / "pipeline.yaml", LOCAL / "cross-gateways.yaml", MIXED,
                                      *SCHEDULED],
                         ids=lambda path: path.stem)
def test_both_modes_give_the_same_records_locally(scenario: Path, tmp_path: Path) -> None:
    runs = both_modes(scenario, tmp_path)
    assert_same_records(runs["fixed"].trace_path, runs["next-event"].trace_path)
    fixed, sparse = runs["fixed"].result.timings, runs["next-event"].result.timings
    assert fixed.steps == runs["fixed"].scenario.steps and fixed.skipped == 0
    assert sparse.advances < fixed.advances  # idle services get no ADVANCE
    assert runs["next-event"].metrics.advances == sparse.advances and runs["next-event"].metrics.advance == "next-event"
    assert runs["fixed"].sinks == runs["next-event"].sinks


def test_a_node_without_the_capability_is_stepped_every_quantum_beside_ones_that_skip(tmp_path: Path) -> None:
    runs = both_modes(MIXED, tmp_path)
    assert_same_records(runs["fixed"].trace_path, runs["next-event"].trace_path)
    metrics = runs["next-event"].metrics
    quanta = runs["next-event"].scenario.steps
    assert metrics.steps == quanta and metrics.quanta_skipped == 0  # the ticker needs every window
    assert metrics.round_trip["ticker"]["count"] == quanta
    for capable in ("echo-1", "echo-2", "delay"):  # advanced only with input or a wake-up due
        assert metrics.round_trip[capable]["count"] < quanta / 4
    # The delay service's outputs were held across windows and emitted at input time + 33333 us exactly.
    trace = runs["next-event"].trace_path
    late = [time for time, _ in data_of(trace, "sent", "late")]
    delivered = [r for r in map(json.loads, trace.read_text(encoding="utf-8").splitlines())
                 if r["record"] == "delivered" and r["dest"] == "delay"]
    assert late and late == [r["time_us"] + 33333 for r in delivered if r["time_us"] + 33333 <= 300_000]


def test_an_idle_node_jumps_straight_to_the_window_of_its_next_input(tmp_path: Path) -> None:
    scenario = sensor_to_promiser(tmp_path, "jumps", 400000, "period_us: 90000, offset_us: 20500", 3000,
                                  "{report_windows: true}")
    completed = run(scenario, runtime="local", trace_path=tmp_path / "jumps.jsonl")
    seen = [data for _, data in data_of(completed.trace_path, "sent", "seen")]
    # Readings at 20500 + k * 90000 arrive 3000 us later: windows ending 24000, 114000, 204000, 294000, 384000.
    # The promiser promised nothing in READY: its first ADVANCE goes from 0 straight to the window of its first
    # input, and each later one straight to the next: one ADVANCE per reading, none in between.
    assert [(d["current"], d["target"]) for d in seen] == [
        (0, 24000), (24000, 114000), (114000, 204000), (204000, 294000), (294000, 384000)]
    assert completed.metrics.round_trip["promiser"]["count"] == len(seen)
    # Executed: the five sampling windows, the five deliveries to the promiser and the five of its outputs to the
    # sink; nothing else.
    assert completed.result.timings.steps == 5 + 5 + 5
    footer = read(completed.trace_path).footer
    assert footer is not None and footer.executed == {"steps": 15, "advances": 5, "skipped": 400 - 15}


def test_a_node_busy_every_quantum_is_not_woken_once_an_action_moves_its_promise(tmp_path: Path) -> None:
    # echo-1 ticks every quantum (its promise always lies in the next window: the coordinator's short list, no
    # heap); at 5 ms the schedule slows it to a tick every 4 ms: CONFIGURED promises 8 ms, so the window ending at
    # 6 ms, which its last DONE had promised, must not advance it. echo-2, also busy, crashes at 5 ms.
    scenario = write_scenario(tmp_path, "busy-moved", """duration_us: 20000
quantum_us: 1000
nodes:
  - {id: echo-1, kind: service, build: ECHO, config: {tick_us: 1000}}
  - {id: echo-2, kind: service, build: ECHO, config: {tick_us: 1000}}
  - {id: sink, kind: sink}
routes:
  - {from: echo-1, to: [sink]}
  - {from: echo-2, to: [sink]}
schedule:
  - {at_us: 5000, reconfigure: echo-1, config: {tick_us: 4000}}
  - {at_us: 5000, crash: echo-2}
""")
    runs = both_modes(scenario, tmp_path)
    assert_same_records(runs["fixed"].trace_path, runs["next-event"].trace_path)
    ticks = [time for time, _ in data_of(runs["next-event"].trace_path, "sent", "tick")]
    assert ticks == [1000, 1000, 2000, 2000, 3000, 3000, 4000, 4000, 5000, 5000, 8000, 12000, 16000, 20000]
    # echo-1: the five windows up to 5 ms, then only 8, 12, 16 and 20 ms; echo-2: the five windows before its crash.
    assert runs["next-event"].metrics.round_trip["echo-1"]["count"] == 5 + 4
    assert runs["next-event"].result.timings.advances == (5 + 4) + 5


def test_a_held_output_survives_a_long_skip(tmp_path: Path) -> None:
    scenario = sensor_to_promiser(tmp_path, "held", 2000000, "period_us: 500000, offset_us: 100000", 1000,
                                  "{delay_us: 700001}")
    runs = both_modes(scenario, tmp_path)
    assert_same_records(runs["fixed"].trace_path, runs["next-event"].trace_path)
    late = [time for time, _ in data_of(runs["next-event"].trace_path, "sent", "late")]
    assert late == [801001, 1301001, 1801001]  # readings at 100000 + k * 500000, delivered 1000 us later, + 700001
    # Woken for each input and each held output only (the adapter promised the held outputs' times).
    assert runs["next-event"].metrics.round_trip["promiser"]["count"] == 4 + 3
    # The readings, their deliveries, the held outputs and their deliveries to the sink.
    assert runs["next-event"].result.timings.steps == 4 + 4 + 3 + 3


# -- the promise is checked ------------------------------------------------------------------------------------

LIAR = """duration_us: 20000
quantum_us: 1000
nodes:
  - id: liar
    kind: service
    build: ECHO
    local_command: ["{python}", "-u", "SERVICES/promiser.py"]
    config: {promise_us: 8000, emit_at_us: 3000}
  - {id: sink, kind: sink}
routes:
  - {from: liar, to: [sink]}
"""


def test_a_broken_promise_fails_the_node_with_one_clear_error(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, "liar", LIAR)
    trace = tmp_path / "liar.jsonl"
    with pytest.raises(BrokenPromise) as caught:
        run(scenario, runtime="local", trace_path=trace)
    message = str(caught.value)
    assert message.startswith("node 'liar': broke its next-event promise: it promised nothing of its own before "
                              "8000 us (DONE next_us), but emitted 'lie' at 3000 us in the window ending 8000 us "
                              "with no input at or before that time to explain it")
    error = read(trace).error
    assert error is not None and error.node == "liar" and error.error == "node_failure" and error.time_us == 7000
    assert "broke its next-event promise" in error.detail
    # With fixed steps nothing is skipped, so nothing is checked: the lie is emitted in its own window.
    fixed = run(scenario, runtime="local", trace_path=tmp_path / "liar-fixed.jsonl", advance="fixed")
    assert data_of(fixed.trace_path, "sent", "lie") == [(3000, None)]


def test_a_broken_promise_on_the_command_line_is_one_message_and_exit_4(tmp_path: Path) -> None:
    scenario = write_scenario(tmp_path, "liar", LIAR)
    result = subprocess.run([sys.executable, "-m", "invoke", "up", str(scenario), "--runtime", "local", "--quiet",
                             "--trace", str(tmp_path / "cli.jsonl")], cwd=ROOT, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 4, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("cosim: error: node 'liar': broke its next-event promise: it promised nothing "
                                    "of its own before 8000 us")


def test_a_service_promising_a_time_inside_its_window_is_refused(tmp_path: Path) -> None:
    adapter = CoordinatorProtocolAdapter(lambda current, target, events: [], wakeup=lambda target: target or None)
    assert adapter.handle(protocol.init_message("n", 1, {}, {}))["next_event"] is True
    reply = adapter.handle(protocol.advance_message(1000, []))
    assert reply is not None and reply["error"] == "bad_wakeup" and reply["fatal"] is True
    assert protocol.check_promise(1000, 1000) == ("answered DONE with next_us 1000; expected null or an integer "
                                                  "time after 1000 us")
    assert protocol.check_promise(True, 1000) is not None and protocol.check_promise(None, 1000) is None


def test_the_adapter_folds_held_outputs_and_wakeups_into_the_promise() -> None:
    wakes = {0: 7000, 1000: 5000, 2000: None}
    adapter = CoordinatorProtocolAdapter(
        lambda current, target, events: [{"type": "late", "time_us": e["time_us"] + 2500} for e in events],
        wakeup=lambda target: wakes.get(target))
    ready = adapter.handle(protocol.init_message("n", 1, {}, {}))
    assert ready is not None and ready["next_event"] is True and ready["next_us"] == 7000  # the first promise
    event = {"type": "x", "time_us": 900, "source": "s", "seq": 0, "sent_us": 1, "data": None}
    done = adapter.handle(protocol.advance_message(1000, [event]))
    assert done == {"type": "DONE", "time_us": 1000, "events": [], "next_us": 3400}  # held 3400 < wake-up 5000
    assert adapter.handle(protocol.advance_message(2000, [])) == {"type": "DONE", "time_us": 2000, "events": [],
                                                                  "next_us": 3400}
    done = adapter.handle(protocol.advance_message(9000, []))  # a jump over the held output's window
    assert done == {"type": "DONE", "time_us": 9000, "events": [{"type": "late", "time_us": 3400}]}
    # Without the capability the DONE is as before: no next_us.
    plain = CoordinatorProtocolAdapter(lambda current, target, events: [])
    assert "next_event" not in plain.handle(protocol.init_message("n", 1, {}, {}))
    assert plain.handle(protocol.advance_message(1000, [])) == {"type": "DONE", "time_us": 1000, "events": []}


def test_the_coordinator_reads_a_promise_only_done_without_parsing_it() -> None:
    line = protocol.encode({"type": "DONE", "time_us": 7000, "events": [], "next_us": 123000})
    assert protocol.empty_done_promise(line.rstrip(b"\n"), 7000) == 123000
    assert protocol.empty_done_promise(line.rstrip(b"\n"), 8000) is None  # another window: parsed (and refused)
    assert protocol.empty_done_promise(b'{"events":[],"next_us":"9","time_us":7000,"type":"DONE"}', 7000) is None


# -- the mode and other wake-up sources ------------------------------------------------------------------------

def test_the_mode_comes_from_the_scenario_and_the_option_overrides_it(tmp_path: Path) -> None:
    body = "duration_us: 10000\nnodes:\n  - {id: s, kind: sensor, period_us: 2000}\n"
    assert load(write_scenario(tmp_path, "plain", body)).advance == "next-event"
    fixed = write_scenario(tmp_path, "fixed", "advance: fixed\n" + body)
    assert load(fixed).advance == "fixed"
    completed = run(fixed, runtime="local", trace_path=tmp_path / "t.jsonl", advance="next-event")
    assert read(completed.trace_path).header.advance == "next-event" and completed.result.timings.steps == 5
    with pytest.raises(ScenarioError, match=r"advance"):
        load(write_scenario(tmp_path, "bad", "advance: sometimes\n" + body))
    with pytest.raises(OptionError, match=r"^--advance 'sometimes': expected one of next-event, fixed$"):
        run(fixed, runtime="local", trace_path=tmp_path / "never.jsonl", advance="sometimes")


def test_another_wakeup_source_adds_its_window_to_the_next_event_loop(tmp_path: Path) -> None:
    scenario = load(write_scenario(tmp_path, "wakes", """duration_us: 100000
quantum_us: 1000
nodes:
  - {id: s, kind: sensor, period_us: 40000, offset_us: 10000}
  - {id: sink, kind: sink}
"""))
    reached: list[int] = []
    schedule = [55500, 71000]
    writer = TraceWriter(tmp_path / "wakes.jsonl", {})
    coordinator = Coordinator(scenario, {"s": SensorModel(scenario.node("s")), "sink": SinkModel("sink")}, writer,
                              progress=lambda now, end: reached.append(now),
                              wakeup_sources=[lambda now: next((t for t in schedule if t > now), None)])
    coordinator.wake("sink", 90000)
    coordinator.run()
    writer.close()
    # The sensor's readings (10000, 50000, 90000), the schedule's windows and the sink's wake-up; then the end.
    assert reached == [10000, 50000, 56000, 71000, 90000, 100000]


# -- the determinism gate --------------------------------------------------------------------------------------

def test_the_gate_runs_both_modes_and_compares_records(tmp_path: Path) -> None:
    assert plan_modes(2, "local", "both") == [("local", "fixed"), ("local", "next-event")] * 2
    assert plan_modes(1, "both", "both") == [("local", "fixed"), ("local", "next-event"),
                                             ("docker", "fixed"), ("docker", "next-event")]
    assert plan_modes(2, "local", None) == [("local", None)] * 2
    with pytest.raises(OptionError, match="^--advance 'x': expected one of next-event, fixed, both$"):
        plan_modes(2, "local", "x")
    out = io.StringIO()
    runs = gate(str(LOCAL / "pipeline.yaml"), runs=1, runtime="local", advance="both", out_dir=tmp_path, out=out)
    assert [r.advance for r in runs] == ["fixed", "next-event"] and len({r.hash for r in runs}) == 1
    assert out.getvalue().splitlines()[-1] == "PASS: 2 runs of 'local-pipeline' gave identical records in both advance modes"


# -- Docker ----------------------------------------------------------------------------------------------------

@pytest.mark.docker
@pytest.mark.parametrize("scenario", [*BUNDLED, ROOT / "tests" / "scenarios_docker" / "docker-pipeline.yaml",
                                      *SCHEDULED],
                         ids=lambda path: path.stem)
def test_both_modes_give_the_same_records_in_docker(scenario: Path, tmp_path: Path,
                                                     service_images: dict[str, str]) -> None:
    runs = both_modes(scenario, tmp_path, runtime="docker")
    assert_same_records(runs["fixed"].trace_path, runs["next-event"].trace_path)
    assert runs["next-event"].result.timings.advances < runs["fixed"].result.timings.advances
    local = run(scenario, runtime="local", trace_path=tmp_path / "local.jsonl")  # and the same as the local runtime
    assert trace_hash(local.trace_path) == trace_hash(runs["next-event"].trace_path)
    assert cosim_resources(f"cosim.scenario={runs['fixed'].scenario.name}") == ([], [])
