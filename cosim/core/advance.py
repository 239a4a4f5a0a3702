"""The advance policy: which window the loop executes next, which nodes it advances there, and (next-event) the
promises those nodes are held to. Two policies, one interface (``AdvancePolicy``), chosen by the scenario's
``advance``:

``fixed`` executes every quantum and advances every node in it.

``next-event`` executes only the windows in which something can happen: the earliest quantum-aligned window
holding a pending delivery, a node's promised wake-up (DONE's ``next_us``) or another wake-up source's time, and
advances in it only the nodes with input, with a wake-up due, or without the capability (those are stepped every
quantum, as in fixed mode); the members of a barrier group move together. A skipped node's next ADVANCE jumps
straight to the window it is needed in. Windows stay on the grid, so every event gets the same virtual time in
both modes and the trace records are identical. A promise is checked: an output stamped before it that no input
of its window explains fails the node.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Mapping
from operator import attrgetter
from typing import Any, Protocol

from cosim.core.barriers import BarrierGroups
from cosim.core.contracts import NEVER, Event, Inputs
from cosim.core.deliveries import Deliveries
from cosim.core.slots import NodeSlot, Outputs, Slots
from cosim.errors import BrokenPromise

# Another source of wake-ups for the next-event loop (e.g. a schedule of actions): given the virtual time reached,
# the earliest later time at which it acts, or None. The window holding that time is executed.
WakeupSource = Callable[[int], "int | None"]

_INDEX = attrgetter("index")


class AdvancePolicy(Protocol):
    def start(self) -> None:
        """After INIT: the nodes' first promises (READY's)."""

    def next_target(self, now_us: int) -> int:
        """The end of the next window to execute after virtual time ``now_us`` (a window end)."""
        ...

    def choose(self, target_us: int, inputs: Inputs) -> tuple[list[NodeSlot], list[NodeSlot]]:
        """The nodes to advance in the window ending at ``target_us``: in scenario order (DONEs are collected in it)
        and in ADVANCE order (services first)."""
        ...

    def keep_promises(self, target_us: int, outputs: Outputs, inputs: Inputs) -> None:
        """After the window: check each node's outputs against its promise, and take its new one."""

    def renew(self, slot: NodeSlot) -> None:
        """An action changed the node (new config, restart): hold it to the promise it now makes."""

    def wake(self, node_id: str, time_us: int) -> None:
        """Advance ``node_id`` in the window holding ``time_us``, as if an input reached it then."""

    def add_wakeup_source(self, source: WakeupSource) -> None:
        """Another source of wake-ups (e.g. the schedule's actions): the windows holding its times are executed."""

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, state: Mapping[str, Any]) -> None: ...


class FixedAdvance:
    """Every quantum, every node."""

    def __init__(self, slots: Slots, quantum_us: int) -> None:
        self.slots, self.quantum_us = slots, quantum_us
        self.extra_wakes: list[tuple[int, str]] = []  # (kept for a checkpoint: every node is advanced anyway)

    def start(self) -> None:
        pass

    def next_target(self, now_us: int) -> int:
        return now_us + self.quantum_us

    def choose(self, target_us: int, inputs: Inputs) -> tuple[list[NodeSlot], list[NodeSlot]]:
        return self.slots.driven, self.slots.advance_order

    def keep_promises(self, target_us: int, outputs: Outputs, inputs: Inputs) -> None:
        pass

    def renew(self, slot: NodeSlot) -> None:
        pass

    def wake(self, node_id: str, time_us: int) -> None:
        heapq.heappush(self.extra_wakes, (time_us, node_id))

    def add_wakeup_source(self, source: WakeupSource) -> None:
        pass  # every window is executed anyway

    def snapshot(self) -> dict[str, Any]:
        return {"extra_wakes": [list(wake) for wake in sorted(self.extra_wakes)]}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.extra_wakes = [(at, node_id) for at, node_id in state["extra_wakes"]]
        heapq.heapify(self.extra_wakes)


