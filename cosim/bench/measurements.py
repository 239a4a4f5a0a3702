"""The bench's rows: each runs workloads (cosim.bench.workloads) through ``cosim.run.run``, the same entry point as
`cosim up`, and writes what it measured into the BenchResult."""

from __future__ import annotations

import os
import statistics
from collections.abc import Callable
from functools import partial
from pathlib import Path

from cosim.bench.result import DEFAULT_RUNS, DENSE_PAIRS, PAIRS, REPEATS, BenchResult
from cosim.bench.stats import in_turn, paired_ratio
from cosim.bench.workloads import step_scenario, workload
from cosim.resources import data_path
from cosim.run import CompletedRun, run


def step_us(scenario: Path, runtime: str, directory: Path) -> float:
    """Mean wall time of one step of the step loop (us), stepping every quantum."""
    return run(scenario, runtime=runtime, trace_path=directory / f"{scenario.stem}-{runtime}.jsonl",
               advance="fixed").metrics.step_us


def _measure(result: BenchResult, key: str, scenario: Path, runtime: str, mode: str, directory: Path) -> dict[str, float]:
    summary = run(scenario, runtime=runtime, trace_path=directory / f"{scenario.stem}-{runtime}-{mode}.jsonl",
                  advance=mode)
    return _record(result, key, runtime, mode, summary)


def _record(result: BenchResult, key: str, runtime: str, mode: str, summary: CompletedRun) -> dict[str, float]:
    events = summary.result.counts["sent"]
    row = {"loop_s": summary.metrics.step_loop_s, "steps": summary.metrics.steps, "advances": summary.metrics.advances,
           "events": events, "us_per_event": summary.metrics.step_loop_s / events * 1e6 if events else 0.0,
           "wall_s": summary.metrics.wall_s}
    result.advance[f"{key}_{runtime}_{mode}"] = row
    return row


def advance_rows(result: BenchResult, directory: Path, steps: int, runtime: str, say: Callable[[str], None],
                  sparse_s: int) -> None:
    """Next-event advance against fixed steps: sparse, idle nodes (Docker), dense; within one run."""
    sparse = workload(directory, "bench-sparse", services=1, duration_us=sparse_s * 1_000_000, period_us=1_000_000)
    say(f"next-event: sparse 1 Hz sensor -> echo -> sink, {sparse_s} s virtual, fixed ({runtime})")
    _measure(result, "sparse", sparse, runtime, "fixed", directory)
    # A tenth of a second, so single runs swing with the machine: the best of REPEATS (the median beside it).
    say(f"next-event: the same, next-event, {REPEATS} runs ({runtime})")
    runs = [run(sparse, runtime=runtime, trace_path=directory / f"sparse-{runtime}-next-event.jsonl",
                advance="next-event") for _ in range(REPEATS)]
    row = _record(result, "sparse", runtime, "next-event", min(runs, key=lambda summary: summary.metrics.step_loop_s))
    row["loop_median_s"] = statistics.median(summary.metrics.step_loop_s for summary in runs)
    result.ratios[f"sparse_{runtime}_next_vs_fixed"] = (result.advance[f"sparse_{runtime}_next-event"]["loop_s"]
                                                        / result.advance[f"sparse_{runtime}_fixed"]["loop_s"])
    if runtime == "docker":
        say(f"next-event: 1 echo container, then 16 of which one receives a 100 Hz sensor, {PAIRS} pairs ({runtime})")
        _paired(result, "idle_16_vs_1", runtime, directory, [
            (f"idle{count}", workload(directory, f"bench-idle-{count}", services=count, duration_us=steps * 1000,
                                       period_us=10_000), "next-event") for count in (1, 16)])
    dense = workload(directory, "bench-dense", services=4, duration_us=steps * 1000, period_us=None, tick_us=1000)
    say(f"next-event: dense, 4 echo nodes ticking every quantum, fixed and next-event, {DENSE_PAIRS[runtime]} pairs "
        f"(alternating which goes first) ({runtime})")
    _paired(result, f"dense_{runtime}_next_vs_fixed", runtime, directory,
            [("dense", dense, "fixed"), ("dense", dense, "next-event")], DENSE_PAIRS[runtime])


