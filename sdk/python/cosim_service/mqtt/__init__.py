"""cosim_service.mqtt (the ``mqtt`` extra, paho-mqtt): MQTT clients that live in virtual time.

Several protocol-driven clients share one broker as a *barrier group* (docs/protocol.md §12): every message
travels in an envelope, every window ends with a barrier, and each client emits what is due in a window in an
order the wall clock cannot change. The parts:

- ``envelope``: what travels (envelopes, barriers, rejoin notices; ``Outgoing``, ``Delivery``);
- ``connection``: the broker connection (``BrokerConnection``, ``BrokerError``);
- ``barriers``: waiting for the peers' barriers of a window (``Barriers``);
- ``shares``: fan-out and ``$share/<group>/<filter>`` subscriptions (``Subscriptions``, ``share_owner``);
- ``recovery``: surviving a broker restart (``Recovery``, the outbox);
- ``checkpoint``: a client's state in a checkpoint (``ClientState``);
- ``client``: ``VirtualTimeClient``, one window at a time, made of the parts above;
- ``service``: ``MqttService``, a ``cosim_service.Service`` around a client.
"""

from __future__ import annotations

try:
    import paho.mqtt  # noqa: F401
except ModuleNotFoundError as exc:  # pragma: no cover (depends on the installation)
    raise ModuleNotFoundError("cosim_service.mqtt needs paho-mqtt: pip install 'cosim-service[mqtt]'",
                              name=exc.name) from None

from cosim_service.mqtt.client import VirtualTimeClient
from cosim_service.mqtt.connection import BrokerError
from cosim_service.mqtt.envelope import Delivery, Outgoing, external_events
from cosim_service.mqtt.service import MqttService
from cosim_service.mqtt.shares import Subscription, parse_subscriptions, share_owner

__all__ = ["BrokerError", "Delivery", "MqttService", "Outgoing", "Subscription", "VirtualTimeClient",
           "external_events", "parse_subscriptions", "share_owner"]
