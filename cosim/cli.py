"""What the invoke tasks call: one function per command, printing for a person at a terminal.

Every function raises a CosimError for anything the user can fix; tasks.py turns that into a one-line
message and a non-zero exit (no traceback).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from cosim import compose, loading, options, plugins
from cosim import schedule as scheduling
from cosim.core.results import SimulationResult
from cosim.errors import CosimError, TracesDiffer, UsageError
from cosim.metrics import RunMetrics, speedups
from cosim.paths import REPO_ROOT
from cosim.resources import data_path
from cosim.run import DEFAULT_WATCHDOG_S, CompletedRun, run

if TYPE_CHECKING:
    from cosim.model import Scenario
    from cosim.report import Draft

DEFAULT_SCENARIO = str(data_path("scenarios", "default.yaml"))  # the bundled one (the tasks show it relative)


def validate(path: str, out: TextIO = sys.stdout) -> None:
    loaded = loading.load(path)
    containers = len(loaded.containers)
    actions = len(loaded.schedule.actions)
    out.write(f"{path}: valid scenario {loaded.name!r}: {len(loaded.nodes)} nodes ({containers} container), "
              f"{len(loaded.routes)} routes, {loaded.steps} steps of {loaded.quantum_us} us"
              + (f", {actions} scheduled action(s)" if actions else "") + "\n")


def render(path: str, out: TextIO = sys.stdout) -> Path:
    rendered = compose.render(loading.load(path))
    out.write(f"{rendered}\n")
    return rendered


class ProgressLine:
    """Progress in virtual time. On a terminal: one line redrawn in place (rich) with virtual time, percent, the
    step loop's speed-up (virtual seconds per wall second since its first step) and ETA. Otherwise (logs, CI): a
    plain line every 10%. Wall clock: display only."""

    def __init__(self, out: TextIO = sys.stderr, *, terminal: bool | None = None, interval_s: float = 0.1) -> None:
        self.out = out
        self.terminal = out.isatty() if terminal is None else terminal
        self.interval_s = interval_s
        self._last_draw = 0.0
        self._last_decile = -1
        self._loop_started: tuple[float, int] | None = None  # (wall clock, virtual us) at the first step
        self._bar: Any = None  # rich.progress.Progress, started on the first step
        self._task: Any = None

    def __call__(self, now_us: int, duration_us: int) -> None:
        if not self.terminal:
            decile = int(now_us / duration_us * 10)
            if decile > self._last_decile:
                self._last_decile = decile
                self.out.write(f"  {now_us / 1e6:.3f} / {duration_us / 1e6:.3f} s virtual ({decile * 10}%)\n")
                self.out.flush()
            return
        clock = time.monotonic()
        if self._loop_started is None:
            self._loop_started = (clock, now_us)
            if now_us < duration_us:
                return  # the speed-up is measured from here on
        if clock - self._last_draw < self.interval_s and now_us < duration_us:
            return  # redrawing every step would cost more than the step
        self._last_draw = clock
        starting = self._bar is None
        if starting:
            self._create()
        loop_clock, loop_us = self._loop_started
        wall_s = clock - loop_clock
        factor = (now_us - loop_us) / 1e6 / wall_s if wall_s > 0 else 0.0
        eta = f"{(duration_us - now_us) / 1e6 / factor:.0f} s" if factor > 0 else "?"
        self._bar.update(self._task, completed=now_us, total=duration_us, status=(
            f"{now_us / 1e6:.3f} / {duration_us / 1e6:g} s virtual  {now_us / duration_us:4.0%}  "
            f"step loop {factor:.1f}x real time  ETA {eta}"))
        if starting:
            self._bar.start()  # draws the first state (nothing drawn before the first update)
        else:
            self._bar.refresh()
        if now_us >= duration_us:
            self.close()

    def _create(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn

        console = Console(file=self.out, force_terminal=True)
        self._bar = Progress(TextColumn("  "), BarColumn(bar_width=30), TextColumn("{task.fields[status]}"),
                             console=console, auto_refresh=False)
        self._task = self._bar.add_task("run", total=None, status="")

    def close(self) -> None:
        """End the line (also when the run stopped early), so what follows starts on a fresh line."""
        if self._bar is not None:
            self._bar.stop()
            self._bar = None


def up(path: str = DEFAULT_SCENARIO, *, runtime: str = "docker", trace: str | None = None,
       watchdog_s: float | str = DEFAULT_WATCHDOG_S, progress: bool = True, registry: str | None = None,
       checkpoint_at: str | None = None, stop_after_checkpoint: bool = False, advance: str | None = None,
       report: bool = True, out: TextIO = sys.stdout) -> CompletedRun:
    if registry:  # --registry is $COSIM_REGISTRY for this one run (the swarm runtime reads it)
        from cosim.runtimes.swarm.images import REGISTRY_ENV

        os.environ[REGISTRY_ENV] = registry
    progress_line = ProgressLine() if progress else None
    drafting = ReportDuringTeardown() if report else None
    try:
        summary = run(path, runtime=runtime, trace_path=trace, watchdog_s=watchdog_s, progress=progress_line,
                      checkpoint_at=checkpoint_at, stop_after_checkpoint=stop_after_checkpoint,
                      checkpoint_written=_checkpoint_line(progress_line, out), advance=advance, while_stopping=drafting)
    except CosimError:
        if progress_line is not None:
            progress_line.close()
        _report_failed_run(path, trace, out)
        raise
    print_summary(summary, out)
    if drafting is not None:
        out.write(f"  report:  {drafting.write(summary)}\n")
    return summary


class ReportDuringTeardown:
    """The run's report drawn while the runtime tears down (the engine removing containers, this process waiting):
    everything but the metrics, which are added once the run has written them. A failure to draw it is raised
    where the report is written, after the summary, as when it was drawn then."""

    def __init__(self) -> None:
        self._draft: Draft | None = None
        self._failure: Exception | None = None

    def __call__(self, trace_path: Path, scenario: Scenario) -> None:
        from cosim.report import draft_report

        try:
            self._draft = draft_report(trace_path, loaded=scenario)
        except Exception as exc:  # (raised by write, after the summary)
            self._failure = exc

    def write(self, summary: CompletedRun) -> Path:
        if self._failure is not None:
            raise self._failure
        if self._draft is None:  # (the runtime tore down without calling it: drawn now)
            from cosim.report import write_report

            return write_report(summary.trace_path, loaded=summary.scenario)
        return self._draft.write()


def _report_line(trace_path: Path, out: TextIO, scenario: Scenario | None = None) -> None:
    """The run's report, written beside its trace (hand-written SVG charts: tens of milliseconds, no extra)."""
    from cosim.report import write_report

    out.write(f"  report:  {write_report(trace_path, loaded=scenario)}\n")


