"""The coordinator: owns virtual time, executes a run's windows on the quantum grid, writes the trace.

It knows nothing about Docker or processes: it drives ``SimNode`` proxies (cosim.nodes), one slot of state each
(cosim.core.slots), and calls each feature as a part (cosim.core). A window (now, target] is executed in phases
(``_execute``):

1. schedule:     the actions due at the window's start (cosim.core.actions);
2. deliveries:   the events due in the window handed over, in the total order (delivery time, source, per-source
                 sequence number, destination) (cosim.core.deliveries);
3. choose:       the nodes to advance: the advance policy's (cosim.core.advance: ``fixed`` every node, ``next-event``
                 those that need the window; barrier groups move together), less the crashed ones;
4. advance:      ADVANCE to each, services first, so that they compute while the in-process models do (barrier-group
                 members are told their peers: cosim.core.barriers);
5. collect:      their DONEs, in scenario order; a service nothing sends to is sent its next ADVANCE at once
                 (cosim.core.lookahead);
6. promises:     (next-event) each node's outputs checked against its promise, its new promise taken;
7. route:        the outputs numbered, ordered and sent on their links (latency, seeded jitter, loss);
8. checkpoint:   at the window's end, when one is asked for (cosim.core.checkpoints; ``snapshot``/``restore``).

The policy says which window comes next; windows stay on the grid, so the trace records are the same in both
modes. The trace records of a window are formatted (``TraceWriter.drain``) after the next window's ADVANCEs are
out, while the services compute.
"""

from __future__ import annotations

import contextlib
import gc
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from cosim.core.actions import ProcessControl, ScheduledActions
from cosim.core.advance import AdvancePolicy, FixedAdvance, NextEventAdvance, WakeupSource
from cosim.core.barriers import BarrierGroups
from cosim.core.checkpoints import Checkpoints
from cosim.core.contracts import NEVER, Inputs
from cosim.core.deliveries import Deliveries
from cosim.core.lookahead import Lookahead
from cosim.core.results import SimulationResult, StepTimings
from cosim.core.segments import Segments
from cosim.core.slots import NodeSlot, Outputs, Slots
from cosim.errors import (
    CheckpointError,
    EngineLost,
    InfrastructureExited,
    Interrupted,
    NodeFailure,
    OutputWriteError,
    SegmentWorkerFailed,
    UnsupportedAction,
)
from cosim.model import ContainerSpec, Scenario
from cosim.network import Router
from cosim.nodes import SimNode
from cosim.seeds import node_seed
from cosim.segments import SegmentWorker
from cosim.trace import TraceWriter, header_environment

monotonic = time.monotonic  # (wall clock for the metrics only)
_NO_PEERS: dict[str, list[str]] = {}  # (a run without barrier groups; never written to)

__all__ = ["NEVER", "Checkpoints", "Coordinator", "ProcessControl", "SimulationResult", "StepTimings", "WakeupSource"]

Progress = Callable[[int, int], None]  # (virtual time now, duration), both in us
INFRASTRUCTURE_EXIT_WAIT_S = 1.0  # wall clock, on failure only: how long an infrastructure exit may take to show
# The failures no node is at fault for, and the kind of the trace's error record for each: the ns-3 segment worker's,
# a service's log or the trace that could not be written (e.g. a full disk), a checkpoint that could not be written.
_ERROR_RECORDS: tuple[tuple[type[Exception], str], ...] = (
    (SegmentWorkerFailed, "segment_worker_failed"), (OutputWriteError, "write_failed"), (CheckpointError, "checkpoint_failed"))


