"""Network segments (issue 27) with a fake ns-3 worker that speaks the real protocol (tests/services/
fake_segment_worker.py: a shared medium serialising its packets at a fixed rate per byte, so contention shows):
validation, the delivery rule (an arrival at a is delivered at a + quantum, never before), identical records in
both advance modes and on both runtimes, the worker's death mid-run, a missing ns-3, refused checkpoints.

The same properties against real ns-3 are in tests/test_segments_ns3.py.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cosim import segments
from cosim.errors import MissingExtra, ScenarioError, SegmentWorkerFailed, UsageError
from cosim.loading import load
from cosim.model import SensorSpec
from cosim.run import run
from cosim.trace import Delivered, Dropped, Sent, read
from cosim.tracediff import trace_hash
from tests.conftest import ROOT, invoke_up_session, wait_until
from tests.test_interrupts import assert_interrupted, ctrl_c, finish, processes_with
from tests.test_protocol_schema import check_trace_against_the_documentation
from tests.test_scenario_validation import assert_message, marked_line

SCENARIO = ROOT / "tests" / "scenarios_local" / "segments.yaml"
FAKE_WORKER = ROOT / "tests" / "services" / "fake_segment_worker.py"
QUANTUM_US = 1000


def fake_command(*marker: str) -> str:
    return shlex.join([sys.executable, str(FAKE_WORKER), *marker])


@pytest.fixture
def fake_worker(monkeypatch: pytest.MonkeyPatch) -> str:
    command = fake_command()
    monkeypatch.setenv(segments.WORKER_ENV, command)
    return command


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- validation -------------------------------------------------------------------------------------------------

HEAD = """\
name: t
seed: 7
duration_us: 10000
nodes:
  - {id: s1, kind: sensor, period_us: 1000}
  - {id: s2, kind: sensor, period_us: 1000}
  - {id: gw, kind: sink}
routes:
  - {from: s1, to: [gw]}
network:
  segments:
