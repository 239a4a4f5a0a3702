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

Repeated runs: on a small shared machine a run's speed depends on where the kernel places its processes and on
what else the host runs, and that noise mostly slows a run down. So a measurement of one thing (the throughput
rows, the sparse workload's next-event loop, the default scenario) gives the fastest of its runs (the closest to
what cosim itself costs, as timeit reports) beside the median. Repeated runs are taken in turn with their
counterpart (lookahead and lockstep, fixed and next-event, 1 and 16 containers), which goes first alternating
(``_in_turn``: a bias of a round's later run, a few per cent here, cancels). A ratio of two workloads or modes is
the median of the pairs' ratios (the verdict), with a distribution-free 95% confidence interval for it: a pair's two
runs see the same drift, and the median ignores the pair whose one run the kernel placed unusually well or badly.
The fastest runs of each side are printed beside it, but they are no verdict: on two cores a run now and then finds
a placement 15% to 30% faster than the rest, and min-against-min then measures which side got that run (1.009x to
1.435x for the dense comparison in four runs of identical code, whose pairs' medians read 1.023x to 1.036x).

Rows 1-5 step every quantum (``advance: fixed``): they measure the cost of a step.

Wall-clock numbers only; nothing here enters a trace. Results are printed as a table and written as JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from math import comb
from pathlib import Path
from typing import Any, TextIO, TypeVar

from cosim import __version__, sweep_bench
from cosim.resources import data_path
from cosim.run import CompletedRun, run
from cosim.service_sources import service_image

CONTAINERS = data_path("containers")
BARE_ECHO = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line)\n    sys.stdout.flush()\n"
PROBE_LINE = (json.dumps({"type": "ADVANCE", "time_us": 123456000, "events": []}, separators=(",", ":")) + "\n").encode()

TARGETS = {"local_vs_pipe_floor": 1.5, "docker_vs_container_floor": 1.2, "scaling_8_vs_1": 3.0,
           # next-event advance: sparse wall time against fixed steps (lower is better), idle and dense ratios
           "sparse_local_next_vs_fixed": 1 / 50, "sparse_docker_next_vs_fixed": 1 / 50,
           "idle_16_vs_1": 1.5, "dense_local_next_vs_fixed": 1.05, "dense_docker_next_vs_fixed": 1.05,
           **sweep_bench.TARGETS}
SPARSE_S = 600  # virtual seconds of the sparse workload
SPARSE_LOOP_TARGET_S = 0.15  # its next-event step loop, local runtime (mosaik 3.6: 0.17 s for the same shape)
DEFAULT_RTF_TARGET = 15.0  # the default scenario on Docker, next-event
THROUGHPUT_TARGET = 150_000  # events/s routed through the coordinator, local runtime
REPEATS = 5  # runs of each throughput measurement
# Pairs of runs behind a ratio of two measurements (idle: 1 and 16 containers; dense: fixed and next-event, whose
# difference is a few per cent against single runs that swing by 20%: more pairs, and more again where a run is
# short). Even: half the pairs run one side first, half the other, so that a bias of the second run of a pair cancels.
PAIRS = 10
DENSE_PAIRS = {"local": 30, "docker": 20}
CONFIDENCE = 0.95  # of the interval printed with a paired ratio
DEFAULT_RUNS = 3  # runs of the default scenario on Docker in each advance mode, taken in turn

Measured = TypeVar("Measured")


@dataclass
class BenchResult:
    settings: dict[str, Any]
    floors_us: dict[str, float] = field(default_factory=dict)
    per_node_step_us: dict[str, float] = field(default_factory=dict)
    scaling_step_us: dict[str, float] = field(default_factory=dict)
    throughput_events_per_s: dict[str, float] = field(default_factory=dict)  # the best of REPEATS where repeated
    throughput_median_events_per_s: dict[str, float] = field(default_factory=dict)  # and their median
    mqtt_step_us: dict[str, float] = field(default_factory=dict)  # "<runtime>_<n>_gateway(s)" -> step time
    swarm_step_us: dict[str, float] = field(default_factory=dict)  # "<n>_node(s)" -> step time
    # next-event advance: "<workload>_<runtime>_<mode>" -> {"loop_s", "steps", "advances", "events", "us_per_event"}
    advance: dict[str, dict[str, float]] = field(default_factory=dict)
    # the default scenario's speed-ups (virtual s per wall s): "<runtime>_<mode>" -> of the step loop (the best run),
    # "..._median" -> its median, "..._wall" -> of the whole run (the best run)
    default_rtf: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    # a paired ratio's CONFIDENCE interval, and the fastest run of each side against each other: name -> value
    ratio_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    ratio_fastest: dict[str, float] = field(default_factory=dict)


class _Echo:
    """One bare echo reached over a byte stream: a pipe to a process, or an engine attach socket (framed)."""

    def __init__(self, write: Callable[[bytes], object], read: Callable[[], bytes]) -> None:
        self.write, self.read = write, read


def _pipe_echo(process: subprocess.Popen[bytes]) -> _Echo:
    assert process.stdin is not None and process.stdout is not None
    stdin_fd, stdout_fd = process.stdin.fileno(), process.stdout.fileno()
    return _Echo(lambda data: os.write(stdin_fd, data), lambda: os.read(stdout_fd, 65536))


def _api_echo(container_id: str, socket_path: str) -> tuple[_Echo, Callable[[], None]]:
    from cosim.runtimes.docker.attach import FrameReader, open_attach

    sock, rest = open_attach(socket_path, container_id)
    reader = FrameReader(lambda payload: None)
    reader.feed(rest)

    def read() -> bytes:
        while not reader.stdout:
            chunk = sock.recv(65536)
            if not chunk:
                return b""
            reader.feed(chunk)
        data = bytes(reader.stdout)
        reader.stdout.clear()
        return data

    return _Echo(sock.sendall, read), sock.close


def _round_trips(echoes: Sequence[_Echo], count: int) -> float:
    """Median time (us) of ``count`` rounds: one probe line to every echo, then every echo read back (they work
    concurrently, as nodes do in a step), after a warm-up of count // 10 rounds."""
    samples = []
    for index in range(count + count // 10):
        started = time.perf_counter()
        for echo in echoes:
            echo.write(PROBE_LINE)
        for echo in echoes:
            received = b""
            while not received.endswith(b"\n"):
                chunk = echo.read()
                if not chunk:
                    raise RuntimeError("echo closed its stdout")
                received += chunk
        if index >= count // 10:
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def pipe_floor(count: int) -> float:
    process = subprocess.Popen([sys.executable, "-u", "-c", BARE_ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        return _round_trips([_pipe_echo(process)], count)
    finally:
        process.kill()
        process.wait()


def container_floor(count: int, image: str, containers: int = 1, *, attach: str = "api") -> float:
    """The same bare echo as the main process of ``containers`` containers, all probed concurrently, reached
    through the engine's attach endpoint (``api``, the path cosim uses) or a `docker attach` process (``cli``)."""
    from python_on_whales import DockerException, docker

    from cosim.runtimes.docker.attach import engine_socket
    from cosim.runtimes.docker.engine import docker_command

    socket_path = engine_socket() if attach == "api" else None
    ids: list[str] = []
    cleanups: list[Callable[[], object]] = []
    echoes: list[_Echo] = []
    try:
        for _ in range(containers):
            ids.append(docker.run(image, ["-u", "-c", BARE_ECHO], detach=True, interactive=True, init=True, remove=True,
                                  labels={"cosim.project": "cosim", "cosim.run": "bench"}, networks=["none"],
                                  entrypoint="python3").id)
            if socket_path is not None:
                echo, close = _api_echo(ids[-1], socket_path)
                echoes.append(echo)
                cleanups.append(close)
            else:
                process = subprocess.Popen(docker_command("attach", "--sig-proxy=false", ids[-1]),
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                echoes.append(_pipe_echo(process))
                cleanups += [process.kill, process.wait]
        return _round_trips(echoes, count)
    finally:
        for cleanup in cleanups:
            cleanup()
        if ids:
            with contextlib.suppress(DockerException):  # already gone (--rm): nothing to remove
                docker.container.remove(ids, force=True)


def _scenario(directory: Path, name: str, *, services: int, steps: int, quantum_us: int = 1000,
              tick_us: int | None = None, through_gateway: bool = False, gateways: int = 1,
              one_per_site: bool = False) -> Path:
    """A benchmark scenario: ``services`` echo nodes; with ``tick_us``, echo-1 emits a tick every tick_us that
    goes to a sink (through the MQTT gateway and broker if asked: ``gateways`` replicas, ticks spread over them
    round-robin, every gateway subscribed to all of them)."""
    lines = [f"name: {name}", "seed: 1", f"duration_us: {steps * quantum_us}", f"quantum_us: {quantum_us}", "nodes:"]
    echo = (CONTAINERS / "echo").as_posix()
    for index in range(services):
        config = f", config: {{tick_us: {tick_us}}}" if tick_us is not None and index == 0 else ""
        if one_per_site:  # a Swarm node each (the local test cluster labels node i site=site-<i>)
            config += f", placement: ['node.labels.site == site-{index + 1}']"
        lines.append(f"  - {{id: echo-{index + 1}, kind: service, build: {echo}{config}}}")
    routes = []
    if tick_us is not None:
        lines.append("  - {id: sink, kind: sink}")
        if through_gateway:
            lines += [
                "  - {id: mqtt-broker, kind: infrastructure, build: " + (CONTAINERS / "mqtt-broker").as_posix()
                + ", port: 1883, local_command: [mosquitto, -c, mosquitto-local.conf, -p, '{port}']}",
                "  - {id: gateway, kind: service, build: " + (CONTAINERS / "mqtt-gateway").as_posix()
                + f", replicas: {gateways}, config: {{broker: mqtt-broker, broker_delay_us: {quantum_us}}}}}",
            ]
            routes = ["  - {from: echo-1, to: [gateway], events: [tick]}", "  - {from: gateway, to: [sink]}"]
        else:
            routes = ["  - {from: echo-1, to: [sink], events: [tick]}"]
    if routes:
        lines += ["routes:", *routes]
    path = directory / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _step_us(scenario: Path, runtime: str, directory: Path) -> float:
    """Mean wall time of one step of the step loop (us), stepping every quantum."""
    return run(scenario, runtime=runtime, trace_path=directory / f"{scenario.stem}-{runtime}.jsonl",
               advance="fixed").metrics.step_us


def _workload(directory: Path, name: str, *, services: int, duration_us: int, period_us: int | None,
              tick_us: int | None = None) -> Path:
    """A next-event workload: ``services`` echo nodes; a sensor every ``period_us`` to echo-1, whose echoes go to a
    sink; with ``tick_us``, every echo node also ticks to the sink (busy every quantum when tick_us = quantum)."""
    echo = (CONTAINERS / "echo").as_posix()
    lines = [f"name: {name}", "seed: 1", f"duration_us: {duration_us}", "quantum_us: 1000", "nodes:"]
    for index in range(services):
        config = f", config: {{tick_us: {tick_us}}}" if tick_us else ""
        lines.append(f"  - {{id: echo-{index + 1}, kind: service, build: {echo}{config}}}")
    lines.append("  - {id: sink, kind: sink}")
    routes = [f"  - {{from: echo-{index + 1}, to: [sink]}}" for index in range(services)]
    if period_us is not None:
        # The generic `uniform` model: the workload measures the step loop, not the synthesis of a signal.
        lines.append(f"  - {{id: sensor, kind: sensor, model: uniform, period_us: {period_us}}}")
        routes.append("  - {from: sensor, to: [echo-1]}")
    path = directory / f"{name}.yaml"
    path.write_text("\n".join(lines + ["routes:", *routes]) + "\n", encoding="utf-8")
    return path


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


def _advance_rows(result: BenchResult, directory: Path, steps: int, runtime: str, say: Callable[[str], None],
                  sparse_s: int) -> None:
    """Next-event advance against fixed steps: sparse, idle nodes (Docker), dense; within one run."""
    sparse = _workload(directory, "bench-sparse", services=1, duration_us=sparse_s * 1_000_000, period_us=1_000_000)
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
            (f"idle{count}", _workload(directory, f"bench-idle-{count}", services=count, duration_us=steps * 1000,
                                       period_us=10_000), "next-event") for count in (1, 16)])
    dense = _workload(directory, "bench-dense", services=4, duration_us=steps * 1000, period_us=None, tick_us=1000)
    say(f"next-event: dense, 4 echo nodes ticking every quantum, fixed and next-event, {DENSE_PAIRS[runtime]} pairs "
        f"(alternating which goes first) ({runtime})")
    _paired(result, f"dense_{runtime}_next_vs_fixed", runtime, directory,
            [("dense", dense, "fixed"), ("dense", dense, "next-event")], DENSE_PAIRS[runtime])


def _in_turn(count: int, measurements: Sequence[Callable[[], Measured]]) -> list[list[Measured]]:
    """``count`` results of each measurement, taken in turn so that drift in the machine's speed affects them alike,
    the one that goes first alternating from round to round (a bias of a round's later runs cancels too)."""
    results: list[list[Measured]] = [[] for _ in measurements]
    for index in range(count):
        order = range(len(measurements)) if index % 2 == 0 else reversed(range(len(measurements)))
        for which in order:
            results[which].append(measurements[which]())
    return results


def _paired(result: BenchResult, name: str, runtime: str, directory: Path, sides: list[tuple[str, Path, str]],
            pairs: int = PAIRS) -> None:
    """The second side's step loop against the first's, (workload key, scenario, advance mode) each, from ``pairs``
    pairs of runs taken one right after the other, the side that runs first alternating from pair to pair. The ratio
    ``name`` is the median of the pairs' ratios (the verdict), with its confidence interval; the fastest run of each
    side against each other is kept too (see the module docstring). Each side's row is its median run."""
    runs = _in_turn(pairs, [
        partial(run, scenario, runtime=runtime, trace_path=directory / f"{key}-{runtime}-{mode}.jsonl", advance=mode)
        for key, scenario, mode in sides])
    for (key, _, mode), done in zip(sides, runs):
        _record(result, key, runtime, mode, sorted(done, key=lambda c: c.metrics.step_loop_s)[len(done) // 2])
    first, second = ([summary.metrics.step_loop_s for summary in done] for done in runs)
    ratios = [b / a for a, b in zip(first, second)]
    result.ratios[name] = statistics.median(ratios)
    result.ratio_intervals[name] = median_interval(ratios)
    result.ratio_fastest[name] = min(second) / min(first)


def median_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """A distribution-free confidence interval for the median of ``values``: the k-th smallest and the k-th largest,
    k the largest rank that a Binomial(n, 1/2) count falls below with probability at most (1 - confidence) / 2 (for
    20 values: the 6th and the 15th). Assumes only that the values are independent; with too few values for the
    confidence, the smallest and the largest."""
    ordered, n = sorted(values), len(values)
    tail, below, k = (1 - confidence) / 2, 0.0, 0
    while k < n // 2 and below + comb(n, k) / 2 ** n <= tail:
        below += comb(n, k) / 2 ** n  # P(count < k + 1)
        k += 1
    k = max(k, 1)
    return ordered[k - 1], ordered[n - k]


def bench(*, steps: int = 2000, probes: int = 2000, docker: bool = True, swarm: bool = True, out: TextIO = sys.stdout,
          output: Path | None = None, progress: Callable[[str], None] | None = None,
          sparse_s: int = SPARSE_S) -> BenchResult:
    say = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    result = BenchResult(settings={
        "cosim": __version__, "python": platform.python_version(), "machine": platform.machine(),
        "cpus": os.cpu_count(), "steps": steps, "probes": probes, "docker": docker, "sparse_s": sparse_s,
    })
    with tempfile.TemporaryDirectory(prefix="cosim-bench-") as temporary:
        directory = Path(temporary)
        say("floor: bare echo over a local pipe")
        result.floors_us["pipe"] = pipe_floor(probes)
        say("cosim: one echo node, local runtime")
        result.per_node_step_us["local"] = _step_us(_scenario(directory, "bench-one", services=1, steps=steps), "local", directory)
        say(f"throughput: echo -> sink through the coordinator (local), with and without lookahead in turn, "
            f"{REPEATS} runs each")
        rates = _in_turn(REPEATS, [
            partial(_throughput_rate, directory, "bench-events", steps, "local", through_gateway=False,
                    lookahead=lookahead) for lookahead in (True, False)])
        for name, measured in zip(("coordinator_local", "coordinator_local_lockstep"), rates):
            result.throughput_events_per_s[name] = max(measured)
            result.throughput_median_events_per_s[name] = statistics.median(measured)
        if _local_mosquitto():
            _mqtt_rows(result, directory, steps, "local", say)
        _advance_rows(result, directory, steps, "local", say, sparse_s)
        if docker:
            from cosim.loading import load
            from cosim.runtimes.docker import image_specs
            from cosim.runtimes.docker.service_images import ensure_images

            ensure_images(image_specs(load(_scenario(directory, "bench-images", services=1, steps=1, tick_us=20,
                                                     through_gateway=True))))
            say("floor: bare echo in a container over the engine's attach endpoint (cosim's path)")
            result.floors_us["container"] = container_floor(probes, service_image("echo"))
            say("floor: 8 bare echo containers probed concurrently")
            result.floors_us["container_x8"] = container_floor(probes // 4, service_image("echo"), containers=8)
            say("reference: bare echo in a container over a `docker attach` process")
            result.floors_us["container_docker_cli"] = container_floor(probes, service_image("echo"), attach="cli")
            for count in (1, 4, 8):
                say(f"cosim: {count} echo container(s), docker runtime")
                step = _step_us(_scenario(directory, f"bench-scale-{count}", services=count, steps=steps), "docker", directory)
                result.scaling_step_us[str(count)] = step
            result.per_node_step_us["docker"] = result.scaling_step_us["1"]
            _mqtt_rows(result, directory, steps, "docker", say)
            _advance_rows(result, directory, steps, "docker", say, sparse_s)
            say(f"the default scenario, fixed and next-event in turn, {DEFAULT_RUNS} runs each (docker)")
            _default_rtf(result, directory)
            if swarm and os.geteuid() == 0:
                _swarm_rows(result, directory, steps, say)
            elif swarm:
                say("swarm: skipped (the local test clusters need root)")
        sweep_bench.sweep_rows(result, directory, say, docker=docker)  # issue 26: --jobs 4 and --fork-at ratios
    result.ratios["local_vs_pipe_floor"] = result.per_node_step_us["local"] / result.floors_us["pipe"]
    if docker:
        result.ratios["docker_vs_container_floor"] = result.per_node_step_us["docker"] / result.floors_us["container"]
        result.ratios["scaling_8_vs_1"] = result.scaling_step_us["8"] / result.scaling_step_us["1"]
        # The machine's own scaling, for reading the one above: 8 bare containers against one.
        result.ratios["floor_scaling_8_vs_1"] = result.floors_us["container_x8"] / result.floors_us["container"]
        result.ratios["docker_8_vs_container_floor_x8"] = result.scaling_step_us["8"] / result.floors_us["container_x8"]
        for name, step in result.swarm_step_us.items():
            result.ratios[f"swarm_{name}_vs_container_floor"] = step / result.floors_us["container"]
    print_table(result, out)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result.__dict__ | {"targets": TARGETS}, indent=2, sort_keys=True) + "\n",
                          encoding="utf-8")
        out.write(f"results: {output}\n")
    return result


def _default_rtf(result: BenchResult, directory: Path) -> None:
    """The default scenario's speed-ups on Docker in each mode, the modes in turn: of the step loop (the best of
    DEFAULT_RUNS, as the throughput rows, and the median) and of the whole run (start and teardown included, of the
    best run)."""
    modes = ("fixed", "next-event")
    runs = _in_turn(DEFAULT_RUNS, [
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
    scenario = _scenario(directory, name, services=1, steps=steps, tick_us=20, through_gateway=through_gateway,
                         gateways=gateways)
    summary = run(scenario, runtime=runtime, trace_path=directory / f"{name}-{runtime}.jsonl", advance="fixed",
                  lookahead=lookahead)
    return summary.result.counts["sent"] / summary.metrics.step_loop_s, summary.metrics.step_us


def _throughput_rate(directory: Path, name: str, steps: int, runtime: str, *, through_gateway: bool,
                     lookahead: bool = True) -> float:
    """Events per wall second routed through the coordinator (see _throughput)."""
    return _throughput(directory, name, steps, runtime, through_gateway=through_gateway, lookahead=lookahead)[0]


def _mqtt_rows(result: BenchResult, directory: Path, steps: int, runtime: str, say: Callable[[str], None]) -> None:
    """One gateway, then two on the same broker, with the same ticks: events/s and step time of each."""
    for gateways in (1, 2):
        label = f"{gateways} gateway{'s' if gateways > 1 else ''}"
        say(f"throughput: sensor -> MQTT ({label}) -> broker -> sink ({runtime})")
        rate, step = _throughput(directory, f"bench-mqtt-{gateways}", steps, runtime, through_gateway=True,
                                 gateways=gateways)
        result.throughput_events_per_s[f"mqtt_{runtime}_{gateways}gw"] = rate
        result.mqtt_step_us[f"{runtime}_{gateways}gw"] = step
    result.ratios[f"mqtt_{runtime}_2gw_vs_1gw_step"] = result.mqtt_step_us[f"{runtime}_2gw"] / result.mqtt_step_us[f"{runtime}_1gw"]


def _swarm_rows(result: BenchResult, directory: Path, steps: int, say: Callable[[str], None]) -> None:
    """Step time on a local Swarm of one node (one echo) and of three (three echoes, one per node)."""
    from cosim.runtimes.swarm import cluster as clusters
    from cosim.runtimes.swarm.nodes import CONTEXT_ENV

    for nodes in (1, 3):
        say(f"cosim: {nodes} echo container(s) on a local {nodes}-node Swarm (cluster up, run, cluster down)")
        made = clusters.cluster_up(nodes, f"bench{os.getpid() % 100000}-{nodes}")
        previous = os.environ.get(CONTEXT_ENV)
        try:
            os.environ[CONTEXT_ENV] = made.manager.name
            scenario = _scenario(directory, f"bench-swarm-{nodes}", services=nodes, steps=steps, one_per_site=nodes > 1)
            result.swarm_step_us[f"{nodes}_node{'s' if nodes > 1 else ''}"] = _step_us(scenario, "swarm", directory)
        finally:
            if previous is None:
                os.environ.pop(CONTEXT_ENV, None)
            else:
                os.environ[CONTEXT_ENV] = previous
            clusters.cluster_down(made.name)


def _local_mosquitto() -> bool:
    from cosim.runtimes.local import SBIN_DIRS

    return bool(shutil.which("mosquitto") or shutil.which("mosquitto", path=os.pathsep.join(SBIN_DIRS)))


def print_table(result: BenchResult, out: TextIO) -> None:
    rows: list[Sequence[str]] = [("measurement", "value", "ratio", "target")]
    rows.append(("floor: bare echo, local pipe (round trip)", f"{result.floors_us['pipe']:.0f} us", "1.00", ""))
    if "container" in result.floors_us:
        rows.append(("floor: bare echo, container via engine attach", f"{result.floors_us['container']:.0f} us", "1.00", ""))
        rows.append(("floor: 8 bare echo containers, concurrently", f"{result.floors_us['container_x8']:.0f} us",
                     f"{result.ratios['floor_scaling_8_vs_1']:.2f}x one container", ""))
        rows.append(("(reference: bare echo via a `docker attach` process)",
                     f"{result.floors_us['container_docker_cli']:.0f} us", "", ""))
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
                        f"({rate:,.0f} vs >= {THROUGHPUT_TARGET:,} events/s)")
    if "docker_next-event" in result.default_rtf:
        rtf = result.default_rtf["docker_next-event"]
        verdicts.append(f"default scenario on Docker: {'met' if rtf >= DEFAULT_RTF_TARGET else 'NOT met'} "
                        f"(speed-up of the step loop {rtf:.1f}x real time vs >= {DEFAULT_RTF_TARGET:g}x)")
    out.write("targets: " + "; ".join(verdicts) + "\n")


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