def _checkpoint_line(progress_line: ProgressLine | None, out: TextIO) -> Any:
    def written(path: Path, size: int, seconds: float) -> None:
        if progress_line is not None:
            progress_line.close()  # the line goes above the progress bar, which starts again at the next step
        out.write(f"  checkpoint: {path} ({size / 1e6:.2f} MB, written in {seconds:.2f} s)\n")
        out.flush()
    return written


def resume(checkpoint: str, *, runtime: str = "docker", trace: str | None = None, scenario: str | None = None,
           watchdog_s: float | str = DEFAULT_WATCHDOG_S, progress: bool = True, out: TextIO = sys.stdout) -> CompletedRun:
    """`invoke resume CHECKPOINT`: continue a checkpointed run (fork it with --scenario VARIANT)."""
    from cosim.run import resume as resume_run

    if not checkpoint:
        raise UsageError("usage: invoke resume CHECKPOINT [--trace PATH] [--runtime local|docker] [--scenario VARIANT]")
    progress_line = ProgressLine() if progress else None
    try:
        summary = resume_run(checkpoint, runtime=runtime, trace_path=trace, watchdog_s=watchdog_s,
                             progress=progress_line, scenario_path=scenario)
    finally:
        if progress_line is not None:
            progress_line.close()
    print_summary(summary, out)
    parent = summary.trace_path.read_text(encoding="utf-8").split("\n", 1)[0]
    forked = json.loads(parent).get("forked_from")
    out.write(f"  resumed from {checkpoint}" + (f" (a fork of checkpoint {forked['checkpoint_sha256'][:12]})"
                                                 if forked else "") + "\n")
    return summary


def _report_failed_run(path: str, trace: str | None, out: TextIO) -> None:
    """A run that failed while simulating: its report shows where and why (on stdout; the error goes to stderr).
    Nothing for a run that never started: its trace holds no more than the error message already says."""
    from cosim.trace import read

    try:
        trace_path = Path(trace if trace is not None else loading.load(path).trace)
        error = read(trace_path).error
        if error is not None and error.error != "start_failed":
            _report_line(trace_path, out)
    except CosimError:
        pass  # e.g. the scenario itself is invalid: there is no trace to report on


