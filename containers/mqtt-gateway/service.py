"""mqtt-gateway: puts the coordinator's events through a real MQTT broker, in virtual time.

Every input event of a window is published (QoS ``qos``) on ``topic`` (a template over {source}, {type}, {node})
as a cosim envelope: canonical JSON ``{"type", "time_us", "source", "seq", "data", "node", "node_seq",
"window_us"}``. Every message that a protocol-driven MQTT client of the same broker published (this gateway, its
replicas, other gateways, the cloud aggregator) and that matches ``subscribe`` becomes an ``mqtt_received`` event
stamped at its origin time plus ``broker_delay_us``, in the order (time, publishing node, node_seq), after the
window's barriers of all those clients are in (cosim_service.mqtt, docs/protocol.md §12). The wall clock
never decides what is emitted or when.

``subscribe`` filters fan out (every subscriber gets every message); ``$share/<group>/<filter>`` shares the
load: each message goes to exactly one member of <group>, chosen by cosim. Messages from publishers outside
virtual time (a ``mosquitto_pub`` typed by a user) are emitted at the end of the window they arrived in, with
``origin`` null and ``external`` true.

Config (all optional):
  broker             node id of the broker in INIT endpoints ("mqtt-broker"); also the barrier group
  topic              publish topic template ("cosim/{source}/{type}")
  subscribe          topic filters, `$share/<group>/<filter>` for a shared one (["cosim/#"])
  qos                0, 1 or 2 (1); every client of one broker should use the same
  broker_delay_us    virtual delay of the broker hop (0); >= the quantum lets windows overlap their round trips
  connect_timeout_s  wall-clock limit to connect and subscribe at INIT (10)
  barrier_timeout_s  wall-clock limit for the peers' barriers of a window (10)

All but ``broker`` can change during a run (the schedule's `reconfigure`, protocol CONFIGURE): a new topic for
what is published from then on, new subscriptions (unsubscribing and subscribing as needed), QoS, and a broker
delay for the windows after the change. A broker that goes away by plan (CONFIGURE with its endpoint null) is
let go of cleanly; what cannot be published meanwhile is emitted as ``mqtt_lost``; when it is back the gateway
reconnects (cosim_service.mqtt).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cosim_service.mqtt import MqttService, Outgoing


class Gateway(MqttService):
    capabilities = ("mqtt",)

    def __init__(self) -> None:
        super().__init__()
        self.topic = "cosim/{source}/{type}"

    def apply_config(self, config: Mapping[str, Any]) -> None:
        self.topic = str(config.get("topic", self.topic))
        try:
            self.topic.format_map({"source": "s", "type": "t", "node": "n"})
        except (KeyError, ValueError, IndexError) as exc:
            raise ValueError(f"bad topic template {self.topic!r} (placeholders: {{source}}, {{type}}, {{node}}): {exc}") from None

    def advance(self, until_us: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if until_us == self.now_us:
            return []  # an empty window: nothing to publish and nothing may be stamped in it
        outgoing = []
        keys: set[tuple[str, int]] = set()
        for event in events:
            source, seq = event.get("source"), event.get("seq")
            if not isinstance(source, str) or not isinstance(seq, int):
                raise ValueError(f"input event without a string source and integer seq: {event!r}")
            if (source, seq) in keys:
                raise ValueError(f"two input events with the same (source, seq) = ({source!r}, {seq})")
            keys.add((source, seq))
            topic = self.topic.format_map({"source": source, "type": event.get("type"), "node": self.node_id})
            outgoing.append(Outgoing(topic, event["type"], event["time_us"], source, seq, event.get("data")))
        return self.step(until_us, outgoing)


if __name__ == "__main__":
    Gateway().run()