"""

CASES = [
    ("unknown-node", "    - {id: r, medium: lrwpan, nodes: [gw, s1, sensor1]}  # HERE\n", "network.segments[0].nodes[2]",
     ("segment node 'sensor1' is not a node of the scenario", "known nodes: gw, s1, s2")),
    ("node-twice", "    - {id: r, medium: csma, nodes: [gw, s1, s1]}  # HERE\n", "network.segments[0].nodes[2]",
     ("node 's1' is listed twice on segment 'r'",)),
    ("p2p-three-nodes", "    - {id: r, medium: p2p, nodes: [gw, s1, s2]}  # HERE\n", "network.segments[0].nodes",
     ("a p2p segment joins exactly 2 nodes, not 3",)),
    ("unknown-medium", "    - {id: r, medium: lora, nodes: [gw, s1]}  # HERE\n", "network.segments[0].medium",
     ("'lora'", "csma", "lrwpan")),
    ("bad-data-rate", "    - {id: r, medium: csma, nodes: [gw, s1], data_rate: fast}  # HERE\n",
     "network.segments[0].data_rate", ("'fast'",)),
    ("zero-data-rate", "    - {id: r, medium: csma, nodes: [gw, s1], data_rate: 0Mbps}  # HERE\n",
     "network.segments[0].data_rate", ("data rate '0Mbps' is zero",)),
    ("setting-of-another-medium", "    - {id: r, medium: lrwpan, nodes: [gw, s1], data_rate: 1Mbps}  # HERE\n",
     "network.segments[0].data_rate", ("data_rate is not a setting of medium 'lrwpan'", "tx_power_dbm")),
    ("duplicate-id", "    - {id: r, medium: csma, nodes: [gw, s1]}\n    - {id: r, medium: csma, nodes: [gw, s2]}  # HERE\n",
     "network.segments[1].id", ("duplicate segment id 'r'",)),
    ("position-of-unknown-node", "    - id: r\n      medium: lrwpan\n      nodes: [gw, s1]\n      positions:\n"
     "        gw: [0, 0, 0]\n        s1: [5, 0, 0]\n        s2: [9, 0, 0]  # HERE\n", "network.segments[0].positions.s2",
     ("position for 's2', which is not a node of segment 'r'",)),
    ("position-missing", "    - id: r\n      medium: wifi\n      nodes: [gw, s1, s2]\n      positions:  # HERE\n"
     "        gw: [0, 0, 0]\n        s1: [5, 0, 0]\n", "network.segments[0].positions",
     ("no position for 's2'",)),
    ("positions-and-distance", "    - id: r\n      medium: wifi\n      nodes: [gw, s1]\n      positions: {gw: [0, 0, 0], "
     "s1: [1, 0, 0]}\n      distance_m: 5  # HERE\n", "network.segments[0].distance_m", ("either positions or distance_m",)),
    ("data-mode-without-constant", "    - {id: r, medium: wifi, nodes: [gw, s1], rate_manager: minstrel, "
     "data_mode: OfdmRate6Mbps}  # HERE\n", "network.segments[0].data_mode", ("only to the constant rate manager",)),
    ("one-node", "    - {id: r, medium: csma, nodes: [gw]}  # HERE\n", "network.segments[0].nodes", ("needs at least 2 items",)),
]


@pytest.mark.parametrize(("text", "field", "fragments"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_invalid_segment(tmp_path: Path, text: str, field: str, fragments: tuple[str, ...]) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(HEAD + text, encoding="utf-8")
    with pytest.raises(ScenarioError) as caught:
        load(path)
    assert_message(caught.value, path, marked_line(HEAD + text), field, *fragments)


def test_defaults_are_filled_in_and_hashed(tmp_path: Path) -> None:
    path = tmp_path / "scenario.yaml"
    path.write_text(HEAD + "    - {id: radio, medium: lrwpan, nodes: [gw, s1, s2]}\n"
                    "    - {id: wire, medium: p2p, nodes: [gw, s1], delay_us: 20}\n", encoding="utf-8")
    scenario = load(path)
    assert [segment.wire() for segment in scenario.segments] == [
        {"id": "radio", "medium": "lrwpan", "nodes": ["gw", "s1", "s2"], "propagation": "log-distance",
         "tx_power_dbm": 0, "distance_m": 10, "range_m": 250},
        {"id": "wire", "medium": "p2p", "nodes": ["gw", "s1"], "data_rate": "10Mbps", "delay_us": 20,
         "queue_packets": 100}]
    assert scenario.segment_between("s1", "gw") is scenario.segments[0]  # the first in file order
    assert scenario.segment_between("s1", "s2") is scenario.segments[0]
    from cosim import compose
    from cosim.trace import scenario_manifest
    assert scenario_manifest(scenario, compose.sha256(scenario))["segments"] == [s.wire() for s in scenario.segments]


def test_a_replicated_id_puts_every_replica_on_the_segment(tmp_path: Path) -> None:
    (tmp_path / "svc").mkdir()
    (tmp_path / "svc" / "Dockerfile").write_text("FROM scratch\n")
    path = tmp_path / "scenario.yaml"
    path.write_text(HEAD.replace("  - {id: gw, kind: sink}\n", "  - {id: gw, kind: service, build: svc, replicas: 2}\n")
                    + "    - {id: radio, medium: csma, nodes: [gw, s1]}\n", encoding="utf-8")
    assert load(path).segments[0].nodes == ("gw-1", "gw-2", "s1")


# -- runs with the fake worker ----------------------------------------------------------------------------------


def run_segments(tmp_path: Path, name: str, *, advance: str | None = None, runtime: str = "local",
                 scenario: Path = SCENARIO) -> Path:
    trace = tmp_path / f"{name}.jsonl"
    run(scenario, runtime=runtime, trace_path=trace, watchdog_s=30.0, advance=advance)
    return trace


def test_delivery_rule_and_identical_records_in_both_advance_modes(fake_worker: str, tmp_path: Path) -> None:
    fixed = run_segments(tmp_path, "fixed", advance="fixed")
    next_event = run_segments(tmp_path, "next-event", advance="next-event")
    assert trace_hash(fixed, across_modes=True) == trace_hash(next_event, across_modes=True)
    trace = read(next_event)
    assert trace.footer is not None and trace.footer.status == "ok"
    assert trace.footer.executed is not None and trace.footer.executed["skipped"] > 0  # idle time still skipped
    delivered = trace.of(Delivered)
    on_radio = [record for record in delivered if record.segment == "radio"]
    on_wire = [record for record in delivered if record.segment == "wire"]
    on_links = [record for record in delivered if record.segment is None]
    assert on_radio and on_wire and on_links
    assert {record.source for record in on_radio} == {"sensor-a", "sensor-b"}
    assert {record.source for record in on_links} == {"sensor-c"}  # not on a segment with echo: its link
    for record in on_radio + on_wire:
        assert record.arrived_us is not None and record.arrived_us > record.sent_us  # ns-3 time passed
        assert record.time_us == record.arrived_us + QUANTUM_US  # delivered one quantum after its arrival
    # The fake medium: at 250 kbps a frame takes (payload + 30 bytes) * 32 us: a reading never arrives sooner.
    sizes = {(r.source, r.seq): len(json.dumps(r.data, sort_keys=True, separators=(",", ":"))) for r in trace.of(Sent)}
    for record in on_radio:
        assert record.arrived_us - record.sent_us >= (sizes[(record.source, record.seq)] + 30) * 32
    lines = records(next_event)
    assert all("arrived_us" in line and line["segment"] in ("radio", "wire") for line in lines
               if line["record"] == "delivered" and line["source"] in ("sensor-a", "sensor-b"))
    header = lines[0]
    assert [segment["id"] for segment in header["segments"]] == ["radio", "wire"]
    check_trace_against_the_documentation(next_event)  # every field of every record is in trace-format.md
    frame = trace.to_dataframe()
    hops = frame[frame["segment"] == "radio"]
    assert len(hops) == len(on_radio) and (hops["time_us"] == hops["arrived_us"] + QUANTUM_US).all()


def test_contention_on_the_fake_medium_grows_with_the_senders(fake_worker: str, tmp_path: Path) -> None:
    """The fake worker's shared medium at work through the whole coordinator: two readings sent at the same time on
    one segment queue behind each other; spread out, they do not."""
    text = SCENARIO.read_text(encoding="utf-8").replace("build: ../../containers/echo", f"build: {ROOT / 'containers' / 'echo'}")
    assert "{id: sensor-b, kind: sensor, period_us: 20000, offset_us: 10000}" in text
    together = tmp_path / "together.yaml"  # sensor-b's readings at the same times as sensor-a's
    together.write_text(text.replace("offset_us: 10000}", "offset_us: 20000}"), encoding="utf-8")
    apart = run_segments(tmp_path, "apart")
    same_time = run_segments(tmp_path, "together", scenario=together)

    def mean_radio_latency(path: Path) -> float:
        hops = [r.network_latency_us for r in read(path).of(Delivered) if r.segment == "radio"]
        return sum(hops) / len(hops)

    assert mean_radio_latency(same_time) > 1.3 * mean_radio_latency(apart)


def test_drops_are_traced_with_the_reason_and_time(fake_worker: str, tmp_path: Path) -> None:
    """The fake radio's queue holds 4 frames: six sensors at once overflow it (queue_full)."""
    sensors = "".join(f"  - {{id: s{n}, kind: sensor, period_us: 2000}}\n" for n in range(6))
    routes = "".join(f"  - {{from: s{n}, to: [gw]}}\n" for n in range(6))
    path = tmp_path / "crowd.yaml"
    path.write_text(f"name: crowd\nseed: 3\nduration_us: 40000\nnetwork:\n  segments:\n"
                    f"    - {{id: radio, medium: lrwpan, nodes: [gw, {', '.join(f's{n}' for n in range(6))}]}}\n"
                    f"nodes:\n{sensors}  - {{id: gw, kind: sink}}\nroutes:\n{routes}", encoding="utf-8")
    trace = read(run_segments(tmp_path, "crowd", scenario=path))
    dropped = trace.of(Dropped)
    assert dropped and {record.reason for record in dropped} == {"queue_full"}
    check_trace_against_the_documentation(tmp_path / "crowd.jsonl")
    assert all(record.segment == "radio" and record.at_us is not None and record.at_us >= record.time_us
               for record in dropped)
    assert trace.footer is not None
    assert trace.footer.counts["dropped"] == len(dropped)
    settled = len(trace.of(Delivered)) + len(dropped)
    assert settled + trace.footer.in_flight == len(trace.of(Sent))  # every send accounted for


