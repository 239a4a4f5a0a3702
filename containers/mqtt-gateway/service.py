"""mqtt-gateway: puts the coordinator's events through a real MQTT broker, in virtual time.

Every input event of a window is published (QoS ``qos``) as canonical JSON
``{"type", "time_us", "source", "seq", "data"}`` on ``topic`` (a template over {source}, {type}, {node}). The gateway
then publishes a barrier on its own control topic (cosim/_barrier/<node_id>) and waits, with a wall-clock deadline,
until the barrier and every message of the window whose topic matches its subscriptions have come back from the
broker. Each message that came back becomes an ``mqtt_received`` event stamped at the origin time plus
``broker_delay_us`` (later windows if that lies past the target; the adapter holds it). The wall clock never decides
what is emitted or when, so the same inputs give the same DONE events however the network behaves.

Messages from other publishers are not driven by virtual time: those received before a window's barrier came back
are emitted in that window, stamped at its target time, ordered by (topic, payload bytes), with ``origin`` null.

Config (all optional):
  broker             node id of the broker in INIT endpoints ("mqtt-broker")
  topic              publish topic template ("cosim/{source}/{type}")
  subscribe          topic filters (["cosim/#"])
  qos                0, 1 or 2 (1)
  broker_delay_us    virtual delay of the broker hop (0)
  connect_timeout_s  wall-clock limit to connect and subscribe at INIT (10)
  barrier_timeout_s  wall-clock limit for a window's messages to come back (10)
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode

from protocol_adapter import serve

log = logging.getLogger("cosim.mqtt-gateway")

BARRIER_PREFIX = "cosim/_barrier/"  # control traffic of every gateway; never reported as data
SYS_VERSION_TOPIC = "$SYS/broker/version"  # not matched by '#' filters (MQTT spec), so never data
SYS_VERSION_WAIT_S = 2.0
RETRY_PAUSE_S = 0.2  # pause between connection attempts while the broker is still starting


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


class BrokerError(RuntimeError):
    """The broker could not be reached, refused us, or went away."""


@dataclass
class Window:
    """What the gateway waits for in one window."""

    number: int
    current_us: int
    target_us: int
    expected: dict[tuple[str, int], str] = field(default_factory=dict)  # (source, seq) -> topic still to come back
    published: int = 0
    barrier_back: bool = False
    received: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (topic, decoded payload)


class Gateway:
    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.client: mqtt.Client | None = None
        self.node_id = "mqtt-gateway"
        self.host = ""
        self.port = 0
        self.topic = "cosim/{source}/{type}"
        self.filters: list[str] = ["cosim/#"]
        self.qos = 1
        self.delay_us = 0
        self.connect_timeout_s = 10.0
        self.barrier_timeout_s = 10.0
        self.barrier_topic = ""
        # Shared with the network thread (guarded by self.cond).
        self.connack: mqtt.ReasonCode | None = None
        self.suback: dict[int, list[mqtt.ReasonCode]] = {}
        self.lost: str | None = None  # why the connection ended, once it has
        self.broker_version: str | None = None
        self.closing = False
        self.window: Window | None = None
        self.unacked: set[int] = set()  # mids of this window's publishes without PUBACK yet
        self.acked: set[int] = set()  # PUBACKs that may arrive before publish() returns their mid
        self.external: list[tuple[str, bytes]] = []  # other publishers' messages, not yet emitted
        self.recent_own: set[tuple[str, int]] = set()  # own messages of the last windows: late duplicates are dropped
        self.older_own: set[tuple[str, int]] = set()
        self.windows = 0

    @property
    def where(self) -> str:
        return f"MQTT broker {self.host}:{self.port}"

    # -- INIT -------------------------------------------------------------------------------------

    def on_init(self, message: Mapping[str, Any]) -> dict[str, str]:
        config = message.get("config") or {}
        self.node_id = str(message.get("node_id") or "mqtt-gateway")
        broker = config.get("broker", "mqtt-broker")
        endpoints = message.get("endpoints") or {}
        endpoint = endpoints.get(broker)
        if not isinstance(endpoint, Mapping) or not isinstance(endpoint.get("host"), str) or not isinstance(endpoint.get("port"), int):
            raise ValueError(f"no endpoint {{host, port}} for broker node {broker!r} in INIT endpoints (have {sorted(endpoints)})")
        self.host, self.port = endpoint["host"], endpoint["port"]
        self.topic = str(config.get("topic", self.topic))
        try:
            self.topic.format_map({"source": "s", "type": "t", "node": "n"})
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"bad topic template {self.topic!r} (placeholders: {{source}}, {{type}}, {{node}}): {exc}") from None
        filters = config.get("subscribe", self.filters)
        if not isinstance(filters, list) or not all(isinstance(f, str) and f for f in filters):
            raise ValueError(f"subscribe must be a list of topic filters, got {filters!r}")
        self.filters = list(filters)
        self.qos = int(config.get("qos", self.qos))
        if self.qos not in (0, 1, 2):
            raise ValueError(f"qos must be 0, 1 or 2, got {self.qos}")
        self.delay_us = int(config.get("broker_delay_us", 0))
        if self.delay_us < 0:
            raise ValueError(f"broker_delay_us must be >= 0, got {self.delay_us}")
        self.connect_timeout_s = float(config.get("connect_timeout_s", self.connect_timeout_s))
        self.barrier_timeout_s = float(config.get("barrier_timeout_s", self.barrier_timeout_s))
        self.barrier_topic = BARRIER_PREFIX + self.node_id
        self._connect()
        return {"paho-mqtt": paho.mqtt.__version__, "broker": self.broker_version or "unknown"}

    def _new_client(self, connect_timeout_s: float) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cosim-{self.node_id}",
                             clean_session=True, protocol=mqtt.MQTTv311)
        client.enable_logger(logging.getLogger("paho"))
        client.connect_timeout = connect_timeout_s  # paho allows setting it only before the first attempt
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        client.reconnect_delay_set(1, 1)  # only used after a loss, which is fatal anyway
        return client

    def _connect(self) -> None:
        logging.getLogger("paho").setLevel(logging.WARNING)
        deadline = time.monotonic() + self.connect_timeout_s
        pause = threading.Event()  # never set: a wall-clock pause between attempts that is not time.sleep
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
        subscriptions = [(f, self.qos) for f in sorted(set(self.filters) | {self.barrier_topic})]
        rc, mid = client.subscribe(subscriptions)
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
        log.info("connected to %s as cosim-%s; subscribed to %s", self.where, self.node_id, [f for f, _ in subscriptions])
        # The broker's version, for the run's manifest: Mosquitto keeps it as a retained $SYS message.
        client.subscribe(SYS_VERSION_TOPIC, 0)
        with self.cond:
            self.cond.wait_for(lambda: self.broker_version is not None, min(SYS_VERSION_WAIT_S, _left(deadline)))

    # -- network-thread callbacks (paho VERSION2 signatures) --------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: mqtt.ReasonCode, properties: Any) -> None:
        with self.cond:
            if self.connack is not None and self.lost is not None:
                return  # an automatic reconnect after a loss: the run is already failing
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

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: mqtt.ReasonCode, properties: Any) -> None:
        with self.cond:
            if mid in self.unacked:
                self.unacked.discard(mid)
            else:
                self.acked.add(mid)
            self.cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        topic, raw = msg.topic, bytes(msg.payload)
        with self.cond:
            if topic == SYS_VERSION_TOPIC:
                self.broker_version = raw.decode("utf-8", errors="replace")
                self.cond.notify_all()
                return
            window = self.window
            if topic.startswith(BARRIER_PREFIX):
                if topic == self.barrier_topic and window is not None and raw == self._barrier_payload(window):
                    window.barrier_back = True
                    self.cond.notify_all()
                return  # control traffic (ours or another gateway's), never data
            key, decoded = _own_key(raw)
            if key is not None and window is not None and window.expected.get(key) == topic:
                del window.expected[key]
                window.received.append((topic, decoded))
                self.cond.notify_all()
            elif key is not None and (key in self.recent_own or key in self.older_own):
                pass  # a second copy of one of our messages (overlapping subscriptions, QoS 1 redelivery)
            else:
                self.external.append((topic, raw))

    # -- ADVANCE ----------------------------------------------------------------------------------

    def _barrier_payload(self, window: Window) -> bytes:
        return canonical({"node": self.node_id, "window": window.number, "target_us": window.target_us})

    def advance(self, current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        assert self.client is not None
        with self.cond:
            if self.lost is not None:
                raise BrokerError(f"{self.where} went away before the window ({current}, {target}] us "
                                  f"with {len(events)} event(s) to publish: {self.lost}")
        if target == current:
            return []  # an empty window: nothing to publish and nothing may be stamped in it
        if not events:
            # Nothing of ours to publish: skip the broker round trip (most windows). Outside messages that
            # arrived meanwhile are reported now; they were never driven by virtual time anyway.
            with self.cond:
                external, self.external = self.external, []
            return self._external_events(external, target)
        self.windows += 1
        window = Window(self.windows, current, target)
        outgoing: list[tuple[str, bytes]] = []
        keys: set[tuple[str, int]] = set()
        for event in events:
            source, seq = event.get("source"), event.get("seq")
            if not isinstance(source, str) or not isinstance(seq, int):
                raise ValueError(f"input event without a string source and integer seq: {event!r}")
            if (source, seq) in keys:
                raise ValueError(f"two input events with the same (source, seq) = ({source!r}, {seq})")
            keys.add((source, seq))
            topic = self.topic.format_map({"source": source, "type": event.get("type"), "node": self.node_id})
            payload = canonical({"type": event.get("type"), "time_us": event["time_us"], "source": source,
                                 "seq": seq, "data": event.get("data")})
            outgoing.append((topic, payload))
            if any(mqtt.topic_matches_sub(f, topic) for f in self.filters):
                window.expected[(source, seq)] = topic
        with self.cond:
            # Registered before publishing: the echo can arrive before publish() returns.
            self.window = window
            self.older_own, self.recent_own = self.recent_own, set(window.expected)
            self.unacked, self.acked = set(), set()
        for topic, payload in outgoing + [(self.barrier_topic, self._barrier_payload(window))]:
            self._publish(topic, payload, window)

        def complete() -> bool:
            return self.lost is not None or (window.barrier_back and not window.expected and not self.unacked)

        with self.cond:
            done = self.cond.wait_for(complete, self.barrier_timeout_s)
            if self.lost is not None or not done:
                why = self.lost if self.lost is not None else f"no answer within {self.barrier_timeout_s:g}s"
                raise BrokerError(f"{self.where} failed in window ({current}, {target}] us: {why}; "
                                  f"in flight: {self._in_flight(window)}")
            received, window.received = window.received, []
            external, self.external = self.external, []
            self.window = None
        out = [self._own_event(topic, payload) for topic, payload in received]
        out.sort(key=lambda e: (e["time_us"], e["data"]["origin"]["source"], e["data"]["origin"]["seq"], e["data"]["topic"]))
        return out + self._external_events(external, target)

    @staticmethod
    def _external_events(external: list[tuple[str, bytes]], target: int) -> list[dict[str, Any]]:
        """Messages from other publishers, stamped at the window's end, in (topic, payload) order."""
        return [{"type": "mqtt_received", "time_us": target,
                 "data": {"topic": topic, "payload": _decode(raw), "origin": None}} for topic, raw in sorted(external)]

    def _publish(self, topic: str, payload: bytes, window: Window) -> None:
        assert self.client is not None
        try:
            info = self.client.publish(topic, payload, qos=self.qos)
        except ValueError as exc:  # a wildcard or empty topic from the template
            raise ValueError(f"cannot publish to topic {topic!r}: {exc}") from None
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"publish to {topic!r} at {self.where} failed in window ({window.current_us}, "
                              f"{window.target_us}] us: {mqtt.error_string(info.rc)}; in flight: {self._in_flight(window)}")
        with self.cond:
            window.published += 1
            if info.mid in self.acked:
                self.acked.discard(info.mid)
            else:
                self.unacked.add(info.mid)

    def _in_flight(self, window: Window) -> str:
        missing = sorted(window.expected)
        shown = ", ".join(f"{s}#{q}" for s, q in missing[:10]) + (" ..." if len(missing) > 10 else "")
        return (f"{window.published} message(s) published, {len(missing)} not back [{shown}], "
                f"{len(self.unacked)} without PUBACK, barrier {'back' if window.barrier_back else 'not back'}")

    def _own_event(self, topic: str, payload: dict[str, Any]) -> dict[str, Any]:
        origin = {"source": payload["source"], "seq": payload["seq"], "time_us": payload["time_us"], "type": payload["type"]}
        return {"type": "mqtt_received", "time_us": payload["time_us"] + self.delay_us,
                "data": {"topic": topic, "payload": payload["data"], "origin": origin}}

    # -- SHUTDOWN ---------------------------------------------------------------------------------

    def on_shutdown(self) -> None:
        if self.client is None:
            return
        with self.cond:
            self.closing = True
        self.client.disconnect()
        self.client.loop_stop()


def _left(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.0)


def _own_key(raw: bytes) -> tuple[tuple[str, int] | None, Any]:
    """((source, seq), decoded payload) when the payload looks like one the gateways publish, else (None, None)."""
    try:
        decoded = _strict_json(raw)
    except Exception:  # anything undecodable is not ours; never let a payload kill the network thread
        return None, None
    if not isinstance(decoded, dict) or set(decoded) != {"type", "time_us", "source", "seq", "data"}:
        return None, None
    source, seq = decoded["source"], decoded["seq"]
    if isinstance(source, str) and isinstance(seq, int) and not isinstance(seq, bool):
        return (source, seq), decoded
    return None, None


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


if __name__ == "__main__":
    gateway = Gateway()
    serve(gateway.advance, on_init=gateway.on_init, on_shutdown=gateway.on_shutdown, capabilities=["mqtt"])
