"""The coordinator with real subprocess services (local runtime): routing, links, seeds, ordering, failures."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import cosim.runtimes.local as local_runtime
from cosim.coordinator import Coordinator, SimulationResult
from cosim.errors import CosimError, NodeFailure
from cosim.loading import load
from cosim.nodes import Event, SimNode, SinkModel
from cosim.run import build_nodes, run
from cosim.runtimes.local import LocalRuntime
from cosim.seeds import derive_seed, link_seed, node_seed
from cosim.trace import TraceWriter
from cosim.transport import PipeTransport

ROOT = Path(__file__).resolve().parent.parent
ECHO_DIR = ROOT / "containers" / "echo"
BURST = ROOT / "tests" / "services" / "burst.py"
STUCK = ROOT / "tests" / "services" / "stuck.py"

Record = dict[str, Any]


# -- helpers -------------------------------------------------------------------------------------------------


def service(node_id: str, config: dict[str, Any] | None = None, *, script: Path | None = None,
            **extra: Any) -> dict[str, Any]:
    """A service node built from containers/echo; ``script`` runs another test service in its place."""
    node: dict[str, Any] = {"id": node_id, "kind": "service", "build": str(ECHO_DIR), "config": config or {}}
    if script is not None:
        node["local_command"] = ["{python}", "-u", str(script)]
    return {**node, **extra}


def sensor(node_id: str, period_us: int, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "kind": "sensor", "period_us": period_us, **extra}


def sink(node_id: str) -> dict[str, Any]:
    return {"id": node_id, "kind": "sink"}


def write_scenario(path: Path, nodes: list[dict[str, Any]], routes: list[dict[str, Any]], *, seed: int = 1,
                   duration_us: int = 20_000, quantum_us: int = 1000, name: str = "coord-test",
                   default_link: dict[str, Any] | None = None) -> Path:
    doc: dict[str, Any] = {"name": name, "seed": seed, "duration_us": duration_us, "quantum_us": quantum_us,
                           "nodes": nodes, "routes": routes}
    if default_link is not None:
        doc["network"] = {"default_link": default_link}
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    return path


def read_trace(path: Path) -> list[Record]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def of(records: list[Record], kind: str, **match: Any) -> list[Record]:
    return [r for r in records if r["record"] == kind and all(r.get(k) == v for k, v in match.items())]


class RecordingSink(SinkModel):
    """A sink that also remembers which ADVANCE window each event arrived in."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.windows: list[tuple[int, list[Event]]] = []

    def begin_advance(self, target_us: int, events: list[Event]) -> None:
        self.windows.append((target_us, list(events)))
        super().begin_advance(target_us, events)


@dataclass
class Outcome:
    result: SimulationResult
    records: list[Record]
    nodes: dict[str, SimNode]
    quantum_us: int

    def sink(self, node_id: str) -> RecordingSink:
        node = self.nodes[node_id]
        assert isinstance(node, RecordingSink)
        return node


def drive(scenario_path: Path, trace_path: Path, *, watchdog_s: float = 10.0) -> Outcome:
    """Run a scenario on the local runtime with a hand-built Coordinator (sinks replaced by RecordingSinks)."""
    scenario = load(scenario_path)
    runtime = LocalRuntime(scenario, trace_path.with_suffix(".logs"))
    writer = TraceWriter(trace_path, {"scenario": scenario.name})
    nodes: dict[str, SimNode] = {}
    try:
        runtime.start()
        built = build_nodes(scenario, runtime, watchdog_s)
        nodes = {node_id: RecordingSink(node_id) if isinstance(node, SinkModel) else node
                 for node_id, node in built.items()}
        result = Coordinator(scenario, nodes, writer, endpoints=runtime.endpoints()).run()
    finally:
        for node in nodes.values():
            node.close()
        runtime.stop()
        writer.close()
    return Outcome(result, read_trace(trace_path), nodes, scenario.quantum_us)


def assert_windows_exact(outcome: Outcome) -> None:
    """Every event a sink got lies in the window (target - quantum, target] it was handed over in."""
    for node in outcome.nodes.values():
        if isinstance(node, RecordingSink):
            for target, events in node.windows:
                for event in events:
                    assert target - outcome.quantum_us < event["time_us"] <= target, (node.id, target, event)


# -- routing ---------------------------------------------------------------------------------------------------


