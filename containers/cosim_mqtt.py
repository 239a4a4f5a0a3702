"""An MQTT client that lives in virtual time, shared by the bundled MQTT services (mqtt-gateway, cloud-aggregator).

Several protocol-driven clients may share one broker (a *barrier group*, named after the broker node). In each
window (current, target] every client:

1. publishes its outgoing messages, each wrapped in an **envelope**: the payload plus ``node`` (the publishing
   node), ``node_seq`` (its per-node counter, from 0) and ``window_us`` (the target of the window it was
   published in). The payload's ``time_us`` is its origin time in virtual time;
2. publishes a **barrier** ``{"node", "target_us", "epoch"}`` on ``cosim/_barrier/<node>``, at the same QoS;
   Mosquitto keeps one client's messages in order towards each subscriber, so a peer's barrier arriving means
   every message of that peer's window that matches our subscriptions has arrived before it;
3. before answering DONE, waits (wall-clock deadline, a clear error naming the missing peers) for the barrier
   of every peer the coordinator advanced in each window whose messages can be due by ``target``;
4. emits every enveloped message due by ``target`` at ``origin time + broker_delay_us``, in the order
   (delivery time, publishing node, node_seq): independent of which network thread got what first.

A window's messages are due no earlier than ``current + broker_delay_us``; with ``broker_delay_us >= quantum``
a window only needs the previous window's barriers, which have almost always arrived already (pipelined).

Shared subscriptions: a filter ``$share/<group>/<filter>``, where ``<group>`` is the id of a replicated service
(its replicas are ``<group>-<n>``), is subscribed at the broker as plain ``<filter>``, and each message is kept
by exactly one replica: number ``sha256(node \\x1f node_seq) mod n`` of the group's sorted replica ids. Plain
filters keep fan-out (every subscriber gets every message).

Anything else that arrives (no envelope, or a publisher outside the group: a ``mosquitto_pub`` typed by a user)
is not in virtual time: it is reported at the end of the window it happened to arrive in, marked external.

A broker restart: each client reconnects afresh, announces a new epoch (retained, ``cosim/_rejoin/<node>``),
waits for every member's announcement and then publishes again what its peers may still need (its outbox);
barriers of older epochs stop counting, and duplicate messages are dropped by their ``node_seq``.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import logging
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from protocol_adapter import serve

log = logging.getLogger("cosim.mqtt")

BARRIER_PREFIX = "cosim/_barrier/"  # control traffic of every client; never reported as data
BARRIER_FILTER = BARRIER_PREFIX + "+"
REJOIN_PREFIX = "cosim/_rejoin/"  # retained, after a broker restart: this client is back and subscribed
REJOIN_FILTER = REJOIN_PREFIX + "+"
SHARE_PREFIX = "$share/"
SYS_VERSION_TOPIC = "$SYS/broker/version"  # not matched by '#' filters (MQTT spec), so never data
SYS_VERSION_WAIT_S = 2.0
RETRY_PAUSE_S = 0.2  # pause between connection attempts while the broker is still starting
ENVELOPE_KEYS = frozenset({"type", "time_us", "source", "seq", "data", "node", "node_seq", "window_us"})


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class BrokerError(RuntimeError):
    """The broker could not be reached, refused us, went away, or a peer's barrier did not come."""


@dataclass(frozen=True)
class Subscription:
    topic_filter: str  # as subscribed at the broker
    share: str | None  # the share group of a `$share/<group>/<filter>` subscription, else None (fan-out)


def parse_subscriptions(filters: Iterable[str]) -> list[Subscription]:
    out = []
    for text in filters:
        if text.startswith(SHARE_PREFIX):
            group, _, inner = text[len(SHARE_PREFIX):].partition("/")
            if not group or not inner or any(c in group for c in "+#"):
                raise ValueError(f"bad shared subscription {text!r}: expected $share/<group>/<filter>")
            out.append(Subscription(inner, group))
        else:
            out.append(Subscription(text, None))
    return out


def share_owner(members: list[str], node: str, node_seq: int) -> str:
    """The member of a share group that keeps message (node, node_seq): a stable hash, no broker timing."""
    digest = hashlib.sha256(f"{node}\x1f{node_seq}".encode()).digest()
    return sorted(members)[int.from_bytes(digest[:8], "big") % len(members)]


