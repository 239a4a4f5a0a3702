"""An MQTT client that lives in virtual time: one window at a time (docs/protocol.md §12).

Several protocol-driven clients may share one broker (a *barrier group*, named after the broker node). In each
window (current, target] every client:

1. publishes its outgoing messages, each in an envelope (envelope.py);
2. publishes its barrier, if the coordinator lists it among the window's publishers (barriers.py);
3. before answering DONE, waits (wall-clock deadline, a clear error naming the missing peers) for the barrier of
   every peer of each window whose messages can be due by ``target``;
4. emits every enveloped message due by ``target`` at ``origin time + broker_delay_us``, in the order
   (delivery time, publishing node, node_seq): independent of which network thread got what first.

A window's messages are due no earlier than ``current + broker_delay_us``; with ``broker_delay_us >= quantum``
a window only needs the previous window's barriers, which have almost always arrived already (pipelined).
Which client keeps which message: shares.py. A broker restart: recovery.py. A checkpoint: checkpoint.py.
Anything else that arrives (no envelope, or a publisher outside the group: a ``mosquitto_pub`` typed by a user)
is not in virtual time: it is reported at the end of the window it happened to arrive in, marked external.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Iterable, Mapping
from typing import Any

from cosim_service.mqtt.barriers import Barriers, PendingWindow
from cosim_service.mqtt.checkpoint import ClientState
from cosim_service.mqtt.connection import BrokerConnection, BrokerError
from cosim_service.mqtt.envelope import (
    BARRIER_PREFIX,
    REJOIN_PREFIX,
    Delivery,
    Event,
    Notice,
    Outgoing,
    encode,
    envelope,
    external_events,
    lost_events,
    parse_envelope,
    parse_notice,
)
from cosim_service.mqtt.recovery import Published, Recovery
from cosim_service.mqtt.shares import Subscriptions


class Delays:
    """broker_delay_us as it changes: each value holds for the windows ending after the time it was set."""

    def __init__(self, delay_us: int) -> None:
        self.changes: list[tuple[int, int]] = [(-1, delay_us)]  # (since_us, delay)

    @property
    def current(self) -> int:
        return self.changes[-1][1]

    def set(self, since_us: int, delay_us: int) -> None:
        self.changes.append((since_us, delay_us))

    def for_window(self, window_us: int) -> int:
        """The delay as it was when the window ending at ``window_us`` was published (messages already published
        keep theirs)."""
        for since, delay in reversed(self.changes):
            if window_us > since:
                return delay
        return self.changes[0][1]


class Inbox:
    """Enveloped messages and external ones as the network thread receives them (guarded by the condition)."""

    def __init__(self) -> None:
        self.arrived: list[tuple[str, dict[str, Any]]] = []
        self.external: list[tuple[str, bytes]] = []
        self.last_seq: dict[str, int] = {}  # per publisher: a redelivered copy has node_seq <= this

    def receive(self, topic: str, raw: bytes) -> None:
        message = parse_envelope(raw)
        if message is None:
            self.external.append((topic, raw))
        elif message["node_seq"] > self.last_seq.get(message["node"], -1):
            self.last_seq[message["node"]] = message["node_seq"]
            self.arrived.append((topic, message))
        # else: a second copy (overlapping subscriptions, QoS 1 redelivery)


class VirtualTimeClient:
    """The MQTT client of one node in virtual time, made of its parts: the broker connection, the barriers, the
    subscriptions, the recovery from a broker restart and the queue of messages not yet due."""

    def __init__(self, node_id: str, host: str, port: int, filters: list[str], *, qos: int = 1,
                 delay_us: int = 0, connect_timeout_s: float = 10.0, barrier_timeout_s: float = 10.0) -> None:
        self.node_id = node_id
        self.cond = threading.Condition()
        self.connection = BrokerConnection(node_id, host, port, self.cond, self._on_message, qos=qos,
                                           connect_timeout_s=connect_timeout_s)
        self.barriers = Barriers(self.cond, timeout_s=barrier_timeout_s)
        self.recovery = Recovery(self.connection, self.barriers)
        self.subscriptions = Subscriptions(node_id, filters)
        self.inbox = Inbox()
        self.delays = Delays(delay_us)
        self.barrier_topic = BARRIER_PREFIX + node_id
        self.node_seq = 0
        self.members: set[str] = {node_id}  # the barrier group: publishers whose messages are in virtual time
        self.queue: list[Delivery] = []  # heap of enveloped messages not yet emitted
        self.offline = False  # the broker is down by plan (CONFIGURE with its endpoint null) until it is back

    @property
    def info(self) -> dict[str, str]:
        return self.connection.info

    def connect(self) -> None:
        self.connection.connect(self.subscriptions.topic_filters())

    def _on_message(self, topic: str, raw: bytes) -> None:
        """The network thread's messages (cond held): barriers, rejoin notices, data."""
        if topic.startswith(BARRIER_PREFIX):
            barrier = parse_notice(raw)
            if barrier is not None:
                self.barriers.receive(barrier)
            return  # control traffic, never data
        if topic.startswith(REJOIN_PREFIX):
            notice = parse_notice(raw)
            if notice is not None:
                self.recovery.receive(notice)
            return
        self.inbox.receive(topic, raw)

    # -- one window -------------------------------------------------------------------------------

    def step(self, current: int, target: int, outgoing: list[Outgoing], peers: Iterable[str] | None,
             members: Iterable[str] | None = None) -> list[Event]:
        """Publish ``outgoing`` and return the messages due in the window (current, target].

        ``peers``: the members of our barrier group that may publish in this window, us included when we may
        (None, from a coordinator that does not know barrier groups: us alone, when we publish). ``members``: the
        whole group.
        """
        assert self.connection.client is not None
        if self.offline:  # the broker is down (a planned crash): nothing gets through until it is back
            return lost_events(outgoing) + self._due(target)
        if self.connection.lost is not None:
            self._recover(current, target)
        # Our publications that a peer may still need after a broker restart: windows not yet consumed by all.
        self.recovery.prune(current, self.delays.for_window)
        if peers is None:
            peers = [self.node_id] if outgoing else []
        peer_ids = tuple(sorted(set(peers)))
        if outgoing and self.node_id not in peer_ids:
            raise BrokerError(f"window ({current}, {target}] us: {len(outgoing)} message(s) to publish, but the "
                              f"coordinator did not list {self.node_id!r} among the window's publishers {list(peer_ids)}")
        self.members.update(peer_ids, members or ())
        self.subscriptions.resolve(self.members)
        for item in outgoing:
            payload = envelope(item, self.node_id, self.node_seq, target)
            self.node_seq += 1
            self._publish(Published(current, target, item.topic, payload))
        if self.node_id in peer_ids:
            self._publish(Published(current, target, self.barrier_topic, None))
        if peer_ids:  # a window without publishers has nothing to wait for
            self.barriers.pending.append(PendingWindow(current, target, peer_ids))
        # Windows whose messages can be due by `target`: their earliest delivery is current + delay.
        needed = [w for w in self.barriers.pending if w.current_us + self.delays.for_window(w.target_us) < target]
        self._wait_for_barriers(needed, current, target)
        with self.cond:
            arrived, self.inbox.arrived = self.inbox.arrived, []
            external, self.inbox.external = self.inbox.external, []
            for w in needed:
                self.barriers.pending.remove(w)
        for topic, message in arrived:
            if message["node"] not in self.members:  # enveloped, but by a client outside our group
                external.append((topic, encode(message)))
                continue
            self._enqueue(topic, message)
        due = self._due(target)
        self.barriers.forget(target, self.delays.for_window)
        return due + external_events(external, target)

    def _enqueue(self, topic: str, message: dict[str, Any]) -> None:
        heapq.heappush(self.queue, Delivery(message["time_us"] + self.delays.for_window(message["window_us"]),
                                            message["node"], message["node_seq"], topic, message))

    def _due(self, target: int) -> list[Event]:
        """The queued messages due by ``target`` (every barrier of their windows is in), as events."""
        due = []
        with self.cond:
            while self.queue and self.queue[0].time_us <= target:
                delivery = heapq.heappop(self.queue)
                if self.subscriptions.keeps(delivery.topic, delivery.node, delivery.node_seq):
                    due.append(delivery.event())
        return due

    def _wait_for_barriers(self, needed: list[PendingWindow], current: int, target: int) -> None:
        self.barriers.wait(needed, (current, target), self.connection.where, lambda: self.connection.lost is not None,
                           lambda: self._recover(current, target))

    def _recover(self, current: int, target: int) -> None:
        self.recovery.recover((current, target), self.members, self.subscriptions.topic_filters(), self._send)

    def _publish(self, entry: Published) -> None:
        """Publish (``payload`` None: our barrier for the window) and keep it for a broker restart."""
        self.recovery.outbox.append(entry)
        self._send(entry)

    def _send(self, entry: Published) -> None:
        payload = entry.payload
        if payload is None:  # our barrier, under the epoch of now
            payload = Notice(self.node_id, entry.target_us, self.barriers.epoch).payload()
        # Without a connection it is dropped here: kept in the outbox, published again once the broker is back.
        self.connection.publish(entry.topic, payload, window=(entry.current_us, entry.target_us))

    # -- changes from the schedule (CONFIGURE) ----------------------------------------------------

    def settle(self) -> None:
        """Wait for the barriers of every window still pending: every message published so far has arrived (so
        a change made now cannot race with one of them)."""
        if self.offline or self.connection.client is None:
            return
        self._wait_for_barriers(list(self.barriers.pending), -1, -1)
        with self.cond:
            arrived, self.inbox.arrived = self.inbox.arrived, []
            self.barriers.pending.clear()
        for topic, message in arrived:
            if message["node"] in self.members:
                self._enqueue(topic, message)

    def snapshot(self) -> dict[str, Any]:
        """A checkpoint at a window boundary: settle first, then what the next windows depend on."""
        self.settle()
        with self.cond:
            return ClientState(self.node_seq, sorted(self.members), self.delays.changes, sorted(self.queue),
                               self.inbox.last_seq, self.barriers.epoch, self.recovery.outbox).to_json()

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Put a snapshot back (in a fresh process, connected to a fresh broker at INIT)."""
        state = ClientState.from_json(saved)
        with self.cond:
            self.node_seq = state.node_seq
            self.members = set(state.members)
            self.delays.changes = state.delays
            self.queue = state.queue
            heapq.heapify(self.queue)
            self.inbox.last_seq = state.last_seq
            self.barriers.epoch = state.epoch
            self.recovery.outbox = state.outbox

    def resubscribe(self, filters: list[str], qos: int) -> None:
        """New subscriptions (and QoS) from now on: drop the filters no longer wanted, subscribe the others."""
        old = self.subscriptions.topic_filters()
        self.subscriptions = Subscriptions(self.node_id, filters)  # share groups resolved at the next step
        self.connection.qos = qos
        if self.offline or self.connection.client is None:
            return  # subscribed when the broker is back
        gone = sorted(old - self.subscriptions.topic_filters())
        if gone:
            self.connection.unsubscribe(gone)
        self.connection.subscribe(self.subscriptions.topic_filters(),
                                  time.monotonic() + self.connection.connect_timeout_s)

    def go_offline(self) -> None:
        """The broker is about to go away (a planned crash): let go of it cleanly, after what is in flight."""
        self.settle()
        self.close()
        with self.cond:
            self.offline = True
            self.recovery.outbox.clear()
            self.barriers.arrived.clear()

    def come_back(self, host: str, port: int) -> None:
        """The broker is back (at ``host:port``): connect afresh and subscribe. The barrier epoch stays: nothing was
        pending when we let go (``go_offline`` settled first), so no older barrier can be mistaken for a new one,
        and a member restarted meanwhile (epoch 0) still agrees with the others."""
        self.connection.reopen(host, port)
        with self.cond:
            self.offline = False
        self.connection.connect(self.subscriptions.topic_filters(), again=True)

    def next_due(self, target: int) -> int | None:
        """After the window ending at ``target``: the earliest time at which a message we know of, or one of a
        window whose barriers we still wait for, can be due (the next-event promise); None: nothing pending."""
        times = [w.current_us + self.delays.for_window(w.target_us) + 1 for w in self.barriers.pending]
        if self.queue:
            times.append(self.queue[0].time_us)
        due = min(times, default=None)
        return None if due is None else max(due, target + 1)

    def close(self) -> None:
        self.connection.close()