@pytest.mark.docker
def test_services_on_segments_give_the_same_records_in_docker(fake_worker: str, service_images: dict[str, str],
                                                                tmp_path: Path) -> None:
    from cosim.runtimes.docker import remove_by_label
    try:
        docker = run_segments(tmp_path, "docker", runtime="docker")
    finally:
        remove_by_label("cosim.scenario=local-segments")
    local = run_segments(tmp_path, "local")
    assert docker.read_bytes().split(b"\n", 1)[1] == local.read_bytes().split(b"\n", 1)[1]
    assert trace_hash(docker) == trace_hash(local)
    assert any(r.segment == "wire" and r.source == "echo" for r in read(docker).of(Delivered))


# -- failures ---------------------------------------------------------------------------------------------------


def echo_marked(tmp_path: Path, marker: str) -> Path:
    """segments.yaml with the echo service's command line carrying ``marker`` (so a test can find its process)."""
    scenario = tmp_path / "segments.yaml"
    scenario.write_text(SCENARIO.read_text(encoding="utf-8").replace(
        "build: ../../containers/echo", f"build: {ROOT / 'containers' / 'echo'}\n    local_command: "
        f"[\"{{python}}\", \"-u\", \"{ROOT / 'containers' / 'echo' / 'service.py'}\", \"{marker}\"]"), encoding="utf-8")
    return scenario


