"""The coordinator: owns virtual time, advances the nodes on the quantum grid, routes events, writes the trace.

It knows nothing about Docker or processes: it drives ``SimNode`` objects. Each executed step, for the window
(now, target] (target on the quantum grid):

1. hand every node the events whose delivery time lies in the window, in the total order
   (delivery time, source, per-source sequence number, destination);
2. send ADVANCE to the window's active nodes (services first, so they compute while the in-process models do),
   then collect their DONE replies in scenario order (services compute concurrently);
3. number each node's outputs (per-source sequence), order them by (time, source, seq), and route them:
   each destination's link adds latency and seeded jitter and may drop the event.

Advance modes (the scenario's ``advance``): ``fixed`` executes every quantum and advances every node in it.
``next-event`` executes only the windows in which something can happen: the earliest quantum-aligned window
holding a pending delivery, a node's promised wake-up (DONE's ``next_us``) or another wake-up source's time, and
advances in it only the nodes with input, with a wake-up due, or without the capability (those are stepped
every quantum, as in fixed mode); the members of a barrier group move together. A skipped node's next ADVANCE
jumps straight to the window it is needed in. Windows stay on the grid, so every event gets the same virtual
time in both modes and the trace records are identical. A promise is checked: an output stamped before it that
no input of its window explains fails the node.

Links are at least one quantum long (the scenario checks this), so an event emitted in a window is always
delivered in a later one, at its exact virtual time.

Two things overlap the coordinator's work with the services' and change no record: the trace records of a window
are formatted (``TraceWriter.drain``) after the next window's ADVANCEs are out; and a service that no route leads
to (a pure source) gets its next ADVANCE as soon as its DONE is in (lookahead, ``_advance_ahead``): it can receive
nothing, so that ADVANCE depends on nothing routed in between, and it computes while the coordinator routes.

The scenario's schedule (cosim.schedule) is applied by one call at the start of a window, ``apply_schedule``,
before its deliveries: reconfigure (CONFIGURE to a service), link/partition/heal (the router), crash/restart
(through the runtime's ``ProcessControl``). A crashed node is not advanced; events due to it are dropped
(reason ``node_down``). In next-event mode each action's window is a wake-up, and a node whose promise an
action changes (a new config, a restart) is held to its new promise.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import time
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any, Callable, Iterable, Iterator, Mapping, Protocol

from cosim import protocol, schedule as scheduling, trace as tracing
from cosim.errors import (BrokenPromise, CheckpointError, InfrastructureExited, Interrupted, NodeFailure,
                          UnsupportedAction)
from cosim.network import Router
from cosim.nodes import Event, ServiceNode, SimNode
from cosim.model import ContainerSpec, Scenario
from cosim.seeds import node_seed
from cosim.trace import PayloadCell, TraceWriter, header_environment
from cosim.transport import Transport

Progress = Callable[[int, int], None]  # (virtual time now, duration), both in us
# Another source of wake-ups for the next-event loop (e.g. a schedule of actions): given the virtual time reached,
# the earliest later time at which it acts, or None. The window holding that time is executed.
WakeupSource = Callable[[int], "int | None"]
NEVER = 1 << 62  # a time after every run (2**62 us: about 146,000 years); also cosim.errors.BrokenPromise's
INFRASTRUCTURE_EXIT_WAIT_S = 1.0  # wall clock, on failure only: how long an infrastructure exit may take to show


class ProcessControl(Protocol):
    """What the schedule's crash and restart need from the runtime (both runtimes implement it)."""

    def crash(self, node_id: str) -> None:
        """Kill the node's process or container now (a planned crash: not a failure)."""
        ...

    def restart(self, node_id: str) -> Transport | None:
        """Start a fresh process or container for a crashed node: a service's new transport (None for an
        infrastructure node, reachable again at its old endpoint once this returns)."""
        ...


@dataclass(frozen=True)
class Checkpoints:
    """A run's checkpoints (cosim.checkpoint): the window ends to checkpoint at (``write`` gets each state), whether
    to stop after the last one, and the checkpoint content to resume from (with a fork's config changes)."""

    at_us: frozenset[int] = frozenset()
    write: Callable[[int, dict[str, Any]], None] | None = None
    stop_after: bool = False
    resume: Mapping[str, Any] | None = None
    config_changes: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # a fork's, applied at resume


@dataclass
class StepTimings:
    """Wall-clock costs (metrics only; never in the trace)."""

    steps: int = 0  # steps executed
    advances: int = 0  # ADVANCE messages sent to services
    ahead: int = 0  # of those, sent a window ahead (lookahead)
    skipped: int = 0  # quanta in which nothing could happen (next-event mode)
    waiting_s: float = 0.0  # time spent waiting for DONE replies
    loop_s: float = 0.0  # the step loop, wall clock
    loop_cpu_s: float = 0.0  # CPU time cosim's own process used in the step loop (its overhead)
    init_s: float = 0.0
    shutdown_s: float = 0.0