def test_routing_follows_routes_filters_destinations_and_replicas(tmp_path: Path) -> None:
    path = write_scenario(tmp_path / "routing.yaml", [
        sensor("sensor-a", 2000, event_type="a_req"),
        sensor("sensor-b", 3000, offset_us=1500, event_type="b_req"),
        service("echo", {"tick_us": 5000}, replicas=3),
        sink("sink-b"), sink("sink-echo"), sink("sink-tick"),
    ], [
        {"from": "sensor-a", "to": ["echo"]},
        {"from": "sensor-b", "to": ["sink-b", "echo-1"]},
        {"from": "echo", "to": ["sink-echo"], "events": ["echo"]},
        {"from": "echo", "to": ["sink-tick"], "events": ["tick"]},
    ], duration_us=40_000)
    out = drive(path, tmp_path / "routing.jsonl")
    records = out.records
    assert out.result.unroutable == {} and not of(records, "unroutable") and not of(records, "dropped")

    # sensor-a -> echo: one replica per event, round-robin in sequence order.
    sent_a = of(records, "sent", source="sensor-a")
    delivered_a = of(records, "delivered", source="sensor-a")
    assert len(sent_a) == 20 and len(delivered_a) == 19  # the last one is still in flight at the end
    assert [(r["seq"], r["dest"]) for r in delivered_a] == [(seq, f"echo-{seq % 3 + 1}") for seq in range(19)]

    # sensor-b -> two destinations, every event to both.
    by_seq: dict[int, set[str]] = {}
    for record in of(records, "delivered", source="sensor-b"):
        by_seq.setdefault(record["seq"], set()).add(record["dest"])
    assert len(by_seq) == len(of(records, "sent", source="sensor-b")) == 13
    assert all(dests == {"sink-b", "echo-1"} for dests in by_seq.values())

    # Only echo-1 heard sensor-b; each replica echoed exactly what it was given.
    for replica in ("echo-1", "echo-2", "echo-3"):
        heard = [(r["source"], r["seq"]) for r in of(records, "delivered", dest=replica)]
        echoed = [(r["data"]["from"], r["data"]["data"]["window"]) for r in of(records, "sent", source=replica, type="echo")]
        assert Counter(src for src, _ in heard) == Counter(src for src, _ in echoed)
        assert ("sensor-b" in dict(heard)) == (replica == "echo-1")

    # The event filters: echo -> sink-echo, tick -> sink-tick, and nothing else.
    assert {e["type"] for e in out.sink("sink-echo").received} == {"echo"}
    assert {e["type"] for e in out.sink("sink-tick").received} == {"tick"}
    assert {e["type"] for e in out.sink("sink-b").received} == {"b_req"}
    assert len(out.sink("sink-tick").received) == 3 * 7  # ticks at 5000..35000 from three replicas, all delivered
    echo_sent = of(records, "sent", type="echo")
    assert len(out.sink("sink-echo").received) == len([r for r in echo_sent if r["time_us"] <= 39_000])
    assert_windows_exact(out)


def test_event_with_no_route_is_traced_unroutable_and_counted(tmp_path: Path) -> None:
    path = write_scenario(tmp_path / "unroutable.yaml", [
        sensor("sensor-a", 1000, event_type="orphan"),
        sensor("sensor-b", 2000, event_type="b_req"),
        service("echo", {"tick_us": 4000}),
        sink("sink"),
    ], [
        {"from": "sensor-b", "to": ["sink"], "events": ["other"]},  # does not match b_req
        {"from": "echo", "to": ["sink"], "events": ["echo"]},  # ticks match nothing
    ], duration_us=20_000)
    out = drive(path, tmp_path / "unroutable.jsonl")
    unroutable = of(out.records, "unroutable")
    assert out.result.unroutable == {("sensor-a", "orphan"): 20, ("sensor-b", "b_req"): 10, ("echo", "tick"): 5}
    assert Counter((r["source"], r["type"]) for r in unroutable) == Counter(out.result.unroutable)
    assert out.result.counts["unroutable"] == 35 == out.records[-1]["counts"]["unroutable"]
    assert not of(out.records, "delivered") and out.sink("sink").received == []
    # Each unroutable record follows the `sent` record of the same event.
    for record in unroutable:
        index = out.records.index(record)
        assert {**out.records[index - 1], "record": "unroutable"} == record


# -- links ---------------------------------------------------------------------------------------------------