def test_worker_killed_mid_run_ends_the_run_cleanly(tmp_path: Path) -> None:
    """SIGKILL for real while the coordinator waits for the worker's reply: one line on the command line naming the
    worker, its exit and last stderr line; the trace so far ends with the error record; nothing left running."""
    marker = f"cosim-seg-test-{os.getpid()}-{id(tmp_path)}"
    pid_file = tmp_path / "worker.pid"
    scenario = echo_marked(tmp_path, marker)
    trace = tmp_path / "trace.jsonl"
    env = {**os.environ, segments.WORKER_ENV: fake_command(marker), "FAKE_SEGMENT_WORKER_HANG_AT_US": "150000",
           "FAKE_SEGMENT_WORKER_PID_FILE": str(pid_file)}
    process = subprocess.Popen([sys.executable, "-m", "cosim", "up", str(scenario), "--runtime", "local", "--trace",
                                str(trace), "-q"], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_until(pid_file.exists, process, "the worker reached 150 ms", timeout_s=60)  # type: ignore[arg-type]
        os.kill(int(pid_file.read_text()), signal.SIGKILL)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == SegmentWorkerFailed.exit_code, err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if "error" in line]
    assert len(errors) == 1, err
    assert "the ns-3 segment worker exited" in errors[0] and "137, killed" in errors[0], err
    assert "fake segment worker: waiting to be killed" in errors[0]  # its last stderr line
    lines = records(trace)
    assert lines[-1]["record"] == "error" and lines[-1]["error"] == "segment_worker_failed"
    assert lines[-1]["time_us"] >= 150000 - QUANTUM_US
    assert any(line["record"] == "delivered" and "segment" in line for line in lines)  # the trace so far is kept
    assert processes_with(marker) == []  # the worker and the echo service: nothing left running