@dataclass
class SimulationResult:
    """What the step loop produced (the trace holds the details): end time, steps, record counts, unroutable
    events per (source, type), and the wall-clock timings (metrics only)."""

    end_us: int
    steps: int
    counts: dict[str, int]
    unroutable: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, type) -> count
    timings: StepTimings = field(default_factory=StepTimings)
    dropped: dict[str, int] = field(default_factory=dict)  # reason (loss, partition, node_down) -> count
    actions: list[dict[str, Any]] = field(default_factory=list)  # the schedule's action records, as traced


class Coordinator:
    """Owns virtual time for one run: INITs the nodes, writes the header, advances every node a quantum at a time
    while routing their events (see the module docstring), shuts them down and writes the footer, or the error
    record when a node fails. Knows nodes only through ``SimNode``; the runtime behind them is not its concern."""

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
    ) -> None:
        self.scenario = scenario
        self.nodes = dict(nodes)  # scenario order: the order ADVANCE goes out and DONE is collected
        self.trace = trace
        self.endpoints = dict(endpoints or {})
        self.environment = dict(environment or {})  # runtime facts for the header (not hashed)
        self.progress = progress
        self.exited_infrastructure = exited_infrastructure  # the runtime's: which infrastructure nodes have died
        self.router = Router(scenario)
        # The scenario's constants the step loop reads every window, at hand.
        self._quantum_us, self._end_us = scenario.quantum_us, scenario.duration_us
        self._has_schedule = bool(scenario.schedule)
        self.now_us = 0
        self.step = 0
        # heap: (time, source, seq, dest, event, its payload cell for the trace); (time, source, seq, dest) is unique
        self._pending: list[tuple[int, str, int, str, Event, PayloadCell]] = []
        self._types: dict[str, str] = {}  # event type -> its JSON
        self._next_seq: dict[str, int] = {node_id: 0 for node_id in self.nodes}
        self._always_publish: set[str] = set()
        # ADVANCE goes to the services first, so that they compute while the in-process models (sensors) do.
        self._advance_order = sorted(self.nodes, key=lambda node_id: not isinstance(self.nodes[node_id], ServiceNode))
        self.unroutable: dict[tuple[str, str], int] = {}
        self.timings = StepTimings()
        self.barrier_groups: dict[str, list[str]] = {}  # group -> member ids (sorted), from the READY replies
        self.processes = processes  # the runtime's crash/restart, for the schedule
        self.down: set[str] = set()  # nodes crashed by the schedule and not restarted yet
        self.configs: dict[str, dict[str, Any]] = {}  # each node's config as of now (reconfigure merges into it)
        self.restarts: dict[str, int] = {}  # node -> restarts so far
        self.lost: dict[str, int] = {}  # node -> events dropped (node_down) since its crash
        self.dropped: dict[str, int] = {}  # reason -> count, for the summary
        self.actions: list[dict[str, Any]] = []  # the action records written, for the summary
        self.next_event = scenario.advance == "next-event"
        self.wakeup_sources = list(wakeup_sources)
        if scenario.schedule:  # an action at t applies at the start of the window (t, t + quantum]: wake in it
            self.wakeup_sources.append(_action_wakeup(scenario.schedule))
        self._index = {node_id: index for index, node_id in enumerate(self.nodes)}
        self._services = {node_id for node_id, node in self.nodes.items() if isinstance(node, ServiceNode)}
        # Next-event bookkeeping (filled once READY has said who declares the capability):
        self._stepped: list[str] = []  # nodes without the capability: advanced every quantum
        self._promise: dict[str, int] = {}  # capable node -> its promised wake-up (NEVER: only on input)
        self._wakes: list[tuple[int, str]] = []  # heap of (promised time, node); stale entries are skipped
        # The nodes whose DONE promised a time in the very next window (a node busy every quantum: no heap for them).
        # Stale entries (a promise an action changed since) are skipped: their promise is no longer due.
        self._soon: list[str] = []
        self._extra_wakes: list[tuple[int, str]] = []  # heap of (time, node) from ``wake``: outside the nodes
        self._group_of: dict[str, list[str]] = {}  # barrier-group member -> the group's members
        self._woken: dict[str, int] = {}  # node -> earliest ``wake`` time of the window being executed
        self._all = list(self.nodes)
        # Lookahead (``_advance_ahead``): the services that run a window ahead, and where each was sent (with the
        # failure of that send, reported when its window comes).
        self._runs_ahead: frozenset[str] = frozenset()
        self._ahead: dict[str, tuple[int, NodeFailure | None]] = {}
        self.checkpoints = checkpoints or Checkpoints()  # where to checkpoint, or what to resume from
        self.lookahead = lookahead  # let the services nothing sends to run a window ahead (same trace either way)
        self.stopped = False  # stopped after its last checkpoint (--stop-after-checkpoint)

    def run(self) -> SimulationResult:
        try:
            resume = self.checkpoints.resume
            if resume is not None:  # INIT gets each service's config as it was at the checkpoint
                self.configs = {node_id: dict(config) for node_id, config in resume["coordinator"]["configs"].items()}
            self._init_nodes()
            self._check_schedule()
            self._check_checkpoints()
            services = {node_id: node.info for node_id, node in self.nodes.items() if node.info}
            self.trace.header(header_environment(self.environment, services), barrier_groups=self.barrier_groups)
            if resume is not None:
                self.restore(resume)
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
            exited = [(node_id, code) for node_id, code in exited if node_id not in self.down]  # planned crashes
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
        except CheckpointError as failed:  # e.g. the disk is full: the run so far is kept
            self.trace.error(self.now_us, None, "checkpoint_failed", str(failed))
            raise
        except Exception as exc:  # a bug in cosim itself: still end the trace with what happened
            self.trace.error(self.now_us, None, "internal_error", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.trace.flush()
        steps = self.now_us // self.scenario.quantum_us if self.stopped else self.scenario.steps
        self.trace.footer(self.now_us, steps, in_flight=len(self._pending), executed={
            "steps": self.timings.steps, "advances": self.timings.advances, "skipped": self.timings.skipped},
            status="stopped" if self.stopped else "ok")
        self.trace.flush()
        return SimulationResult(self.now_us, steps, dict(self.trace.counts), dict(self.unroutable),
                                self.timings, dict(sorted(self.dropped.items())), list(self.actions))

    def wake(self, node_id: str, time_us: int) -> None:
        """Advance ``node_id`` in the window holding ``time_us`` (> the time reached), as if an input reached it
        then: for what acts on a node from outside (e.g. a scheduled action), in either advance mode."""
        heapq.heappush(self._extra_wakes, (time_us, node_id))

    def _step_loop(self) -> None:
        """Execute windows until the end of the run: every quantum (fixed), or only those in which something can
        happen (next-event: READY carried each node's first promise, so an idle node is never advanced)."""
        quantum, end = self.scenario.quantum_us, self.scenario.duration_us
        start = self.now_us  # 0, or a resumed checkpoint's time
        target = self._next_window() if self.next_event else start + quantum
        self.timings.skipped += (min(target, end + quantum) - start) // quantum - 1
        schedule = self.scenario.schedule
        checkpoints = self.checkpoints.at_us  # usually none: the per-step checks then cost nothing
        while target <= end:
            if checkpoints and self._checkpoints_before(target):
                return
            self.step += 1
            if schedule:
                self.now_us = target - quantum
                self.apply_schedule(self.now_us)
            self._advance(target)
            if self.progress is not None:
                self.progress(self.now_us, end)
            if checkpoints and self.now_us in checkpoints and self._checkpoint(self.now_us, 0):
                return
            following = self._next_window() if self.next_event else target + quantum
            self.timings.skipped += (min(following, end + quantum) - target) // quantum - 1
            target = following
        if self._checkpoints_before(end + quantum):
            return
        if self.now_us < end:  # the quanta after the last executed window passed without anything happening
            self.now_us = end
            if self.progress is not None:
                self.progress(end, end)  # the progress line ends at 100%

    def _next_window(self) -> int:
        """The target of the earliest quantum-aligned window after the one just executed that holds a pending
        delivery, a promised wake-up or another source's wake-up (every quantum while a node lacks the capability)."""
        if self._stepped or self._soon:
            return self.now_us + self._quantum_us
        quantum = self._quantum_us
        following = self.now_us + quantum
        earliest = self._pending[0][0] if self._pending else NEVER
        wakes = self._wakes
        while wakes and self._promise.get(wakes[0][1]) != wakes[0][0]:
            heapq.heappop(wakes)  # a promise replaced by a later DONE
        if wakes and wakes[0][0] < earliest:
            earliest = wakes[0][0]
        if self._extra_wakes and self._extra_wakes[0][0] < earliest:
            earliest = self._extra_wakes[0][0]
        for source in self.wakeup_sources:
            at = source(self.now_us)
            if at is not None and at < earliest:
                earliest = at
        return max(following, -(-earliest // quantum) * quantum)

    # -- phases -----------------------------------------------------------------------------------

    def _init_nodes(self) -> None:
        started = time.monotonic()
        for node_id, node in self.nodes.items():
            spec = self.scenario.node(node_id)
            config = self.configs.get(node_id, spec.config if isinstance(spec, ContainerSpec) else {})
            self.configs[node_id] = dict(config)
            node.init(node_seed(self.scenario.seed, node_id), config, self.endpoints)
            group = node.barrier_group
            if group is not None:
                self.barrier_groups.setdefault(group, []).append(node_id)
        for members in self.barrier_groups.values():
            members.sort()
            for node_id in members:
                self.nodes[node_id].join_barrier_group(members)
        self._always_publish = {node_id for node_id, node in self.nodes.items()
                                if node.barrier_group is not None and not node.publishes_on_input_only}
        if self.next_event:
            self._stepped = [node_id for node_id, node in self.nodes.items() if not node.next_event]
            # The first promises, from READY (in-process models: their first sample, or none).
            self._promise = {node_id: NEVER if node.next_us is None else node.next_us
                             for node_id, node in self.nodes.items() if node.next_event}
            self._wakes = [(at, node_id) for node_id, at in self._promise.items() if at != NEVER]
            heapq.heapify(self._wakes)
        self._group_of = {node_id: members for members in self.barrier_groups.values() for node_id in members}
        self._runs_ahead = self._lookahead_nodes()
        self.timings.init_s = time.monotonic() - started

    def _lookahead_nodes(self) -> frozenset[str]:
        """The services that may run a window ahead: no route leads to them (they can get no input, so their next
        ADVANCE depends on nothing routed in this window) and they share no barrier group. Not in a run with a
        schedule (its actions talk to services between windows) or checkpoints (taken at window boundaries)."""
        if not self.lookahead or self.scenario.schedule or self.checkpoints.at_us:
            return frozenset()
        fed = {replica for route in self.scenario.routes for target in route.targets
               for replica in self.scenario.groups.get(target, (target,))}
        return frozenset(node_id for node_id in self._services
                         if node_id not in fed and self.nodes[node_id].barrier_group is None)

    def _window_peers(self, inputs: Mapping[str, list[Event]]) -> dict[str, list[str]]:
        """Per barrier-group member: the members that may publish to the group in this window (the members are
        advanced together, in every executed step where one of them is; an "on_input" member may publish only when
        it has input events; a crashed one never)."""
        peers: dict[str, list[str]] = {}
        for members in self.barrier_groups.values():
            active = [m for m in members if (m in self._always_publish or m in inputs) and m not in self.down]
            for member in members:
                peers[member] = active
        return peers

    def _advance(self, target_us: int) -> None:
        # The quanta before this window passed without anything happening: virtual time has reached its start.
        self.now_us = target_us - self._quantum_us
        inputs = self._due(target_us)
        if self.next_event:
            active, order = self._active(target_us, inputs)
        else:
            active, order = self._all, self._advance_order
        if self.down:  # crashed by the schedule: not advanced until restarted
            active = [node_id for node_id in active if node_id not in self.down]
            order = [node_id for node_id in order if node_id not in self.down]
        peers = self._window_peers(inputs) if self.barrier_groups else {}
        services, ahead = self._services, self._ahead
        for node_id in order:
            node = self.nodes[node_id]
            if ahead and node_id in ahead:  # already computing this window (lookahead)
                self._take_ahead(node_id, target_us)
                continue
            if node_id in peers:
                node.begin_advance(target_us, inputs.get(node_id, []), peers[node_id])
            else:
                node.begin_advance(target_us, inputs.get(node_id, []))
            if node_id in services:
                self.timings.advances += 1
        self.trace.drain()  # the records of the windows so far are formatted while the services compute this one
        waiting_started = time.monotonic()
        outputs = []
        runs_ahead = self._runs_ahead
        for node_id in active:
            outputs.append((node_id, self.nodes[node_id].end_advance()))
            if node_id in runs_ahead:
                self._advance_ahead(node_id, target_us)
        self.timings.waiting_s += time.monotonic() - waiting_started
        self.timings.steps += 1
        if self._promise:
            self._keep_promises(target_us, outputs, inputs)
        self.now_us = target_us
        self._route(outputs)

    def _advance_ahead(self, node_id: str, target_us: int) -> None:
        """Lookahead: send a node that nothing can send to its next ADVANCE as soon as its DONE for the window ending
        at ``target_us`` is in, so that it computes the next window it is needed in while this one is routed. That
        window is known now: the next quantum (fixed mode, or a node without the capability), or the one holding its
        promise. Never past the end of the run."""
        node, quantum = self.nodes[node_id], self._quantum_us
        if self.next_event and node.next_event:
            promise = node.next_us
            if promise is None:
                return  # only on input, and it gets none: never again
            following = -(-promise // quantum) * quantum
        else:
            following = target_us + quantum
        if following > self._end_us:
            return
        try:
            node.begin_advance(following, [])
        except NodeFailure as failure:  # (e.g. its stdin closed): reported in that window, as without lookahead
            self._ahead[node_id] = (following, failure)
            return
        self.timings.advances += 1
        self.timings.ahead += 1
        self._ahead[node_id] = (following, None)

    def _take_ahead(self, node_id: str, target_us: int) -> None:
        """The window a node was sent ahead to has come: its DONE is collected with the others'."""
        following, failure = self._ahead.pop(node_id)
        if following != target_us:  # the promise the lookahead relied on is the one the loop executes: a bug if not
            raise RuntimeError(f"lookahead sent {node_id!r} to {following} us, but the window ends at {target_us} us")
        if failure is not None:
            raise failure

    def _active(self, target_us: int, inputs: Mapping[str, list[Event]]) -> tuple[list[str], list[str]]:
        """The nodes to advance in the window ending at ``target_us``, in scenario order and in ADVANCE order: those
        with input, a wake-up due, or no capability; a barrier group's members all, when one of them is."""
        chosen = set(inputs)
        if self._stepped:
            chosen.update(self._stepped)
        soon = self._soon
        if soon:
            if self._has_schedule:  # an action may have moved a promise since (``_renew_promise``, ``_crash``)
                chosen.update(node_id for node_id in soon if self._promise[node_id] <= target_us)
            else:
                chosen.update(soon)
            soon.clear()
        wakes = self._wakes
        while wakes and wakes[0][0] <= target_us:
            at, node_id = heapq.heappop(wakes)
            if self._promise.get(node_id) == at:
                chosen.add(node_id)
        if self._woken:
            self._woken.clear()
        while self._extra_wakes and self._extra_wakes[0][0] <= target_us:
            at, node_id = heapq.heappop(self._extra_wakes)
            self._woken[node_id] = min(at, self._woken.get(node_id, at))
            chosen.add(node_id)
        if self._group_of:
            for node_id in [n for n in chosen if n in self._group_of]:
                chosen.update(self._group_of[node_id])
        if len(chosen) == len(self.nodes):
            return self._all, self._advance_order
        active = sorted(chosen, key=self._index.__getitem__)
        return active, [n for n in active if n in self._services] + [n for n in active if n not in self._services]

    def _keep_promises(self, target_us: int, outputs: list[tuple[str, list[Event]]],
                       inputs: Mapping[str, list[Event]]) -> None:
        """Check each capable node's outputs against the promise it made before this window (next-event mode),
        then record its new one: in ``_soon`` when it lies in the next window (a node busy every quantum), else on
        the heap. With barrier groups every check comes first: a member's check reads the others' promises."""
        promises, nodes, soon = self._promise, self.nodes, self._soon
        next_window_end = target_us + self._quantum_us
        grouped = bool(self._group_of)
        if grouped:
            for node_id, events in outputs:
                self._check_promise(node_id, events, target_us, inputs)
        for node_id, events in outputs:
            promised = promises.get(node_id)
            if promised is None:
                continue  # stepped every quantum: it promises nothing
            if events and not grouped:
                for event in events:
                    if event["time_us"] < promised:  # (a node that kept its promise never gets here)
                        self._check_promise(node_id, events, target_us, inputs)
                        break
            promise = nodes[node_id].next_us
            if promise is None:
                if promised != NEVER:
                    promises[node_id] = NEVER
            elif promise != promised:
                promises[node_id] = promise
                if promise <= next_window_end:
                    soon.append(node_id)
                else:
                    heapq.heappush(self._wakes, (promise, node_id))

    def _check_promise(self, node_id: str, events: list[Event], target_us: int,
                       inputs: Mapping[str, list[Event]]) -> None:
        """An output stamped before the node's promise must follow an input of its window (or a wake-up, see
        ``_earliest_cause``); else the node broke its promise."""
        promised = self._promise.get(node_id)
        if promised is None:
            return  # stepped every quantum: it promises nothing
        cause = None  # looked for only when an output comes before the promise
        for event in events:
            if event["time_us"] < promised:
                if cause is None:
                    cause = min(promised, self._earliest_cause(node_id, target_us, inputs))
                if event["time_us"] < cause:
                    raise BrokenPromise(node_id, promised, event, target_us)

    def _earliest_cause(self, node_id: str, target_us: int, inputs: Mapping[str, list[Event]]) -> int:
        """The earliest time in this window that explains an output of ``node_id``: its earliest input, or a wake-up
        from ``wake``. The members of a barrier group share a medium: their inputs and due promises count too."""
        earliest = self._woken.get(node_id, NEVER)
        for member in self._group_of.get(node_id, (node_id,)):
            events = inputs.get(member)
            if events and events[0]["time_us"] < earliest:
                earliest = events[0]["time_us"]
            promised = self._promise.get(member, NEVER)
            if member != node_id and promised <= target_us:
                earliest = min(earliest, promised)
        return earliest

    def _shutdown_nodes(self) -> None:
        started = time.monotonic()
        running = [node for node_id, node in self.nodes.items() if node_id not in self.down]
        for node in running:
            node.shutdown()
        for node in running:
            node.wait_closed()
        self.timings.shutdown_s = time.monotonic() - started

    # -- events -----------------------------------------------------------------------------------

    def _due(self, target_us: int) -> dict[str, list[Event]]:
        """Pop every pending delivery with time <= target, record it, and group it by destination."""
        inputs: dict[str, list[Event]] = {}
        pending, types, down = self._pending, self._types, self.down
        pop, record, delivered_kind = heapq.heappop, self.trace.queue.append, tracing.DELIVERED
        while pending and pending[0][0] <= target_us:
            time_us, source, seq, dest, event, payload = pop(pending)
            kind, sent_us = event["type"], event["time_us"]
            if down and dest in down:  # a crashed node: what reaches it is lost
                self.lost[dest] = self.lost.get(dest, 0) + 1
                self.dropped["node_down"] = self.dropped.get("node_down", 0) + 1
                self.trace.write({"record": "dropped", "dest": dest, "reason": "node_down", "time_us": sent_us,
                                  "at_us": time_us, "source": source, "seq": seq, "type": kind,
                                  "data": payload[0]})
                continue
            record((delivered_kind, payload, (dest, sent_us, seq, source, time_us, types.get(kind) or self._type_json(kind))))
            delivered = {"type": kind, "time_us": time_us, "source": source, "seq": seq, "sent_us": sent_us,
                         "data": payload[0]}
            received = inputs.get(dest)
            if received is None:
                inputs[dest] = [delivered]
            else:
                received.append(delivered)
        return inputs

    def _type_json(self, event_type: str) -> str:
        """An event type as JSON, encoded once per type (the trace lines are built around it)."""
        encoded = self._types.get(event_type)
        if encoded is None:
            encoded = self._types[event_type] = protocol.canonical(event_type)
        return encoded

    def _route(self, outputs: list[tuple[str, list[Event]]]) -> None:
        numbered: list[tuple[int, str, int, Event]] = []
        sources = 0
        next_seq = self._next_seq
        for source, events in outputs:
            if not events:
                continue
            sources += 1
            # A node's events are numbered in time order; same-time events keep the order the node gave them.
            if len(events) > 1:
                events = sorted(events, key=_TIME_OF)
            first = next_seq[source]
            next_seq[source] = first + len(events)
            numbered += [(event["time_us"], source, first + offset, event) for offset, event in enumerate(events)]
        if sources > 1:  # (time, source, seq) is unique: the events themselves are never compared
            numbered.sort()
        trace, router, pending, types = self.trace, self.router, self._pending, self._types
        record, split, delivery_time, push = trace.queue.append, router.split, router.delivery_time, heapq.heappush
        sent_kind, dropped_kind = tracing.SENT, tracing.DROPPED
        for time_us, source, seq, event in numbered:
            kind = event["type"]
            type_json = types.get(kind) or self._type_json(kind)
            # The payload is encoded once (when the trace drains): its sent, delivered and dropped records share it.
            payload = [event.get("data"), None]
            record((sent_kind, payload, (seq, source, time_us, type_json)))
            dests, filtered = split(source, kind, time_us)
            if filtered:  # routes whose `during:` windows leave this event out
                for dest in filtered:
                    trace.write({"record": "filtered", "dest": dest, "time_us": time_us, "source": source, "seq": seq,
                                 "type": kind, "data": payload[0]})
                if not dests:
                    continue
            if not dests:
                key = (source, kind)
                self.unroutable[key] = self.unroutable.get(key, 0) + 1
                record((tracing.UNROUTABLE, payload, (seq, source, time_us, type_json)))
                continue
            for dest in dests:
                at = delivery_time(source, dest, time_us)
                if at.__class__ is int:
                    push(pending, (at, source, seq, dest, event, payload))
                else:  # the reason it is dropped
                    self.dropped[at] = self.dropped.get(at, 0) + 1  # type: ignore[index]
                    record((dropped_kind, payload, (dest, at, seq, source, time_us, type_json)))

    # -- checkpoints ------------------------------------------------------------------------------

    def _check_checkpoints(self) -> None:
        """Before the first step: every service must be able to checkpoint (SNAPSHOT) or be restored (RESTORE)."""
        if not self.checkpoints.at_us and self.checkpoints.resume is None:
            return
        for node_id, node in self.nodes.items():
            if isinstance(node, ServiceNode) and "snapshot" not in node.capabilities:
                what = "--checkpoint-at" if self.checkpoints.at_us else "resume"
                raise UnsupportedAction(node_id, f"{what}: service {node_id!r} did not declare the 'snapshot' "
                                        f"capability in READY (it declared {sorted(node.capabilities)}); it cannot be "
                                        f"checkpointed or restored")
        for node_id in self.checkpoints.config_changes:
            if "configure" not in self.nodes[node_id].capabilities:  # type: ignore[attr-defined]
                raise UnsupportedAction(node_id, f"fork: the variant changes the config of {node_id!r}, but the "
                                        f"service did not declare the 'configure' capability in READY")

    def _checkpoints_before(self, target_us: int) -> bool:
        """Next-event: the checkpoints in the quanta skipped before the window ending at ``target_us`` (nothing happens
        in them: the state at their end is the state now). True to stop there."""
        quantum = self.scenario.quantum_us
        for time_us in sorted(t for t in self.checkpoints.at_us if self.now_us < t < target_us):
            # The skipped count already covers the whole gap; the checkpoint's covers it only up to its time.
            if self._checkpoint(time_us, (min(target_us, self.scenario.duration_us + quantum) - time_us) // quantum - 1):
                return True
        return False

    def _checkpoint(self, time_us: int, skipped_after: int) -> bool:
        """At the end of the window ending at ``time_us``: hand the run's state to the writer; True to stop here."""
        assert self.checkpoints.write is not None
        self.checkpoints.write(time_us, self.snapshot(time_us, skipped_after))
        if self.checkpoints.stop_after and time_us == max(self.checkpoints.at_us):
            self.stopped = True
            self.now_us = time_us
            self.timings.skipped -= skipped_after  # the run ends here: the quanta after it were not skipped
        return self.stopped

    def snapshot(self, time_us: int, skipped_after: int = 0) -> dict[str, Any]:
        """The run's state at the end of the window ending at ``time_us`` (the last executed one, or a skipped one
        after it): the coordinator's, each node's, and the trace so far. ``skipped_after``: quanta already counted
        as skipped that lie after ``time_us`` (next-event)."""
        return {
            "time_us": time_us,
            "step": self.step,
            "coordinator": {
                "pending": [[*entry[:5], tracing.payload_json(entry[5])] for entry in sorted(self._pending)],
                "executed": {"steps": self.timings.steps, "advances": self.timings.advances,
                             "skipped": self.timings.skipped - skipped_after},
                # Next-event: each capable node's promised wake-up and the other wake-ups requested (their last
                # advanced time is the node's own, in ``nodes``).
                "promises": dict(self._promise),
                "extra_wakes": [list(wake) for wake in sorted(self._extra_wakes)],
                "next_seq": dict(self._next_seq),
                "router": self.router.snapshot(),
                "configs": self.configs,
                "restarts": self.restarts,
                "lost": self.lost,
                "dropped": self.dropped,
                "unroutable": [[source, kind, count] for (source, kind), count in sorted(self.unroutable.items())],
                "actions": self.actions,
                # The schedule's actions already applied (those of the windows before now); the rest apply after.
                "schedule_position": sum(1 for action in self.scenario.schedule.actions if action.at_us < time_us),
            },
            "nodes": {node_id: node.snapshot() for node_id, node in self.nodes.items()},
            "trace": {"records": self.trace.records_so_far(), "counts": dict(self.trace.counts)},
        }

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Resume from ``snapshot``'s state (after INIT and the header): RESTORE every node, take the coordinator's
        state back, replay the trace so far, then apply a fork's config changes (CONFIGURE at the checkpoint)."""
        self.now_us, self.step = saved["time_us"], saved["step"]
        for node_id, node in self.nodes.items():
            node.restore(saved["nodes"][node_id])
        state = saved["coordinator"]
        self._pending = [(*entry[:5], [entry[4].get("data"), entry[5]]) for entry in state["pending"]]  # type: ignore[misc]
        heapq.heapify(self._pending)
        executed = state["executed"]
        self.timings.steps, self.timings.advances = executed["steps"], executed["advances"]
        self.timings.skipped = executed["skipped"]
        if self._promise:  # next-event (the same mode as the checkpointed run's)
            self._promise = dict(state["promises"])
            self._wakes = [(at, node_id) for node_id, at in self._promise.items() if at != NEVER]
            heapq.heapify(self._wakes)
            self._soon = []  # (the heap holds every promise now)
        self._extra_wakes = [(at, node_id) for at, node_id in state["extra_wakes"]]
        heapq.heapify(self._extra_wakes)
        self._next_seq = dict(state["next_seq"])
        self.router.restore(state["router"])
        self.restarts, self.lost, self.dropped = dict(state["restarts"]), dict(state["lost"]), dict(state["dropped"])
        self.unroutable = {(source, kind): count for source, kind, count in state["unroutable"]}
        self.actions = list(state["actions"])
        self.trace.replay(saved["trace"]["records"], saved["trace"]["counts"])
        for node_id, changes in sorted(self.checkpoints.config_changes.items()):
            self.configs[node_id].update(changes)
            self.nodes[node_id].configure(self.now_us, dict(changes))
            self._renew_promise(node_id)  # CONFIGURED's promise (e.g. a new timer period)

    # -- the schedule -----------------------------------------------------------------------------

    def _check_schedule(self) -> None:
        """Before the first step: every service the schedule reconfigures must have declared it can be."""
        for action in self.scenario.schedule.actions:
            if isinstance(action, scheduling.Reconfigure):
                node = self.nodes[action.node]
                if isinstance(node, ServiceNode) and "configure" not in node.capabilities:
                    raise UnsupportedAction(action.node, f"schedule: reconfigure of {action.node!r} at {action.at_us} us, "
                                            f"but the service did not declare the 'configure' capability in READY "
                                            f"(it declared {sorted(node.capabilities)}); it cannot take new config "
                                            f"during a run")
            elif isinstance(action, scheduling.Crash) and self.processes is None:
                raise UnsupportedAction(action.node, f"schedule: {action.kind} of {action.node!r} at {action.at_us} us, "
                                        f"but this runtime cannot crash or restart nodes")

    def apply_schedule(self, start_us: int) -> None:
        """Apply the actions due at the start of the window beginning at ``start_us`` (one trace record each)."""
        if not self.scenario.schedule:
            return
        for action in self.scenario.schedule.due(start_us):
            record = {"record": "action", "time_us": start_us, "action": action.kind, **action.fields()}
            record.update(self._apply(action, start_us))
            self.trace.write(record)
            self.actions.append(record)

    def _apply(self, action: scheduling.Action, now_us: int) -> dict[str, Any]:
        """Carry out one action; what it observed for the trace (e.g. what a restarted node lost)."""
        if isinstance(action, scheduling.Reconfigure):
            self.configs[action.node].update(action.config)
            if action.node not in self.down:  # else: a restart gets the merged config in its INIT
                self.nodes[action.node].configure(now_us, dict(action.config))
                self._renew_promise(action.node)
            return {}
        if isinstance(action, scheduling.SetLink):
            self.router.set_link(action.source, action.dest, action.changes)
        elif isinstance(action, scheduling.Partition):
            self.router.partition(action.groups)
        elif isinstance(action, scheduling.Heal):
            self.router.heal()
        elif isinstance(action, scheduling.Restart):  # (a Restart is a kind of Crash: test it first)
            return self._restart(action.node, now_us)
        elif isinstance(action, scheduling.Crash):
            self._crash(action.node, now_us)
        return {}

    def _configurable(self) -> list[ServiceNode]:
        return [node for node_id, node in self.nodes.items()
                if isinstance(node, ServiceNode) and node_id not in self.down and "configure" in node.capabilities]

    def _crash(self, node_id: str, now_us: int) -> None:
        assert self.processes is not None
        node = self.nodes.get(node_id)
        if node is None:  # infrastructure: its users hear first (they let go of it in order), then it dies
            for user in self._configurable():
                user.configure(now_us, endpoints={node_id: None})
                self._renew_promise(user.id)
        self.processes.crash(node_id)
        if isinstance(node, ServiceNode):
            node.crashed()
        self.down.add(node_id)
        if node_id in self._promise:
            self._promise[node_id] = NEVER  # a crashed node acts on nothing; its restart promises anew
        self.lost[node_id] = 0

    def _restart(self, node_id: str, now_us: int) -> dict[str, Any]:
        assert self.processes is not None
        transport = self.processes.restart(node_id)
        self.down.discard(node_id)
        count = self.restarts[node_id] = self.restarts.get(node_id, 0) + 1
        node = self.nodes.get(node_id)
        if isinstance(node, ServiceNode) and transport is not None:
            node.restarted(transport, now_us, node_seed(self.scenario.seed, node_id), self.configs[node_id],
                           self.endpoints, count)
            self._renew_promise(node_id)  # READY's first promise, from where it resumes
            group = node.barrier_group
            if group is not None:
                node.join_barrier_group(self.barrier_groups.get(group, [node_id]))  # sent again in its first ADVANCE
        else:  # infrastructure, back at its endpoint: its users reconnect
            for user in self._configurable():
                user.configure(now_us, endpoints={node_id: self.endpoints.get(node_id)})
                self._renew_promise(user.id)
        return {"restart": count, "lost": self.lost.pop(node_id, 0)}

    def _renew_promise(self, node_id: str) -> None:
        """After an action changed a capable node (new config, restart): hold it to the promise it now makes."""
        if node_id not in self._promise:
            return  # fixed mode, or a node stepped every quantum
        promise = self.nodes[node_id].next_us
        promise = NEVER if promise is None else promise
        if promise != self._promise[node_id]:
            self._promise[node_id] = promise
            if promise != NEVER:
                heapq.heappush(self._wakes, (promise, node_id))


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


_TIME_OF = itemgetter("time_us")  # an event's time (a C function: the sort key of every window's outputs)


def _action_wakeup(schedule: scheduling.Schedule) -> WakeupSource:
    """The schedule as a wake-up source: an action at t (on the grid) needs the window (t, t + quantum] executed,
    so after reaching ``now`` the next wake-up is one microsecond after the next action at or after ``now``."""

    def next_wakeup(now_us: int) -> int | None:
        at = schedule.next_time(now_us)
        return None if at is None else at + 1

    return next_wakeup