def test_latency_delays_by_exactly_latency_and_lands_in_the_containing_window(tmp_path: Path) -> None:
    path = write_scenario(tmp_path / "latency.yaml", [
        sensor("sensor", 1000, offset_us=1000, links=[{"to": "echo", "latency_us": 2300}]),
        service("echo", links=[{"to": "sink", "latency_us": 1650}]),
        sink("sink"),
    ], [
        {"from": "sensor", "to": ["echo"]},
        {"from": "echo", "to": ["sink"]},
    ], duration_us=30_000)
    out = drive(path, tmp_path / "latency.jsonl")
    to_echo = of(out.records, "delivered", dest="echo")
    to_sink = of(out.records, "delivered", dest="sink")
    assert len(to_echo) == 27 and len(to_sink) == 26
    assert {r["time_us"] - r["sent_us"] for r in to_echo} == {2300}
    assert {r["time_us"] - r["sent_us"] for r in to_sink} == {1650}
    assert {r["time_us"] % 1000 for r in to_echo} == {300}  # not rounded to a step boundary
    assert {r["time_us"] % 1000 for r in to_sink} == {950}
    # The service saw each event inside its window (its adapter refuses anything else) and echoed it at
    # the delivery time, which becomes the sent time of the echo.
    echoed = {r["time_us"] for r in of(out.records, "sent", source="echo")}
    assert echoed == {r["time_us"] for r in to_echo}
    assert [e["time_us"] for e in out.sink("sink").received] == [r["time_us"] for r in to_sink]
    assert_windows_exact(out)


def jitter_loss_scenario(path: Path, *, seed: int, loss: float = 0.0, jitter_us: int = 0,
                         extra_first: Sequence[dict[str, Any]] = (), extra_routes: Sequence[dict[str, Any]] = (),
                         duration_us: int = 200_000, period_us: int = 500) -> Path:
    return write_scenario(path, [
        *extra_first,
        sensor("sensor-a", period_us, links=[{"to": "sink", "latency_us": 1500, "jitter_us": jitter_us, "loss": loss}]),
        sink("sink"),
    ], [{"from": "sensor-a", "to": ["sink"]}, *extra_routes], seed=seed, duration_us=duration_us)


def test_jitter_stays_within_latency_plus_jitter_and_varies(tmp_path: Path) -> None:
    out = drive(jitter_loss_scenario(tmp_path / "jitter.yaml", seed=3, jitter_us=700), tmp_path / "jitter.jsonl")
    delays = [r["time_us"] - r["sent_us"] for r in of(out.records, "delivered", source="sensor-a")]
    assert len(delays) >= 390
    assert all(1500 <= d <= 2200 for d in delays)
    assert len(set(delays)) > 100
    assert min(delays) < 1550 and max(delays) > 2150  # the whole range is used
    # Delivery follows delivery time, so jitter may reorder events; the sink gets them in time order.
    times = [e["time_us"] for e in out.sink("sink").received]
    assert times == sorted(times)
    assert [e["seq"] for e in out.sink("sink").received] != sorted(e["seq"] for e in out.sink("sink").received)
    assert_windows_exact(out)


def link_records(records: list[Record], source: str = "sensor-a", dest: str = "sink") -> list[Record]:
    return [r for r in records if r["record"] in ("delivered", "dropped") and r["source"] == source
            and r["dest"] == dest]


def test_loss_drops_about_the_configured_share(tmp_path: Path) -> None:
    path = jitter_loss_scenario(tmp_path / "loss.yaml", seed=11, loss=0.25, period_us=200, duration_us=200_000)
    out = drive(path, tmp_path / "loss.jsonl")
    sent = of(out.records, "sent", source="sensor-a")
    dropped = of(out.records, "dropped")
    delivered = of(out.records, "delivered")
    assert len(sent) == 1000
    assert 0.2 < len(dropped) / len(sent) < 0.3
    assert {(r["dest"], r["reason"]) for r in dropped} == {("sink", "loss")}
    # Every event is dropped or delivered, never both; only the ones sent in the last 1500 us are still in flight.
    outcome = Counter(r["seq"] for r in dropped + delivered)
    assert set(outcome.values()) == {1}
    in_flight = {r["seq"] for r in sent} - set(outcome)
    assert all(r["time_us"] > 200_000 - 1500 for r in sent if r["seq"] in in_flight)
    assert out.result.counts == {"sent": 1000, "delivered": len(delivered), "dropped": len(dropped), "unroutable": 0}
    assert len(out.sink("sink").received) == len(delivered)


