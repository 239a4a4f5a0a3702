"""The coordinator: owns virtual time, advances every node a quantum at a time, routes events, writes the trace.

It knows nothing about Docker or processes: it drives ``SimNode`` objects. Each step:

1. hand every node the events whose delivery time lies in the window (t - quantum, t], in the total order
   (delivery time, source, per-source sequence number, destination);
2. send ADVANCE to all nodes (services first, so they compute while the in-process models do), then collect
   every DONE in scenario order (services compute concurrently);
3. number each node's outputs (per-source sequence), order them by (time, source, seq), and route them:
   each destination's link adds latency and seeded jitter and may drop the event.

Links are at least one quantum long (the scenario checks this), so an event emitted in a window is always
delivered in a later one, at its exact virtual time.

The scenario's schedule (cosim.schedule) is applied by one call at the start of a window, ``apply_schedule``,
before its deliveries: reconfigure (CONFIGURE to a service), link/partition/heal (the router), crash/restart
(through the runtime's ``ProcessControl``). A crashed node is not advanced; events due to it are dropped
(reason ``node_down``).
"""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol

from cosim import schedule as scheduling
from cosim.errors import CheckpointError, InfrastructureExited, Interrupted, NodeFailure, UnsupportedAction
from cosim.network import Drop, Router
from cosim.nodes import Event, ServiceNode, SimNode
from cosim.model import ContainerSpec, Scenario
from cosim.seeds import node_seed
from cosim.trace import TraceWriter, header_environment
from cosim.transport import Transport