def test_ctrl_c_while_the_coordinator_waits_for_the_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C as a terminal sends it (the worker is in a session of its own, so only cosim gets it): exit 130, the
    `interrupted` record, the worker and the services stopped."""
    marker = f"cosim-seg-test-{os.getpid()}-{id(tmp_path)}"
    pid_file = tmp_path / "worker.pid"
    monkeypatch.setenv(segments.WORKER_ENV, fake_command(marker))
    monkeypatch.setenv("FAKE_SEGMENT_WORKER_HANG_AT_US", "100000")
    monkeypatch.setenv("FAKE_SEGMENT_WORKER_PID_FILE", str(pid_file))
    trace = tmp_path / "trace.jsonl"
    with invoke_up_session(echo_marked(tmp_path, marker), trace, "--runtime", "local") as process:
        wait_until(pid_file.exists, process, "the worker reached 100 ms", timeout_s=60)  # type: ignore[arg-type]
        ctrl_c(process)
        returncode, stderr = finish(process)
    assert_interrupted(returncode, stderr, trace, starting=False)
    assert processes_with(marker) == []


def test_worker_error_at_init_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(segments.WORKER_ENV, shlex.join([sys.executable, "-c", "import sys; sys.stdin.readline(); "
                       "print('{\"op\":\"error\",\"message\":\"segment radio: no such medium\"}', flush=True); "
                       "sys.exit(3)"]))
    with pytest.raises(SegmentWorkerFailed) as caught:
        run_segments(tmp_path, "init-error")
    assert str(caught.value).startswith("the ns-3 segment worker failed: segment radio: no such medium (exit code 3)")
    assert read(tmp_path / "init-error.jsonl").error is not None


def test_missing_ns3_stops_before_anything_starts(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(segments.WORKER_ENV, raising=False)
    monkeypatch.setattr(segments.importlib.util, "find_spec", lambda name: None)
    trace = tmp_path / "never.jsonl"
    with pytest.raises(MissingExtra) as caught:
        run(SCENARIO, runtime="local", trace_path=trace)
    assert str(caught.value) == ("scenario 'local-segments' has network segments, which need ns-3: "
                                 "pip install 'cosim[ns3]' (or run it through ./inv, which installs it)")
    assert not trace.exists()  # nothing started, nothing written


def test_missing_ns3_on_the_command_line(tmp_path: Path) -> None:
    """The real check, in a fresh process whose `ns` cannot be found: one line, exit non-zero, nothing written."""
    env = {key: value for key, value in os.environ.items() if key != segments.WORKER_ENV}
    code = ("import importlib.util, sys; real = importlib.util.find_spec; "
            "importlib.util.find_spec = lambda name, *a: None if name == 'ns' else real(name, *a); "
            "sys.argv = ['cosim', 'up', sys.argv[1], '--runtime', 'local', '--trace', sys.argv[2]]; "
            "from cosim.console import main; main()")
    done = subprocess.run([sys.executable, "-c", code, str(SCENARIO), str(tmp_path / "t.jsonl")], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert "pip install 'cosim[ns3]'" in done.stderr
    assert not (tmp_path / "t.jsonl").exists()


def test_checkpoints_are_refused_with_one_line(fake_worker: str, tmp_path: Path) -> None:
    with pytest.raises(UsageError) as caught:
        run(SCENARIO, runtime="local", trace_path=tmp_path / "t.jsonl", checkpoint_at="100000",
            checkpoint_dir=tmp_path)
    assert "runs with segments cannot be checkpointed, resumed or forked" in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_sweep_cannot_fork_a_scenario_with_segments(fake_worker: str) -> None:
    from cosim import sweep
    from cosim.errors import SweepError
    with pytest.raises(SweepError) as caught:
        sweep.plan(str(SCENARIO), sets=["nodes.echo.config.tick_us=10000,20000"], fork_at="100000")
    assert str(caught.value).startswith("--fork-at: scenario 'local-segments' has network segments")


def test_cosim_never_imports_ns(fake_worker: str, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", "import sys; from cosim.run import run; "
                           f"run({str(SCENARIO)!r}, runtime='local', trace_path={str(tmp_path / 't.jsonl')!r}); "
                           "assert not any(m == 'ns' or m.startswith('ns.') for m in sys.modules), 'ns imported'"],
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 0, done.stderr


def test_worker_is_reaped_after_a_run(fake_worker: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started: list[int] = []
    real_start = segments.SegmentWorker.start

    def start(self: segments.SegmentWorker) -> None:
        real_start(self)
        assert self.pid is not None
        started.append(self.pid)

    monkeypatch.setattr(segments.SegmentWorker, "start", start)
    run_segments(tmp_path, "reaped")
    assert len(started) == 1 and not Path(f"/proc/{started[0]}").exists()  # exited and reaped (no zombie)


def test_a_sensor_with_replicas_is_that_many_sensors(tmp_path: Path) -> None:
    """`replicas` on a sensor (to sweep how many share a channel): alike but for their ids and seeds."""
    path = tmp_path / "scenario.yaml"
    path.write_text(HEAD.replace("  - {id: s1, kind: sensor, period_us: 1000}\n",
                                 "  - {id: s1, kind: sensor, period_us: 1000, replicas: 3}\n")
                    + "    - {id: radio, medium: lrwpan, nodes: [gw, s1]}\n", encoding="utf-8")
    scenario = load(path)
    assert scenario.groups == {"s1": ("s1-1", "s1-2", "s1-3")}
    assert scenario.segments[0].nodes == ("gw", "s1-1", "s1-2", "s1-3")
    replicas = [node for node in scenario.nodes if node.group == "s1"]
    assert [node.id for node in replicas] == ["s1-1", "s1-2", "s1-3"]
    assert all(isinstance(node, SensorSpec) and node.period_us == 1000 for node in replicas)