def print_summary(summary: CompletedRun, out: TextIO) -> None:
    result = summary.result
    counts = result.counts
    speed = "; ".join(f"{name} {text}" for name, text in speedups(summary.metrics.to_json()))
    out.write(
        f"cosim: scenario {summary.scenario.name!r} ran on the {summary.runtime} runtime: "
        f"{result.end_us / 1e6:g} s virtual, {result.steps} steps\n"
        f"  speed-up: {speed}\n"
        f"  events: {counts['sent']} sent, {counts['delivered']} delivered, {counts['dropped']} dropped, "
        f"{counts['unroutable']} unroutable\n"
    )
    print_schedule(result, out)
    for (source, event_type), count in sorted(result.unroutable.items()):
        out.write(f"  warning: {count} {event_type!r} event(s) from {source!r} matched no route (traced as unroutable)\n")
    for sink, events in sorted(summary.sinks.items()):
        out.write(f"  sink {sink!r} received {len(events)} event(s)\n")
    sink_events = sorted((e for events in summary.sinks.values() for e in events), key=lambda e: e["time_us"])
    for plugin in plugins.used_by(summary.scenario):  # what the application adds (e.g. cosim.edge's detections)
        if plugin.summary is not None:
            plugin.summary(summary.scenario, sink_events, out)
    print_metrics(summary.metrics, out)
    out.write(f"  trace:   {summary.trace_path}\n  metrics: {summary.metrics_path}\n")


def print_schedule(result: SimulationResult, out: TextIO) -> None:
    """What the scenario's schedule did, and the drops by reason (only for a run where there is something to say)."""
    if result.dropped and set(result.dropped) != {"loss"}:
        out.write("  dropped by reason: " + ", ".join(f"{n} {reason}" for reason, n in result.dropped.items()) + "\n")
    if counts_filtered := result.counts.get("filtered"):
        out.write(f"  filtered: {counts_filtered} event(s) sent outside their route's `during:` windows\n")
    if result.actions:
        out.write(f"  schedule ({len(result.actions)} action(s) applied):\n")
        for record in result.actions:
            out.write(f"    {record['time_us'] / 1e6:7.3f} s  {scheduling.describe(record)}\n")


def print_metrics(metrics: RunMetrics, out: TextIO) -> None:
    """The wall-clock side of a run: round trips and cosim's own overhead."""
    out.write(f"  advance: {metrics.advance}: {metrics.steps} steps executed, {metrics.quanta_skipped} quanta skipped, "
              f"{metrics.advances} ADVANCE messages"
              + (f" ({metrics.advances_ahead} sent a window ahead)" if metrics.advances_ahead else "") + "\n")
    if metrics.overhead_share is not None and metrics.overhead_per_step_us is not None:
        out.write(f"  coordinator overhead: {metrics.overhead_share * 100:.1f}% of the step loop, "
                  f"{metrics.overhead_per_step_us:.1f} us CPU per step\n")
    for node_id, stats in sorted(metrics.round_trip.items()):
        if stats:
            out.write(f"  {node_id}: ADVANCE->DONE p50 {stats['p50_us']:.0f} us, p95 {stats['p95_us']:.0f} us, "
                      f"p99 {stats['p99_us']:.0f} us\n")


GOLDEN = REPO_ROOT / "tests" / "golden"
GOLDEN_CACHE = Path("/cosim-cache")  # the golden files' build contexts: the same path on every machine


def golden(out: TextIO = sys.stdout) -> list[Path]:
    """Re-render the golden compose files (tests/golden/compose/) from tests/golden/scenarios/, after an intended
    change to the rendering; the tests only compare. Returns the files that changed (review their diff)."""
    changed = []
    for scenario_path in sorted((GOLDEN / "scenarios").glob("*.yaml")):
        loaded = loading.load(scenario_path)
        target = compose.compose_path(loaded, GOLDEN / "compose")
        text = compose.render_text(loaded, GOLDEN_CACHE)
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            target.write_text(text, encoding="utf-8")
            changed.append(target)
        out.write(f"{'updated  ' if target in changed else 'unchanged'} {target.relative_to(REPO_ROOT)}\n")
    return changed


def images(path: str = DEFAULT_SCENARIO, *, force: bool = False, out: TextIO = sys.stdout) -> dict[str, str]:
    from cosim.runtimes.docker import image_specs
    from cosim.runtimes.docker.engine import check_engine
    from cosim.runtimes.docker.service_images import build_images

    check_engine()
    built = build_images(image_specs(loading.load(path)), force=force)
    for tag, image_id in [*built.bases.items(), *sorted(built.images.items())]:
        out.write(f"{tag}  {image_id}\n")
    return {**built.bases, **built.images}


def down(out: TextIO = sys.stdout) -> None:
    from cosim.runtimes.docker import down_all
    from cosim.runtimes.swarm import down_stacks

    containers, networks = down_all()
    stacks = down_stacks()  # when the engine ($COSIM_SWARM_CONTEXT, else the default) is a Swarm manager
    out.write(f"removed {containers} container(s) and {networks} network(s) left by cosim runs"
              + (f", and {len(stacks)} stack(s): {', '.join(stacks)}" if stacks else "") + "\n")


