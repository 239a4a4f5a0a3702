"""The coordinator's side of the JSON-lines protocol (the service side: the SDK in sdk/python, cosim_service, and
the single-file containers/protocol_adapter.py). The canonical encoder and strict decoder are cosim_service.wire's.

Both sides must agree on VERSION; a test checks they do. The full specification is docs/protocol.md and the
machine-readable one schemas/protocol.schema.json.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from cosim_service import wire
from cosim_service.wire import canonical, decode  # noqa: F401  (cosim.protocol.canonical/decode: the one codec)

VERSION = 1

SHUTDOWN: dict[str, Any] = {"type": "SHUTDOWN"}


def encode(message: Mapping[str, Any]) -> bytes:
    """One canonical line as UTF-8 bytes (cosim_service.wire's encoder, the one of both sides)."""
    return wire.encode(message).encode("utf-8")


def init_message(node_id: str, seed: int, config: Mapping[str, Any], endpoints: Mapping[str, Any], *,
                 time_us: int = 0, restart: int | None = None) -> dict[str, Any]:
    """INIT; a node restarted by the schedule gets the time it resumes at and how many restarts it has had."""
    message = {"type": "INIT", "protocol": VERSION, "time_us": time_us, "node_id": node_id, "seed": seed,
               "config": dict(config), "endpoints": dict(endpoints)}
    if restart is not None:
        message["restart"] = restart
    return message


def configure_message(time_us: int, config: Mapping[str, Any] | None = None,
                      endpoints: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """CONFIGURE (the schedule's reconfigure, or an infrastructure node going away or coming back): the config
    keys to change and/or the endpoints that changed (null: gone)."""
    message: dict[str, Any] = {"type": "CONFIGURE", "time_us": time_us}
    if config is not None:
        message["config"] = dict(config)
    if endpoints is not None:
        message["endpoints"] = dict(endpoints)
    return message


def snapshot_message(time_us: int) -> dict[str, Any]:
    """SNAPSHOT at a window boundary (the service is at ``time_us``): answered by SNAPSHOT_STATE with its state."""
    return {"type": "SNAPSHOT", "time_us": time_us}


def restore_message(time_us: int, state: Any) -> dict[str, Any]:
    """RESTORE right after INIT of a fresh process: the state a SNAPSHOT_STATE gave, the clock set to ``time_us``."""
    return {"type": "RESTORE", "time_us": time_us, "state": state}


def advance_message(target_us: int, events: Sequence[Mapping[str, Any]], peers: list[str] | None = None,
                    members: list[str] | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"type": "ADVANCE", "time_us": target_us, "events": events}
    if peers is not None:  # only for a service whose READY declared a barrier_group
        message["peers"] = peers
    if members is not None:  # the whole group, in the first ADVANCE
        message["members"] = members
    return message


# The canonical lines of most windows, formatted directly (the hot path): an ADVANCE without events (and without a
# barrier group), and a DONE without outputs (a reply equal to it needs no parsing).
PLAIN_ADVANCE = b'{"events":[],"time_us":%d,"type":"ADVANCE"}\n'
EMPTY_DONE = b'{"events":[],"time_us":%d,"type":"DONE"}'


def encode_advance(target_us: int, events: Sequence[Mapping[str, Any]], peers: list[str] | None = None,
                   members: list[str] | None = None) -> bytes:
    """ADVANCE as a canonical line. Most windows carry no events; their line is formatted directly (the hot path)."""
    if not events and members is None:
        if peers is None:
            return PLAIN_ADVANCE % target_us
        if not peers:
            return b'{"events":[],"peers":[],"time_us":%d,"type":"ADVANCE"}\n' % target_us
    return encode(advance_message(target_us, events, peers, members))


def empty_done(target_us: int) -> bytes:
    """The canonical DONE of a window without outputs: a reply equal to it needs no parsing."""
    return EMPTY_DONE % target_us


_PROMISE_PREFIX = b'{"events":[],"next_us":'


def empty_done_promise(raw: bytes, target_us: int) -> int | None:
    """The ``next_us`` of a canonical DONE without outputs that carries a promise (the common reply of a next-event
    service), read without a JSON parse; None when ``raw`` is not exactly such a line."""
    if not raw.startswith(_PROMISE_PREFIX):  # (first: a DONE with events is told apart without building the suffix)
        return None
    suffix = b',"time_us":%d,"type":"DONE"}' % target_us
    if raw.endswith(suffix):
        digits = raw[len(_PROMISE_PREFIX):len(raw) - len(suffix)]
        if digits.isdigit() and not digits.startswith(b"0"):
            return int(digits)
    return None


def check_promise(next_us: Any, target_us: int, reply: str = "DONE") -> str | None:
    """Why a DONE's (or READY's) ``next_us`` (the node's next self-initiated time, or null) breaks the protocol."""
    if next_us is None or (next_us.__class__ is int and next_us > target_us):  # (not a bool: a bool's class is bool)
        return None
    return f"answered {reply} with next_us {next_us!r}; expected null or an integer time after {target_us} us"


def check_outputs(events: Any, current_us: int, target_us: int) -> str | None:
    """Why a DONE's event list breaks the protocol, or None when it is fine."""
    if not isinstance(events, list):
        return f"answered DONE whose events is not a list: {type(events).__name__}"
    for event in events:  # the hot path: what a JSON decode gives for a well-formed DONE
        if event.__class__ is not dict or event.get("type").__class__ is not str:
            break
        time_us = event.get("time_us")
        if time_us.__class__ is not int or not current_us < time_us <= target_us:
            break
    else:
        return None
    for index, event in enumerate(events):
        if not isinstance(event, dict) or not isinstance(event.get("type"), str):
            return f"DONE events[{index}] is not an object with a string 'type'"
        time_us = event.get("time_us")
        if not isinstance(time_us, int) or isinstance(time_us, bool) or not current_us < time_us <= target_us:
            return f"DONE events[{index}] is stamped {time_us!r} us, outside the window ({current_us}, {target_us}]"
    return None
