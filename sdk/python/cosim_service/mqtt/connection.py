"""The broker connection: a paho client, connecting (with retries until a wall-clock deadline), subscribing and
publishing, and the network thread's callbacks. What a received message means is the client's business
(``on_message``, called on the network thread with the shared condition held).

The wall clock only bounds waiting for the broker (like a watchdog): it decides when a connection exists, never
what is emitted or when in virtual time.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from cosim_service.mqtt.envelope import BARRIER_FILTER, REJOIN_FILTER, SYS_VERSION_TOPIC

log = logging.getLogger("cosim.mqtt")

SYS_VERSION_WAIT_S = 2.0
RETRY_PAUSE_S = 0.2  # pause between connection attempts while the broker is still starting


class BrokerError(RuntimeError):
    """The broker could not be reached, refused us, went away, or a peer's barrier did not come."""


def left(deadline: float) -> float:
    """Seconds until ``deadline`` (time.monotonic), at least 0."""
    return max(deadline - time.monotonic(), 0.0)


class BrokerConnection:
    """One client's connection to its broker. ``cond`` guards what the network thread shares with the service."""

    def __init__(self, node_id: str, host: str, port: int, cond: threading.Condition,
                 on_message: Callable[[str, bytes], None], *, qos: int = 1, connect_timeout_s: float = 10.0) -> None:
        self.node_id = node_id
        self.host, self.port = host, port
        self.cond = cond
        self.on_message = on_message  # (topic, payload), on the network thread, with cond held
        self.qos = qos
        self.connect_timeout_s = connect_timeout_s
        self.client: mqtt.Client | None = None
        # Shared with the network thread (guarded by cond).
        self.connack: ReasonCode | None = None
        self.suback: dict[int, list[ReasonCode]] = {}
        self.lost: str | None = None
        self.broker_version: str | None = None
        self.closing = False

    @property
    def where(self) -> str:
        return f"MQTT broker {self.host}:{self.port}"

    @property
    def info(self) -> dict[str, str]:
        return {"paho-mqtt": paho.mqtt.__version__, "broker": self.broker_version or "unknown"}

    def _new_client(self, connect_timeout_s: float) -> mqtt.Client:
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"cosim-{self.node_id}", clean_session=True,
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False)  # recovery reconnects, afresh
        client.enable_logger(logging.getLogger("paho"))
        client.connect_timeout = connect_timeout_s  # paho allows setting it only before the first attempt
        client.max_inflight_messages_set(0)  # unlimited: a window's burst is not throttled by PUBACK round trips
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def connect(self, topic_filters: set[str], *, again: bool = False) -> None:
        """Connect, subscribe to ``topic_filters`` and the control topics; the first time, learn the broker's
        version (for the run's manifest)."""
        logging.getLogger("paho").setLevel(logging.WARNING)
        deadline = time.monotonic() + self.connect_timeout_s
        # An Event that is never set gives an interruptible pause between tries.
        pause = threading.Event()
        last_error = "no attempt"
        while True:  # the broker container may still be starting: retry until the deadline
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BrokerError(f"{self.where} not reachable within {self.connect_timeout_s:g}s "
                                  f"(last error: {last_error})")
            client = self._new_client(max(remaining, 0.05))  # a fresh client bounds each attempt by the deadline
            try:
                client.connect(self.host, self.port, keepalive=60)
                break
            except OSError as exc:
                last_error = f"{type(exc).__name__}: {exc}"
                pause.wait(min(RETRY_PAUSE_S, left(deadline)))
        self.client = client
        sock = client.socket()
        if isinstance(sock, socket.socket):  # small packets at once: Nagle + delayed ACK cost ~40 ms per window
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.loop_start()
        with self.cond:
            if not self.cond.wait_for(lambda: self.connack is not None or self.lost is not None, left(deadline)):
                raise BrokerError(f"{self.where} accepted TCP but sent no CONNACK within {self.connect_timeout_s:g}s")
            if self.connack is None or self.connack.is_failure:
                raise BrokerError(f"{self.where} refused the connection: {self.connack or self.lost}")
        subscriptions = self.subscribe(topic_filters, deadline)
        log.info("connected to %s as cosim-%s; subscribed to %s", self.where, self.node_id, subscriptions)
        if again:
            return
        # The broker's version: Mosquitto keeps it as a retained $SYS message.
        client.subscribe(SYS_VERSION_TOPIC, 0)
        with self.cond:
            self.cond.wait_for(lambda: self.broker_version is not None, min(SYS_VERSION_WAIT_S, left(deadline)))

    def subscribe(self, topic_filters: set[str], deadline: float) -> list[str]:
        """Subscribe to ``topic_filters`` and the control topics; wait for the broker to confirm them."""
        assert self.client is not None
        subscriptions = [(f, self.qos) for f in sorted(topic_filters | {BARRIER_FILTER, REJOIN_FILTER})]
        rc, mid = self.client.subscribe(subscriptions)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"could not subscribe at {self.where}: {mqtt.error_string(rc)}")
        assert mid is not None  # paho numbers every subscription it sends
        with self.cond:
            if not self.cond.wait_for(lambda: mid in self.suback or self.lost is not None, left(deadline)):
                raise BrokerError(f"{self.where} did not confirm the subscriptions within {self.connect_timeout_s:g}s")
            if self.lost is not None:
                raise BrokerError(f"lost {self.where} while subscribing: {self.lost}")
            refused = [f for (f, _), code in zip(subscriptions, self.suback[mid]) if code.is_failure]
            if refused:
                raise BrokerError(f"{self.where} refused subscriptions {refused}")
        return [f for f, _ in subscriptions]

    def unsubscribe(self, topic_filters: list[str]) -> None:
        assert self.client is not None
        self.client.unsubscribe(topic_filters)

    def publish(self, topic: str, payload: bytes, *, window: tuple[int, int], retain: bool = False) -> None:
        """Publish at our QoS. Without a connection (the broker went away) it is dropped: the caller keeps what it
        must publish again."""
        assert self.client is not None
        try:
            info = self.client.publish(topic, payload, qos=self.qos, retain=retain)
        except ValueError as exc:  # a wildcard or empty topic from the template
            raise ValueError(f"cannot publish to topic {topic!r}: {exc}") from None
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise BrokerError(f"publish to {topic!r} at {self.where} failed in window ({window[0]}, {window[1]}] us: "
                              f"{mqtt.error_string(info.rc)}")

    def drop(self) -> None:
        """Let go of a connection that was lost, quietly (no more callbacks), ready to connect afresh."""
        assert self.client is not None
        old = self.client
        old.on_disconnect = old.on_message = old.on_connect = old.on_subscribe = None
        old.loop_stop()
        with self.cond:
            self.connack, self.lost, self.suback = None, None, {}

    def reopen(self, host: str, port: int) -> None:
        """After a planned absence (``close``): the broker is at ``host:port`` again; the next connect is afresh."""
        self.host, self.port = host, port
        with self.cond:
            self.connack, self.lost, self.suback, self.closing = None, None, {}, False

    def close(self) -> None:
        if self.client is None:
            return
        with self.cond:
            self.closing = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- network-thread callbacks (paho VERSION2 signatures) --------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                    properties: Any) -> None:
        with self.cond:
            if self.connack is not None and self.lost is not None:
                return  # a late CONNACK of a connection already lost
            self.connack = reason
            self.cond.notify_all()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: ReasonCode,
                       properties: Any) -> None:
        with self.cond:
            if not self.closing and self.lost is None:
                self.lost = f"connection lost ({reason})"
                log.error("%s: %s", self.where, self.lost)
            self.cond.notify_all()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: list[ReasonCode],
                      properties: Any) -> None:
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
            self.on_message(topic, raw)
