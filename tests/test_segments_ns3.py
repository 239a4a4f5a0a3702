"""Network segments through real ns-3 (the worker, cosim.segments.worker) in whole runs: the determinism gate on
scenarios/wireless.yaml, fixed == next-event, local == Docker with services on segments, physics through a whole
run, contention growing with the number of sensors, and the real worker killed mid-run.

Needs the ns3 package (`cosim[ns3]`; ./inv test installs it). Every run starts a worker that loads ns-3 (a few
seconds of CPU each): these are the slow tests of segments; tests/test_segments.py has the fast ones.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cosim import segments
from cosim.determinism import gate
from cosim.run import run
from cosim.trace import Delivered, Dropped, Sent, read
from cosim.tracediff import trace_hash
from tests.conftest import ROOT, wait_until
from tests.test_interrupts import processes_with

pytestmark = pytest.mark.ns3

WIRELESS = ROOT / "scenarios" / "wireless.yaml"
SEGMENTS = ROOT / "tests" / "scenarios_local" / "segments.yaml"
QUANTUM_US = 1000


@pytest.fixture(autouse=True)
def real_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    if importlib.util.find_spec("ns3") is None:
        pytest.skip("needs the ns3 package: pip install 'cosim[ns3]' (./inv test installs it)")
    monkeypatch.delenv(segments.WORKER_ENV, raising=False)


def sensors_on_a_radio(tmp_path: Path, sensors: int, *, duration_us: int = 2_000_000) -> Path:
    """``sensors`` vibration sensors sampling together on one 802.15.4 channel to a sink (the PAN coordinator)."""
    path = tmp_path / f"radio-{sensors}.yaml"
    path.write_text(f"""\
name: radio-{sensors}
seed: 11
duration_us: {duration_us}
network:
  segments:
    - {{id: radio, medium: lrwpan, nodes: [gateway, pump], distance_m: 20}}
nodes:
  - {{id: pump, kind: sensor, period_us: 100000, replicas: {sensors}}}
  - {{id: gateway, kind: sink}}
routes:
  - {{from: pump, to: [gateway]}}
""", encoding="utf-8")
    return path


@pytest.mark.mosquitto
def test_wireless_passes_the_determinism_gate(tmp_path: Path) -> None:
    """`invoke determinism scenarios/wireless.yaml --runs 3`: byte-identical traces, through the real broker, ONNX
    Runtime and ns-3's 802.15.4 channel."""
    out = io.StringIO()
    runs = gate(str(WIRELESS), runs=3, runtime="local", out_dir=tmp_path, out=out)
    assert len({trace_hash(result.trace) for result in runs}) == 1, out.getvalue()
    trace = read(runs[0].trace)
    assert trace.footer is not None and trace.footer.status == "ok"
    hops = [r for r in trace.of(Delivered) if r.segment == "radio"]
    assert {r.source for r in hops} == {"pump-1", "pump-2", "pump-3", "pump-4", "fan-1"}
    assert all(r.arrived_us is not None and r.sent_us < r.arrived_us and r.time_us == r.arrived_us + QUANTUM_US
               for r in hops)
    # Four pumps sampling together on one channel: ns-3's CSMA/CA gives up on some frames.
    assert {r.reason for r in trace.of(Dropped)} and all(r.segment == "radio" for r in trace.of(Dropped))


def test_fixed_and_next_event_give_the_same_records(tmp_path: Path) -> None:
    traces = {mode: tmp_path / f"{mode}.jsonl" for mode in ("fixed", "next-event")}
    for mode, trace in traces.items():
        run(SEGMENTS, runtime="local", trace_path=trace, advance=mode, watchdog_s=60.0)
    assert trace_hash(traces["fixed"], across_modes=True) == trace_hash(traces["next-event"], across_modes=True)
    executed = read(traces["next-event"]).footer.executed  # type: ignore[union-attr]
    assert executed is not None and executed["skipped"] > 0


