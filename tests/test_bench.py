"""`invoke bench` runs end to end and writes comparable JSON. Timings are reported, never asserted."""

from __future__ import annotations

import io
import json
from pathlib import Path

from cosim.bench import TARGETS, bench
from cosim.stats import median_interval


def test_local_bench_reports_floors_costs_and_ratios(tmp_path: Path) -> None:
    out = io.StringIO()
    output = tmp_path / "bench.json"
    result = bench(steps=100, probes=100, docker=False, out=out, output=output, progress=lambda _: None, sparse_s=5,
                   mosaik=False)  # (the mosaik peer needs PyPI: tests/test_bench.py::test_the_mosaik_world_runs)
    saved = json.loads(output.read_text(encoding="utf-8"))
    assert set(saved) >= {"settings", "floors_us", "per_node_step_us", "throughput_events_per_s", "ratios", "targets",
                          "advance"}
    assert saved["targets"] == TARGETS
    assert saved["settings"]["steps"] == 100 and saved["settings"]["docker"] is False
    assert result.floors_us["pipe"] > 0 and result.per_node_step_us["local"] > 0
    assert result.ratios["local_vs_pipe_floor"] == result.per_node_step_us["local"] / result.floors_us["pipe"]
    assert result.throughput_events_per_s["coordinator_local"] > 0
    assert result.throughput_events_per_s["coordinator_local_lockstep"] > 0  # the same, without lookahead
    table = out.getvalue()
    assert "floor: bare echo, local pipe (round trip)" in table and "cosim node-step, local runtime" in table
    assert "targets: local_vs_pipe_floor:" in table and f"results: {output}" in table
    if result.mqtt_step_us:  # with a local mosquitto: one gateway and two on the same broker, same ticks
        assert set(result.mqtt_step_us) == {"local_1gw", "local_2gw"}
        assert result.throughput_events_per_s["mqtt_local_2gw"] > 0
        assert result.ratios["mqtt_local_2gw_vs_1gw_step"] == result.mqtt_step_us["local_2gw"] / result.mqtt_step_us["local_1gw"]
        assert "step, MQTT load through 2 gateway(s), local" in table
    # Next-event advance: the sparse and the dense workloads in both modes, compared within the run.
    assert set(result.advance) == {"sparse_local_fixed", "sparse_local_next-event", "dense_local_fixed",
                                   "dense_local_next-event"}
    sparse_fixed, sparse_next = result.advance["sparse_local_fixed"], result.advance["sparse_local_next-event"]
    assert sparse_fixed["steps"] == 5000 and sparse_next["steps"] < 5000 / 50
    assert sparse_next["events"] == sparse_fixed["events"] > 0 and sparse_next["advances"] < sparse_fixed["advances"]
    assert result.advance["dense_local_next-event"]["steps"] == result.advance["dense_local_fixed"]["steps"] == 100
    assert result.ratios["sparse_local_next_vs_fixed"] == sparse_next["loop_s"] / sparse_fixed["loop_s"]
    # The next-event sparse loop is short: the best of its runs (the verdict), the median beside it.
    assert 0 < sparse_next["loop_s"] <= sparse_next["loop_median_s"] and "loop_median_s" not in sparse_fixed
    assert f"{sparse_next['loop_s']:.3f} s (best of 5; median {sparse_next['loop_median_s']:.3f} s)" in table
    assert f"sparse local step loop: {'met' if sparse_next['loop_s'] <= 0.15 else 'NOT met'} (" in table
    # The dense ratio: the median of the pairs' ratios (the verdict) inside its confidence interval, and the fastest
    # runs of each mode beside it.
    dense, fastest = result.ratios["dense_local_next_vs_fixed"], result.ratio_fastest["dense_local_next_vs_fixed"]
    low, high = result.ratio_intervals["dense_local_next_vs_fixed"]
    assert 0 < low <= dense <= high and fastest > 0
    assert (f"{dense:.3f}x fixed (pairs' median, 95% CI {low:.3f}-{high:.3f}; fastest runs {fastest:.3f}x)"
            in table)
    assert f"dense_local_next_vs_fixed: {'met' if dense <= 1.05 else 'NOT met'} ({dense:.3g} vs 1.05; 95% CI" in table
    assert saved["ratio_intervals"]["dense_local_next_vs_fixed"] == [low, high]
    assert "sparse, local, next-event: step loop" in table and "sparse local step loop:" in table
    assert "coordinator throughput (local):" in table
    if "segment_sparse_vs_links" in result.ratios:  # with ns-3 installed: a sparse run through a segment vs links
        assert result.ratios["segment_sparse_vs_links"] > 0 and result.settings["segment_worker_start_s"] > 0
        assert "segment_sparse_vs_links: " in table and "ns-3 segment worker start-up: " in table


def test_median_interval_is_the_binomial_order_statistics() -> None:
    """The interval for a median: the ranks a Binomial(n, 1/2) count leaves at most 2.5% outside on each side."""
    assert median_interval([float(v) for v in range(20, 0, -1)]) == (6.0, 15.0)  # any order in, ranks out
    assert median_interval([float(v) for v in range(1, 31)]) == (10.0, 21.0)
    assert median_interval([float(v) for v in range(1, 11)]) == (2.0, 9.0)
    assert median_interval([1.0, 2.0, 3.0]) == (1.0, 3.0)  # too few values for 95%: the whole range
    assert median_interval([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], confidence=0.5) == (2.0, 5.0)


def test_the_mosaik_peer_runs_the_sparse_shape_as_a_whole_process(tmp_path: Path) -> None:
    """The whole-process row: mosaik 3.6 from PyPI in a venv of its own (skipped offline), its world delivering
    every reading, and the pairs' ratio against `cosim up --runtime local`."""
    import subprocess

    import pytest

    from cosim.bench.peers import MOSAIK_WORLD, mosaik_python, mosaik_rows
    from cosim.bench.result import BenchResult

    python = mosaik_python()
    if isinstance(python, str):
        pytest.skip(python)
    world = subprocess.run([str(python), str(MOSAIK_WORLD), "7"], capture_output=True, text=True, timeout=120)
    assert world.returncode == 0 and world.stdout.split() == ["7"], world.stderr  # one reading a second, all echoed
    result = BenchResult(settings={})
    mosaik_rows(result, tmp_path, lambda _: None, 5)
    whole = result.settings["whole_process_s"]
    assert len(whole["cosim"]) == len(whole["mosaik"]) == 5 and min(whole["cosim"] + whole["mosaik"]) > 0
    low, high = result.ratio_intervals["sparse_local_whole_vs_mosaik"]
    assert low <= result.ratios["sparse_local_whole_vs_mosaik"] <= high