def _paired(result: BenchResult, name: str, runtime: str, directory: Path, sides: list[tuple[str, Path, str]],
            pairs: int = PAIRS) -> None:
    """The second side's step loop against the first's, (workload key, scenario, advance mode) each, from ``pairs``
    pairs of runs taken one right after the other, the side that runs first alternating from pair to pair. The ratio
    ``name`` is the median of the pairs' ratios (the verdict), with its confidence interval; the fastest run of each
    side against each other is kept too (see the module docstring). Each side's row is its median run."""
    runs = in_turn(pairs, [
        partial(run, scenario, runtime=runtime, trace_path=directory / f"{key}-{runtime}-{mode}.jsonl", advance=mode)
        for key, scenario, mode in sides])
    for (key, _, mode), done in zip(sides, runs):
        _record(result, key, runtime, mode, sorted(done, key=lambda c: c.metrics.step_loop_s)[len(done) // 2])
    first, second = ([summary.metrics.step_loop_s for summary in done] for done in runs)
    result.ratios[name], result.ratio_intervals[name], result.ratio_fastest[name] = paired_ratio(first, second)


def default_rtf(result: BenchResult, directory: Path) -> None:
    """The default scenario's speed-ups on Docker in each mode, the modes in turn: of the step loop (the best of
    DEFAULT_RUNS, as the throughput rows, and the median) and of the whole run (start and teardown included, of the
    best run)."""
    modes = ("fixed", "next-event")
    runs = in_turn(DEFAULT_RUNS, [
        partial(run, data_path("scenarios", "default.yaml"), runtime="docker", advance=mode,
                trace_path=directory / f"default-{mode}.jsonl") for mode in modes])

    def step_loop_factor(summary: CompletedRun) -> float:
        return summary.metrics.speedup_step_loop or 0.0

    for mode, done in zip(modes, runs):
        best = max(done, key=step_loop_factor)
        result.default_rtf[f"docker_{mode}"] = step_loop_factor(best)
        result.default_rtf[f"docker_{mode}_median"] = statistics.median(map(step_loop_factor, done))
        result.default_rtf[f"docker_{mode}_wall"] = best.metrics.speedup_whole_run or 0.0


def _throughput(directory: Path, name: str, steps: int, runtime: str, *, through_gateway: bool,
                gateways: int = 1, lookahead: bool = True) -> tuple[float, float]:
    """Events per wall second routed through the coordinator, and the mean step time (us): 50 ticks per step
    from one echo node to a sink (and, through the gateways, each tick once more per gateway as mqtt_received)."""
    scenario = step_scenario(directory, name, services=1, steps=steps, tick_us=20, through_gateway=through_gateway,
                         gateways=gateways)
    summary = run(scenario, runtime=runtime, trace_path=directory / f"{name}-{runtime}.jsonl", advance="fixed",
                  lookahead=lookahead)
    return summary.result.counts["sent"] / summary.metrics.step_loop_s, summary.metrics.step_us


def throughput_rate(directory: Path, name: str, steps: int, runtime: str, *, through_gateway: bool,
                     lookahead: bool = True) -> float:
    """Events per wall second routed through the coordinator (see _throughput)."""
    return _throughput(directory, name, steps, runtime, through_gateway=through_gateway, lookahead=lookahead)[0]


def mqtt_rows(result: BenchResult, directory: Path, steps: int, runtime: str, say: Callable[[str], None]) -> None:
    """One gateway, then two on the same broker, with the same ticks: events/s and step time of each."""
    for gateways in (1, 2):
        label = f"{gateways} gateway{'s' if gateways > 1 else ''}"
        say(f"throughput: sensor -> MQTT ({label}) -> broker -> sink ({runtime})")
        rate, step = _throughput(directory, f"bench-mqtt-{gateways}", steps, runtime, through_gateway=True,
                                 gateways=gateways)
        result.throughput_events_per_s[f"mqtt_{runtime}_{gateways}gw"] = rate
        result.mqtt_step_us[f"{runtime}_{gateways}gw"] = step
    result.ratios[f"mqtt_{runtime}_2gw_vs_1gw_step"] = result.mqtt_step_us[f"{runtime}_2gw"] / result.mqtt_step_us[f"{runtime}_1gw"]


def swarm_rows(result: BenchResult, directory: Path, steps: int, say: Callable[[str], None]) -> None:
    """Step time on a local Swarm of one node (one echo) and of three (three echoes, one per node)."""
    from cosim.runtimes.swarm import CONTEXT_ENV, cluster_down, cluster_up

    for nodes in (1, 3):
        say(f"cosim: {nodes} echo container(s) on a local {nodes}-node Swarm (cluster up, run, cluster down)")
        made = cluster_up(nodes, f"bench{os.getpid() % 100000}-{nodes}")
        previous = os.environ.get(CONTEXT_ENV)
        try:
            os.environ[CONTEXT_ENV] = made.manager.name
            scenario = step_scenario(directory, f"bench-swarm-{nodes}", services=nodes, steps=steps, one_per_site=nodes > 1)
            result.swarm_step_us[f"{nodes}_node{'s' if nodes > 1 else ''}"] = step_us(scenario, "swarm", directory)
        finally:
            if previous is None:
                os.environ.pop(CONTEXT_ENV, None)
            else:
                os.environ[CONTEXT_ENV] = previous
            cluster_down(made.name)


def local_mosquitto() -> bool:
    """Whether the local runtime can start the MQTT broker (its command found as the runtime finds it)."""
    from cosim.runtimes.local import find_command

    return find_command("mosquitto") is not None