Progress = Callable[[int, int], None]  # (virtual time now, duration), both in us
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

    steps: int = 0
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
        checkpoints: Checkpoints | None = None,
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
        self._pending: list[tuple[int, str, int, str, Event]] = []  # heap: (time, source, seq, dest, event)
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
        self.checkpoints = checkpoints or Checkpoints()  # where to checkpoint, or what to resume from
        self.stopped = False  # stopped after its last checkpoint (--stop-after-checkpoint)

    def run(self) -> SimulationResult:
        started = time.monotonic()
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
            for self.step in range(self.step + 1, self.scenario.steps + 1):
                self.apply_schedule((self.step - 1) * self.scenario.quantum_us)
                self._advance(self.step * self.scenario.quantum_us)
                if self.progress is not None:
                    self.progress(self.now_us, self.scenario.duration_us)
                if self.now_us in self.checkpoints.at_us and self._checkpoint():
                    break
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
            self.timings.wall_s = time.monotonic() - started
            self.trace.flush()
        self.trace.footer(self.now_us, self.step, in_flight=len(self._pending), status="stopped" if self.stopped else "ok")
        self.trace.flush()
        return SimulationResult(self.now_us, self.step, dict(self.trace.counts), dict(self.unroutable),
                                self.timings, dict(sorted(self.dropped.items())), list(self.actions))

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
        self.timings.init_s = time.monotonic() - started

    def _window_peers(self, inputs: Mapping[str, list[Event]]) -> dict[str, list[str]]:
        """Per barrier-group member: the members that may publish to the group in this window (all are advanced
        every step; an "on_input" member only when it has input events; a crashed one never)."""
        peers: dict[str, list[str]] = {}
        for members in self.barrier_groups.values():
            active = [m for m in members if (m in self._always_publish or m in inputs) and m not in self.down]
            for member in members:
                peers[member] = active
        return peers

    def _advance(self, target_us: int) -> None:
        inputs = self._due(target_us)
        peers = self._window_peers(inputs) if self.barrier_groups else {}
        for node_id in self._advance_order:
            node = self.nodes[node_id]
            if node_id in self.down:
                continue
            if node_id in peers:
                node.begin_advance(target_us, inputs.get(node_id, []), peers[node_id])
            else:
                node.begin_advance(target_us, inputs.get(node_id, []))
        waiting_started = time.monotonic()
        outputs = [(node_id, node.end_advance()) for node_id, node in self.nodes.items() if node_id not in self.down]
        self.timings.waiting_s += time.monotonic() - waiting_started
        self.timings.steps += 1
        self.now_us = target_us
        self._route(outputs)

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
        while self._pending and self._pending[0][0] <= target_us:
            time_us, source, seq, dest, event = heapq.heappop(self._pending)
            if dest in self.down:  # a crashed node: what reaches it is lost
                self.lost[dest] = self.lost.get(dest, 0) + 1
                self.dropped["node_down"] = self.dropped.get("node_down", 0) + 1
                self.trace.write({"record": "dropped", "dest": dest, "reason": "node_down", "time_us": event["time_us"],
                                  "at_us": time_us, "source": source, "seq": seq, "type": event["type"],
                                  "data": event.get("data")})
                continue
            delivered = {"type": event["type"], "time_us": time_us, "source": source, "seq": seq,
                         "sent_us": event["time_us"], "data": event.get("data")}
            self.trace.write({"record": "delivered", "dest": dest, **delivered})
            inputs.setdefault(dest, []).append(delivered)
        return inputs

    def _route(self, outputs: list[tuple[str, list[Event]]]) -> None:
        numbered: list[tuple[int, str, int, Event]] = []
        for source, events in outputs:
            # A node's events are numbered in time order; same-time events keep the order the node gave them.
            for event in sorted(events, key=lambda e: e["time_us"]):
                seq = self._next_seq[source]
                self._next_seq[source] = seq + 1
                numbered.append((event["time_us"], source, seq, event))
        numbered.sort(key=lambda item: item[:3])
        for time_us, source, seq, event in numbered:
            base = {"time_us": time_us, "source": source, "seq": seq, "type": event["type"], "data": event.get("data")}
            self.trace.write({"record": "sent", **base})
            dests, filtered = self.router.split(source, event["type"], time_us)
            for dest in filtered:  # a route whose `during:` windows leave this event out
                self.trace.write({"record": "filtered", "dest": dest, **base})
            if not dests and filtered:
                continue
            if not dests:
                key = (source, event["type"])
                self.unroutable[key] = self.unroutable.get(key, 0) + 1
                self.trace.write({"record": "unroutable", **base})
                continue
            for dest in dests:
                outcome = self.router.transmit(source, dest, time_us)
                if isinstance(outcome, Drop):
                    self.dropped[outcome.reason] = self.dropped.get(outcome.reason, 0) + 1
                    self.trace.write({"record": "dropped", "dest": dest, "reason": outcome.reason, **base})
                else:
                    heapq.heappush(self._pending, (outcome.time_us, source, seq, dest, event))

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

    def _checkpoint(self) -> bool:
        """At the end of the window ending now: hand the run's state to the writer; True to stop here."""
        assert self.checkpoints.write is not None
        self.checkpoints.write(self.now_us, self.snapshot())
        if self.checkpoints.stop_after and self.now_us == max(self.checkpoints.at_us):
            self.stopped = True
        return self.stopped

    def snapshot(self) -> dict[str, Any]:
        """The run's state between two windows: the coordinator's, each node's, and the trace so far."""
        return {
            "time_us": self.now_us,
            "step": self.step,
            "coordinator": {
                "pending": [list(entry) for entry in sorted(self._pending)],
                "next_seq": dict(self._next_seq),
                "router": self.router.snapshot(),
                "configs": self.configs,
                "restarts": self.restarts,
                "lost": self.lost,
                "dropped": self.dropped,
                "unroutable": [[source, kind, count] for (source, kind), count in sorted(self.unroutable.items())],
                "actions": self.actions,
                # The schedule's actions already applied (those of the windows before now); the rest apply after.
                "schedule_position": sum(1 for action in self.scenario.schedule.actions if action.at_us < self.now_us),
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
        self._pending = [(time_us, source, seq, dest, event) for time_us, source, seq, dest, event in state["pending"]]
        heapq.heapify(self._pending)
        self._next_seq = dict(state["next_seq"])
        self.router.restore(state["router"])
        self.restarts, self.lost, self.dropped = dict(state["restarts"]), dict(state["lost"]), dict(state["dropped"])
        self.unroutable = {(source, kind): count for source, kind, count in state["unroutable"]}
        self.actions = list(state["actions"])
        self.trace.replay(saved["trace"]["records"], saved["trace"]["counts"])
        for node_id, changes in sorted(self.checkpoints.config_changes.items()):
            self.configs[node_id].update(changes)
            self.nodes[node_id].configure(self.now_us, dict(changes))

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
        self.processes.crash(node_id)
        if isinstance(node, ServiceNode):
            node.crashed()
        self.down.add(node_id)
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
            group = node.barrier_group
            if group is not None:
                node.members = self.barrier_groups.get(group, [node_id])  # sent again in its first ADVANCE
        else:  # infrastructure, back at its endpoint: its users reconnect
            for user in self._configurable():
                user.configure(now_us, endpoints={node_id: self.endpoints.get(node_id)})
        return {"restart": count, "lost": self.lost.pop(node_id, 0)}
