"""One run, top to bottom: scenario -> runtime -> nodes -> coordinator -> trace (+ metrics beside it).

Teardown is guaranteed: the runtime is stopped on success, on every error and on Ctrl-C/SIGTERM; a second Ctrl-C
is ignored and signals are held off during the teardown (children started then inherit that), so nothing is
left running.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from cosim import __version__, compose, options, protocol, runtimes, segments
from cosim import checkpoint as checkpointing
from cosim import metrics as run_metrics
from cosim import trace as tracing
from cosim.core.checkpoints import Checkpoints
from cosim.core.results import SimulationResult
from cosim.errors import Interrupted, NodeError, OutputWriteError, UsageError
from cosim.loading import load
from cosim.model import ADVANCE_MODES, Scenario, SensorSpec, SinkSpec
from cosim.nodes import Input, SensorModel, ServiceNode, SimNode, SinkModel
from cosim.trace import TraceWriter

if TYPE_CHECKING:
    from cosim.coordinator import Coordinator

DEFAULT_WATCHDOG_S = options.DEFAULT_WATCHDOG_S
SHUTDOWN_GRACE_S = 10.0


@dataclass
class CompletedRun:
    """What ``run`` returns: where the trace and metrics went, the simulation's result, the metrics as an object
    and what each sink received."""

    scenario: Scenario
    runtime: str
    trace_path: Path
    metrics_path: Path
    result: SimulationResult
    metrics: run_metrics.RunMetrics
    sinks: dict[str, list[Input]]


def artifact_paths(trace_path: Path) -> tuple[Path, Path]:
    """Where the metrics file and the service logs of a trace go (beside it)."""
    stem = trace_path.name[: -len(".jsonl")] if trace_path.name.endswith(".jsonl") else trace_path.name
    return trace_path.with_name(stem + ".metrics.json"), trace_path.with_name(stem + ".logs")


def clear_logs(log_dir: Path) -> None:
    """Each run's service logs are its own: remove what an earlier run with the same trace path left there."""
    if log_dir.is_dir():
        for leftover in log_dir.iterdir():
            if leftover.is_file() and leftover.suffix in (".log", ".env"):
                leftover.unlink(missing_ok=True)


def check_writable(what: str, directory: Path) -> None:
    """Create ``directory`` if needed and prove a file can be written in it (not read-only, not under a regular
    file, not full: to the last inode or the last block); OutputWriteError naming it otherwise. (Permissions alone
    would not do: root passes every permission check, not a read-only mount.)"""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory, buffering=0) as probe:
            probe.write(b"\n")  # a byte: an empty file still fits on a full disk
    except OSError as exc:
        if exc.filename and Path(exc.filename).parent.absolute() == directory.absolute():
            exc = OSError(exc.errno, exc.strerror)  # the probe's own name means nothing to the reader
        raise OutputWriteError(what, directory, exc) from None


def build_nodes(scenario: Scenario, runtime: runtimes.Runtime, watchdog_s: float) -> dict[str, SimNode]:
    nodes: dict[str, SimNode] = {}
    for spec in scenario.nodes:
        if isinstance(spec, SensorSpec):
            nodes[spec.id] = SensorModel(spec)
        elif isinstance(spec, SinkSpec):
            nodes[spec.id] = SinkModel(spec.id)
        elif spec.kind == "service":
            # A service gets as long to exit after SHUTDOWN as to answer a message, up to SHUTDOWN_GRACE_S.
            nodes[spec.id] = ServiceNode(spec.id, runtime.transport(spec.id), watchdog_s=watchdog_s,
                                         shutdown_grace_s=min(SHUTDOWN_GRACE_S, watchdog_s))
    return nodes