def test_same_seed_same_draws_other_seed_other_draws(tmp_path: Path) -> None:
    def draws(seed: int, tag: str) -> list[Record]:
        path = jitter_loss_scenario(tmp_path / f"{tag}.yaml", seed=seed, loss=0.3, jitter_us=900, duration_us=50_000)
        return link_records(drive(path, tmp_path / f"{tag}.jsonl").records)

    first, again, other = draws(5, "first"), draws(5, "again"), draws(6, "other")
    assert len(first) > 90 and of(first, "dropped") and of(first, "delivered")
    assert first == again
    assert [r["seq"] for r in of(first, "dropped")] != [r["seq"] for r in of(other, "dropped")]
    assert [r["time_us"] for r in of(first, "delivered")] != [r["time_us"] for r in of(other, "delivered")]


def test_adding_an_unrelated_node_does_not_change_another_links_draws(tmp_path: Path) -> None:
    alone = jitter_loss_scenario(tmp_path / "alone.yaml", seed=9, loss=0.3, jitter_us=900, duration_us=50_000)
    crowded = jitter_loss_scenario(
        tmp_path / "crowded.yaml", seed=9, loss=0.3, jitter_us=900, duration_us=50_000,
        # A new node listed first, sending to the same sink over a lossy, jittery link of its own.
        extra_first=[sensor("aaa-new", 300, links=[{"to": "sink", "latency_us": 1200, "jitter_us": 500, "loss": 0.5}])],
        extra_routes=[{"from": "aaa-new", "to": ["sink"]}])
    before = drive(alone, tmp_path / "alone.jsonl").records
    after = drive(crowded, tmp_path / "crowded.jsonl").records
    assert of(after, "dropped", source="aaa-new") and of(after, "delivered", source="aaa-new")
    assert link_records(before) == link_records(after)
    assert len(link_records(before)) > 90 and of(link_records(before), "dropped")


# -- seeds --------------------------------------------------------------------------------------------------


def test_derive_seed_is_sha256_of_stable_names() -> None:
    assert derive_seed(42, "node", "sensor-a") == 6640297225776415
    assert node_seed(42, "sensor-a") == 6640297225776415
    material = "\x1f".join(["cosim-seed-v1", "42", "link", "a", "b"]).encode()
    assert link_seed(42, "a", "b") == int.from_bytes(hashlib.sha256(material).digest()[:8], "big") >> 11 == 2019866120685654
    assert max(node_seed(42, f"n{i}") for i in range(1000)) < 2**53  # exact in every JSON parser
    assert link_seed(42, "a", "b") != link_seed(42, "b", "a") != link_seed(43, "b", "a")
    assert node_seed(42, "a") != link_seed(42, "a", "")


def test_derive_seed_does_not_depend_on_the_process_hash_salt() -> None:
    code = "from cosim.seeds import node_seed; print(node_seed(7, 'echo-1'))"
    values = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT,
                             env={**os.environ, "PYTHONHASHSEED": salt}).stdout.strip() for salt in ("1", "2", "3")}
    assert values == {str(node_seed(7, "echo-1"))}


# -- ordering ---------------------------------------------------------------------------------------------


