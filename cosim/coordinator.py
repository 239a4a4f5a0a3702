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
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from cosim import protocol
from cosim.errors import BrokenPromise, InfrastructureExited, Interrupted, NodeFailure
from cosim.network import Router
from cosim.nodes import Event, ServiceNode, SimNode
from cosim.model import ContainerSpec, Scenario
from cosim.seeds import node_seed
from cosim.trace import TraceWriter, header_environment

Progress = Callable[[int, int], None]  # (virtual time now, duration), both in us
# Another source of wake-ups for the next-event loop (e.g. a schedule of actions): given the virtual time reached,
# the earliest later time at which it acts, or None. The window holding that time is executed.
WakeupSource = Callable[[int], "int | None"]
NEVER = 1 << 62  # a time after every run (2**62 us: about 146,000 years); also cosim.errors.BrokenPromise's
INFRASTRUCTURE_EXIT_WAIT_S = 1.0  # wall clock, on failure only: how long an infrastructure exit may take to show


@dataclass
class StepTimings:
    """Wall-clock costs (metrics only; never in the trace)."""

    steps: int = 0  # steps executed
    advances: int = 0  # ADVANCE messages sent to services
    skipped: int = 0  # quanta in which nothing could happen (next-event mode)
    wall_s: float = 0.0
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
        wakeup_sources: Iterable[WakeupSource] = (),
    ) -> None:
        self.scenario = scenario
        self.nodes = dict(nodes)  # scenario order: the order ADVANCE goes out and DONE is collected
        self.trace = trace
        self.endpoints = dict(endpoints or {})
        self.environment = dict(environment or {})  # runtime facts for the header (not hashed)
        self.progress = progress
        self.exited_infrastructure = exited_infrastructure  # the runtime's: which infrastructure nodes have died
        self.router = Router(scenario)
        self.now_us = 0
        self.step = 0
        # heap: (time, source, seq, dest, event, its data as JSON); (time, source, seq, dest) is unique
        self._pending: list[tuple[int, str, int, str, Event, str]] = []
        self._types: dict[str, str] = {}  # event type -> its JSON
        self._next_seq: dict[str, int] = {node_id: 0 for node_id in self.nodes}
        self._always_publish: set[str] = set()
        # ADVANCE goes to the services first, so that they compute while the in-process models (sensors) do.
        self._advance_order = sorted(self.nodes, key=lambda node_id: not isinstance(self.nodes[node_id], ServiceNode))
        self.unroutable: dict[tuple[str, str], int] = {}
        self.timings = StepTimings()
        self.barrier_groups: dict[str, list[str]] = {}  # group -> member ids (sorted), from the READY replies
        self.next_event = scenario.advance == "next-event"
        self.wakeup_sources = list(wakeup_sources)
        self._index = {node_id: index for index, node_id in enumerate(self.nodes)}
        self._services = {node_id for node_id, node in self.nodes.items() if isinstance(node, ServiceNode)}
        # Next-event bookkeeping (filled once READY has said who declares the capability):
        self._stepped: list[str] = []  # nodes without the capability: advanced every quantum
        self._promise: dict[str, int] = {}  # capable node -> its promised wake-up (NEVER: only on input)
        self._wakes: list[tuple[int, str]] = []  # heap of (promised time, node); stale entries are skipped
        self._extra_wakes: list[tuple[int, str]] = []  # heap of (time, node) from ``wake``: outside the nodes
        self._group_of: dict[str, list[str]] = {}  # barrier-group member -> the group's members
        self._woken: dict[str, int] = {}  # node -> earliest ``wake`` time of the window being executed
        self._all = list(self.nodes)

    def run(self) -> SimulationResult:
        started = time.monotonic()
        try:
            self._init_nodes()
            services = {node_id: node.info for node_id, node in self.nodes.items() if node.info}
            self.trace.header(header_environment(self.environment, services), barrier_groups=self.barrier_groups)
            loop_started, loop_cpu_started = time.monotonic(), time.process_time()
            self._step_loop()
            self.timings.loop_s = time.monotonic() - loop_started
            self.timings.loop_cpu_s = time.process_time() - loop_cpu_started
            self._shutdown_nodes()
        except NodeFailure as symptom:
            # A service failing is often the symptom of infrastructure it used (the broker) dying: name that first.
            exited = self.exited_infrastructure(INFRASTRUCTURE_EXIT_WAIT_S) if self.exited_infrastructure else []
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
        except Exception as exc:  # a bug in cosim itself: still end the trace with what happened
            self.trace.error(self.now_us, None, "internal_error", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.timings.wall_s = time.monotonic() - started
            self.trace.flush()
        self.trace.footer(self.now_us, self.scenario.steps, in_flight=len(self._pending), executed={
            "steps": self.timings.steps, "advances": self.timings.advances, "skipped": self.timings.skipped})
        self.trace.flush()
        return SimulationResult(self.now_us, self.scenario.steps, dict(self.trace.counts), dict(self.unroutable), self.timings)

    def wake(self, node_id: str, time_us: int) -> None:
        """Advance ``node_id`` in the window holding ``time_us`` (> the time reached), as if an input reached it
        then: for what acts on a node from outside (e.g. a scheduled action), in either advance mode."""
        heapq.heappush(self._extra_wakes, (time_us, node_id))

    def _step_loop(self) -> None:
        """Execute windows until the end of the run: every quantum (fixed), or only those in which something can
        happen (next-event: READY carried each node's first promise, so an idle node is never advanced)."""
        quantum, end = self.scenario.quantum_us, self.scenario.duration_us
        target = self._next_window() if self.next_event else quantum
        self.timings.skipped += (min(target, end + quantum) - quantum) // quantum
        while target <= end:
            self.step += 1
            self._advance(target)
            if self.progress is not None:
                self.progress(self.now_us, end)
            following = self._next_window() if self.next_event else target + quantum
            self.timings.skipped += (min(following, end + quantum) - target) // quantum - 1
            target = following
        if self.now_us < end:  # the quanta after the last executed window passed without anything happening
            self.now_us = end
            if self.progress is not None:
                self.progress(end, end)  # the progress line ends at 100%

    def _next_window(self) -> int:
        """The target of the earliest quantum-aligned window after the one just executed that holds a pending
        delivery, a promised wake-up or another source's wake-up (every quantum while a node lacks the capability)."""
        quantum = self.scenario.quantum_us
        following = self.now_us + quantum
        if self._stepped:
            return following
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
            config = spec.config if isinstance(spec, ContainerSpec) else {}
            node.init(node_seed(self.scenario.seed, node_id), config, self.endpoints)
            group = node.barrier_group
            if group is not None:
                self.barrier_groups.setdefault(group, []).append(node_id)
        for members in self.barrier_groups.values():
            members.sort()
            for node_id in members:
                self.nodes[node_id].members = members  # type: ignore[attr-defined]  (a ServiceNode: it declared a group)
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
        self.timings.init_s = time.monotonic() - started

    def _window_peers(self, inputs: Mapping[str, list[Event]]) -> dict[str, list[str]]:
        """Per barrier-group member: the members that may publish to the group in this window (the members are
        advanced together, in every executed step where one of them is; an "on_input" member may publish only when
        it has input events)."""
        peers: dict[str, list[str]] = {}
        for members in self.barrier_groups.values():
            active = [m for m in members if m in self._always_publish or m in inputs]
            for member in members:
                peers[member] = active
        return peers

    def _advance(self, target_us: int) -> None:
        # The quanta before this window passed without anything happening: virtual time has reached its start.
        self.now_us = target_us - self.scenario.quantum_us
        inputs = self._due(target_us)
        if self.next_event:
            active, order = self._active(target_us, inputs)
        else:
            active, order = self._all, self._advance_order
        peers = self._window_peers(inputs) if self.barrier_groups else {}
        services = self._services
        for node_id in order:
            node = self.nodes[node_id]
            if node_id in peers:
                node.begin_advance(target_us, inputs.get(node_id, []), peers[node_id])
            else:
                node.begin_advance(target_us, inputs.get(node_id, []))
            if node_id in services:
                self.timings.advances += 1
        waiting_started = time.monotonic()
        outputs = [(node_id, self.nodes[node_id].end_advance()) for node_id in active]
        self.timings.waiting_s += time.monotonic() - waiting_started
        self.timings.steps += 1
        if self._promise:
            self._keep_promises(target_us, outputs, inputs)
        self.now_us = target_us
        self._route(outputs)

    def _active(self, target_us: int, inputs: Mapping[str, list[Event]]) -> tuple[list[str], list[str]]:
        """The nodes to advance in the window ending at ``target_us``, in scenario order and in ADVANCE order: those
        with input, a wake-up due, or no capability; a barrier group's members all, when one of them is."""
        chosen = set(inputs)
        chosen.update(self._stepped)
        wakes = self._wakes
        while wakes and wakes[0][0] <= target_us:
            at, node_id = heapq.heappop(wakes)
            if self._promise.get(node_id) == at:
                chosen.add(node_id)
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
        then record its new one."""
        promises = self._promise
        for node_id, events in outputs:
            if events and node_id in promises:
                cause = min(promises[node_id], self._earliest_cause(node_id, target_us, inputs))
                for event in events:
                    if event["time_us"] < cause:
                        raise BrokenPromise(node_id, promises[node_id], event, target_us)
        for node_id, _ in outputs:
            promised = promises.get(node_id)
            if promised is None:
                continue  # stepped every quantum: it promises nothing
            promise = self.nodes[node_id].next_us
            promise = NEVER if promise is None else promise
            if promise != promised:
                promises[node_id] = promise
                if promise != NEVER:
                    heapq.heappush(self._wakes, (promise, node_id))

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
        for node in self.nodes.values():
            node.shutdown()
        for node in self.nodes.values():
            node.wait_closed()
        self.timings.shutdown_s = time.monotonic() - started

    # -- events -----------------------------------------------------------------------------------

    def _due(self, target_us: int) -> dict[str, list[Event]]:
        """Pop every pending delivery with time <= target, record it, and group it by destination."""
        inputs: dict[str, list[Event]] = {}
        pending, delivered_record = self._pending, self.trace.delivered
        while pending and pending[0][0] <= target_us:
            time_us, source, seq, dest, event, data_json = heapq.heappop(pending)
            delivered = {"type": event["type"], "time_us": time_us, "source": source, "seq": seq,
                         "sent_us": event["time_us"], "data": event.get("data")}
            delivered_record(data_json, dest, event["time_us"], seq, source, time_us, self._type_json(event["type"]))
            inputs.setdefault(dest, []).append(delivered)
        return inputs

    def _type_json(self, event_type: str) -> str:
        """An event type as JSON, encoded once per type (the trace lines are built around it)."""
        encoded = self._types.get(event_type)
        if encoded is None:
            encoded = self._types[event_type] = protocol.canonical(event_type)
        return encoded

    def _route(self, outputs: list[tuple[str, list[Event]]]) -> None:
        numbered: list[tuple[int, str, int, Event]] = []
        for source, events in outputs:
            # A node's events are numbered in time order; same-time events keep the order the node gave them.
            for event in sorted(events, key=_time_of) if len(events) > 1 else events:
                seq = self._next_seq[source]
                self._next_seq[source] = seq + 1
                numbered.append((event["time_us"], source, seq, event))
        numbered.sort(key=_emission_order)
        trace, router, pending = self.trace, self.router, self._pending
        for time_us, source, seq, event in numbered:
            # The payload is encoded once: the sent, delivered and dropped records are built around it.
            data_json, type_json = protocol.canonical(event.get("data")), self._type_json(event["type"])
            trace.emission("sent", data_json, seq, source, time_us, type_json)
            dests = router.destinations(source, event["type"])
            if not dests:
                key = (source, event["type"])
                self.unroutable[key] = self.unroutable.get(key, 0) + 1
                trace.emission("unroutable", data_json, seq, source, time_us, type_json)
                continue
            for dest in dests:
                at = router.delivery_time(source, dest, time_us)
                if at is None:
                    trace.dropped(data_json, dest, "loss", seq, source, time_us, type_json)
                else:
                    heapq.heappush(pending, (at, source, seq, dest, event, data_json))


def _time_of(event: Event) -> int:
    return event["time_us"]


def _emission_order(item: tuple[int, str, int, Event]) -> tuple[int, str, int]:
    return item[0], item[1], item[2]
