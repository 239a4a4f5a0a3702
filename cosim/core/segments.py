"""The network segments part: the events between two nodes of one segment travel through ns-3 (the worker,
cosim.segments) instead of their link.

The delivery rule (docs/segments.md): ns-3 can only run up to a time once every send before it is known, i.e. once
the window holding it has executed. So an arrival that ns-3 computes at ``a`` is delivered at ``a + quantum``: at
the start S of each executed window the worker is run to S with the sends buffered since, and the arrivals in
(.., S] are handed over in that window (every one of them at a + q in (S, S + q]: see ``wakeup``). The delivered
record keeps ns-3's exact time as ``arrived_us`` and names the ``segment``; a drop is a ``dropped`` record with
ns-3's reason and its time ``at_us``.

The worker is only asked when something can happen in ns-3 up to S: sends are buffered, or its next event (``next_us``
of its last reply) is at or before S. Next-event advance executes exactly those windows (``wakeup``), fixed advance
executes every window: both ask the same questions, and ns-3's answers do not depend on where it is stopped, so the
records are the same in both modes.
"""

from __future__ import annotations

from typing import Any

from cosim import trace as tracing
from cosim.core.contracts import Event, Input, Inputs
from cosim.core.slots import Slots
from cosim.errors import SegmentWorkerFailed
from cosim.model import Scenario
from cosim.segments import SegmentWorker, Send
from cosim.trace import PayloadCell, TraceWriter

# An event on a segment until ns-3 says what became of it: (sent time, source, seq, destination, event, payload,
# segment id).
InFlight = tuple[int, str, int, str, Event, PayloadCell, str]


class Segments:
    """Which (source, destination) pairs share a segment, the sends buffered for the worker, the events in flight
    in ns-3, and their delivery (``deliver``) once the worker has run past them."""

    def __init__(self, scenario: Scenario, worker: SegmentWorker, slots: Slots, trace: TraceWriter,
                 dropped: dict[str, int]) -> None:
        self.worker, self.slots, self.trace = worker, slots, trace
        self.quantum_us = scenario.quantum_us
        self.dropped = dropped  # the run's drop counters per reason (shared with cosim.core.deliveries)
        # (source, destination) -> the segment between them: the first in file order that has both.
        self.pairs: dict[tuple[str, str], str] = {}
        for segment in scenario.segments:
            for source in segment.nodes:
                for dest in segment.nodes:
                    if source != dest:
                        self.pairs.setdefault((source, dest), segment.id)
        self.buffered: list[Send] = []
        self.in_flight: dict[int, InFlight] = {}
        self.next_pid = 0
        self.worker_now_us = 0  # the worker's time: the last until_us
        self.next_us: int | None = None  # the worker's next event after worker_now_us (None: none)

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def start(self) -> dict[str, Any]:
        """After the nodes' INIT: the worker's answer to its init (sent when it started); what it says of itself
        (its ns-3 version and modules) for the header's environment."""
        self.worker.ready()
        return dict(self.worker.info)

    def send(self, time_us: int, source: str, seq: int, dest: str, event: Event, payload: PayloadCell) -> None:
        """An event routed from ``source`` to ``dest`` on their common segment: buffered until the next window starts
        (cosim.core.deliveries calls this in place of the link)."""
        pid = self.next_pid
        self.next_pid = pid + 1
        segment = self.pairs[(source, dest)]
        # Its UDP payload: the event's data as canonical JSON (at least one byte).
        size = max(1, len(tracing.payload_json(payload).encode("utf-8")))
        self.buffered.append((pid, time_us, segment, source, dest, size))
        self.in_flight[pid] = (time_us, source, seq, dest, event, payload, segment)

    def wakeup(self, now_us: int) -> int | None:
        """The next-event wake-up: the next window after one that sent on a segment; otherwise the window holding the
        worker's next event + q, whose start S is the first grid time >= that event, so its arrivals a (>= the
        event, > S - q) land at a + q inside that window."""
        if self.buffered:
            return now_us + 1
        if self.next_us is not None:
            return self.next_us + self.quantum_us
        return None

    def deliver(self, start_us: int, inputs: Inputs) -> None:
        """At the start of the window (start_us, start_us + q]: run the worker to start_us when something can happen
        in ns-3 by then, add its arrivals (at a + q) to the window's ``inputs`` in the total order (delivery time,
        source, seq), and record them and its drops."""
        if not self.buffered and (self.next_us is None or self.next_us > start_us):
            return  # nothing happens in ns-3 up to start_us: no need to ask
        sends = sorted(self.buffered, key=lambda send: (send[1], send[0]))
        self.buffered = []
        reply = self.worker.run(start_us, sends)
        self.worker_now_us = start_us
        self.next_us = reply.get("next_us")
        in_flight, quantum, write = self.in_flight, self.quantum_us, self.trace.write
        try:
            for pid, at_us, reason in reply["drops"]:
                sent_us, source, seq, dest, event, payload, segment = in_flight.pop(pid)
                self.dropped[reason] = self.dropped.get(reason, 0) + 1
                write({"record": "dropped", "dest": dest, "reason": reason, "time_us": sent_us, "at_us": at_us,
                       "segment": segment, "source": source, "seq": seq, "type": event["type"], "data": payload[0]})
            arrived: dict[str, list[Input]] = {}
            for pid, at_us in reply["arrivals"]:
                sent_us, source, seq, dest, event, payload, segment = in_flight.pop(pid)
                if not start_us - quantum < at_us <= start_us:
                    raise ValueError(f"arrival of {pid} at {at_us} us is outside ({start_us - quantum}, {start_us}]")
                time_us = at_us + quantum
                slot = self.slots.get(dest)
                if slot is not None and slot.down:  # a crashed node: what reaches it is lost
                    slot.lost += 1
                    self.dropped["node_down"] = self.dropped.get("node_down", 0) + 1
                    write({"record": "dropped", "dest": dest, "reason": "node_down", "time_us": sent_us,
                           "at_us": time_us, "segment": segment, "source": source, "seq": seq,
                           "type": event["type"], "data": payload[0]})
                    continue
                write({"record": "delivered", "dest": dest, "time_us": time_us, "arrived_us": at_us,
                       "segment": segment, "sent_us": sent_us, "source": source, "seq": seq, "type": event["type"],
                       "data": payload[0]})
                arrived.setdefault(dest, []).append({"type": event["type"], "time_us": time_us, "source": source,
                                                     "seq": seq, "sent_us": sent_us, "data": payload[0]})
        except (KeyError, ValueError, TypeError) as exc:
            raise SegmentWorkerFailed(f"broke its protocol in reply to run until {start_us} us: {exc}") from None
        for dest, events in arrived.items():
            received = inputs.get(dest)
            if received is None:
                inputs[dest] = sorted(events, key=_ORDER)
            else:  # merged with the link deliveries of the window in the one total order
                received.extend(events)
                received.sort(key=_ORDER)


def _ORDER(event: Input) -> tuple[int, str, int]:
    return event["time_us"], event["source"], event["seq"]

