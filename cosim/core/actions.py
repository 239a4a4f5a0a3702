"""The scenario's schedule, carried out: at the start of a window, before its deliveries, the actions due then
(cosim.schedule): reconfigure (CONFIGURE to a service), link/partition/heal (the router), crash/restart (through
the runtime's ``ProcessControl``). One trace record each. A crashed node is not advanced; events due to it are
dropped (reason ``node_down``). In next-event mode each action's window is a wake-up (``wakeup``), and a node
whose promise an action changes (a new config, a restart) is held to its new promise."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from cosim import schedule as scheduling
from cosim.core.advance import AdvancePolicy
from cosim.core.barriers import BarrierGroups
from cosim.core.contracts import NEVER
from cosim.core.slots import NodeSlot, ProcessSlot, Slots
from cosim.errors import UnsupportedAction
from cosim.network import Router
from cosim.seeds import node_seed
from cosim.trace import TraceWriter
from cosim.transport import Transport


class ProcessControl(Protocol):
    """What the schedule's crash and restart need from the runtime (both runtimes implement it)."""

    def crash(self, node_id: str) -> None:
        """Kill the node's process or container now (a planned crash: not a failure)."""
        ...

    def restart(self, node_id: str) -> Transport | None:
        """Start a fresh process or container for a crashed node: a service's new transport (None for an
        infrastructure node, reachable again at its old endpoint once this returns)."""
        ...


class ScheduledActions:
    """Applies a run's schedule. ``records``: the action records written so far (for the summary)."""

    def __init__(self, schedule: scheduling.Schedule, seed: int, slots: Slots, router: Router, policy: AdvancePolicy,
                 barriers: BarrierGroups, trace: TraceWriter, processes: ProcessControl | None,
                 endpoints: Mapping[str, Any]) -> None:
        self.schedule, self.seed = schedule, seed
        self.slots, self.router, self.policy, self.barriers, self.trace = slots, router, policy, barriers, trace
        self.processes, self.endpoints = processes, endpoints
        self.records: list[dict[str, Any]] = []

    def __bool__(self) -> bool:
        return bool(self.schedule)

    def wakeup(self, now_us: int) -> int | None:
        """A wake-up source: an action at t (on the grid) needs the window (t, t + quantum] executed, so after
        reaching ``now`` the next wake-up is one microsecond after the next action at or after ``now``."""
        at = self.schedule.next_time(now_us)
        return None if at is None else at + 1

    def check(self) -> None:
        """Before the first step: every node the schedule reconfigures must have declared it can be."""
        for action in self.schedule.actions:
            if isinstance(action, scheduling.Reconfigure):
                capabilities = self.slots[action.node].node.capabilities
                if not capabilities.configure:
                    raise UnsupportedAction(action.node, f"schedule: reconfigure of {action.node!r} at "
                                            f"{action.at_us} us, but the service did not declare the 'configure' "
                                            f"capability in READY (it declared {sorted(capabilities.declared)}); it "
                                            f"cannot take new config during a run")
            elif isinstance(action, scheduling.Crash) and self.processes is None:
                raise UnsupportedAction(action.node, f"schedule: {action.kind} of {action.node!r} at {action.at_us} "
                                        f"us, but this runtime cannot crash or restart nodes")

    def apply(self, start_us: int) -> None:
        """Apply the actions due at the start of the window beginning at ``start_us`` (one trace record each)."""
        for action in self.schedule.due(start_us):
            record = {"record": "action", "time_us": start_us, "action": action.kind, **action.fields()}
            record.update(self._apply(action, start_us))
            self.trace.write(record)
            self.records.append(record)

    def _apply(self, action: scheduling.Action, now_us: int) -> dict[str, Any]:
        """Carry out one action; what it observed for the trace (e.g. what a restarted node lost)."""
        if isinstance(action, scheduling.Reconfigure):
            slot = self.slots[action.node]
            slot.config.update(action.config)
            if not slot.down:  # else: a restart gets the merged config in its INIT
                slot.node.configure(now_us, dict(action.config))
                self.policy.renew(slot)
            return {}
        if isinstance(action, scheduling.SetLink):
            self.router.set_link(action.source, action.dest, action.changes)
        elif isinstance(action, scheduling.Partition):
            self.router.partition(action.groups)
        elif isinstance(action, scheduling.Heal):
            self.router.heal()
        elif isinstance(action, scheduling.Restart):  # (a Restart is a kind of Crash: test it first)
            return self._restart(self.slots.process(action.node), now_us)
        elif isinstance(action, scheduling.Crash):
            self._crash(self.slots.process(action.node), now_us)
        return {}

    def _tell_users(self, now_us: int, endpoints: Mapping[str, Any]) -> None:
        """An infrastructure node went away or came back: the services that take CONFIGURE hear of it."""
        for slot in self.slots.driven:
            if slot.process and not slot.down and slot.node.capabilities.configure:
                slot.node.configure(now_us, endpoints=endpoints)
                self.policy.renew(slot)

    def _crash(self, slot: ProcessSlot, now_us: int) -> None:
        assert self.processes is not None  # (``check``)
        if not isinstance(slot, NodeSlot):  # infrastructure: its users hear first (they let go of it in order)
            self._tell_users(now_us, {slot.id: None})
        self.processes.crash(slot.id)
        self.slots.crashed(slot)
        if isinstance(slot, NodeSlot):
            slot.node.crashed()
            if slot.promise is not None:
                slot.promise = NEVER  # a crashed node acts on nothing; its restart promises anew

    def _restart(self, slot: ProcessSlot, now_us: int) -> dict[str, Any]:
        assert self.processes is not None  # (``check``)
        transport = self.processes.restart(slot.id)
        lost = self.slots.restarted(slot)
        if isinstance(slot, NodeSlot) and transport is not None:
            slot.node.restarted(transport, now_us, node_seed(self.seed, slot.id), slot.config, self.endpoints,
                                slot.restarts)
            self.policy.renew(slot)  # READY's first promise, from where it resumes
            self.barriers.rejoin(slot)
        else:  # infrastructure, back at its endpoint: its users reconnect
            self._tell_users(now_us, {slot.id: self.endpoints.get(slot.id)})
        return {"restart": slot.restarts, "lost": lost}