@dataclass(order=True)
class Delivery:
    """An enveloped message, ordered by (delivery time, publishing node, node_seq)."""

    time_us: int
    node: str
    node_seq: int
    topic: str = field(compare=False)
    envelope: dict[str, Any] = field(compare=False)

    def event(self) -> dict[str, Any]:
        e = self.envelope
        origin = {"node": self.node, "source": e["source"], "seq": e["seq"], "time_us": e["time_us"], "type": e["type"]}
        return {"type": "mqtt_received", "time_us": self.time_us,
                "data": {"topic": self.topic, "payload": e["data"], "origin": origin}}


@dataclass
class PendingWindow:
    """A window of ours whose peers' barriers we may still need."""

    current_us: int
    target_us: int
    peers: tuple[str, ...]


class VirtualTimeClient:
    def __init__(self, node_id: str, host: str, port: int, filters: list[str], *, qos: int = 1,
                 delay_us: int = 0, connect_timeout_s: float = 10.0, barrier_timeout_s: float = 10.0) -> None:
        self.node_id = node_id
        self.host, self.port = host, port
        self.subscriptions = parse_subscriptions(filters)
        self.qos = qos
        self.delays: list[tuple[int, int]] = [(-1, delay_us)]  # (since_us, delay): for windows ending after since
        self.connect_timeout_s = connect_timeout_s
        self.barrier_timeout_s = barrier_timeout_s
        self.barrier_topic = BARRIER_PREFIX + node_id
        self.cond = threading.Condition()
        self.client: mqtt.Client | None = None
        self.node_seq = 0
        self.pending: list[PendingWindow] = []
        self.members: set[str] = {node_id}  # the barrier group: publishers whose messages are in virtual time
        self.share_members: dict[str, list[str]] = {}  # share group -> its replicas (sorted), set at the first step
        self.queue: list[Delivery] = []  # heap of enveloped messages not yet emitted
        # Shared with the network thread (guarded by self.cond).
        self.connack: mqtt.ReasonCode | None = None
        self.suback: dict[int, list[mqtt.ReasonCode]] = {}
        self.lost: str | None = None
        self.broker_version: str | None = None
        self.closing = False
        self.arrived: list[tuple[str, dict[str, Any]]] = []  # enveloped messages from the network thread
        self.barriers: dict[int, set[str]] = {}  # window target -> peers whose barrier arrived
        self.last_seq: dict[str, int] = {}  # per publisher: a redelivered copy has node_seq <= this
        self.external: list[tuple[str, bytes]] = []
        # Surviving a broker restart: every client reconnects, says so (retained), waits until all have, and
        # publishes again what its peers may still need. Barriers of an older connection epoch no longer count.
        self.epoch = 0
        self.rejoined: dict[str, int] = {}  # member -> latest epoch it announced
        self.outbox: list[tuple[int, int, str, bytes | None]] = []  # (window current, target, topic, payload; None: barrier)
        self.offline = False  # the broker is down by plan (CONFIGURE with its endpoint null) until it is back

    @property
    def delay_us(self) -> int:
        return self.delays[-1][1]

    def delay_for(self, window_us: int) -> int:
        """broker_delay_us as it was when the window ending at ``window_us`` was published (a reconfigure changes it
        for the windows after it; messages already published keep theirs)."""
        for since, delay in reversed(self.delays):
            if window_us > since:
                return delay
        return self.delays[0][1]

    @property
    def where(self) -> str:
        return f"MQTT broker {self.host}:{self.port}"

    @property
    def info(self) -> dict[str, str]:
        return {"paho-mqtt": paho.mqtt.__version__, "broker": self.broker_version or "unknown"}

    # -- connecting -------------------------------------------------------------------------------

    def _new_client(self, connect_timeout_s: float) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cosim-{self.node_id}", clean_session=True,
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False)  # _recover reconnects, afresh
        client.enable_logger(logging.getLogger("paho"))
        client.connect_timeout = connect_timeout_s  # paho allows setting it only before the first attempt
        client.max_inflight_messages_set(0)  # unlimited: a window's burst is not throttled by PUBACK round trips
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def connect(self, *, again: bool = False) -> None:
        logging.getLogger("paho").setLevel(logging.WARNING)
        deadline = time.monotonic() + self.connect_timeout_s
        # Wall clock only to bound reconnection (like a watchdog): it decides when a connection exists, never what
        # is emitted or when in virtual time. An Event that is never set gives an interruptible pause between tries.
        pause = threading.Event()
        last_error = "no attempt"
        while True:  # the broker container may still be starting: retry until the deadline
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(f"{self.where} not reachable within {self.connect_timeout_s:g}s (last error: {last_error})")
            client = self._new_client(max(remaining, 0.05))  # a fresh client bounds each attempt by the deadline
            try:
                client.connect(self.host, self.port, keepalive=60)
                break
            except OSError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                pause.wait(min(RETRY_PAUSE_S, _left(deadline)))
        self.client = client
        sock = client.socket()
        if isinstance(sock, socket.socket):  # small packets at once: Nagle + delayed ACK cost ~40 ms per window
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.loop_start()
        with self.cond:
            if not self.cond.wait_for(lambda: self.connack is not None or self.lost is not None, _left(deadline)):
                raise BrokerError(f"{self.where} accepted TCP but sent no CONNACK within {self.connect_timeout_s:g}s")
            if self.connack is None or self.connack.is_failure:
                raise BrokerError(f"{self.where} refused the connection: {self.connack or self.lost}")
        subscriptions = self._subscribe(deadline)
        log.info("connected to %s as cosim-%s; subscribed to %s", self.where, self.node_id, subscriptions)
        if again:
            return
        # The broker's version, for the run's manifest: Mosquitto keeps it as a retained $SYS message.
        client.subscribe(SYS_VERSION_TOPIC, 0)
        with self.cond:
            self.cond.wait_for(lambda: self.broker_version is not None, min(SYS_VERSION_WAIT_S, _left(deadline)))

    def _subscribe(self, deadline: float) -> list[str]:
        """Subscribe to our filters and the control topics; wait for the broker to confirm them."""
        assert self.client is not None
        subscriptions = [(f, self.qos) for f in
                         sorted({s.topic_filter for s in self.subscriptions} | {BARRIER_FILTER, REJOIN_FILTER})]
        rc, mid = self.client.subscribe(subscriptions)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"could not subscribe at {self.where}: {mqtt.error_string(rc)}")
        with self.cond:
            if not self.cond.wait_for(lambda: mid in self.suback or self.lost is not None, _left(deadline)):
                raise BrokerError(f"{self.where} did not confirm the subscriptions within {self.connect_timeout_s:g}s")
            if self.lost is not None:
                raise BrokerError(f"lost {self.where} while subscribing: {self.lost}")
            refused = [f for (f, _), code in zip(subscriptions, self.suback[mid]) if code.is_failure]
            if refused:
                raise BrokerError(f"{self.where} refused subscriptions {refused}")
        return [f for f, _ in subscriptions]

    # -- network-thread callbacks (paho VERSION2 signatures) --------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: mqtt.ReasonCode, properties: Any) -> None:
        with self.cond:
            if self.connack is not None and self.lost is not None:
                return  # a late CONNACK of a connection already lost
            self.connack = reason
            self.cond.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: mqtt.ReasonCode, properties: Any) -> None:
        with self.cond:
            if not self.closing and self.lost is None:
                self.lost = f"connection lost ({reason})"
                log.error("%s: %s", self.where, self.lost)
            self.cond.notify_all()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: list[mqtt.ReasonCode], properties: Any) -> None:
        with self.cond:
            self.suback[mid] = list(codes)
            self.cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic, raw = msg.topic, bytes(msg.payload)
        with self.cond:
            if topic == SYS_VERSION_TOPIC:
                self.broker_version = raw.decode("utf-8", errors="replace")
                self.cond.notify_all()
                return
            if topic.startswith(BARRIER_PREFIX):
                barrier = _barrier(raw)
                if barrier is not None and barrier[2] == self.epoch:  # an older epoch's may precede lost messages
                    self.barriers.setdefault(barrier[1], set()).add(barrier[0])
                    self.cond.notify_all()
                return  # control traffic, never data
            if topic.startswith(REJOIN_PREFIX):
                rejoin = _barrier(raw)
                if rejoin is not None:
                    self.rejoined[rejoin[0]] = max(rejoin[2], self.rejoined.get(rejoin[0], 0))
                    self.cond.notify_all()
                return
            envelope = _envelope(raw)
            if envelope is None:
                self.external.append((topic, raw))
            elif envelope["node_seq"] > self.last_seq.get(envelope["node"], -1):
                self.last_seq[envelope["node"]] = envelope["node_seq"]
                self.arrived.append((topic, envelope))
            # else: a second copy (overlapping subscriptions, QoS 1 redelivery)

    # -- one window -------------------------------------------------------------------------------

    def step(self, current: int, target: int, outgoing: list[tuple[str, str, int, str, int, Any]],
             peers: Iterable[str] | None, members: Iterable[str] | None = None) -> list[dict[str, Any]]:
        """Publish ``outgoing`` (topic, type, time_us, source, seq, data) and return the messages due in the window.

        ``peers``: the members of our barrier group that may publish in this window, us included when we may
        (None, from a coordinator that does not know barrier groups: us alone, when we publish). ``members``: the
        whole group.
        """
        assert self.client is not None
        if self.offline:  # the broker is down (a planned crash): nothing gets through until it is back
            return self._lost(outgoing) + self._due(target)
        if self.lost is not None:
            self._recover(current, target)
        # Our publications that a peer may still need after a broker restart: windows not yet consumed by all.
        self.outbox = [entry for entry in self.outbox if entry[0] + self.delay_for(entry[1]) >= current]
        if peers is None:
            peers = [self.node_id] if outgoing else []
        peer_ids = tuple(sorted(set(peers)))
        if outgoing and self.node_id not in peer_ids:
            raise BrokerError(f"window ({current}, {target}] us: {len(outgoing)} message(s) to publish, but the "
                              f"coordinator did not list {self.node_id!r} among the window's publishers {list(peer_ids)}")
        self.members.update(peer_ids, members or ())
        if not self.share_members:
            self.share_members = self._share_groups()
        for topic, kind, time_us, source, seq, data in outgoing:
            envelope = {"type": kind, "time_us": time_us, "source": source, "seq": seq, "data": data,
                        "node": self.node_id, "node_seq": self.node_seq, "window_us": target}
            self.node_seq += 1
            self._publish(current, target, topic, canonical(envelope))
        if self.node_id in peer_ids:
            self._publish(current, target, self.barrier_topic, None)
        if peer_ids:  # a window without publishers has nothing to wait for
            self.pending.append(PendingWindow(current, target, peer_ids))
        # Windows whose messages can be due by `target`: their earliest delivery is current + delay.
        needed = [w for w in self.pending if w.current_us + self.delay_for(w.target_us) < target]
        self._wait_for_barriers(needed, current, target)
        with self.cond:
            arrived, self.arrived = self.arrived, []
            external, self.external = self.external, []
            for w in needed:
                self.pending.remove(w)
        for topic, envelope in arrived:
            if envelope["node"] not in self.members:  # enveloped, but by a client outside our group
                external.append((topic, canonical(envelope)))
                continue
            heapq.heappush(self.queue, Delivery(envelope["time_us"] + self.delay_for(envelope["window_us"]), envelope["node"],
                                                envelope["node_seq"], topic, envelope))
        due = self._due(target)
        with self.cond:
            # A window's messages are all due by its target + delay: its barriers are no longer needed then.
            waiting = {w.target_us for w in self.pending}
            for old in [t for t in self.barriers if t + self.delay_for(t) <= target and t not in waiting]:
                del self.barriers[old]
        return due + external_events(external, target)

    def _due(self, target: int) -> list[dict[str, Any]]:
        """The queued messages due by ``target`` (every barrier of their windows is in), as events."""
        due = []
        with self.cond:
            while self.queue and self.queue[0].time_us <= target:
                delivery = heapq.heappop(self.queue)
                if self._keeps(delivery):
                    due.append(delivery.event())
        return due

    def _lost(self, outgoing: list[tuple[str, str, int, str, int, Any]]) -> list[dict[str, Any]]:
        """What could not be published while the broker is down, as ``mqtt_lost`` events (so the trace shows it)."""
        return [{"type": "mqtt_lost", "time_us": time_us, "data": {"topic": topic, "source": source, "seq": seq,
                                                                    "type": kind, "reason": "broker_down"}}
                for topic, kind, time_us, source, seq, _ in outgoing]

    # -- changes from the schedule (CONFIGURE) ----------------------------------------------------

    def settle(self) -> None:
        """Wait for the barriers of every window still pending: every message published so far has arrived (so
        a change made now cannot race with one of them)."""
        if self.offline or self.client is None:
            return
        self._wait_for_barriers(list(self.pending), -1, -1)
        with self.cond:
            arrived, self.arrived = self.arrived, []
            self.pending.clear()
        for topic, envelope in arrived:
            if envelope["node"] in self.members:
                heapq.heappush(self.queue, Delivery(envelope["time_us"] + self.delay_for(envelope["window_us"]),
                                                    envelope["node"], envelope["node_seq"], topic, envelope))

    def snapshot(self) -> dict[str, Any]:
        """A checkpoint at a window boundary: settle first (every message published so far has arrived and is
        queued: nothing is left in flight in the broker), then what the next windows depend on."""
        self.settle()
        with self.cond:
            return {"node_seq": self.node_seq, "members": sorted(self.members), "delays": [list(d) for d in self.delays],
                    "queue": [[d.time_us, d.node, d.node_seq, d.topic, d.envelope] for d in sorted(self.queue)],
                    "last_seq": dict(sorted(self.last_seq.items())), "epoch": self.epoch,
                    "outbox": [[c, t, topic, None if p is None else p.decode("utf-8")] for c, t, topic, p in self.outbox]}

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Put a snapshot back (in a fresh process, connected to a fresh broker at INIT)."""
        with self.cond:
            self.node_seq = int(saved["node_seq"])
            self.members = set(saved["members"])
            self.delays = [(int(since), int(delay)) for since, delay in saved["delays"]]
            self.queue = [Delivery(t, node, seq, topic, envelope) for t, node, seq, topic, envelope in saved["queue"]]
            heapq.heapify(self.queue)
            self.last_seq = {node: int(seq) for node, seq in saved["last_seq"].items()}
            self.epoch = int(saved["epoch"])
            self.outbox = [(c, t, topic, None if p is None else p.encode("utf-8")) for c, t, topic, p in saved["outbox"]]

    def set_delay(self, since_us: int, delay_us: int) -> None:
        """broker_delay_us for the windows ending after ``since_us``."""
        self.delays.append((since_us, delay_us))

    def resubscribe(self, filters: list[str], qos: int) -> None:
        """New subscriptions (and QoS) from now on: drop the filters no longer wanted, subscribe the others."""
        old = {s.topic_filter for s in self.subscriptions}
        self.subscriptions = parse_subscriptions(filters)
        self.share_members = {}  # recomputed at the next step
        self.qos = qos
        if self.offline or self.client is None:
            return  # subscribed when the broker is back
        gone = sorted(old - {s.topic_filter for s in self.subscriptions})
        if gone:
            self.client.unsubscribe(gone)
        self._subscribe(time.monotonic() + self.connect_timeout_s)

    def go_offline(self) -> None:
        """The broker is about to go away (a planned crash): let go of it cleanly, after what is in flight."""
        self.settle()
        self.close()
        with self.cond:
            self.offline = True
            self.outbox.clear()
            self.barriers.clear()

    def come_back(self, host: str, port: int) -> None:
        """The broker is back (at ``host:port``): connect afresh and subscribe. The barrier epoch stays: nothing was
        pending when we let go (``go_offline`` settled first), so no older barrier can be mistaken for a new one,
        and a member restarted meanwhile (epoch 0) still agrees with the others."""
        self.host, self.port = host, port
        with self.cond:
            self.connack, self.lost, self.suback, self.closing = None, None, {}, False
            self.offline = False
        self.connect(again=True)

    def next_due(self, target: int) -> int | None:
        """After the window ending at ``target``: the earliest time at which a message we know of, or one of a
        window whose barriers we still wait for, can be due (the next-event promise); None: nothing pending."""
        times = [w.current_us + self.delay_for(w.target_us) + 1 for w in self.pending]  # origin > window start
        if self.queue:
            times.append(self.queue[0].time_us)
        due = min(times, default=None)
        return None if due is None else max(due, target + 1)

    def _share_groups(self) -> dict[str, list[str]]:
        """Each share group's replicas among the barrier group's members; we must be one of them."""
        groups = {}
        for share in sorted({s.share for s in self.subscriptions if s.share is not None}):
            replicas = sorted(m for m in self.members if m == share or re.fullmatch(re.escape(share) + r"-[0-9]+", m))
            if self.node_id not in replicas:
                raise ValueError(f"subscription $share/{share}/...: {share!r} must be the id of this replicated service "
                                 f"(this node is {self.node_id!r}; the broker's clients are {sorted(self.members)})")
            groups[share] = replicas
        return groups

    def _keeps(self, delivery: Delivery) -> bool:
        """Fan-out filters always keep a message; shared filters keep it on one replica of the share group."""
        for sub in self.subscriptions:
            if not mqtt.topic_matches_sub(sub.topic_filter, delivery.topic):
                continue
            if sub.share is None:
                return True
            if share_owner(self.share_members[sub.share], delivery.node, delivery.node_seq) == self.node_id:
                return True
        return False

    def _wait_for_barriers(self, needed: list[PendingWindow], current: int, target: int) -> None:
        def missing() -> list[str]:
            return [f"{peer} (window ending {w.target_us} us)" for w in needed for peer in w.peers
                    if peer not in self.barriers.get(w.target_us, {})]

        while True:
            with self.cond:
                done = self.cond.wait_for(lambda: self.lost is not None or not missing(), self.barrier_timeout_s)
                if self.lost is None and not done:
                    absent = missing()
                    raise BrokerError(f"window ({current}, {target}] us: no barrier within {self.barrier_timeout_s:g}s "
                                      f"through {self.where} from {', '.join(absent[:8])}{' ...' if len(absent) > 8 else ''}")
                if self.lost is None:
                    return
            self._recover(current, target)

    def _recover(self, current: int, target: int) -> None:
        """The broker went away: reconnect with a fresh session, wait until every member has, and publish again
        what the peers may still need (the barriers under the new epoch)."""
        assert self.client is not None
        old, why = self.client, self.lost
        log.warning("%s: %s in window (%s, %s] us; reconnecting", self.where, why, current, target)
        old.on_disconnect = old.on_message = old.on_connect = old.on_subscribe = None
        old.loop_stop()
        with self.cond:
            self.connack, self.lost, self.suback = None, None, {}
            self.epoch += 1
            self.barriers.clear()
        try:
            self.connect(again=True)
        except BrokerError as exc:
            raise BrokerError(f"{self.where} went away in window ({current}, {target}] us ({why}) and did not "
                              f"come back: {exc}") from None
        assert self.client is not None
        self.client.publish(REJOIN_PREFIX + self.node_id, canonical({"node": self.node_id, "target_us": target,
                                                                     "epoch": self.epoch}), qos=self.qos, retain=True)
        with self.cond:
            back = self.cond.wait_for(lambda: self.lost is not None or all(
                self.rejoined.get(m, 0) >= self.epoch for m in self.members), self.barrier_timeout_s)
            if self.lost is None and not back:
                absent = sorted(m for m in self.members if self.rejoined.get(m, 0) < self.epoch)
                raise BrokerError(f"{self.where} restarted in window ({current}, {target}] us; no word within "
                                  f"{self.barrier_timeout_s:g}s from {', '.join(absent)}")
        log.info("%s: every member is back (epoch %d); publishing %d message(s) again", self.where, self.epoch,
                 len(self.outbox))
        for window_current, window_target, topic, payload in list(self.outbox):
            self._send(window_current, window_target, topic, payload)

    def _publish(self, current: int, target: int, topic: str, payload: bytes | None) -> None:
        """Publish (``payload`` None: our barrier for the window) and keep it for a broker restart."""
        self.outbox.append((current, target, topic, payload))
        self._send(current, target, topic, payload)

    def _send(self, current: int, target: int, topic: str, payload: bytes | None) -> None:
        assert self.client is not None
        if payload is None:
            payload = canonical({"node": self.node_id, "target_us": target, "epoch": self.epoch})
        try:
            info = self.client.publish(topic, payload, qos=self.qos)
        except ValueError as exc:  # a wildcard or empty topic from the template
            raise ValueError(f"cannot publish to topic {topic!r}: {exc}") from None
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return  # the broker went away: kept in the outbox, published again once it is back
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"publish to {topic!r} at {self.where} failed in window ({current}, {target}] us: "
                              f"{mqtt.error_string(info.rc)}")

    def close(self) -> None:
        if self.client is None:
            return
        with self.cond:
            self.closing = True
        self.client.disconnect()
        self.client.loop_stop()


class MqttService:
    """The INIT/ADVANCE/SHUTDOWN side of a bundled MQTT client; subclasses decide what to publish and emit."""

    default_filters: list[str] = ["cosim/#"]

    def __init__(self) -> None:
        self.mqtt: VirtualTimeClient | None = None
        self.broker = "mqtt-broker"
        self.node_id = "mqtt-client"

    CONFIG_KEYS = frozenset({"broker", "topic", "subscribe", "qos", "broker_delay_us", "connect_timeout_s",
                             "barrier_timeout_s"})
    RECONFIGURABLE = frozenset({"topic", "subscribe", "qos", "broker_delay_us", "connect_timeout_s",
                                "barrier_timeout_s"})  # a subclass adds its own keys

    def on_init(self, message: Mapping[str, Any]) -> dict[str, str]:
        config = message.get("config") or {}
        self.node_id = str(message.get("node_id") or self.node_id)
        self.broker = str(config.get("broker", self.broker))
        endpoints = message.get("endpoints") or {}
        endpoint = endpoints.get(self.broker)
        if not isinstance(endpoint, Mapping) or not isinstance(endpoint.get("host"), str) or not isinstance(endpoint.get("port"), int):
            raise ValueError(f"no endpoint {{host, port}} for broker node {self.broker!r} in INIT endpoints (have {sorted(endpoints)})")
        filters, qos, delay_us = self._settings(config)
        self.configure(config)
        self.mqtt = VirtualTimeClient(
            self.node_id, endpoint["host"], endpoint["port"], list(filters), qos=qos, delay_us=delay_us,
            connect_timeout_s=float(config.get("connect_timeout_s", 10.0)),
            barrier_timeout_s=float(config.get("barrier_timeout_s", 10.0)))
        # A restarted node numbers its messages afresh, past anything its earlier incarnation published, so that
        # subscribers (who drop a message numbered at or below the last one seen) take them.
        self.mqtt.node_seq = int(message.get("restart") or 0) << 32
        self.mqtt.connect()
        return self.mqtt.info

    def _settings(self, config: Mapping[str, Any]) -> tuple[list[str], int, int]:
        """(subscribe filters, qos, broker_delay_us) from ``config``, checked (defaults: the current values)."""
        current = self.mqtt
        kept = [s.topic_filter if s.share is None else f"{SHARE_PREFIX}{s.share}/{s.topic_filter}"
                for s in current.subscriptions] if current else self.default_filters
        filters = config.get("subscribe", kept)
        if not isinstance(filters, list) or not all(isinstance(f, str) and f for f in filters):
            raise ValueError(f"subscribe must be a list of topic filters, got {filters!r}")
        parse_subscriptions(filters)  # a bad $share filter fails with its own message
        qos = config.get("qos", current.qos if current else 1)
        if qos not in (0, 1, 2) or isinstance(qos, bool):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
        delay_us = config.get("broker_delay_us", current.delay_us if current else 0)
        if not isinstance(delay_us, int) or isinstance(delay_us, bool) or delay_us < 0:
            raise ValueError(f"broker_delay_us must be an integer >= 0, got {delay_us!r}")
        return filters, qos, delay_us

    def on_configure(self, message: Mapping[str, Any]) -> None:
        """The schedule's reconfigure (topic, subscribe, qos, broker_delay_us, timeouts), or the broker going
        away (its endpoint null) and coming back. Everything is checked before anything changes."""
        assert self.mqtt is not None
        config = message.get("config") or {}
        unknown = sorted(set(config) - self.RECONFIGURABLE)
        if unknown:
            fixed = sorted(set(unknown) & self.CONFIG_KEYS)
            raise ValueError(f"config keys {unknown} cannot change during a run"
                             + ("" if fixed else f"; reconfigurable: {', '.join(sorted(self.RECONFIGURABLE))}"))
        filters, qos, delay_us = self._settings(config)
        self.configure(config)  # the subclass's own keys (checked there)
        client, now = self.mqtt, int(message["time_us"])
        if "subscribe" in config or "qos" in config or "broker_delay_us" in config:
            client.settle()  # what was published before the change arrives as before it
        if delay_us != client.delay_us:
            client.set_delay(now, delay_us)
        if "subscribe" in config or qos != client.qos:
            client.resubscribe(filters, qos)
        for name in ("connect_timeout_s", "barrier_timeout_s"):
            if name in config:
                setattr(client, name, float(config[name]))
        endpoints = message.get("endpoints") or {}
        if self.broker in endpoints:
            endpoint = endpoints[self.broker]
            if endpoint is None:
                client.go_offline()
            else:
                client.come_back(endpoint["host"], endpoint["port"])

    def configure(self, config: Mapping[str, Any]) -> None:
        """Service-specific config (called before connecting)."""

    def barrier_group(self) -> str:
        return self.broker

    def on_shutdown(self) -> None:
        if self.mqtt is not None:
            self.mqtt.close()

    def on_snapshot(self) -> dict[str, Any]:
        """A checkpoint: the client's state (config and subscriptions are in INIT's config on resume) and the
        subclass's own (``snapshot_own``)."""
        assert self.mqtt is not None
        if self.mqtt.offline:
            raise ValueError(f"the broker {self.broker!r} is down (a planned crash): no checkpoint until it is back")
        return {"client": self.mqtt.snapshot(), "own": self.snapshot_own()}

    def on_restore(self, saved: Mapping[str, Any]) -> None:
        assert self.mqtt is not None
        self.mqtt.restore(saved["client"])
        self.restore_own(saved["own"])

    def snapshot_own(self) -> Any:
        """What a subclass keeps between windows beyond its config (JSON-able)."""
        return None

    def restore_own(self, saved: Any) -> None:
        pass

    def serve(self, capabilities: list[str]) -> None:
        # Both bundled clients publish only what their input events carry: idle windows cost no broker traffic.
        # Next-event: they wake up when a message of the group is due (the coordinator advances the group together).
        serve(self.advance, on_init=self.on_init, on_shutdown=self.on_shutdown, capabilities=capabilities,
              barrier_group=self.barrier_group, barrier_publishes="on_input", on_configure=self.on_configure,
              wakeup=self.wakeup, on_snapshot=self.on_snapshot, on_restore=self.on_restore)

    def wakeup(self, target: int) -> int | None:
        return self.mqtt.next_due(target) if self.mqtt is not None else None

    def advance(self, current: int, target: int, events: list[dict[str, Any]],
                peers: list[str] | None = None, members: list[str] | None = None) -> list[dict[str, Any]]:
        raise NotImplementedError


