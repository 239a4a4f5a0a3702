"""The bench's table: one row per measurement (value, ratio, target), then a line of verdicts against the targets."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import TextIO

from cosim.bench.costs import table_rows as cost_rows
from cosim.bench.result import (
    DEFAULT_RTF_TARGET,
    REPEATS,
    SPARSE_LOOP_TARGET_S,
    TARGETS,
    THROUGHPUT_TARGET,
    BenchResult,
)
from cosim.stats import CONFIDENCE


def print_table(result: BenchResult, out: TextIO) -> None:
    rows: list[Sequence[str]] = [("measurement", "value", "ratio", "target")]
    if "pipe" in result.floors_us:
        rows.append(("floor: bare echo, local pipe (round trip)", f"{result.floors_us['pipe']:.0f} us", "1.00", ""))
    if "container" in result.floors_us:
        rows.append(("floor: bare echo, container via engine attach", f"{result.floors_us['container']:.0f} us", "1.00", ""))
        rows.append(("floor: 8 bare echo containers, concurrently", f"{result.floors_us['container_x8']:.0f} us",
                     f"{result.ratios['floor_scaling_8_vs_1']:.2f}x one container", ""))
        rows.append(("(reference: bare echo via a `docker attach` process)",
                     f"{result.floors_us['container_docker_cli']:.0f} us", "", ""))
    if "local" in result.per_node_step_us:
        rows.append(("cosim node-step, local runtime", f"{result.per_node_step_us['local']:.0f} us",
                     f"{result.ratios['local_vs_pipe_floor']:.2f}x pipe floor", f"<= {TARGETS['local_vs_pipe_floor']}x"))
    if "docker" in result.per_node_step_us:
        rows.append(("cosim node-step, docker runtime", f"{result.per_node_step_us['docker']:.0f} us",
                     f"{result.ratios['docker_vs_container_floor']:.2f}x container floor",
                     f"<= {TARGETS['docker_vs_container_floor']}x"))
        for count, step in result.scaling_step_us.items():
            scale = step / result.scaling_step_us["1"]
            rows.append((f"step with {count} container node(s)", f"{step:.0f} us", f"{scale:.2f}x one node",
                         f"<= {TARGETS['scaling_8_vs_1']}x" if count == "8" else ""))
        rows.append(("step with 8 container nodes vs 8-container floor", "",
                     f"{result.ratios['docker_8_vs_container_floor_x8']:.2f}x", ""))
    for name, step in result.swarm_step_us.items():
        count = name.split("_")[0]
        rows.append((f"step on a local Swarm of {count} node(s), {count} echo(s)", f"{step:.0f} us",
                     f"{result.ratios[f'swarm_{name}_vs_container_floor']:.2f}x container floor", ""))
    for name, rate in result.throughput_events_per_s.items():
        median = result.throughput_median_events_per_s.get(name)
        value = f"{rate:,.0f} events/s" + (f" (best; median {median:,.0f})" if median is not None else "")
        rows.append((f"throughput: {name.replace('_', ' ')}", value, "",
                     f">= {THROUGHPUT_TARGET:,}" if name == "coordinator_local" else ""))
    for name, step in result.mqtt_step_us.items():
        runtime, gateways = name.split("_")
        ratio = f"{result.ratios[f'mqtt_{runtime}_2gw_vs_1gw_step']:.2f}x one gateway" if gateways == "2gw" else ""
        rows.append((f"step, MQTT load through {gateways[0]} gateway(s), {runtime}", f"{step:.0f} us", ratio, ""))
    rows += _advance_table(result)
    whole = result.settings.get("whole_process_s")
    if isinstance(whole, dict):
        rows.append(("sparse, local, whole process: cosim / mosaik 3.6 (median of pairs)",
                     f"{_median(whole['cosim']):.3f} s / {_median(whole['mosaik']):.3f} s",
                     _paired_text(result, "sparse_local_whole_vs_mosaik", "mosaik"),
                     f"<= {TARGETS['sparse_local_whole_vs_mosaik']}x"))
    rows += cost_rows(result)
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for index, row in enumerate(rows):
        out.write("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() + "\n")
        if index == 0:
            out.write("  ".join("-" * width for width in widths) + "\n")
    verdicts = [f"{name}: {'met' if result.ratios[name] <= target else 'NOT met'} "
                f"({result.ratios[name]:.3g} vs {target:.3g}"
                + (f"; {_interval_text(result, name)})" if name in result.ratio_intervals else ")")
                for name, target in TARGETS.items() if name in result.ratios]
    sparse = result.advance.get("sparse_local_next-event")
    if sparse is not None:
        verdicts.append(f"sparse local step loop: {'met' if sparse['loop_s'] <= SPARSE_LOOP_TARGET_S else 'NOT met'} "
                        f"({sparse['loop_s']:.3f} s, best of {REPEATS}, vs {SPARSE_LOOP_TARGET_S} s)")
    coordinator_rate = result.throughput_events_per_s.get("coordinator_local")
    if coordinator_rate is not None:
        verdicts.append(f"coordinator throughput (local): {'met' if coordinator_rate >= THROUGHPUT_TARGET else 'NOT met'} "
                        f"({coordinator_rate:,.0f} vs >= {THROUGHPUT_TARGET:,} events/s)")
    if "docker_next-event" in result.default_rtf:
        rtf = result.default_rtf["docker_next-event"]
        verdicts.append(f"default scenario on Docker: {'met' if rtf >= DEFAULT_RTF_TARGET else 'NOT met'} "
                        f"(speed-up of the step loop {rtf:.1f}x real time vs >= {DEFAULT_RTF_TARGET:g}x)")
    if "segment_worker_start_s" in result.settings:
        verdicts.append(f"ns-3 segment worker start-up: {result.settings['segment_worker_start_s']:.2f} s (no target)")
    out.write("targets: " + "; ".join(verdicts) + "\n")


def _median(values: Sequence[float]) -> float:
    return statistics.median(values)


def _interval_text(result: BenchResult, name: str, digits: str = ".3g") -> str:
    """A paired ratio's confidence interval, as "95% CI low-high"."""
    low, high = result.ratio_intervals[name]
    return f"{CONFIDENCE:.0%} CI {low:{digits}}-{high:{digits}}"