class Coordinator:
    """Owns virtual time for one run: INITs the nodes, writes the header, executes the windows (see the module
    docstring), shuts the nodes down and writes the footer, or the error record when a node fails."""

    def __init__(
        self,
        scenario: Scenario,
        nodes: Mapping[str, SimNode],
        trace: TraceWriter,
        *,
        endpoints: Mapping[str, Any] | None = None,
        environment: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
        exited_infrastructure: Callable[[float], list[tuple[str, int | None]]] | None = None,
        processes: ProcessControl | None = None,
        wakeup_sources: Iterable[WakeupSource] = (),
        checkpoints: Checkpoints | None = None,
        lookahead: bool = True,
        segment_worker: SegmentWorker | None = None,
    ) -> None:
        self.scenario = scenario
        self.trace = trace
        self.endpoints = dict(endpoints or {})
        self.environment = dict(environment or {})  # runtime facts for the header (not hashed)
        self.progress = progress
        self.exited_infrastructure = exited_infrastructure  # the runtime's: which infrastructure nodes have died
        self.checkpoints = checkpoints or Checkpoints()  # where to checkpoint, or what to resume from
        self.lookahead_enabled = lookahead  # let the services nothing sends to run a window ahead (same trace)
        self._quantum_us, self._end_us = scenario.quantum_us, scenario.duration_us
        self.now_us = 0
        self.step = 0
        self.stopped = False  # stopped after its last checkpoint (--stop-after-checkpoint)
        self.timings = StepTimings()
        # The parts (cosim.core), one job each.
        self.slots = Slots(nodes, [spec.id for spec in scenario.nodes if spec.id not in nodes])
        self.deliveries = Deliveries(Router(scenario), self.slots, trace)
        self.segments: Segments | None = None  # the ns-3 segments (cosim.core.segments), when the scenario has some
        if segment_worker is not None:
            self.segments = Segments(scenario, segment_worker, self.slots, trace, self.deliveries.dropped)
            self.deliveries.segment_pairs, self.deliveries.segment_send = self.segments.pairs, self.segments.send
            wakeup_sources = [*wakeup_sources, self.segments.wakeup]
        self.barriers = BarrierGroups(self.slots)
        self.policy: AdvancePolicy
        self._keeps_promises = scenario.advance == "next-event"  # (fixed: no node is held to a promise)
        if self._keeps_promises:
            self.policy = NextEventAdvance(self.slots, self._quantum_us, self.deliveries, self.barriers,
                                           wakeup_sources, has_schedule=bool(scenario.schedule))
        else:
            self.policy = FixedAdvance(self.slots, self._quantum_us)
        self.actions = ScheduledActions(scenario.schedule, scenario.seed, self.slots, self.deliveries.router,
                                        self.policy, self.barriers, trace, processes, self.endpoints)
        self._scheduled = bool(self.actions)  # (the schedule is fixed: asked once, not in every window)
        if self._scheduled:  # an action's window is a wake-up
            self.policy.add_wakeup_source(self.actions.wakeup)
        self.lookahead = Lookahead(self.slots, self._quantum_us, self._end_us, scenario.advance == "next-event",
                                   self.timings)

    def wake(self, node_id: str, time_us: int) -> None:
        """Advance ``node_id`` in the window holding ``time_us`` (> the time reached), as if an input reached it
        then: for what acts on a node from outside (e.g. a scheduled action), in either advance mode."""
        self.policy.wake(node_id, time_us)

    def run(self) -> SimulationResult:
        try:
            self._init_nodes()
            self.actions.check()
            self.checkpoints.check(self.slots)
            services = {slot.id: slot.node.info for slot in self.slots.driven if slot.node.info}
            self.trace.header(header_environment(self.environment, services), barrier_groups=self.barriers.groups)
            if self.checkpoints.resume is not None:
                self.restore(self.checkpoints.resume)
            loop_started, loop_cpu_started = time.monotonic(), time.process_time()
            with _no_full_collections():
                self._step_loop()
            self.timings.loop_s = time.monotonic() - loop_started
            self.timings.loop_cpu_s = time.process_time() - loop_cpu_started
            self._shutdown_nodes()
        except UnsupportedAction as refused:
            self.trace.error(0, refused.node, "unsupported_action", str(refused))
            raise
        except NodeFailure as symptom:
            # A service failing is often the symptom of infrastructure it used (the broker) dying: name that first.
            exited = self.exited_infrastructure(INFRASTRUCTURE_EXIT_WAIT_S) if self.exited_infrastructure else []
            exited = [(node_id, code) for node_id, code in exited if not self._down(node_id)]  # planned crashes
            failure = InfrastructureExited(exited, symptom) if exited else symptom
            self.trace.error(self.now_us, failure.node, "infrastructure_exited" if exited else "node_failure",
                             failure.problem + (f" (while waiting for the reply to {failure.in_flight})"
                                                if failure.in_flight else ""))
            if failure is symptom:
                raise
            raise failure from None
        except KeyboardInterrupt:
            self.trace.error(self.now_us, None, "interrupted", "the run was interrupted (Ctrl-C or SIGTERM)")
            raise Interrupted(f"interrupted at virtual time {self.now_us} us; the trace so far is kept") from None
        except EngineLost as lost:  # the engine, not a node: no node to blame, no infrastructure to ask
            self.trace.error(self.now_us, None, "engine_lost", lost.what)
            raise lost.at(self.now_us) from None
        except (SegmentWorkerFailed, OutputWriteError, CheckpointError) as failed:  # no node at fault; the run so far is kept
            kind = next(kind for kinds, kind in _ERROR_RECORDS if isinstance(failed, kinds))
            self.trace.error(self.now_us, None, kind, str(failed))
            raise
        except Exception as exc:  # a bug in cosim itself: still end the trace with what happened
            self.trace.error(self.now_us, None, "internal_error", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.trace.flush()
        steps = self.now_us // self._quantum_us if self.stopped else self.scenario.steps
        in_flight = len(self.deliveries.pending) + (len(self.segments.in_flight) if self.segments else 0)
        self.trace.footer(self.now_us, steps, in_flight=in_flight, executed={
            "steps": self.timings.steps, "advances": self.timings.advances, "skipped": self.timings.skipped},
            status="stopped" if self.stopped else "ok")
        self.trace.flush()
        return SimulationResult(self.now_us, steps, dict(self.trace.counts), dict(self.deliveries.unroutable),
                                self.timings, dict(sorted(self.deliveries.dropped.items())), list(self.actions.records))

    # -- the window loop --------------------------------------------------------------------------

    def _step_loop(self) -> None:
        """Execute windows until the end of the run: those the advance policy names (every quantum, or only those
        in which something can happen), with the checkpoints at their ends and in the quanta skipped."""
        quantum, end, at_us = self._quantum_us, self._end_us, self.checkpoints.at_us
        next_target, execute, progress = self.policy.next_target, self._execute, self.progress
        target = next_target(self.now_us)  # (now: 0, or a resumed checkpoint's time)
        self._skipped(self.now_us, target)
        while target <= end:
            if at_us and self._checkpoints_before(target):
                return
            execute(target)
            if progress is not None:
                progress(target, end)
            if at_us and target in at_us and self._checkpoint(target, 0):  # 8. checkpoint
                return
            following = next_target(target)
            if following != target + quantum:  # quanta skipped (next-event)
                self._skipped(target, following)
            target = following
        if self._checkpoints_before(end + quantum):
            return
        if self.now_us < end:  # the quanta after the last executed window passed without anything happening
            self.now_us = end
            if progress is not None:
                progress(end, end)  # the progress line ends at 100%

    def _execute(self, target_us: int) -> None:
        """The window ending at ``target_us``, phase by phase."""
        self.step += 1
        self.now_us = start_us = target_us - self._quantum_us  # the quanta before it passed: time is at its start
        if self._scheduled:
            self.actions.apply(start_us)  # 1. schedule
        inputs = self.deliveries.due(target_us) if self.deliveries.pending else {}  # 2. deliveries due (if any)
        if self.segments is not None:
            self.segments.deliver(start_us, inputs)  # (and those ns-3 computed up to the window's start)
        active, order = self.policy.choose(target_us, inputs)  # 3. choose
        if self.slots.down:  # crashed by the schedule: not advanced until restarted
            active = [slot for slot in active if not slot.down]
            order = [slot for slot in order if not slot.down]
        self._advance(target_us, order, inputs)  # 4. advance
        outputs = self._collect(target_us, active)  # 5. collect
        if self._keeps_promises:
            self.policy.keep_promises(target_us, outputs, inputs)  # 6. keep promises (next-event)
        self.now_us = target_us
        self.deliveries.route(outputs)  # 7. route

    def _advance(self, target_us: int, order: list[NodeSlot], inputs: Inputs) -> None:
        peers = self.barriers.peers(inputs) if self.barriers.groups else _NO_PEERS
        advances = 0
        for slot in order:
            if slot.ahead is not None:  # already computing this window (lookahead)
                self.lookahead.take(slot, target_us)
                continue
            if slot.group is not None:
                slot.node.begin_advance(target_us, inputs.get(slot.id, []), peers[slot.id])
            else:
                slot.node.begin_advance(target_us, inputs.get(slot.id, []) if inputs else [])
            advances += slot.process
        if advances:
            self.timings.advances += advances
        if self.trace.queue:
            self.trace.drain()  # the records of the windows so far are formatted while the services compute this one

    def _collect(self, target_us: int, active: list[NodeSlot]) -> Outputs:
        waiting_started = monotonic()
        outputs: Outputs = []
        for slot in active:
            outputs.append((slot, slot.node.end_advance()))
            if slot.runs_ahead:
                self.lookahead.send(slot, target_us)
        timings = self.timings
        timings.waiting_s += monotonic() - waiting_started
        timings.steps += 1
        return outputs

    def _skipped(self, now_us: int, target_us: int) -> None:
        """The quanta between ``now_us`` and the window ending at ``target_us`` are skipped (next-event)."""
        quantum = self._quantum_us
        self.timings.skipped += (min(target_us, self._end_us + quantum) - now_us) // quantum - 1

    # -- start and end ----------------------------------------------------------------------------

    def _init_nodes(self) -> None:
        """INIT every node (with its config as of a resumed checkpoint), then form the barrier groups, take the
        first promises and choose the services that run ahead."""
        started = time.monotonic()
        resume = self.checkpoints.resume
        for slot in self.slots.driven:
            if resume is not None:  # INIT gets each service's config as it was at the checkpoint
                config = resume["slots"][slot.id]["config"]
            else:
                spec = self.scenario.node(slot.id)
                config = spec.config if isinstance(spec, ContainerSpec) else {}
            slot.config = dict(config)
            slot.node.begin_init(node_seed(self.scenario.seed, slot.id), config, self.endpoints)
        for slot in self.slots.driven:  # every INIT is out before the first READY is awaited: they load in parallel
            slot.node.end_init()
        if self.segments is not None:  # (not hashed: the worker's ns-3 version and modules)
            self.environment["segment_worker"] = self.segments.start()
        self.barriers.form()
        self.policy.start()
        self.lookahead.choose(self.scenario, self.lookahead_enabled and not self.scenario.schedule
                              and not self.checkpoints.at_us)
        self.timings.init_s = time.monotonic() - started

    def _shutdown_nodes(self) -> None:
        started = time.monotonic()
        running = [slot.node for slot in self.slots.driven if not slot.down]
        for node in running:
            node.shutdown()
        for node in running:
            node.wait_closed()
        self.timings.shutdown_s = time.monotonic() - started

    def _down(self, node_id: str) -> bool:
        slot = self.slots.get(node_id)
        return slot is not None and slot.down

    # -- checkpoints ------------------------------------------------------------------------------

    def _checkpoints_before(self, target_us: int) -> bool:
        """Next-event: checkpoint in the quanta skipped before the window ending at ``target_us``; True to stop."""
        for time_us, skipped_after in self.checkpoints.skipped(self.now_us, target_us, self._quantum_us, self._end_us):
            if self._checkpoint(time_us, skipped_after):
                return True
        return False

    def _checkpoint(self, time_us: int, skipped_after: int) -> bool:
        """At the end of the window ending at ``time_us``: hand the run's state to the writer; True to stop here."""
        assert self.checkpoints.write is not None
        self.checkpoints.write(time_us, self.snapshot(time_us, skipped_after))
        if self.checkpoints.is_last(time_us):
            self.stopped = True
            self.now_us = time_us
            self.timings.skipped -= skipped_after  # the run ends here: the quanta after it were not skipped
        return self.stopped

    def snapshot(self, time_us: int, skipped_after: int = 0) -> dict[str, Any]:
        """The run's state at the end of the window ending at ``time_us`` (the last executed one, or a skipped one
        after it), gathered from the parts: the coordinator's, each slot's, each node's, and the trace so far.
        ``skipped_after``: quanta already counted as skipped that lie after ``time_us`` (next-event)."""
        return {
            "time_us": time_us,
            "step": self.step,
            "coordinator": {
                **self.deliveries.snapshot(),  # pending, router, dropped, unroutable
                **self.policy.snapshot(),  # extra_wakes (each node's promise is in its slot)
                "executed": {"steps": self.timings.steps, "advances": self.timings.advances,
                             "skipped": self.timings.skipped - skipped_after},
                "actions": self.actions.records,
                # The schedule's actions already applied (those of the windows before now); the rest apply after.
                "schedule_position": sum(1 for action in self.scenario.schedule.actions if action.at_us < time_us),
            },
            "slots": self.slots.snapshot(),
            "nodes": {slot.id: slot.node.snapshot() for slot in self.slots.driven},
            "trace": {"records": self.trace.records_so_far(), "counts": dict(self.trace.counts)},
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Resume from ``snapshot``'s state (after INIT and the header): RESTORE every node, take the parts' state
        back, replay the trace so far, then apply a fork's config changes (CONFIGURE at the checkpoint)."""
        self.now_us, self.step = saved["time_us"], saved["step"]
        for slot in self.slots.driven:
            slot.node.restore(saved["nodes"][slot.id])
        self.slots.restore(saved["slots"])
        state = saved["coordinator"]
        self.deliveries.restore(state)
        self.policy.restore(state)
        executed = state["executed"]
        self.timings.steps, self.timings.advances = executed["steps"], executed["advances"]
        self.timings.skipped = executed["skipped"]
        self.actions.records = list(state["actions"])
        self.trace.replay(saved["trace"]["records"], saved["trace"]["counts"])
        for node_id, changes in sorted(self.checkpoints.config_changes.items()):
            slot = self.slots[node_id]
            slot.config.update(changes)
            slot.node.configure(self.now_us, dict(changes))
            self.policy.renew(slot)  # CONFIGURED's promise (e.g. a new timer period)


@contextlib.contextmanager
def _no_full_collections() -> Iterator[None]:
    """No automatic full garbage collection during the step loop: the loop makes no reference cycles worth collecting
    (its events are plain dicts, lists and tuples, freed by reference counting), while the heap it scans grows with
    everything the sinks keep, so full collections would cost about a tenth of the loop. The young generations are
    still collected; the thresholds are restored afterwards."""
    thresholds = gc.get_threshold()
    gc.set_threshold(thresholds[0], thresholds[1], 1 << 30)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