class NextEventAdvance(FixedAdvance):
    """Only the windows in which something can happen, only the nodes that need them. A node's promise lives in its
    slot (``promise``); the wake-ups are a heap of (promised time, node) whose stale entries (a promise replaced
    since) are skipped, plus ``soon``: the nodes whose promise lies in the very next window (a node busy every
    quantum needs no heap)."""

    def __init__(self, slots: Slots, quantum_us: int, deliveries: Deliveries, barriers: BarrierGroups,
                 wakeup_sources: Iterable[WakeupSource], has_schedule: bool) -> None:
        super().__init__(slots, quantum_us)
        self.deliveries, self.barriers = deliveries, barriers
        self.wakeup_sources = list(wakeup_sources)
        self.has_schedule = has_schedule  # an action may move a promise between windows
        self.stepped: list[NodeSlot] = []  # nodes without the capability: advanced every quantum
        self.held = False  # some node is held to a promise
        self.wakes: list[tuple[int, str]] = []
        self.soon: list[NodeSlot] = []
        self.woken: list[NodeSlot] = []  # the slots whose ``woken`` the window being executed set

    def start(self) -> None:
        for slot in self.slots.driven:
            if slot.node.capabilities.next_event:  # the first promise, from READY (models: their first sample)
                promise = slot.node.next_us
                slot.promise = NEVER if promise is None else promise
            else:
                slot.stepped = True
                self.stepped.append(slot)
        self._rebuild()

    def _rebuild(self) -> None:
        self.held = any(slot.promise is not None for slot in self.slots.driven)
        self.wakes = [(slot.promise, slot.id) for slot in self.slots.driven
                      if slot.promise is not None and slot.promise != NEVER]
        heapq.heapify(self.wakes)
        self.soon = []  # (the heap holds every promise now)

    def next_target(self, now_us: int) -> int:
        """The earliest quantum-aligned window after ``now_us`` that holds a pending delivery, a promised wake-up or
        another source's wake-up (every quantum while a node lacks the capability or is busy every quantum)."""
        quantum = self.quantum_us
        if self.stepped or self.soon:
            return now_us + quantum
        earliest = self.deliveries.earliest(NEVER)
        wakes, slots = self.wakes, self.slots
        while wakes and slots[wakes[0][1]].promise != wakes[0][0]:
            heapq.heappop(wakes)  # a promise replaced by a later DONE
        if wakes and wakes[0][0] < earliest:
            earliest = wakes[0][0]
        if self.extra_wakes and self.extra_wakes[0][0] < earliest:
            earliest = self.extra_wakes[0][0]
        for source in self.wakeup_sources:
            at = source(now_us)
            if at is not None and at < earliest:
                earliest = at
        return max(now_us + quantum, -(-earliest // quantum) * quantum)

    def choose(self, target_us: int, inputs: Inputs) -> tuple[list[NodeSlot], list[NodeSlot]]:
        """Those with input, a wake-up due, or no capability; a barrier group's members all, when one of them is."""
        slots = self.slots
        chosen = {slots[node_id] for node_id in inputs}
        if self.stepped:
            chosen.update(self.stepped)
        soon = self.soon
        if soon:
            if self.has_schedule:  # an action may have moved a promise since (``renew``, a crash)
                chosen.update(slot for slot in soon if slot.promise is not None and slot.promise <= target_us)
            else:
                chosen.update(soon)
            soon.clear()
        wakes = self.wakes
        while wakes and wakes[0][0] <= target_us:
            at, node_id = heapq.heappop(wakes)
            if slots[node_id].promise == at:
                chosen.add(slots[node_id])
        for slot in self.woken:
            slot.woken = NEVER
        self.woken.clear()
        while self.extra_wakes and self.extra_wakes[0][0] <= target_us:
            at, node_id = heapq.heappop(self.extra_wakes)
            slot = slots[node_id]
            slot.woken = min(at, slot.woken)
            self.woken.append(slot)
            chosen.add(slot)
        if self.barriers:
            self.barriers.expand(chosen)
        if len(chosen) == len(slots.driven):
            return slots.driven, slots.advance_order
        active = sorted(chosen, key=_INDEX)
        return active, [slot for slot in active if slot.process] + [slot for slot in active if not slot.process]

    def keep_promises(self, target_us: int, outputs: Outputs, inputs: Inputs) -> None:
        """Check each capable node's outputs against the promise it made before this window, then record its new
        one: in ``soon`` when it lies in the next window, else on the heap. With barrier groups every check comes
        first: a member's check reads the others' promises."""
        if not self.held:
            return
        next_window_end = target_us + self.quantum_us
        grouped = bool(self.barriers)
        if grouped:
            for slot, events in outputs:
                self._check(slot, events, target_us, inputs)
        for slot, events in outputs:
            promised = slot.promise
            if promised is None:
                continue  # stepped every quantum: it promises nothing
            if events and not grouped:
                for event in events:
                    if event["time_us"] < promised:  # (a node that kept its promise never gets here)
                        self._check(slot, events, target_us, inputs)
                        break
            promise = slot.node.next_us
            if promise is None:
                if promised != NEVER:
                    slot.promise = NEVER
            elif promise != promised:
                slot.promise = promise
                if promise <= next_window_end:
                    self.soon.append(slot)
                else:
                    heapq.heappush(self.wakes, (promise, slot.id))

    def _check(self, slot: NodeSlot, events: list[Event], target_us: int, inputs: Inputs) -> None:
        """An output stamped before the node's promise must follow an input of its window (or a wake-up, see
        ``_earliest_cause``); else the node broke its promise."""
        promised = slot.promise
        if promised is None:
            return  # stepped every quantum: it promises nothing
        cause = None  # looked for only when an output comes before the promise
        for event in events:
            if event["time_us"] < promised:
                if cause is None:
                    cause = min(promised, self._earliest_cause(slot, target_us, inputs))
                if event["time_us"] < cause:
                    raise BrokenPromise(slot.id, promised, dict(event), target_us)

    def _earliest_cause(self, slot: NodeSlot, target_us: int, inputs: Inputs) -> int:
        """The earliest time in this window that explains an output of ``slot``'s node: its earliest input, or a
        wake-up from ``wake``. The members of a barrier group share a medium: their inputs and due promises count."""
        earliest = slot.woken
        for member in slot.group or (slot.id,):
            events = inputs.get(member)
            if events and events[0]["time_us"] < earliest:
                earliest = events[0]["time_us"]
            promised = self.slots[member].promise
            if member != slot.id and promised is not None and promised <= target_us:
                earliest = min(earliest, promised)
        return earliest

    def renew(self, slot: NodeSlot) -> None:
        if slot.promise is None:
            return  # a node stepped every quantum
        promise = slot.node.next_us
        promise = NEVER if promise is None else promise
        if promise != slot.promise:
            slot.promise = promise
            if promise != NEVER:
                heapq.heappush(self.wakes, (promise, slot.id))

    def add_wakeup_source(self, source: WakeupSource) -> None:
        self.wakeup_sources.append(source)

    def restore(self, state: Mapping[str, Any]) -> None:
        super().restore(state)
        self._rebuild()  # from the restored slots' promises