class Interrupts:
    """Ctrl-C and SIGTERM end a run through its teardown, once: the first raises KeyboardInterrupt; any later one
    (a second Ctrl-C while stopping) is ignored, so that it cannot cut the teardown short."""

    def __init__(self) -> None:
        self.stopping = False

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.stopping:
            return
        self.stopping = True
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_once() -> Iterator[Interrupts]:
    state = Interrupts()
    if threading.current_thread() is not threading.main_thread():
        yield state  # signals only reach the main thread; a run in another thread is stopped by its caller
        return
    previous = {signum: signal.signal(signum, state.handler) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield state
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while tearing down, so a second Ctrl-C cannot leave containers behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def run(
    scenario_path: str | Path,
    *,
    runtime: str = "docker",
    trace_path: str | Path | None = None,
    watchdog_s: float | str = DEFAULT_WATCHDOG_S,
    progress: Callable[[int, int], None] | None = None,
    advance: str | None = None,
    checkpoint_at: str | Sequence[int] | None = None,
    stop_after_checkpoint: bool = False,
    checkpoint_dir: Path = checkpointing.DIRECTORY,
    checkpoint_written: Callable[[Path, int, float], None] | None = None,
    lookahead: bool = True,
    while_stopping: Callable[[Path, Scenario], object] | None = None,
) -> CompletedRun:
    """Run a scenario; ``checkpoint_at`` (us, comma-separated) writes a checkpoint at the end of each of those windows
    (``checkpoint_written`` is told its path, size and how long writing it took), and stops after the last one
    with ``stop_after_checkpoint``. ``lookahead=False`` keeps every service in lockstep (the trace is the same;
    for comparisons). ``while_stopping(trace_path, scenario)`` is called once the run has ended well and its trace is
    complete, while the runtime tears down (e.g. to draw its report then); it must not raise."""
    # Option errors first: nothing is loaded, started or written for a run that cannot go ahead.
    options.choice("--runtime", runtime, runtimes.RUNTIMES)
    if advance is not None:
        options.choice("--advance", advance, ADVANCE_MODES)
    watchdog_s = options.positive_seconds("--watchdog", watchdog_s)
    scenario = load(scenario_path)
    if advance is not None:  # `--advance` overrides the scenario's mode (and so the trace header's)
        scenario = dataclasses.replace(scenario, advance=advance)
    segments.check_available(scenario)
    times = checkpointing.parse_times("--checkpoint-at", checkpoint_at, scenario)
    if times and scenario.segments:
        raise UsageError(segments.NO_CHECKPOINTS.format(option="--checkpoint-at", name=scenario.name))
    if stop_after_checkpoint and not times:
        raise UsageError("--stop-after-checkpoint needs --checkpoint-at T")
    manifest = tracing.scenario_manifest(scenario, compose.sha256(scenario))
    if times:
        check_writable("the checkpoint directory", checkpoint_dir)
    writer = _checkpoint_writer(scenario, manifest, checkpoint_dir, checkpoint_written) if times else None
    checkpoints = Checkpoints(frozenset(times), writer, stop_after_checkpoint)
    return _run(scenario, runtime, trace_path, watchdog_s, progress, manifest, checkpoints, lookahead, while_stopping)


def resume(
    checkpoint_path: str | Path,
    *,
    runtime: str = "docker",
    trace_path: str | Path | None = None,
    watchdog_s: float | str = DEFAULT_WATCHDOG_S,
    progress: Callable[[int, int], None] | None = None,
    scenario_path: str | Path | None = None,
) -> CompletedRun:
    """Continue a checkpointed run with fresh processes or containers; with ``scenario_path`` (a variant of the
    checkpointed scenario: other config, links, schedule after T), fork it. Every check comes before anything
    starts."""
    options.choice("--runtime", runtime, runtimes.RUNTIMES)
    watchdog_s = options.positive_seconds("--watchdog", watchdog_s)
    content, digest = checkpointing.read(checkpoint_path)
    fork = scenario_path is not None
    # The checkpointed run's advance mode (a `--advance` override included): its state is that mode's.
    scenario = dataclasses.replace(load(scenario_path if scenario_path is not None else checkpointing.scenario_file(content)),
                                   advance=content["advance"])
    if scenario.segments:  # (a checkpoint is never written with segments; a fork may add some)
        raise UsageError(segments.NO_CHECKPOINTS.format(option="resume" if not fork else "a fork", name=scenario.name))
    checkpointing.check_scenario(Path(checkpoint_path), content, scenario, fork=fork)
    manifest = dict(content["manifest"])
    changes: dict[str, dict[str, Any]] = {}
    if fork:
        manifest = tracing.scenario_manifest(scenario, compose.sha256(scenario))
        # Hashed: a fork's trace says which checkpoint it continues (its records up to T are the parent's).
        manifest["forked_from"] = {"checkpoint_sha256": digest, "time_us": content["time_us"],
                                   "scenario_sha256": content["scenario"]["sha256"]}
        changes = checkpointing.config_changes(content, scenario)
    checkpoints = Checkpoints(resume=content["state"], config_changes=changes)
    return _run(scenario, runtime, trace_path, watchdog_s, progress, manifest, checkpoints)


def _checkpoint_writer(scenario: Scenario, manifest: Mapping[str, Any], directory: Path,
                       written: Callable[[Path, int, float], None] | None) -> Callable[[int, dict[str, Any]], None]:
    def write(time_us: int, state: dict[str, Any]) -> None:
        started = time.monotonic()  # wall clock: reported only
        path = checkpointing.path_for(scenario, time_us, directory)
        checkpointing.write(path, {
            "protocol": protocol.VERSION, "cosim": __version__, "time_us": time_us, "advance": scenario.advance,
            "scenario": {"name": scenario.name, "path": str(scenario.path), "sha256": scenario.sha256,
                         "absolute_path": str(scenario.path.resolve()), "structure": checkpointing.structure(scenario)},
            "declared_configs": checkpointing.declared_configs(scenario),
            "manifest": dict(manifest), "state": state})
        if written is not None:
            written(path, path.stat().st_size, time.monotonic() - started)
    return write


def _run(scenario: Scenario, runtime: str, trace_path: str | Path | None, watchdog_s: float,
         progress: Callable[[int, int], None] | None, manifest: Mapping[str, Any],
         checkpoints: Checkpoints, lookahead: bool = True,
         while_stopping: Callable[[Path, Scenario], object] | None = None) -> CompletedRun:
    trace_file = Path(trace_path if trace_path is not None else scenario.trace)
    metrics_path, log_dir = artifact_paths(trace_file)
    # Every output path is checked before anything starts: the trace is created, the log directory written to.
    writer = TraceWriter(trace_file, manifest)
    try:
        metrics_path.unlink(missing_ok=True)  # an earlier run's: it must not pass for this one's if this one fails
        clear_logs(log_dir)
        check_writable("the service log directory", log_dir)
    except BaseException:
        writer.close()
        raise
    backend = runtimes.create(runtime, scenario, log_dir)
    # The ns-3 worker: started (and told its segments) before the runtime, so ns-3 loads while the services start.
    worker = segments.SegmentWorker(scenario, log_dir / "ns3-segments.log", watchdog_s) if scenario.segments else None
    nodes: dict[str, SimNode] = {}
    result: SimulationResult | None = None
    coordinator: Coordinator | None = None
    started = time.monotonic()
    try:
        with interrupts_once() as interrupts:
            try:
                if worker is not None:
                    worker.start()
                backend.start(while_starting=_import_window_loop)
                from cosim.coordinator import Coordinator

                nodes = build_nodes(scenario, backend, watchdog_s)
                coordinator = Coordinator(scenario, nodes, writer, endpoints=backend.endpoints(),
                                          environment=backend.manifest(), progress=progress,
                                          exited_infrastructure=backend.exited_infrastructure, processes=backend,
                                          checkpoints=checkpoints, lookahead=lookahead, segment_worker=worker)
                result = coordinator.run()
            except KeyboardInterrupt:
                # The coordinator turns an interrupt during the run into Interrupted; this is one while starting.
                writer.error(0, None, "interrupted", "the run was interrupted while starting")
                raise Interrupted("interrupted while starting the scenario; nothing was simulated") from None
            except Exception as exc:
                if coordinator is None and not writer.closed:
                    writer.error(0, exc.node if isinstance(exc, NodeError) else None, "start_failed", _first_line(str(exc)))
                raise
            finally:
                interrupts.stopping = True  # from here on, Ctrl-C waits for the teardown
                with signals_held():
                    # The runtime first: it knows how to end its processes promptly (Docker: stop the
                    # containers, and the attached streams end with them); closing the nodes then finds them done.
                    try:
                        # A run that ended well has its whole trace written (and flushed) by now.
                        backend.stop(functools.partial(while_stopping, trace_file, scenario)
                                     if result is not None and while_stopping is not None else None)
                    finally:
                        if worker is not None:
                            worker.close(graceful=result is not None)
                        for node in nodes.values():
                            node.close()
                        writer.close()
    finally:
        measured = run_metrics.RunMetrics.measure(
            scenario, runtime, time.monotonic() - started, coordinator.timings if coordinator else None,
            coordinator.now_us if coordinator else 0,
            {node_id: node.round_trips_s for node_id, node in nodes.items() if node.round_trips_s is not None},
            {**backend.manifest(), **backend.run_facts()})
        try:
            run_metrics.write(measured, metrics_path)
        except OutputWriteError:
            if writer.failed is None and result is not None:
                raise  # else the run's own failure (often the same full disk) is the one to report
    sinks = {node_id: node.received for node_id, node in nodes.items() if isinstance(node, SinkModel)}
    assert result is not None
    return CompletedRun(scenario, runtime, trace_file, metrics_path, result, measured, sinks)


def _import_window_loop() -> None:
    """The window loop's modules, imported while the runtime brings the services up (the engine, or the
    services themselves, busy; this process would only wait)."""
    import cosim.coordinator  # noqa: F401


def _first_line(message: str) -> str:
    """A one-line summary of an error message for the trace (a first line ending in ':' gets the last line)."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    if not lines:
        return ""
    if lines[0].endswith(":") and len(lines) > 1:
        return f"{lines[0]} {lines[-1]}"
    return lines[0]