def cluster(action: str, *, nodes: int | str = 3, name: str = "cosim", out: TextIO = sys.stdout) -> None:
    """`invoke cluster up|down`: the local test Swarm (cosim.runtimes.swarm.cluster)."""
    from cosim.runtimes.swarm import cluster as clusters

    if action == "up":
        made = clusters.cluster_up(options.integer_at_least("--nodes", nodes, 1), name)
        workers = ", ".join(made.contexts[1:]) or "none"
        out.write(f"cosim: cluster {name!r} is up: {len(made.engines)} Docker engine(s) in namespaces of their own; "
                  f"Swarm manager {made.manager.name}, workers {workers}; one Docker context per node, named "
                  f"after it; node i is labelled site=site-<i>.\n"
                  f"  run a scenario on it: COSIM_SWARM_CONTEXT={made.manager.name} ./inv up scenarios/distributed.yaml "
                  f"--runtime swarm\n  remove it: ./inv cluster down{'' if name == 'cosim' else ' --name ' + name}\n")
    elif action == "down":
        removed = clusters.cluster_down(name)
        out.write(f"cosim: cluster {name!r}: removed {removed} engine(s)\n" if removed else
                  f"cosim: no cluster named {name!r} is up\n")
    else:
        raise UsageError(f"usage: invoke cluster up [--nodes N] [--name NAME] | invoke cluster down [--name NAME] "
                         f"(not {action!r})")


def determinism(path: str = DEFAULT_SCENARIO, *, runs: int | str = 3, runtime: str = "docker",
                watchdog_s: float | str = DEFAULT_WATCHDOG_S, advance: str | None = None,
                checkpoint_at: str | None = None, out: TextIO = sys.stdout) -> None:
    from cosim.determinism import gate

    gate(path, runs=runs, runtime=runtime, watchdog_s=watchdog_s, advance=advance, checkpoint_at=checkpoint_at,
         out=out)


def diff(trace_a: str, trace_b: str, out: TextIO = sys.stdout) -> None:
    from cosim.tracediff import compare, print_comparison

    if not trace_a or not trace_b:
        raise UsageError("usage: invoke diff TRACE_A TRACE_B")
    comparison = compare(Path(trace_a), Path(trace_b))
    out.write(f"{trace_a} vs {trace_b}:\n")
    print_comparison(comparison, out)
    if not comparison.identical:
        raise TracesDiffer("the traces differ (first divergent record above)")


def bench(*, steps: int | str = 2000, docker: bool = True, swarm: bool = True, output: str = "traces/bench.json",
          sparse_s: int | str = 600, rows: str = "", mosaik: bool = True, out: TextIO = sys.stdout) -> None:
    from cosim.bench import SELECTABLE
    from cosim.bench import bench as run_bench

    selected = [name.strip() for name in rows.split(",") if name.strip()]
    for name in selected:
        options.choice("--rows", name, tuple(SELECTABLE))
    run_bench(steps=options.integer_at_least("--steps", steps, 1), docker=docker, swarm=swarm, output=Path(output),
              out=out, sparse_s=options.integer_at_least("--sparse-s", sparse_s, 1), rows=selected, mosaik=mosaik)


def sweep(scenario: str | None, *, out_dir: str | None = None, out: TextIO = sys.stdout, **settings: Any) -> Any:
    """`cosim sweep`: every run of the grid, the results, the summary and the report; failed runs make the exit
    code non-zero after everything else is written."""
    from cosim.errors import Interrupted, SweepRunsFailed
    from cosim.sweep import sweep as run_sweep

    result = run_sweep(scenario, out_stream=out, out=out_dir, **settings)
    if result.interrupted:
        raise Interrupted(f"the sweep was interrupted: {len(result.runs) - len(result.interrupted)} of "
                          f"{len(result.runs)} run(s) ended; run the same command again to continue")
    if result.failed:
        raise SweepRunsFailed(f"{len(result.failed)} of {len(result.runs)} run(s) failed (listed above); run the same "
                              f"command again to retry them (complete runs are skipped)")
    return result


def lock(*, upgrade: bool = False, out: TextIO = sys.stdout) -> None:
    from cosim.environment import SEPARATE_EXTRAS, update_lock, update_separate_lock

    out.write(f"{update_lock(upgrade=upgrade)}\n")
    for extra in SEPARATE_EXTRAS:
        out.write(f"{update_separate_lock(extra, upgrade=upgrade)}\n")


def report(trace: str, out: TextIO | None = sys.stdout) -> Path:
    from cosim.report import write_report

    written = write_report(Path(trace))
    if out is not None:
        out.write(f"{written}\n")
    return written
