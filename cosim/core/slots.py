"""One record of state per node (like mosaik's ``SimRunner``): ``NodeSlot``, and ``Slots``, a run's slots.

Every field of a slot says whether a checkpoint saves it (``saved``) or why it need not (``kept``): the per-node
part of a checkpoint is derived from the fields (``NodeSlot.state``/``restore``), so a new field cannot be
forgotten by one, and a field that says neither is refused when the module loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping

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


@dataclass(eq=False, slots=True)
class NodeSlot:
    """A node of the run and everything the window loop keeps about it."""

    id: str = kept("the scenario's")
    node: SimNode | None = kept("the proxy: its own state is node.snapshot()")  # None: infrastructure (only a process)
    index: int = kept("the scenario's order")
    process: bool = kept("the capabilities'")  # a service: ADVANCE goes to it first, and counts
    # -- the run's state (saved) --
    next_seq: int = saved(default=0)  # the sequence number of the node's next event
    promise: int | None = saved(default=None)  # next-event: its promised wake-up (NEVER: only on input); None: the
    #                                            node is not held to one (fixed mode, or stepped every quantum)
    config: dict[str, Any] = saved(default_factory=dict)  # its config as of now (reconfigure merges into it)
    restarts: int = saved(default=0)  # restarts so far
    lost: int = saved(default=0)  # events dropped (node_down) since its crash
    down: bool = saved(default=False)  # crashed by the schedule and not restarted yet
    # -- set up once READY is in (kept) --
    stepped: bool = kept("the capabilities'", default=False)  # next-event mode, without the capability: every quantum
    group: list[str] | None = kept("READY's", default=None)  # its barrier group's members (sorted), if any
    always_publishes: bool = kept("READY's", default=False)  # a group member that may publish without input
    runs_ahead: bool = kept("the scenario's routes'", default=False)  # lookahead: nothing can send to it
    # -- transient --
    ahead: tuple[int, NodeFailure | None] | None = kept("lookahead is off in runs with checkpoints", default=None)
    woken: int = kept("within a window", default=NEVER)  # the earliest ``wake`` time due in the window executed

    def state(self) -> dict[str, Any]:
        """The saved fields, for a checkpoint."""
        return {name: getattr(self, name) for name in SAVED}

    def restore(self, state: Mapping[str, Any]) -> None:
        if set(state) != set(SAVED):
            raise ValueError(f"node {self.id!r}: a checkpoint's slot has {sorted(state)}, expected {sorted(SAVED)}")
        for name in SAVED:
            value = state[name]
            setattr(self, name, dict(value) if isinstance(value, dict) else value)


def saved_fields(cls: type) -> tuple[str, ...]:
    """The names of a slot class's saved fields; TypeError for a field that says neither saved() nor kept(why)."""
    unsaid = [item.name for item in fields(cls) if not item.metadata.get(_CHECKPOINT)]
    if unsaid:
        raise TypeError(f"{cls.__name__} fields {unsaid} say neither saved() nor kept(why): a checkpoint would "
                        f"forget them")
    return tuple(item.name for item in fields(cls) if item.metadata.get(_CHECKPOINT) == "saved")


SAVED = saved_fields(NodeSlot)  # checked when the module loads

Outputs = list[tuple[NodeSlot, list[Event]]]  # each advanced node's events of the window, in scenario order


class Slots:
    """A run's slots: the nodes the loop drives (``driven``, scenario order) and the infrastructure nodes the
    schedule may crash and restart (slots without a proxy). ``down`` counts the nodes down now."""

    def __init__(self, nodes: Mapping[str, SimNode], others: Iterable[str] = ()) -> None:
        self._slots: dict[str, NodeSlot] = {}
        for index, (node_id, node) in enumerate(nodes.items()):
            self._slots[node_id] = NodeSlot(node_id, node, index, node.capabilities.process)
        for node_id in others:  # the scenario's other nodes (infrastructure)
            if node_id not in self._slots:
                self._slots[node_id] = NodeSlot(node_id, None, len(self._slots), True)
        self.driven = [slot for slot in self._slots.values() if slot.node is not None]
        # ADVANCE goes to the services first, so that they compute while the in-process models (sensors) do.
        self.advance_order = sorted(self.driven, key=lambda slot: not slot.process)
        self.down = 0

    def __getitem__(self, node_id: str) -> NodeSlot:
        return self._slots[node_id]

    def __iter__(self) -> Iterator[NodeSlot]:
        return iter(self._slots.values())

    def get(self, node_id: str) -> NodeSlot | None:
        return self._slots.get(node_id)

    def crashed(self, slot: NodeSlot) -> None:
        slot.down = True
        slot.lost = 0
        self.down += 1

    def restarted(self, slot: NodeSlot) -> int:
        """The slot is up again: its restart count, and the events lost while it was down (reset)."""
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
