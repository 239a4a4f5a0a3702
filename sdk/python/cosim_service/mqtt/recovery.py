"""Surviving a broker restart: every client reconnects with a fresh session, says so (a retained rejoin notice on
``cosim/_rejoin/<node>`` under a new epoch), waits until every member of the group has, and publishes again what
its peers may still need (its outbox), the barriers under the new epoch. Copies of messages a subscriber already
has are dropped by their ``node_seq``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple

from cosim_service.mqtt.barriers import Barriers
from cosim_service.mqtt.connection import BrokerConnection, BrokerError
from cosim_service.mqtt.envelope import REJOIN_PREFIX, Notice

log = logging.getLogger("cosim.mqtt")


class Published(NamedTuple):
    """What we published in the window (current_us, target_us], kept while a peer may still need it."""

    current_us: int
    target_us: int
    topic: str
    payload: bytes | None  # None: our barrier for the window (its epoch is the one when it is sent)


class Recovery:
    """The outbox and the members' rejoin notices (``rejoined`` is shared with the network thread)."""

    def __init__(self, connection: BrokerConnection, barriers: Barriers) -> None:
        self.connection = connection
        self.barriers = barriers
        self.rejoined: dict[str, int] = {}  # member -> latest epoch it announced
        self.outbox: list[Published] = []

    def receive(self, notice: Notice) -> None:
        """A rejoin notice from the network thread (cond held)."""
        self.rejoined[notice.node] = max(notice.epoch, self.rejoined.get(notice.node, 0))
        self.connection.cond.notify_all()

    def prune(self, current: int, delay_for: Callable[[int], int]) -> None:
        """Keep only the windows a peer may not have consumed yet."""
        self.outbox = [entry for entry in self.outbox if entry.current_us + delay_for(entry.target_us) >= current]

    def recover(self, window: tuple[int, int], members: set[str], topic_filters: set[str],
                send: Callable[[Published], None]) -> None:
        """The broker went away: reconnect afresh, wait until every member has, and ``send`` the outbox again."""
        connection, cond, (current, target) = self.connection, self.connection.cond, window
        why = connection.lost
        log.warning("%s: %s in window (%s, %s] us; reconnecting", connection.where, why, current, target)
        connection.drop()
        self.barriers.new_epoch()
        epoch = self.barriers.epoch
        try:
            connection.connect(topic_filters, again=True)
        except BrokerError as exc:
            raise BrokerError(f"{connection.where} went away in window ({current}, {target}] us ({why}) and did not "
                              f"come back: {exc}") from None
        notice = Notice(connection.node_id, target, epoch)
        connection.publish(REJOIN_PREFIX + connection.node_id, notice.payload(), window=window, retain=True)
        with cond:
            back = cond.wait_for(lambda: connection.lost is not None or all(
                self.rejoined.get(m, 0) >= epoch for m in members), self.barriers.timeout_s)
            if connection.lost is None and not back:
                absent = sorted(m for m in members if self.rejoined.get(m, 0) < epoch)
                raise BrokerError(f"{connection.where} restarted in window ({current}, {target}] us; no word within "
                                  f"{self.barriers.timeout_s:g}s from {', '.join(absent)}")
        log.info("%s: every member is back (epoch %d); publishing %d message(s) again", connection.where, epoch,
                 len(self.outbox))
        for entry in list(self.outbox):
            send(entry)
