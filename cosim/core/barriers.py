"""Barrier groups: services that share a medium (e.g. an MQTT topic) declare a group in READY; its members are
advanced together, in every executed window where one of them is, and each ADVANCE names the members that may
publish to the group in that window (its ``peers``), so that a member waits for exactly those."""

from __future__ import annotations

from cosim.core.contracts import Inputs
from cosim.core.slots import NodeSlot, Slots


class BarrierGroups:
    """The groups of a run (group -> member ids, sorted), formed from the READY replies (``form``)."""

    def __init__(self, slots: Slots) -> None:
        self.slots = slots
        self.groups: dict[str, list[str]] = {}

    def __bool__(self) -> bool:
        return bool(self.groups)

    def form(self) -> None:
        """After every INIT: the groups the nodes declared; each member is told its group."""
        for slot in self.slots.driven:
            group = slot.node.capabilities.barrier_group
            if group is not None:
                self.groups.setdefault(group, []).append(slot.id)
                slot.always_publishes = not slot.node.capabilities.publishes_on_input_only
        for members in self.groups.values():
            members.sort()
            for node_id in members:
                slot = self.slots[node_id]
                slot.group = members
                slot.node.join_barrier_group(members)

    def rejoin(self, slot: NodeSlot) -> None:
        """A restarted member: its group again (sent in its first ADVANCE)."""
        group = slot.node.capabilities.barrier_group
        if group is not None:
            slot.node.join_barrier_group(self.groups.get(group, [slot.id]))

    def peers(self, inputs: Inputs) -> dict[str, list[str]]:
        """Per member: the members that may publish to the group in this window (an "on_input" member only when it
        has input events; a crashed one never)."""
        peers: dict[str, list[str]] = {}
        slots = self.slots
        for members in self.groups.values():
            active = [m for m in members if (slots[m].always_publishes or m in inputs) and not slots[m].down]
            for member in members:
                peers[member] = active
        return peers

    def expand(self, chosen: set[NodeSlot]) -> None:
        """The members of a group advance together: add every member of a group one of ``chosen`` is in."""
        for slot in [slot for slot in chosen if slot.group]:
            chosen.update(self.slots[member] for member in slot.group or ())
