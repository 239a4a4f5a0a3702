"""The ns-3 segment worker (cosim/segments/worker.py) with real ns-3, driven over its pipe as the coordinator does.

One worker process serves most tests (loading ns-3 costs seconds): each test starts with its own `init`, which
must give the same results as a fresh process. Needs the ns3 package (`cosim[ns3]`; ./inv test installs it).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.ns3

ROOT = Path(__file__).resolve().parent.parent


def require_ns3() -> None:
    if importlib.util.find_spec("ns3") is None:
        pytest.skip("needs the ns3 package: pip install 'cosim[ns3]' (./inv test installs it)")


class WorkerProcess:
    """`python -m cosim.segments.worker` and its JSON lines."""

    def __init__(self, stderr: Path) -> None:
        self.stderr_path = stderr
        self.stderr = stderr.open("w")
        self.process = subprocess.Popen([sys.executable, "-m", "cosim.segments.worker"], cwd=ROOT, text=True,
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.stderr)

    def send(self, message: dict[str, Any]) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(message) + "\n")
        self.process.stdin.flush()

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        self.send(message)
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        assert line, f"the worker ended (exit {self.process.wait()}): {self.stderr_path.read_text()[-2000:]}"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def init(self, segments: list[dict[str, Any]], seed: int = 7) -> dict[str, Any]:
        reply = self.request({"op": "init", "seed": seed, "segments": segments})
        assert reply["op"] == "ready", reply
        return reply

    def run(self, until_us: int, sends: list[list[Any]] | None = None) -> dict[str, Any]:
        reply = self.request({"op": "run", "until_us": until_us, "sends": sends or []})
        assert reply["op"] == "ran", reply
        return reply

    def close(self) -> int:
        if self.process.poll() is None:
            self.send({"op": "shutdown"})
        code = self.process.wait(timeout=60)
        self.stderr.close()
        return code


@pytest.fixture(scope="module")
def worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerProcess]:
    require_ns3()
    process = WorkerProcess(tmp_path_factory.mktemp("ns3") / "worker.stderr")
    yield process
    assert process.close() == 0


def simulate(worker: WorkerProcess, segments: list[dict[str, Any]], sends: list[list[Any]], end_us: int,
             window_us: int, seed: int = 7) -> tuple[list[list[Any]], list[list[Any]]]:
    """Runs the sends window by window as the coordinator does (each window's sends go with the run to its start).

    Returns every arrival and drop; checks each reply's times lie in its window and are sorted."""
    worker.init(segments, seed)
    arrivals: list[list[Any]] = []
    drops: list[list[Any]] = []
    previous = 0
    pending = sorted(sends, key=lambda s: (s[1], s[0]))
    for until in range(window_us, end_us + window_us, window_us):
        batch = [s for s in pending if s[1] < until]
        pending = pending[len(batch):]
        reply = worker.run(until, batch)
        assert reply["now_us"] == until
        for pid, at in reply["arrivals"]:
            assert previous < at <= until, (pid, at, previous, until)
        for pid, at, _ in reply["drops"]:
            assert previous < at <= until, (pid, at, previous, until)
        assert reply["arrivals"] == sorted(reply["arrivals"], key=lambda a: (a[1], a[0]))
        assert reply["drops"] == sorted(reply["drops"], key=lambda d: (d[1], d[0]))
        if reply["next_us"] is not None:
            assert reply["next_us"] >= until - 1
        arrivals += reply["arrivals"]
        drops += reply["drops"]
        previous = until
    return arrivals, drops


def periodic(senders: list[str], dst: str, segment: str, period_us: int, count: int, size: int,
             first_pid: int = 1, stagger_us: int = 0) -> list[list[Any]]:
    sends = []
    pid = first_pid
    for k in range(count):
        for i, src in enumerate(senders):
            sends.append([pid, k * period_us + i * stagger_us, segment, src, dst, size])
            pid += 1
    return sends


RADIO = {"id": "radio", "medium": "lrwpan", "nodes": ["gw", "s1", "s2", "s3", "s4", "s5"], "distance_m": 20}
BUS = {"id": "bus", "medium": "csma", "nodes": ["a", "b", "c", "d"], "data_rate": "10Mbps", "queue_packets": 5}
MIXED = [RADIO, BUS]
MIXED_SENDS = (
    periodic(["s1", "s2", "s3", "s4", "s5"], "gw", "radio", 20_000, 10, 40, 1, 130)
    + periodic(["a", "b", "c"], "d", "bus", 5_000, 40, 1400, 1000)
    + [[5000, 3_000, "radio", "gw", "s3", 300], [5001, 3_000, "bus", "d", "a", 4000]]  # fragmented (6LoWPAN, IPv4)
    + [[6000 + i, 150_000, "bus", "d", "a", 1400] for i in range(8)]  # a burst beyond the 5-packet queue
)


def test_results_do_not_depend_on_the_window_size_nor_on_a_rebuild(worker: WorkerProcess) -> None:
    coarse = simulate(worker, MIXED, MIXED_SENDS, 300_000, 10_000)
    fine = simulate(worker, MIXED, MIXED_SENDS, 300_000, 1_000)
    finest = simulate(worker, MIXED, MIXED_SENDS, 60_000, 100)
    again = simulate(worker, MIXED, MIXED_SENDS, 300_000, 10_000)
    assert coarse == fine == again
    assert finest == tuple([x for x in part if x[1] <= 60_000] for part in coarse)
    arrivals, drops = coarse
    assert {pid for pid, _ in arrivals} | {d[0] for d in drops} == {s[0] for s in MIXED_SENDS}
    assert 5000 in {pid for pid, _ in arrivals} and 5001 in {pid for pid, _ in arrivals}
    assert {pid for pid, _, reason in drops if reason == "queue_full"} == {6006, 6007}  # 1 on the wire, 5 queued


def test_a_fresh_process_gives_the_same_results(worker: WorkerProcess, tmp_path: Path) -> None:
    shared = simulate(worker, MIXED, MIXED_SENDS, 200_000, 10_000, seed=3)
    other_seed = simulate(worker, MIXED, MIXED_SENDS, 200_000, 10_000, seed=4)
    fresh = WorkerProcess(tmp_path / "fresh.stderr")
    try:
        assert simulate(fresh, MIXED, MIXED_SENDS, 200_000, 10_000, seed=3) == shared
    finally:
        assert fresh.close() == 0
    assert other_seed != shared  # the seed reaches ns-3's random streams (CSMA-CA backoffs)


def test_modules_are_only_those_the_media_need(worker: WorkerProcess) -> None:
    ready = worker.init([BUS])
    assert ready["ns3"] == "3.44"
    assert {"core", "network", "internet", "csma"} <= set(ready["modules"])
    assert ready["segments"] == [{"id": "bus", "nodes": ["a", "b", "c", "d"]}]


# Wired media: every arrival - send >= the frame's transmission time at the data rate, headers included (UDP 8,
# IPv4 20, then Ethernet 14 + FCS 4 on CSMA, PPP 2 on point-to-point), plus the channel's delay; a lone frame
# arrives within a microsecond of that bound (ns-3 adds no processing time).
@pytest.mark.parametrize("segment,link_bytes", [
    ({"id": "wire", "medium": "csma", "nodes": ["a", "b", "c"], "data_rate": "10Mbps", "delay_us": 5}, 18),
    ({"id": "wire", "medium": "p2p", "nodes": ["a", "b"], "data_rate": "2Mbps", "delay_us": 300}, 2),
])
def test_wired_arrivals_respect_the_transmission_time(worker: WorkerProcess, segment: dict[str, Any],
                                                      link_bytes: int) -> None:
    rate = {"10Mbps": 10e6, "2Mbps": 2e6}[segment["data_rate"]]
    sizes = [46, 100, 500, 1400]
    lone = [[i + 1, i * 20_000, "wire", "a", "b", size] for i, size in enumerate(sizes)]
    burst = [[100 + i, 100_000, "wire", "a" if i % 2 else "b", "b" if i % 2 else "a", 700] for i in range(12)]
    sends = lone + burst
    arrivals, drops = simulate(worker, [segment], sends, 200_000, 1_000)
    assert drops == []
    sent = {s[0]: s for s in sends}
    for pid, at in arrivals:
        size = sent[pid][5]
        bound_us = (size + 8 + 20 + link_bytes) * 8 / rate * 1e6 + segment["delay_us"]
        latency = at - sent[pid][1]
        assert latency >= bound_us, (pid, latency, bound_us)
        if pid < 100:
            assert latency <= bound_us + 1, (pid, latency, bound_us)
    burst_latencies = sorted(at - 100_000 for pid, at in arrivals if pid >= 100)
    assert burst_latencies[-1] > 5 * burst_latencies[0]  # the burst queues


def mean_latency_and_loss(worker: WorkerProcess, senders: int) -> tuple[float, int]:
    nodes = ["gw"] + [f"s{i}" for i in range(1, senders + 1)]
    segment = {"id": "radio", "medium": "lrwpan", "nodes": nodes, "distance_m": 15}
    # Every sensor reports at the same instants (a sampling clock), 60 bytes, 20 times.
    sends = periodic(nodes[1:], "gw", "radio", 100_000, 20, 60)
    arrivals, drops = simulate(worker, [segment], sends, 2_200_000, 100_000)
    sent = {s[0]: s[1] for s in sends}
    latencies = [at - sent[pid] for pid, at in arrivals]
    assert len(arrivals) + len(drops) == len(sends)
    assert {reason for _, _, reason in drops} <= {"channel_access_failure", "no_ack", "queue_full"}
    return sum(latencies) / len(latencies), len(drops)


def test_more_senders_on_one_radio_channel_mean_more_latency_and_loss(worker: WorkerProcess) -> None:
    latency_2, lost_2 = mean_latency_and_loss(worker, 2)
    latency_10, lost_10 = mean_latency_and_loss(worker, 10)
    assert latency_10 > 1.5 * latency_2, (latency_2, latency_10)
    assert lost_10 >= lost_2
    assert latency_2 > 1_000  # a 60-byte frame at 250 kbit/s takes milliseconds, not microseconds


def test_next_us_names_the_next_event(worker: WorkerProcess) -> None:
    # 10 Mbit/s, 1 ms of propagation: the frame leaves at ~0.1 ms and arrives ~1.1 ms after the send.
    worker.init([{"id": "wire", "medium": "p2p", "nodes": ["a", "b"], "data_rate": "10Mbps", "delay_us": 1000}])
    reply = worker.run(50, [[1, 10, "wire", "a", "b", 100]])
    assert reply["arrivals"] == [] and reply["next_us"] is not None and 50 <= reply["next_us"] <= 10 + 120
    # Jumping from next event to next event (as next-event advance does) reaches the arrival and nothing is lost.
    now, arrived, steps = 50, None, 0
    while reply["next_us"] is not None:
        assert reply["next_us"] >= now
        now = reply["next_us"] + 1
        reply = worker.run(now)
        steps += 1
        if reply["arrivals"]:
            arrived = reply["arrivals"][0][1]
    assert arrived is not None and 10 + 1000 + 100 < arrived <= 10 + 1000 + 120
    # A run up to next_us with nothing to send changes nothing: a coordinator may skip it.
    reply = worker.run(now + 10, [[2, now + 5, "wire", "b", "a", 100]])
    assert reply["next_us"] is not None
    quiet = worker.run(reply["next_us"])
    assert quiet["arrivals"] == quiet["drops"] == [] and quiet["next_us"] == reply["next_us"]
    while reply["next_us"] is not None:
        now = reply["next_us"] + 1
        reply = worker.run(now)
    assert steps <= 4  # only a handful of events: transmission end, reception, delivery
    assert worker.run(now + 1_000_000)["next_us"] is None  # idle: nothing scheduled


def test_a_send_at_the_last_window_end_is_not_in_the_past(worker: WorkerProcess) -> None:
    worker.init([BUS])
    assert worker.run(1_000)["arrivals"] == []
    reply = worker.run(2_000, [[1, 1_000, "bus", "a", "b", 10]])
    assert [pid for pid, _ in reply["arrivals"]] == [1] and reply["arrivals"][0][1] > 1_000


def start_and_fail(tmp_path: Path, messages: list[dict[str, Any]]) -> tuple[str, int]:
    process = WorkerProcess(tmp_path / "failing.stderr")
    lines = []
    for message in messages:
        process.send(message)
    assert process.process.stdin is not None and process.process.stdout is not None
    process.process.stdin.close()
    lines = process.process.stdout.read().splitlines()
    code = process.process.wait(timeout=60)
    process.stderr.close()
    assert lines, "no reply"
    last = json.loads(lines[-1])
    assert last["op"] == "error" and "\n" not in last["message"], last
    return last["message"], code


@pytest.mark.parametrize("segment,expected", [
    ({"id": "x", "medium": "token-ring", "nodes": ["a", "b"]}, "medium must be one of csma, p2p, wifi, lrwpan"),
    ({"id": "x", "medium": "p2p", "nodes": ["a", "b", "c"]}, "exactly 2 nodes"),
    ({"id": "x", "medium": "csma", "nodes": ["a", "b"], "data_rate": "fast"}, "data_rate must look like"),
    ({"id": "x", "medium": "csma", "nodes": ["a", "a"]}, "node 'a' is listed twice"),
    ({"id": "x", "medium": "lrwpan", "nodes": ["a", "b"], "positions": {"a": [0, 0, 0]}}, "no [x, y, z] for node 'b'"),
    ({"id": "x", "medium": "lrwpan", "nodes": ["a", "b"], "data_rate": "1Mbps"}, "unknown field 'data_rate'"),
    ({"id": "x", "medium": "wifi", "nodes": ["a", "b"], "standard": "802.11a", "data_mode": "HtMcs3"},
     "data_mode (for 802.11a) must be one of OfdmRate6Mbps"),
])
def test_an_invalid_segment_gets_one_error_line(tmp_path: Path, segment: dict[str, Any], expected: str) -> None:
    require_ns3()
    message, code = start_and_fail(tmp_path, [{"op": "init", "seed": 1, "segments": [segment]}])
    assert expected in message and "segment 'x'" in message
    assert code == 1


def test_an_invalid_send_gets_one_error_line(tmp_path: Path) -> None:
    require_ns3()
    message, code = start_and_fail(tmp_path, [
        {"op": "init", "seed": 1, "segments": [BUS]},
        {"op": "run", "until_us": 10, "sends": [[1, 5, "bus", "a", "zz", 10]]},
    ])
    assert message == "run: send 1: dst 'zz' is not a node of segment 'bus'" and code == 1


def test_wifi_cell_adhoc_and_with_an_access_point(worker: WorkerProcess) -> None:
    adhoc = {"id": "cell", "medium": "wifi", "nodes": ["ap", "s1", "s2", "s3"], "distance_m": 10, "mode": "adhoc"}
    sends = periodic(["s1", "s2", "s3"], "ap", "cell", 10_000, 10, 200, 1, 3)
    coarse = simulate(worker, [adhoc], sends, 120_000, 10_000)
    assert simulate(worker, [adhoc], sends, 120_000, 1_000) == coarse
    arrivals, drops = coarse
    assert drops == [] and len(arrivals) == len(sends)
    # 802.11a at 6 Mbit/s (the default constant rate): a 20 us preamble and header, then the MPDU (MAC header 24,
    # LLC/SNAP 8, IPv4 20, UDP 8, payload, FCS 4) at 6 bits per microsecond.
    sent = {s[0]: s[1] for s in sends}
    assert all(at - sent[pid] >= 20 + (24 + 8 + 20 + 8 + 200 + 4) * 8 / 6 for pid, at in arrivals)
    # With an access point, the stations associate first (beacons every 102.4 ms): before, their MAC drops.
    infra = {**adhoc, "mode": "ap"}
    late = [[2, 1_000_000, "cell", "s1", "ap", 50], [3, 1_000_000, "cell", "ap", "s2", 50]]
    arrivals, drops = simulate(worker, [infra], [[1, 0, "cell", "s1", "ap", 50]] + late, 1_100_000, 100_000)
    assert drops == [[1, 1, "not_associated"]]
    assert sorted(pid for pid, _ in arrivals) == [2, 3]


def test_a_radio_out_of_range_loses_its_packets_for_want_of_an_ack(worker: WorkerProcess) -> None:
    segment = {"id": "radio", "medium": "lrwpan", "nodes": ["gw", "near", "far"], "propagation": "range",
               "range_m": 50, "positions": {"gw": [0, 0, 0], "near": [30, 0, 0], "far": [0, 80, 0]}}
    sends = [[1, 1_000, "radio", "near", "gw", 30], [2, 1_000, "radio", "far", "gw", 30]]
    arrivals, drops = simulate(worker, [segment], sends, 200_000, 10_000)
    assert [pid for pid, _ in arrivals] == [1]
    assert [(pid, reason) for pid, _, reason in drops] == [(2, "no_ack")]
    # the sender tried 1 + 3 times, each waiting for its acknowledgement: tens of milliseconds, not one frame time
    assert drops[0][1] - 1_000 > 4 * 1_000
