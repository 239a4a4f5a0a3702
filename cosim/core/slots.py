"""One record of state per node (like mosaik's ``SimRunner``): ``NodeSlot`` for a node the loop drives,
``ProcessSlot`` (its base) for an infrastructure node, which the schedule may only crash and restart; ``Slots``
holds a run's.

Every field of a slot says whether a checkpoint saves it (``saved``) or why it need not (``kept``): the per-node
part of a checkpoint is derived from the fields (``state``/``restore``), so a new field cannot be forgotten by one,
and a field that says neither is refused when the module loads (``saved_fields``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

from cosim.core.contracts import NEVER, Event

if TYPE_CHECKING:
    from cosim.errors import NodeFailure
    from cosim.nodes import SimNode

_CHECKPOINT = "checkpoint"


def saved(**options: Any) -> Any:
    """A field a checkpoint saves and a resume restores."""
    return field(metadata={_CHECKPOINT: "saved"}, **options)


def kept(why: str, **options: Any) -> Any:
    """A field a checkpoint does not save, and why (set up again by INIT and the parts, or transient)."""
    return field(metadata={_CHECKPOINT: why}, **options)


def saved_fields(cls: type) -> tuple[str, ...]:
    """The names of a slot class's saved fields; TypeError for a field that says neither saved() nor kept(why)."""
    unsaid = [item.name for item in fields(cls) if not item.metadata.get(_CHECKPOINT)]
    if unsaid:
        raise TypeError(f"{cls.__name__} fields {unsaid} say neither saved() nor kept(why): a checkpoint would "
                        f"forget them")
    return tuple(item.name for item in fields(cls) if item.metadata.get(_CHECKPOINT) == "saved")


@dataclass(eq=False, slots=True)
class ProcessSlot:
    """A node with a process of its own, as the schedule's crash and restart see it."""

    SAVED: ClassVar[tuple[str, ...]] = ()  # the saved fields' names (set below, checked)

    id: str = kept("the scenario's")
    restarts: int = saved(default=0)  # restarts so far
    lost: int = saved(default=0)  # events dropped (node_down) since its crash
    down: bool = saved(default=False)  # crashed by the schedule and not restarted yet

    def state(self) -> dict[str, Any]:
        """The saved fields, for a checkpoint."""
        return {name: getattr(self, name) for name in self.SAVED}

    def restore(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(self.SAVED):
            raise ValueError(f"node {self.id!r}: a checkpoint's slot has {sorted(state)}, "
                             f"expected {sorted(self.SAVED)}")
        for name in self.SAVED:
            value = state[name]
            setattr(self, name, dict(value) if isinstance(value, dict) else value)


@dataclass(eq=False, slots=True, kw_only=True)
class NodeSlot(ProcessSlot):
    """A node the loop drives (a service or an in-process model) and everything the loop keeps about it."""

    node: SimNode = kept("the proxy: its own state is node.snapshot()")
    index: int = kept("the scenario's order")
    process: bool = kept("the capabilities'")  # a service: ADVANCE goes to it first, and counts
    # -- the run's state (saved) --
    next_seq: int = saved(default=0)  # the sequence number of the node's next event
    promise: int | None = saved(default=None)  # next-event: its promised wake-up (NEVER: only on input); None: the
    #                                            node is not held to one (fixed mode, or stepped every quantum)
    config: dict[str, Any] = saved(default_factory=dict)  # its config as of now (reconfigure merges into it)
    # -- set up once READY is in (kept) --
    stepped: bool = kept("the capabilities'", default=False)  # next-event mode, without the capability: every quantum
    group: list[str] | None = kept("READY's", default=None)  # its barrier group's members (sorted), if any
    always_publishes: bool = kept("READY's", default=False)  # a group member that may publish without input
    runs_ahead: bool = kept("the scenario's routes'", default=False)  # lookahead: nothing can send to it
    # -- transient --
    ahead: tuple[int, NodeFailure | None] | None = kept("lookahead is off in runs with checkpoints", default=None)
    woken: int = kept("within a window", default=NEVER)  # the earliest ``wake`` time due in the window executed


ProcessSlot.SAVED = saved_fields(ProcessSlot)  # checked when the module loads
NodeSlot.SAVED = saved_fields(NodeSlot)

Outputs = list[tuple[NodeSlot, list[Event]]]  # each advanced node's events of the window, in scenario order


class Slots:
    """A run's slots: the nodes the loop drives (``driven``, in scenario order; ``slots[id]``) and the other nodes
    of the scenario (infrastructure: ``process(id)``). ``down`` counts the nodes down now."""

    def __init__(self, nodes: Mapping[str, SimNode], others: Iterable[str] = ()) -> None:
        self.driven = [NodeSlot(node_id, node=node, index=index, process=node.capabilities.process)
                       for index, (node_id, node) in enumerate(nodes.items())]
        self._driven = {slot.id: slot for slot in self.driven}
        self._all: dict[str, ProcessSlot] = {**self._driven}
        for node_id in others:  # the scenario's other nodes (infrastructure)
            self._all.setdefault(node_id, ProcessSlot(node_id))
        # ADVANCE goes to the services first, so that they compute while the in-process models (sensors) do.
        self.advance_order = sorted(self.driven, key=lambda slot: not slot.process)
        self.down = 0

    def __getitem__(self, node_id: str) -> NodeSlot:
        return self._driven[node_id]

    def __iter__(self) -> Iterator[ProcessSlot]:
        return iter(self._all.values())

    def process(self, node_id: str) -> ProcessSlot:
        """Any node's slot (the schedule crashes and restarts infrastructure too)."""
        return self._all[node_id]

    def get(self, node_id: str) -> ProcessSlot | None:
        return self._all.get(node_id)

    def crashed(self, slot: ProcessSlot) -> None:
        slot.down = True
        slot.lost = 0
        self.down += 1

    def restarted(self, slot: ProcessSlot) -> int:
        """The slot is up again: its restart count goes up; the events lost while it was down (reset)."""
        slot.down = False
        self.down -= 1
        slot.restarts += 1
        lost, slot.lost = slot.lost, 0
        return lost

    def snapshot(self) -> dict[str, dict[str, Any]]:
        return {slot.id: slot.state() for slot in self}

    def restore(self, saved: Mapping[str, Mapping[str, Any]]) -> None:
        for slot in self:
            slot.restore(saved[slot.id])
        self.down = sum(slot.down for slot in self)
