"""The typed contracts between the core's parts and the nodes: what flows through a window.

At run time they are plain dicts and tuples (TypedDict, tuple aliases): the hot path builds them as literals, at no
cost, and the type checker reads their fields by name.
"""

from __future__ import annotations

from typing import Any, NotRequired, TypedDict

NEVER = 1 << 62  # a time after every run (2**62 us: about 146,000 years): a promise of "only on input"


class Event(TypedDict):
    """An event a node emits: an entry of DONE's ``events``, or an in-process model's output."""

    type: str
    time_us: int  # emission time, in the window just advanced
    data: NotRequired[Any]


class Input(TypedDict):
    """An event as its destination receives it (an entry of ADVANCE's ``events``)."""

    type: str
    time_us: int  # delivery time
    source: str
    seq: int  # the source's sequence number of the event
    sent_us: int  # emission time
    data: Any


# An event's payload as the trace holds it until its records are written: [data, its canonical JSON or None]
# (cosim.trace.PayloadCell; a list, not an object: one is made per event).
PayloadCell = list[Any]

# The events on links, a heap of (delivery time, source, seq, dest, the event, its payload cell): (time, source, seq,
# dest) is unique, so the heap never compares events, and the order is the total order of deliveries.
PendingDelivery = tuple[int, str, int, str, Event, PayloadCell]

Inputs = dict[str, list[Input]]  # destination -> its inputs in the window, in delivery order
