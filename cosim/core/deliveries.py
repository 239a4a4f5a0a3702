"""The events on links: those due in a window handed over (``due``), those a window emitted numbered, routed and
sent on their links (``route``), with a trace record each.

The total order of deliveries is (delivery time, source, per-source sequence number, destination): the pending
heap's order. Links are at least one quantum long (the scenario checks this), so an event emitted in a window is
always delivered in a later one, at its exact virtual time.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping
from operator import itemgetter
from typing import Any

from cosim import protocol
from cosim import trace as tracing
from cosim.core.contracts import Event, Input, Inputs, PendingDelivery
from cosim.core.slots import Outputs, Slots
from cosim.network import Router
from cosim.trace import TraceWriter

_TIME_OF = itemgetter("time_us")  # an event's time (a C function: the sort key of every window's outputs)


class Deliveries:
    """The pending deliveries of a run and the counters of what did not arrive (``dropped`` per reason,
    ``unroutable`` per (source, type))."""

    def __init__(self, router: Router, slots: Slots, trace: TraceWriter) -> None:
        self.router = router
        self.slots = slots
        self.trace = trace
        self.pending: list[PendingDelivery] = []
        self.dropped: dict[str, int] = {}  # reason (loss, partition, node_down) -> count
        self.unroutable: dict[tuple[str, str], int] = {}
        self._types: dict[str, str] = {}  # event type -> its JSON
        # The (source, destination) pairs on a common ns-3 segment, and where their events go instead of the link
        # (cosim.core.segments); empty without segments.
        self.segment_pairs: Mapping[tuple[str, str], str] = {}
        self.segment_send: Callable[[int, str, int, str, Event, list[Any]], None] | None = None

    def earliest(self, never: int) -> int:
        """The time of the next delivery (``never`` when none)."""
        return self.pending[0][0] if self.pending else never

    def due(self, target_us: int) -> Inputs:
        """Pop every pending delivery with time <= target, record it, and group it by destination."""
        inputs: Inputs = {}
        pending = self.pending
        if not pending or pending[0][0] > target_us:  # (most windows of a step-bound run)
            return inputs
        types, slots = self._types, self.slots
        pop, record = heapq.heappop, self.trace.queue.append
        while pending and pending[0][0] <= target_us:
            time_us, source, seq, dest, event, payload = pop(pending)
            kind, sent_us = event["type"], event["time_us"]
            if slots.down and slots[dest].down:  # a crashed node: what reaches it is lost
                slots[dest].lost += 1
                self.dropped["node_down"] = self.dropped.get("node_down", 0) + 1
                self.trace.write({"record": "dropped", "dest": dest, "reason": "node_down", "time_us": sent_us,
                                  "at_us": time_us, "source": source, "seq": seq, "type": kind,
                                  "data": payload[0]})
                continue
            type_json = types.get(kind) or self._type_json(kind)
            record(("delivered", payload, dest, sent_us, seq, source, time_us, type_json))  # a trace.QueuedDelivered
            delivered: Input = {"type": kind, "time_us": time_us, "source": source, "seq": seq, "sent_us": sent_us,
                                "data": payload[0]}
            received = inputs.get(dest)
            if received is None:
                inputs[dest] = [delivered]
            else:
                received.append(delivered)
        return inputs

    def route(self, outputs: Outputs) -> None:
        """Number each node's outputs (per-source sequence), order them by (time, source, seq), and send each to its
        destinations: each destination's link adds latency and seeded jitter, or loses the event."""
        numbered: list[tuple[int, str, int, Event]] = []
        sources = 0
        for slot, events in outputs:
            if not events:
                continue
            sources += 1
            # A node's events are numbered in time order; same-time events keep the order the node gave them.
            if len(events) > 1:
                events = sorted(events, key=_TIME_OF)
            first = slot.next_seq
            slot.next_seq = first + len(events)
            source = slot.id
            numbered += [(event["time_us"], source, first + offset, event) for offset, event in enumerate(events)]
        if not sources:
            return
        if sources > 1:  # (time, source, seq) is unique: the events themselves are never compared
            numbered.sort()
        trace, router, pending, types = self.trace, self.router, self.pending, self._types
        record, split, delivery_time, push = trace.queue.append, router.split, router.delivery_time, heapq.heappush
        segment_pairs, segment_send = self.segment_pairs, self.segment_send
        for time_us, source, seq, event in numbered:
            kind = event["type"]
            type_json = types.get(kind) or self._type_json(kind)
            # The payload is encoded once (when the trace drains): its sent, delivered and dropped records share it.
            payload = [event.get("data"), None]
            record(("sent", payload, seq, source, time_us, type_json))  # a trace.QueuedSent
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
                record(("unroutable", payload, seq, source, time_us, type_json))
                continue
            for dest in dests:
                if segment_send is not None and (source, dest) in segment_pairs:
                    segment_send(time_us, source, seq, dest, event, payload)  # through ns-3, not the link
                    continue
                at = delivery_time(source, dest, time_us)
                if isinstance(at, int):
                    push(pending, (at, source, seq, dest, event, payload))
                else:  # lost on the link
                    reason = at.value
                    self.dropped[reason] = self.dropped.get(reason, 0) + 1
                    record(("dropped", payload, dest, reason, seq, source, time_us, type_json))

    def _type_json(self, event_type: str) -> str:
        """An event type as JSON, encoded once per type (the trace lines are built around it)."""
        encoded = self._types.get(event_type)
        if encoded is None:
            encoded = self._types[event_type] = protocol.canonical(event_type)
        return encoded

    # -- checkpoints ------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        return {"pending": [[*entry[:5], tracing.payload_json(entry[5])] for entry in sorted(self.pending)],
                "router": self.router.snapshot(), "dropped": self.dropped,
                "unroutable": [[source, kind, count] for (source, kind), count in sorted(self.unroutable.items())]}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.pending = [(time_us, source, seq, dest, event, [event.get("data"), data_json])
                        for time_us, source, seq, dest, event, data_json in state["pending"]]
        heapq.heapify(self.pending)
        self.router.restore(state["router"])
        self.dropped = dict(state["dropped"])
        self.unroutable = {(source, kind): count for source, kind, count in state["unroutable"]}
