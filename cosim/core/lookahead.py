"""Lookahead: a service that no route leads to (a pure source) gets its next ADVANCE as soon as its DONE is in. It
can receive nothing, so that ADVANCE depends on nothing routed in between, and it computes while the coordinator
routes. The trace is the same with or without it."""

from __future__ import annotations

from cosim.core.results import StepTimings
from cosim.core.slots import NodeSlot, Slots
from cosim.errors import NodeFailure
from cosim.model import Scenario


class Lookahead:
    def __init__(self, slots: Slots, quantum_us: int, end_us: int, next_event: bool, timings: StepTimings) -> None:
        self.slots, self.timings = slots, timings
        self.quantum_us, self.end_us, self.next_event = quantum_us, end_us, next_event

    def choose(self, scenario: Scenario, enabled: bool) -> None:
        """Mark the services that may run a window ahead: no route leads to them and they share no barrier group.
        Not in a run with a schedule (its actions talk to services between windows) or checkpoints (taken at window
        boundaries): the caller says (``enabled``)."""
        if not enabled:
            return
        fed = {replica for route in scenario.routes for target in route.targets
               for replica in scenario.groups.get(target, (target,))}
        for slot in self.slots.driven:
            slot.runs_ahead = slot.process and slot.id not in fed and slot.group is None

    def send(self, slot: NodeSlot, target_us: int) -> None:
        """``slot``'s DONE for the window ending at ``target_us`` is in: send it its next ADVANCE, for the next window
        it is needed in: the next quantum (fixed mode, or a node without the capability) or the one holding its
        promise. Never past the end of the run."""
        node, quantum = slot.node, self.quantum_us
        if self.next_event and node.capabilities.next_event:
            promise = node.next_us
            if promise is None:
                return  # only on input, and it gets none: never again
            following = -(-promise // quantum) * quantum
        else:
            following = target_us + quantum
        if following > self.end_us:
            return
        try:
            node.begin_advance(following, [])
        except NodeFailure as failure:  # (e.g. its stdin closed): reported in that window, as without lookahead
            slot.ahead = (following, failure)
            return
        self.timings.advances += 1
        self.timings.ahead += 1
        slot.ahead = (following, None)

    @staticmethod
    def take(slot: NodeSlot, target_us: int) -> None:
        """The window ``slot`` was sent ahead to has come: its DONE is collected with the others'."""
        assert slot.ahead is not None
        following, failure = slot.ahead
        slot.ahead = None
        if following != target_us:  # the promise the lookahead relied on is the one the loop executes: a bug if not
            raise RuntimeError(f"lookahead sent {slot.id!r} to {following} us, but the window ends at {target_us} us")
        if failure is not None:
            raise failure