def test_same_time_events_follow_time_source_seq_order(tmp_path: Path) -> None:
    # Two burst services emit 3 events at every 1000 us; a step (4000 us) holds 4 burst times, which the service
    # returns latest first. Both reach the sink and an echo at equal delivery times.
    path = write_scenario(tmp_path / "order.yaml", [
        service("burst-b", {"every_us": 1000, "count": 3}, script=BURST),
        service("burst-a", {"every_us": 1000, "count": 3}, script=BURST),
        service("echo"),
        sink("sink"),
    ], [
        {"from": "burst-b", "to": ["sink", "echo"], "events": ["burst"]},
        {"from": "burst-a", "to": ["sink", "echo"], "events": ["burst"]},
        {"from": "echo", "to": ["sink"]},
    ], quantum_us=4000, duration_us=40_000, default_link={"latency_us": 4000})
    out = drive(path, tmp_path / "order.jsonl")
    records = out.records

    sent = of(records, "sent")
    keys = [(r["time_us"], r["source"], r["seq"]) for r in sent]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)
    for source in ("burst-a", "burst-b"):
        mine = of(records, "sent", source=source)
        assert [r["seq"] for r in mine] == list(range(len(mine))) == list(range(120))
        # Time order first, then the order the service gave same-time events in.
        assert [(r["data"]["at"], r["data"]["i"]) for r in mine] == [(t, i) for t in range(1000, 40_001, 1000)
                                                                    for i in range(3)]

    delivered = of(records, "delivered")
    order = [(r["time_us"], r["source"], r["seq"], r["dest"]) for r in delivered]
    assert order == sorted(order)
    same_time = Counter(r["time_us"] for r in delivered if r["dest"] == "sink" and r["type"] == "burst")
    assert max(same_time.values()) == 6  # three from each burst service at one instant
    sink_got = [(e["time_us"], e["source"], e["seq"]) for e in out.sink("sink").received]
    assert sink_got == [(r["time_us"], r["source"], r["seq"]) for r in delivered if r["dest"] == "sink"]

    # The echo got its same-time inputs in that order too, and numbered its echoes in the same order.
    echoes = of(records, "sent", source="echo")
    heard = [(r["source"], r["data"]["at"], r["data"]["i"]) for r in delivered if r["dest"] == "echo"]
    assert [(r["data"]["from"], r["data"]["data"]["at"], r["data"]["data"]["i"]) for r in echoes] == heard
    assert heard[:6] == [("burst-a", 1000, 0), ("burst-a", 1000, 1), ("burst-a", 1000, 2),
                         ("burst-b", 1000, 0), ("burst-b", 1000, 1), ("burst-b", 1000, 2)]
    assert_windows_exact(out)


