"""MqttService: a Service whose node is an MQTT client in virtual time (the bundled mqtt-gateway and
cloud-aggregator subclass it). It connects at INIT, joins the broker's barrier group, takes the schedule's
reconfigure and the broker's planned crash and restart (CONFIGURE), and carries its client in checkpoints.

Config (all optional): broker (node id of the broker in INIT endpoints, "mqtt-broker"; also the barrier group),
subscribe (topic filters, ``$share/<group>/<filter>`` for a shared one), qos, broker_delay_us, connect_timeout_s,
barrier_timeout_s. All but ``broker`` are reconfigurable; a subclass adds its own keys (``reconfigurable``) and
applies them in ``apply_config``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from cosim_service.mqtt.client import VirtualTimeClient
from cosim_service.mqtt.envelope import Outgoing
from cosim_service.mqtt.shares import parse_subscriptions
from cosim_service.service import Service


class MqttService(Service):
    """The INIT/CONFIGURE/SNAPSHOT/SHUTDOWN side of an MQTT client in virtual time; subclasses decide what to publish
    and emit in ``advance`` (through ``self.mqtt.step``)."""

    default_filters: ClassVar[list[str]] = ["cosim/#"]
    CONFIG_KEYS: ClassVar[frozenset[str]] = frozenset({"broker", "topic", "subscribe", "qos", "broker_delay_us",
                                                       "connect_timeout_s", "barrier_timeout_s"})
    reconfigurable: ClassVar[frozenset[str]] = frozenset({"topic", "subscribe", "qos", "broker_delay_us",
                                                           "connect_timeout_s", "barrier_timeout_s"})
    # Publishes only what its input events carry: idle windows cost no broker traffic. Next-event: it wakes up when
    # a message of the group is due (the coordinator advances the group together).
    barrier_publishes: ClassVar[str] = "on_input"

    def __init__(self) -> None:
        self.mqtt: VirtualTimeClient | None = None
        self.broker = "mqtt-broker"

    def init(self, node_id: str, seed: int, config: dict[str, Any]) -> dict[str, str]:
        self.broker = str(config.get("broker", self.broker))
        endpoints = self.endpoints
        endpoint = endpoints.get(self.broker)
        if (not isinstance(endpoint, Mapping) or not isinstance(endpoint.get("host"), str)
                or not isinstance(endpoint.get("port"), int)):
            raise ValueError(f"no endpoint {{host, port}} for broker node {self.broker!r} in INIT endpoints "
                             f"(have {sorted(endpoints)})")
        filters, qos, delay_us = self._settings(config)
        self.apply_config(config)
        self.mqtt = VirtualTimeClient(
            node_id or "mqtt-client", endpoint["host"], endpoint["port"], list(filters), qos=qos, delay_us=delay_us,
            connect_timeout_s=float(config.get("connect_timeout_s", 10.0)),
            barrier_timeout_s=float(config.get("barrier_timeout_s", 10.0)))
        # A restarted node numbers its messages afresh, past anything its earlier incarnation published, so that
        # subscribers (who drop a message numbered at or below the last one seen) take them.
        self.mqtt.node_seq = int(self.restart or 0) << 32
        self.mqtt.connect()
        return self.mqtt.info

    def _settings(self, config: Mapping[str, Any]) -> tuple[list[str], int, int]:
        """(subscribe filters, qos, broker_delay_us) from ``config``, checked (defaults: the current values)."""
        current = self.mqtt
        kept = [s.text() for s in current.subscriptions.items] if current else self.default_filters
        filters = config.get("subscribe", kept)
        if not isinstance(filters, list) or not all(isinstance(f, str) and f for f in filters):
            raise ValueError(f"subscribe must be a list of topic filters, got {filters!r}")
        parse_subscriptions(filters)  # a bad $share filter fails with its own message
        qos = config.get("qos", current.connection.qos if current else 1)
        if qos not in (0, 1, 2) or isinstance(qos, bool):
            raise ValueError(f"qos must be 0, 1 or 2, got {qos!r}")
        delay_us = config.get("broker_delay_us", current.delays.current if current else 0)
        if not isinstance(delay_us, int) or isinstance(delay_us, bool) or delay_us < 0:
            raise ValueError(f"broker_delay_us must be an integer >= 0, got {delay_us!r}")
        return filters, qos, delay_us

    def configure(self, changes: dict[str, Any]) -> None:
        """The schedule's reconfigure (topic, subscribe, qos, broker_delay_us, timeouts, the subclass's keys).
        Everything is checked before anything changes."""
        assert self.mqtt is not None
        unknown = sorted(set(changes) - set(self.reconfigurable))
        if unknown:
            fixed = sorted(set(unknown) & self.CONFIG_KEYS)
            raise ValueError(f"config keys {unknown} cannot change during a run"
                             + ("" if fixed else f"; reconfigurable: {', '.join(sorted(self.reconfigurable))}"))
        filters, qos, delay_us = self._settings(changes)
        self.apply_config(changes)  # the subclass's own keys (checked there)
        client, now = self.mqtt, self.now_us
        if "subscribe" in changes or "qos" in changes or "broker_delay_us" in changes:
            client.settle()  # what was published before the change arrives as before it
        if delay_us != client.delays.current:
            client.delays.set(now, delay_us)
        if "subscribe" in changes or qos != client.connection.qos:
            client.resubscribe(filters, qos)
        if "connect_timeout_s" in changes:
            client.connection.connect_timeout_s = float(changes["connect_timeout_s"])
        if "barrier_timeout_s" in changes:
            client.barriers.timeout_s = float(changes["barrier_timeout_s"])

    def endpoints_changed(self, endpoints: dict[str, Any]) -> None:
        """The broker going away (its endpoint null: let go of it cleanly) and coming back (connect afresh)."""
        assert self.mqtt is not None
        if self.broker in endpoints:
            endpoint = endpoints[self.broker]
            if endpoint is None:
                self.mqtt.go_offline()
            else:
                self.mqtt.come_back(endpoint["host"], endpoint["port"])

    def apply_config(self, config: Mapping[str, Any]) -> None:
        """The subclass's own config keys: at INIT (before connecting) and at a reconfigure (checked first)."""

    def barrier_group(self) -> str:
        return self.broker

    def wakeup(self, after_us: int) -> int | None:
        return self.mqtt.next_due(after_us) if self.mqtt is not None else None

    def shutdown(self) -> None:
        if self.mqtt is not None:
            self.mqtt.close()

    def snapshot(self) -> dict[str, Any]:
        """A checkpoint: the client's state (config and subscriptions are in INIT's config on resume) and the
        subclass's own (``snapshot_own``)."""
        assert self.mqtt is not None
        if self.mqtt.offline:
            raise ValueError(f"the broker {self.broker!r} is down (a planned crash): no checkpoint until it is back")
        return {"client": self.mqtt.snapshot(), "own": self.snapshot_own()}

    def restore(self, state: Mapping[str, Any]) -> None:
        assert self.mqtt is not None
        self.mqtt.restore(state["client"])
        self.restore_own(state["own"])

    def snapshot_own(self) -> Any:
        """What a subclass keeps between windows beyond its config (JSON-able)."""
        return None

    def restore_own(self, saved: Any) -> None:
        pass

    def step(self, until_us: int, outgoing: list[Outgoing]) -> list[dict[str, Any]]:
        """Publish ``outgoing`` in the window being advanced and return the messages due in it."""
        assert self.mqtt is not None
        return self.mqtt.step(self.now_us, until_us, outgoing, self.peers, self.members)
