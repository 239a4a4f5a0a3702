"""`invoke bench`: cosim's costs as ratios against floors measured in the same run, on the same machine.

1. Floors: a bare Python echo (read a line, write it back; no cosim code) over a local pipe, and in a
   container over the same attach path cosim uses (the engine's attach endpoint on its unix socket), one
   container and eight at once; and, for reference, through a `docker attach` process.
2. cosim's per node-step cost (one echo service, empty windows) with the local and the Docker runtime.
3. Scaling: step time with 1, 4 and 8 container nodes advancing concurrently.
4. Throughput: events per second routed through the coordinator (5 runs: the best and the median; its source runs a
   window ahead, as nothing sends to it, and again with every service in lockstep), and through the MQTT gateway
   and broker;
   and the same MQTT load through two gateways on one broker (each sees every message: fan-out, barriers of both),
   with its step time against the single gateway's, measured in the same run.
5. Swarm (as root): step time on a local one-node Swarm (one echo service) and on a three-node one (three echo
   services, one per node), against the container attach floor; each cluster is started and removed here.
6. Next-event advance: a sparse workload (a 1 Hz sensor -> echo -> sink, 600 s virtual) with fixed steps (one run:
   a minute or more) and with next-event advance (5 runs: the best and the median); idle nodes (16 echo containers
   of which one gets traffic, against one, 10 pairs of runs); a dense workload (every node busy every quantum) in
   both modes, 30 pairs of runs locally and 20 on Docker; the default scenario's speed-ups on Docker (3 runs
   in each mode: the step loop's best and median, and the whole run's).
7. Fixed costs around the step loop (cosim.bench.costs): the default scenario's whole `cosim up` on Docker against
   its step loop plus compose up and down of the same file; 100 containers' bring-up and teardown against compose
   up and down of the same file. `--rows up,containers-100` runs these alone.
8. Network segments (with ns-3 installed): a sparse run through an ns-3 segment against plain links, and the ns-3
   worker's start-up (cosim.bench.segments).
9. The sparse shape as a whole process (interpreter start to exit), `cosim up --runtime local` against mosaik 3.6
   (installed on demand into a venv of its own), 5 pairs (``peers``).

Repeated runs: on a small shared machine a run's speed depends on where the kernel places its processes and on
what else the host runs, and that noise mostly slows a run down. So a measurement of one thing (the throughput
rows, the sparse workload's next-event loop, the default scenario) gives the fastest of its runs (the closest to
what cosim itself costs, as timeit reports) beside the median. Repeated runs are taken in turn with their
counterpart (lookahead and lockstep, fixed and next-event, 1 and 16 containers), which goes first alternating
(``stats.in_turn``: a bias of a round's later run, a few per cent here, cancels). A ratio of two workloads or modes is
the median of the pairs' ratios (the verdict), with a distribution-free 95% confidence interval for it: a pair's two
runs see the same drift, and the median ignores the pair whose one run the kernel placed unusually well or badly.
The fastest runs of each side are printed beside it, but they are no verdict: on two cores a run now and then finds
a placement 15% to 30% faster than the rest, and min-against-min then measures which side got that run (1.009x to
1.435x for the dense comparison in four runs of identical code, whose pairs' medians read 1.023x to 1.036x).

Rows 1-5 step every quantum (``advance: fixed``): they measure the cost of a step.

Wall-clock numbers only; nothing here enters a trace. Results are printed as a table and written as JSON.

The package, one module per job: ``result`` (targets, repeat counts, BenchResult), ``floors`` (the bare echoes),
``workloads`` (the scenarios), ``measurements`` (the rows: runs through ``cosim.run.run``), ``stats`` (runs in
turn, paired ratios; intervals from cosim.stats) and ``table`` (the printed table and verdicts); ``bench`` below
runs them in order.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import TextIO

from cosim import __version__
from cosim.bench.costs import many_rows, up_rows
from cosim.bench.floors import container_floor, pipe_floor
from cosim.bench.measurements import (
    advance_rows,
    default_rtf,
    local_mosquitto,
    mqtt_rows,
    step_us,
    swarm_rows,
    throughput_rate,
)
from cosim.bench.peers import mosaik_rows
from cosim.bench.result import DEFAULT_RUNS, REPEATS, SPARSE_S, TARGETS, BenchResult
from cosim.bench.segments import segment_rows
from cosim.bench.stats import in_turn
from cosim.bench.sweeps import sweep_rows
from cosim.bench.table import print_table
from cosim.bench.workloads import step_scenario
from cosim.service_sources import service_image

__all__ = ["TARGETS", "BenchResult", "bench", "print_table"]


# Rows that `cosim bench --rows NAME[,NAME]` runs alone (the whole bench runs them all): name -> the row.
SELECTABLE: dict[str, Callable[[BenchResult, Path, Callable[[str], None]], None]] = {
    "up": up_rows, "containers-100": many_rows,
    "mosaik": lambda result, directory, say: mosaik_rows(result, directory, say, SPARSE_S)}


def bench(*, steps: int = 2000, probes: int = 2000, docker: bool = True, swarm: bool = True, out: TextIO = sys.stdout,
          output: Path | None = None, progress: Callable[[str], None] | None = None,
          sparse_s: int = SPARSE_S, rows: Sequence[str] = (), mosaik: bool = True) -> BenchResult:
    say = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    result = BenchResult(settings={
        "cosim": __version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "steps": steps, "probes": probes, "docker": docker, "sparse_s": sparse_s,
        **({"rows": list(rows)} if rows else {}),
    })
    with tempfile.TemporaryDirectory(prefix="cosim-bench-") as temporary:
        directory = Path(temporary)
        if rows:  # only these rows (cosim bench --rows): the rest of the bench is not run
            for name in rows:
                SELECTABLE[name](result, directory, say)
            _finish(result, out, output)
            return result
        say("floor: bare echo over a local pipe")
        result.floors_us["pipe"] = pipe_floor(probes)
        say("cosim: one echo node, local runtime")
        result.per_node_step_us["local"] = step_us(step_scenario(directory, "bench-one", services=1, steps=steps), "local", directory)
        say(f"throughput: echo -> sink through the coordinator (local), with and without lookahead in turn, "
            f"{REPEATS} runs each")
        rates = in_turn(REPEATS, [
            partial(throughput_rate, directory, "bench-events", steps, "local", through_gateway=False,
                    lookahead=lookahead) for lookahead in (True, False)])
        for name, measured in zip(("coordinator_local", "coordinator_local_lockstep"), rates):
            result.throughput_events_per_s[name] = max(measured)
            result.throughput_median_events_per_s[name] = statistics.median(measured)
        if local_mosquitto():
            mqtt_rows(result, directory, steps, "local", say)
        advance_rows(result, directory, steps, "local", say, sparse_s)
        if mosaik:
            mosaik_rows(result, directory, say, sparse_s)
        if docker:
            from cosim.loading import load
            from cosim.runtimes.docker import prepare_images

            prepare_images(load(step_scenario(directory, "bench-images", services=1, steps=1, tick_us=20,
                                              through_gateway=True)))
            say("floor: bare echo in a container over the engine's attach endpoint (cosim's path)")
            result.floors_us["container"] = container_floor(probes, service_image("echo"))
            say("floor: 8 bare echo containers probed concurrently")
            result.floors_us["container_x8"] = container_floor(probes // 4, service_image("echo"), containers=8)
            say("reference: bare echo in a container over a `docker attach` process")
            result.floors_us["container_docker_cli"] = container_floor(probes, service_image("echo"), attach="cli")
            for count in (1, 4, 8):
                say(f"cosim: {count} echo container(s), docker runtime")
                step = step_us(step_scenario(directory, f"bench-scale-{count}", services=count, steps=steps), "docker", directory)
                result.scaling_step_us[str(count)] = step
            result.per_node_step_us["docker"] = result.scaling_step_us["1"]
            mqtt_rows(result, directory, steps, "docker", say)
            advance_rows(result, directory, steps, "docker", say, sparse_s)
            say(f"the default scenario, fixed and next-event in turn, {DEFAULT_RUNS} runs each (docker)")
            default_rtf(result, directory)
            if swarm and os.geteuid() == 0:
                swarm_rows(result, directory, steps, say)
            elif swarm:
                say("swarm: skipped (the local test clusters need root)")
            up_rows(result, directory, say)  # fixed costs: the whole `up` against compose up/down; 100 containers
            many_rows(result, directory, say)
        sweep_rows(result, directory, say, docker=docker)  # sweeps: --jobs 4 and --fork-at against sequential runs
        segment_rows(result, directory, say, sparse_s=sparse_s)  # ns-3 segments vs plain links; worker start-up
    result.ratios["local_vs_pipe_floor"] = result.per_node_step_us["local"] / result.floors_us["pipe"]
    if docker:
        result.ratios["docker_vs_container_floor"] = result.per_node_step_us["docker"] / result.floors_us["container"]
        result.ratios["scaling_8_vs_1"] = result.scaling_step_us["8"] / result.scaling_step_us["1"]
        # The machine's own scaling, for reading the one above: 8 bare containers against one.
        result.ratios["floor_scaling_8_vs_1"] = result.floors_us["container_x8"] / result.floors_us["container"]
        result.ratios["docker_8_vs_container_floor_x8"] = result.scaling_step_us["8"] / result.floors_us["container_x8"]
        for name, step in result.swarm_step_us.items():
            result.ratios[f"swarm_{name}_vs_container_floor"] = step / result.floors_us["container"]
    _finish(result, out, output)
    return result


def _finish(result: BenchResult, out: TextIO, output: Path | None) -> None:
    """The table, and the JSON results when ``output`` is given."""
    print_table(result, out)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result.__dict__ | {"targets": TARGETS}, indent=2, sort_keys=True) + "\n",
                          encoding="utf-8")
        out.write(f"results: {output}\n")