@pytest.mark.docker
def test_services_on_segments_in_docker_give_the_local_records(service_images: dict[str, str],
                                                                 tmp_path: Path) -> None:
    from cosim.runtimes.docker import remove_by_label
    try:
        run(SEGMENTS, runtime="docker", trace_path=tmp_path / "docker.jsonl")
    finally:
        remove_by_label("cosim.scenario=local-segments")
    run(SEGMENTS, runtime="local", trace_path=tmp_path / "local.jsonl")
    docker, local = (tmp_path / "docker.jsonl").read_bytes(), (tmp_path / "local.jsonl").read_bytes()
    assert docker.split(b"\n", 1)[1] == local.split(b"\n", 1)[1]
    assert any(r.segment == "wire" and r.source == "echo" for r in read(tmp_path / "docker.jsonl").of(Delivered))


def test_no_wired_arrival_beats_its_transmission_time(tmp_path: Path) -> None:
    """On the 1 Mbps CSMA wire (echo -> sink), every arrival comes at least one frame's transmission time after its
    emission: the payload and UDP (8), IPv4 (20) and Ethernet (14 + 4 FCS) headers at 1 bit per us, plus the
    50 us delay."""
    trace_path = tmp_path / "segments.jsonl"
    run(SEGMENTS, runtime="local", trace_path=trace_path)
    trace = read(trace_path)
    sizes = {(r.source, r.seq): len(json.dumps(r.data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
                                     .encode()) for r in trace.of(Sent)}
    wire = [r for r in trace.of(Delivered) if r.segment == "wire"]
    assert wire
    for record in wire:
        frame_bits = (max(1, sizes[(record.source, record.seq)]) + 8 + 20 + 18) * 8
        assert record.arrived_us - record.sent_us >= frame_bits + 50, record  # 1 Mbps: a bit per us
        assert record.time_us == record.arrived_us + QUANTUM_US


def test_more_sensors_on_one_channel_mean_more_latency_and_loss(tmp_path: Path) -> None:
    def latency_and_loss(sensors: int) -> tuple[float, float]:
        trace_path = tmp_path / f"radio-{sensors}.jsonl"
        run(sensors_on_a_radio(tmp_path, sensors), runtime="local", trace_path=trace_path)
        trace = read(trace_path)
        hops = [r.network_latency_us for r in trace.of(Delivered)]
        dropped = len(trace.of(Dropped))
        return sum(hops) / len(hops), dropped / (len(hops) + dropped)

    few, many = latency_and_loss(2), latency_and_loss(8)
    assert many[0] > few[0] and many[1] >= few[1] and many[1] > 0, (few, many)


def test_the_real_worker_killed_mid_run(tmp_path: Path) -> None:
    """SIGKILL to the real ns-3 worker mid-run: one line naming it and its exit, the trace so far kept and ended by
    the error record, nothing left running."""
    scenario = sensors_on_a_radio(tmp_path, 3, duration_us=3_600_000_000)  # an hour: still running when killed
    trace = tmp_path / "killed.jsonl"
    process = subprocess.Popen([sys.executable, "-m", "cosim", "up", str(scenario), "--runtime", "local", "--trace",
                                str(trace), "-q"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        def own_workers() -> list[int]:  # (other runs on this machine may have workers of their own)
            found = []
            for pid in processes_with("cosim.segments.worker"):
                try:
                    if f"PPid:\t{process.pid}\n" in Path(f"/proc/{pid}/status").read_text():
                        found.append(pid)
                except OSError:
                    continue
            return found

        def worker_busy() -> bool:
            return trace.exists() and trace.stat().st_size > 20_000 and bool(own_workers())
        wait_until(worker_busy, process, "the run got going", timeout_s=180)  # type: ignore[arg-type]
        workers = own_workers()
        assert len(workers) == 1
        os.kill(workers[0], signal.SIGKILL)
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 4 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and "the ns-3 segment worker" in err and "137, killed" in err, err
    last = json.loads(trace.read_text(encoding="utf-8").splitlines()[-1])
    assert (last["record"], last["error"]) == ("error", "segment_worker_failed")
    assert read(trace).of(Delivered)  # the trace so far is kept
    assert not Path(f"/proc/{workers[0]}").exists()
