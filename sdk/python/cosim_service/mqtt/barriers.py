"""Barriers: knowing that every peer's messages of a window have arrived (docs/protocol.md §12).

In each window a peer that may publish sends a barrier after its messages; Mosquitto keeps one client's messages in
order towards each subscriber, so the barrier arriving means the window's messages have. Before DONE a client waits
for the barriers of every window whose messages can be due by its target. Barriers count only in the current
connection *epoch*: after a broker restart an older barrier may precede lost messages.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from cosim_service.mqtt.connection import BrokerError
from cosim_service.mqtt.envelope import Notice


@dataclass
class PendingWindow:
    """A window of ours whose peers' barriers we may still need."""

    current_us: int
    target_us: int
    peers: tuple[str, ...]


class Barriers:
    """The windows we wait for and the barriers that arrived (``arrived`` is shared with the network thread)."""

    def __init__(self, cond: threading.Condition, *, timeout_s: float = 10.0) -> None:
        self.cond = cond
        self.timeout_s = timeout_s
        self.epoch = 0
        self.pending: list[PendingWindow] = []
        self.arrived: dict[int, set[str]] = {}  # window target -> peers whose barrier arrived

    def receive(self, barrier: Notice) -> None:
        """A barrier from the network thread (cond held)."""
        if barrier.epoch == self.epoch:  # an older epoch's may precede lost messages
            self.arrived.setdefault(barrier.target_us, set()).add(barrier.node)
            self.cond.notify_all()

    def new_epoch(self) -> None:
        """A fresh connection after a broker restart: the barriers so far no longer count."""
        with self.cond:
            self.epoch += 1
            self.arrived.clear()

    def missing(self, needed: list[PendingWindow]) -> list[str]:
        return [f"{peer} (window ending {w.target_us} us)" for w in needed for peer in w.peers
                if peer not in self.arrived.get(w.target_us, {})]

    def wait(self, needed: list[PendingWindow], window: tuple[int, int], where: str,
             lost: Callable[[], bool], recover: Callable[[], None]) -> None:
        """Wait until every barrier of ``needed`` is in; when the connection is ``lost``, ``recover`` and go on."""
        while True:
            with self.cond:
                done = self.cond.wait_for(lambda: lost() or not self.missing(needed), self.timeout_s)
                if not lost() and not done:
                    absent = self.missing(needed)
                    raise BrokerError(f"window ({window[0]}, {window[1]}] us: no barrier within {self.timeout_s:g}s "
                                      f"through {where} from {', '.join(absent[:8])}{' ...' if len(absent) > 8 else ''}")
                if not lost():
                    return
            recover()

    def forget(self, target: int, delay_for: Callable[[int], int]) -> None:
        """A window's messages are all due by its target + delay: its barriers are no longer needed then."""
        with self.cond:
            waiting = {w.target_us for w in self.pending}
            for old in [t for t in self.arrived if t + delay_for(t) <= target and t not in waiting]:
                del self.arrived[old]
