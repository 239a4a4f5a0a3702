"""Several protocol-driven MQTT clients on one broker: same trace run after run, under load, local == Docker;
replicas with a shared subscription process each reading once; messages from outside virtual time are named.

Real parts only: a local Mosquitto (or the Docker runtime's), the real gateway, aggregator and ONNX services.
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cosim import loading
from cosim.determinism import gate
from cosim.model import SensorSpec
from cosim.run import run
from cosim.tracediff import compare, print_comparison

from .conftest import ROOT, assert_same_simulation, cosim_resources
from .test_mqtt_gateway import needs_mosquitto

CROSS = ROOT / "tests" / "scenarios_local" / "cross-gateways.yaml"
MULTI_SITE = ROOT / "scenarios" / "multi-site.yaml"


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def _spin(stop: Any) -> None:
    while not stop.is_set():
        for _ in range(10_000):
            pass


@pytest.fixture
def cpu_load() -> Iterator[int]:
    """A busy loop on every core for the duration of the test (stopped, and waited for, afterwards)."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    workers = [context.Process(target=_spin, args=(stop,), daemon=True) for _ in range(os.cpu_count() or 1)]
    for worker in workers:
        worker.start()
    try:
        yield len(workers)
    finally:
        stop.set()
        for worker in workers:
            worker.join(timeout=10)
            if worker.is_alive():
                worker.kill()
                worker.join(timeout=10)


@needs_mosquitto
def test_two_gateways_on_each_others_topics_give_identical_traces_under_cpu_load(tmp_path: Path, cpu_load: int) -> None:
    first, second = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    for trace in (first, second):
        run(CROSS, runtime="local", trace_path=trace, watchdog_s=60.0)
    assert_same_simulation(first, second)  # byte-identical after the header (the broker's port differs)
    trace = records(first)
    assert trace[0]["barrier_groups"] == {"mqtt-broker": ["gw-a", "gw-b"]}
    readings = {(r["source"], r["seq"]) for r in trace if r["record"] == "delivered" and r["dest"] in ("gw-a", "gw-b")}
    received = [r for r in trace if r["record"] == "sent" and r["type"] == "mqtt_received"]
    by_gateway = {gw: [(r["data"]["origin"]["source"], r["data"]["origin"]["seq"]) for r in received if r["source"] == gw]
                  for gw in ("gw-a", "gw-b")}
    # Fan-out: every reading of both gateways reaches both, once, at origin + 400 us, none outside virtual time.
    for gateway, got in by_gateway.items():
        assert len(got) == len(set(got)), f"{gateway} got a reading twice"
        assert set(got) <= readings and len(got) >= len(readings) - 2, gateway  # the last ones may be due after the end
    assert {r["data"]["origin"]["node"] for r in received} == {"gw-a", "gw-b"}
    assert all(r["time_us"] == r["data"]["origin"]["time_us"] + 400 and "external" not in r["data"] for r in received)


@needs_mosquitto
def test_multi_site_infers_each_reading_once_and_alerts_once_per_anomaly(tmp_path: Path) -> None:
    trace_path = tmp_path / "multi-site.jsonl"
    run(MULTI_SITE, runtime="local", trace_path=trace_path, watchdog_s=60.0)
    trace = records(trace_path)
    scenario = loading.load(MULTI_SITE)
    gateways = {"gateway-a", "gateway-b-1", "gateway-b-2"}
    readings = [r for r in trace if r["record"] == "delivered" and r["dest"] in gateways and r["type"] == "inference_request"]
    verdicts = Counter((r["data"]["sensor"], r["data"]["window"]) for r in trace
                       if r["record"] == "sent" and r["type"] == "inference_result")
    assert verdicts and max(verdicts.values()) == 1, "a reading was inferred twice"
    assert len(verdicts) >= len(readings) - 10  # every reading, except those still in flight at the end
    # The shared subscription splits site B between its replicas; both take a share.
    forwarded = Counter(r["source"] for r in trace if r["record"] == "sent" and r["type"] == "mqtt_received")
    assert forwarded["gateway-b-1"] > 0 and forwarded["gateway-b-2"] > 0
    # The cloud aggregator: one alert per injected anomaly, for a window inside it.
    alerts = [r for r in trace if r["record"] == "delivered" and r["dest"] == "operator"]
    injected = [(node.id, anomaly) for node in scenario.nodes if isinstance(node, SensorSpec)
                for anomaly in node.anomalies]
    assert len(alerts) == len(injected) == 4
    for sensor, anomaly in injected:
        mine = [a for a in alerts if a["data"]["sensor"] == sensor and anomaly.at_us <= a["data"]["sampled_us"]
                < anomaly.at_us + anomaly.duration_us]
        assert len(mine) == 1, (sensor, anomaly, alerts)


def _trace_with(lines: list[str], index: int, record: dict[str, Any], path: Path) -> Path:
    path.write_text("\n".join(lines[:index] + [json.dumps(record, sort_keys=True, separators=(",", ":"))]
                              + lines[index:]) + "\n", encoding="utf-8")
    return path


@needs_mosquitto
def test_diff_names_a_message_from_outside_virtual_time_as_the_likely_source(tmp_path: Path) -> None:
    base = tmp_path / "base.jsonl"
    run(CROSS, runtime="local", trace_path=base, watchdog_s=60.0)
    lines = base.read_text(encoding="utf-8").splitlines()
    index = next(i for i, line in enumerate(lines) if '"mqtt_received"' in line)
    outsider = {"record": "sent", "time_us": json.loads(lines[index])["time_us"], "source": "gw-a", "seq": 0,
                "type": "mqtt_received", "data": {"topic": "plant/x/v", "payload": "hi", "origin": None, "external": True}}
    other = _trace_with(lines, index, outsider, tmp_path / "other.jsonl")
    out = io.StringIO()
    print_comparison(compare(base, other), out, label_a="run1", label_b="run2")
    assert "likely source: a message from an MQTT client that cosim does not drive" in out.getvalue()
    assert f"run2 at line {index + 1}" in out.getvalue()
    plain = io.StringIO()  # a divergence without any external message says nothing of the kind
    print_comparison(compare(base, _trace_with(lines, index, {**outsider, "data": {"v": 1}}, tmp_path / "x.jsonl")), plain)
    assert "likely source" not in plain.getvalue()


@pytest.mark.docker
def test_multi_site_is_deterministic_on_docker_and_equal_to_local(tmp_path: Path, service_images: dict[str, str]) -> None:
    out = io.StringIO()
    runs = gate(str(MULTI_SITE), runs=2, runtime="both", out_dir=tmp_path, out=out)
    assert [r.runtime for r in runs] == ["local", "docker", "local", "docker"]
    assert len({r.hash for r in runs}) == 1, out.getvalue()
    assert_same_simulation(runs[0].trace, runs[1].trace)  # local == Docker, record for record
    header = json.loads(runs[1].trace.read_text(encoding="utf-8").splitlines()[0])
    assert header["barrier_groups"] == {"mqtt-broker": ["cloud-aggregator", "gateway-a", "gateway-b-1", "gateway-b-2"]}
    assert cosim_resources("cosim.scenario=multi-site") == ([], [])