def external_events(external: list[tuple[str, bytes]], target: int) -> list[dict[str, Any]]:
    """Messages from publishers outside virtual time, stamped at the window's end, in (topic, payload) order."""
    return [{"type": "mqtt_received", "time_us": target,
             "data": {"topic": topic, "payload": _decode(raw), "origin": None, "external": True}}
            for topic, raw in sorted(external)]


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _envelope(raw: bytes) -> dict[str, Any] | None:
    """The decoded payload when it is a cosim envelope, else None."""
    try:
        decoded = _strict_json(raw)
    except Exception:  # anything undecodable is not ours; never let a payload kill the network thread
        return None
    if (isinstance(decoded, dict) and set(decoded) == ENVELOPE_KEYS and isinstance(decoded["node"], str)
            and isinstance(decoded["source"], str) and all(_is_int(decoded[k]) for k in ("seq", "time_us", "node_seq", "window_us"))):
        return decoded
    return None


def _barrier(raw: bytes) -> tuple[str, int, int] | None:
    """(node, target_us, epoch) of a barrier or rejoin message."""
    try:
        decoded = _strict_json(raw)
    except Exception:
        return None
    if not isinstance(decoded, dict):
        return None
    node, target_us, epoch = decoded.get("node"), decoded.get("target_us"), decoded.get("epoch", 0)
    return (node, target_us, epoch) if isinstance(node, str) and _is_int(target_us) and _is_int(epoch) else None


def _decode(raw: bytes) -> Any:
    """An external payload as JSON when it is JSON, else as text (undecodable bytes escaped)."""
    try:
        return _strict_json(raw)
    except Exception:  # not JSON (or too deep to decode): keep it as text
        return raw.decode("utf-8", errors="backslashreplace")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _strict_json(raw: bytes) -> Any:
    """Standard JSON only: NaN/Infinity would make the DONE line invalid JSON."""
    return json.loads(raw, parse_constant=_reject_constant)