def _paired_text(result: BenchResult, name: str, against: str) -> str:
    """A paired ratio for the table: the pairs' median, its interval, and the fastest runs' ratio."""
    return (f"{result.ratios[name]:.3f}x {against} (pairs' median, {_interval_text(result, name, '.3f')}; "
            f"fastest runs {result.ratio_fastest[name]:.3f}x)")


def _advance_table(result: BenchResult) -> list[Sequence[str]]:
    """The next-event rows: each workload in both modes, with the ratio next-event / fixed."""
    rows: list[Sequence[str]] = []
    for key, row in result.advance.items():
        workload, runtime, mode = key.split("_")
        fixed = result.advance.get(f"{workload}_{runtime}_fixed")
        ratio = f"{row['loop_s'] / fixed['loop_s']:.4f}x fixed" if mode == "next-event" and fixed else ""
        if workload == "dense" and ratio:  # the paired ratio, not the ratio of the rows (each mode's median run)
            ratio = _paired_text(result, f"dense_{runtime}_next_vs_fixed", "fixed")
        target = {"sparse": "<= 0.02x", "dense": "<= 1.05x"}.get(workload, "") if ratio else ""
        if workload == "idle16":
            ratio = _paired_text(result, "idle_16_vs_1", "one container")
            target = f"<= {TARGETS['idle_16_vs_1']}x"
        median = f" (best of {REPEATS}; median {row['loop_median_s']:.3f} s)" if "loop_median_s" in row else ""
        rows.append((f"{workload}, {runtime}, {mode}: step loop ({int(row['steps'])} steps, "
                     f"{int(row['advances'])} ADVANCEs)",
                     f"{row['loop_s']:.3f} s{median}, {row['us_per_event']:.0f} us/event", ratio, target))
    for key, rtf in result.default_rtf.items():
        if not key.endswith(("_wall", "_median")):
            loop_median = result.default_rtf.get(key + "_median")
            rows.append((f"default scenario, {key.replace('_', ', ')}: speed-up (step loop / whole run)",
                         f"{rtf:.1f}x / {result.default_rtf[key + '_wall']:.1f}x"
                         + (f" (best; step-loop median {loop_median:.1f}x)" if loop_median is not None else ""), "",
                         f">= {DEFAULT_RTF_TARGET:g}x" if key.endswith("next-event") else ""))
    return rows