# -- failures -----------------------------------------------------------------------------------------------


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[PipeTransport]]:
    """Every PipeTransport the local runtime starts, so a test can check its process is gone afterwards."""
    started: list[PipeTransport] = []

    class Recorded(PipeTransport):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            started.append(self)

    monkeypatch.setattr(local_runtime, "PipeTransport", Recorded)
    yield started
    for transport in started:  # a failed test must not leak processes either
        if transport.process.poll() is None:
            transport.process.kill()
            transport.process.wait()


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Fail instead of hanging when the code under test blocks (e.g. a teardown that never kills a stuck node)."""

    def expire(signum: int, frame: Any) -> None:
        raise AssertionError(f"still running after {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_all_gone(started: list[PipeTransport], expected: int) -> None:
    assert len(started) == expected
    for transport in started:
        assert transport.process.returncode is not None, f"{transport.name} still running"
        assert not Path(f"/proc/{transport.process.pid}").exists(), f"{transport.name} (pid {transport.process.pid}) left"


def failing_scenario(path: Path, bad: dict[str, Any]) -> Path:
    return write_scenario(path, [
        sensor("sensor", 1000),
        service("good", {"tick_us": 1000}),
        bad,
        sink("sink"),
    ], [
        {"from": "sensor", "to": ["good", "bad"]},
        {"from": "good", "to": ["sink"]},
        {"from": "bad", "to": ["sink"]},
    ], duration_us=10_000)


FAILURES = {
    # case: (the failing node, watchdog, texts the message must contain, process exit code)
    "exit-3": (service("bad", {"exit_at_us": 3000}), 10.0,
               ["ended without answering", "echo: exiting with 3 as configured"], 3),
    "hang": (service("bad", {"hang_at_us": 3000}), 1.0,
             ["did not answer within the 1 s watchdog", "echo: hanging as configured"], None),
    "hang-ignoring-eof-and-sigterm": (service("bad", {"stuck_at_us": 3000}, script=STUCK), 1.0,
                                      ["did not answer within the 1 s watchdog", "stuck: blocking forever"], None),
    "garbage": (service("bad", {"garbage_at_us": 3000}), 10.0,
                ["not protocol JSON", "'this is not a protocol message'",
                 "echo: writing garbage on stdout as configured"], None),
    "error": (service("bad", {"raise_at_us": 3000}), 10.0,
              ["reported ERROR (fatal) callback_failed: RuntimeError: echo: failing as configured", "callback_failed"], 1),
}


@pytest.mark.parametrize("case", FAILURES)
def test_node_failure_stops_the_run_with_a_clear_message(case: str, tmp_path: Path,
                                                         spawned: list[PipeTransport]) -> None:
    bad, watchdog_s, texts, exit_code = FAILURES[case]
    path = failing_scenario(tmp_path / "failing.yaml", bad)
    trace = tmp_path / "failing.jsonl"
    with deadline(15), pytest.raises(NodeFailure) as caught:
        run(path, runtime="local", trace_path=trace, watchdog_s=watchdog_s)
    failure = caught.value
    message = str(failure)
    assert failure.node == "bad" and message.startswith("node 'bad': ")
    assert failure.in_flight == "ADVANCE to 3000 us" and "while waiting for the reply to ADVANCE to 3000 us" in message
    for text in texts:
        assert text in message
    assert failure.process_exit_code == exit_code
    if exit_code is not None:
        assert f"exit code {exit_code}" in message
    else:
        assert "exit code" not in message  # it was still running when the failure was reported
    assert "last lines of its log" in message

    records = read_trace(trace)
    last = records[-1]
    assert (last["record"], last["node"], last["error"], last["time_us"]) == ("error", "bad", "node_failure", 2000)
    assert "ADVANCE to 3000 us" in last["detail"]
    assert not of(records, "footer")
    assert of(records, "delivered", dest="bad")  # the run got going before it failed
    assert_all_gone(spawned, 2)


def test_node_that_dies_during_init_names_init(tmp_path: Path, spawned: list[PipeTransport]) -> None:
    bad = service("bad", local_command=["{python}", "-c",
                                        "import sys; print('bad: model file missing', file=sys.stderr); sys.exit(5)"])
    path = failing_scenario(tmp_path / "init.yaml", bad)
    with pytest.raises(NodeFailure) as caught:
        run(path, runtime="local", trace_path=tmp_path / "init.jsonl", watchdog_s=10.0)
    message = str(caught.value)
    assert "node 'bad'" in message and "INIT" in message and "exit code 5" in message
    assert "bad: model file missing" in message
    last = read_trace(tmp_path / "init.jsonl")[-1]
    assert (last["record"], last["node"], last["time_us"]) == ("error", "bad", 0)
    assert_all_gone(spawned, 2)


def test_node_that_cannot_start_gives_a_clear_error(tmp_path: Path, spawned: list[PipeTransport]) -> None:
    bad = service("bad", local_command=["/nonexistent/cosim-no-such-service", "--flag"])
    path = failing_scenario(tmp_path / "nostart.yaml", bad)
    with pytest.raises(CosimError) as caught:
        run(path, runtime="local", trace_path=tmp_path / "nostart.jsonl", watchdog_s=10.0)
    message = str(caught.value)
    assert not isinstance(caught.value, NodeFailure)
    assert message == ("node 'bad' cannot start /nonexistent/cosim-no-such-service --flag: "
                       "No such file or directory")
    last = read_trace(tmp_path / "nostart.jsonl")[-1]
    assert (last["record"], last["error"], last["node"]) == ("error", "start_failed", "bad")
    assert_all_gone(spawned, 1)  # `good` was started first and has been stopped


# -- a bug in cosim itself still ends the trace --------------------------------------------------------------------


class BuggySink(SinkModel):
    """Stands in for a defect in cosim's own code: an exception that is not a node failure, at 3000 us."""

    def begin_advance(self, target_us: int, events: list[Event]) -> None:
        if target_us == 3000:
            raise ZeroDivisionError("division by zero in a model")
        super().begin_advance(target_us, events)


def test_an_internal_error_ends_the_trace_with_an_internal_error_record(tmp_path: Path) -> None:
    path = write_scenario(tmp_path / "bug.yaml", [sensor("sensor", 1000, links=[{"to": "sink", "latency_us": 1000}]),
                                                 sink("sink")], [{"from": "sensor", "to": ["sink"]}])
    scenario = load(path)
    writer = TraceWriter(tmp_path / "bug.jsonl", {"scenario": scenario.name})
    nodes: dict[str, SimNode] = {"sensor": build_nodes(scenario, LocalRuntime(scenario, tmp_path), 5.0)["sensor"],
                                 "sink": BuggySink("sink")}
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback: it is not a user error
        Coordinator(scenario, nodes, writer).run()
    writer.close()
    records = read_trace(tmp_path / "bug.jsonl")
    assert records[-1] == {"record": "error", "time_us": 2000, "node": None, "error": "internal_error",
                           "detail": "ZeroDivisionError: division by zero in a model",
                           "counts": {"sent": 2, "delivered": 2, "dropped": 0, "unroutable": 0}}
    assert [r["record"] for r in records] == ["header", "sent", "delivered", "sent", "delivered", "error"]
