"""`invoke bench` runs end to end and writes comparable JSON. Timings are reported, never asserted."""

from __future__ import annotations

import io
import json
from pathlib import Path

from cosim.bench import TARGETS, bench


def test_local_bench_reports_floors_costs_and_ratios(tmp_path: Path) -> None:
    out = io.StringIO()
    output = tmp_path / "bench.json"
    result = bench(steps=100, probes=100, docker=False, out=out, output=output, progress=lambda _: None)
    saved = json.loads(output.read_text(encoding="utf-8"))
    assert set(saved) >= {"settings", "floors_us", "per_node_step_us", "throughput_events_per_s", "ratios", "targets"}
    assert saved["targets"] == TARGETS
    assert saved["settings"]["steps"] == 100 and saved["settings"]["docker"] is False
    assert result.floors_us["pipe"] > 0 and result.per_node_step_us["local"] > 0
    assert result.ratios["local_vs_pipe_floor"] == result.per_node_step_us["local"] / result.floors_us["pipe"]
    assert result.throughput_events_per_s["coordinator_local"] > 0
    table = out.getvalue()
    assert "floor: bare echo, local pipe (round trip)" in table and "cosim node-step, local runtime" in table
    assert "targets: local_vs_pipe_floor:" in table and f"results: {output}" in table
    if result.mqtt_step_us:  # with a local mosquitto: one gateway and two on the same broker, same ticks
        assert set(result.mqtt_step_us) == {"local_1gw", "local_2gw"}
        assert result.throughput_events_per_s["mqtt_local_2gw"] > 0
        assert result.ratios["mqtt_local_2gw_vs_1gw_step"] == result.mqtt_step_us["local_2gw"] / result.mqtt_step_us["local_1gw"]
        assert "step, MQTT load through 2 gateway(s), local" in table
