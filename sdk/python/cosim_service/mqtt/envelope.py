"""What travels through the broker: envelopes (a message in virtual time), barriers and rejoin notices.

An **envelope** wraps a published message: the payload plus ``node`` (the publishing node), ``node_seq`` (its
per-node counter) and ``window_us`` (the target of the window it was published in); its ``time_us`` is the origin
time. A **barrier** ``{"node", "target_us", "epoch"}`` on ``cosim/_barrier/<node>`` says the node has published all
of its window; a **rejoin** notice (same shape, retained, on ``cosim/_rejoin/<node>``) that it is back after a
broker restart. Anything else is from outside virtual time (``external``). All are canonical JSON (wire.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypeGuard

from cosim_service.wire import canonical, decode  # strict: NaN/Infinity would make a DONE invalid JSON

BARRIER_PREFIX = "cosim/_barrier/"  # control traffic of every client; never reported as data
BARRIER_FILTER = BARRIER_PREFIX + "+"
REJOIN_PREFIX = "cosim/_rejoin/"  # retained, after a broker restart: this client is back and subscribed
REJOIN_FILTER = REJOIN_PREFIX + "+"
SYS_VERSION_TOPIC = "$SYS/broker/version"  # not matched by '#' filters (MQTT spec), so never data
ENVELOPE_KEYS = frozenset({"type", "time_us", "source", "seq", "data", "node", "node_seq", "window_us"})

Event = dict[str, Any]


class Outgoing(NamedTuple):
    """A message to publish in a window: where, and the input event it carries."""

    topic: str
    type: str
    time_us: int  # its origin time
    source: str
    seq: int
    data: Any


class Notice(NamedTuple):
    """A barrier (``node`` published all of the window ending at ``target_us``) or a rejoin notice."""

    node: str
    target_us: int
    epoch: int

    def payload(self) -> bytes:
        return encode({"node": self.node, "target_us": self.target_us, "epoch": self.epoch})


def encode(value: Any) -> bytes:
    """A payload: canonical JSON (cosim_service.wire), UTF-8."""
    return canonical(value).encode()


def envelope(message: Outgoing, node: str, node_seq: int, window_us: int) -> bytes:
    return encode({"type": message.type, "time_us": message.time_us, "source": message.source, "seq": message.seq,
                   "data": message.data, "node": node, "node_seq": node_seq, "window_us": window_us})


@dataclass(order=True)
class Delivery:
    """An enveloped message, ordered by (delivery time, publishing node, node_seq)."""

    time_us: int
    node: str
    node_seq: int
    topic: str = field(compare=False)
    envelope: dict[str, Any] = field(compare=False)

    def event(self) -> Event:
        e = self.envelope
        origin = {"node": self.node, "source": e["source"], "seq": e["seq"], "time_us": e["time_us"], "type": e["type"]}
        return {"type": "mqtt_received", "time_us": self.time_us,
                "data": {"topic": self.topic, "payload": e["data"], "origin": origin}}


def external_events(external: list[tuple[str, bytes]], target: int) -> list[Event]:
    """Messages from publishers outside virtual time, stamped at the window's end, in (topic, payload) order."""
    return [{"type": "mqtt_received", "time_us": target,
             "data": {"topic": topic, "payload": _decode(raw), "origin": None, "external": True}}
            for topic, raw in sorted(external)]


def lost_events(outgoing: list[Outgoing]) -> list[Event]:
    """What could not be published while the broker is down, as ``mqtt_lost`` events (so the trace shows it)."""
    return [{"type": "mqtt_lost", "time_us": m.time_us, "data": {"topic": m.topic, "source": m.source, "seq": m.seq,
                                                                 "type": m.type, "reason": "broker_down"}}
            for m in outgoing]


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_envelope(raw: bytes) -> dict[str, Any] | None:
    """The decoded payload when it is a cosim envelope, else None."""
    try:
        decoded = decode(raw)
    except Exception:  # anything undecodable is not ours; never let a payload kill the network thread
        return None
    if (isinstance(decoded, dict) and set(decoded) == ENVELOPE_KEYS and isinstance(decoded["node"], str)
            and isinstance(decoded["source"], str)
            and all(_is_int(decoded[k]) for k in ("seq", "time_us", "node_seq", "window_us"))):
        return decoded
    return None


def parse_notice(raw: bytes) -> Notice | None:
    """A barrier or rejoin notice, or None when ``raw`` is not one."""
    try:
        decoded = decode(raw)
    except Exception:
        return None
    if not isinstance(decoded, dict):
        return None
    node, target_us, epoch = decoded.get("node"), decoded.get("target_us"), decoded.get("epoch", 0)
    return Notice(node, target_us, epoch) if isinstance(node, str) and _is_int(target_us) and _is_int(epoch) else None


def _decode(raw: bytes) -> Any:
    """An external payload as JSON when it is JSON, else as text (undecodable bytes escaped)."""
    try:
        return decode(raw)
    except Exception:  # not JSON (or too deep to decode): keep it as text
        return raw.decode("utf-8", errors="backslashreplace")

