"""burst: a test service that emits several events at the same virtual time, and echoes what it receives.

Config: every_us (default 1000): emit a burst at each multiple of it; count (default 3): events per burst.
Burst events are returned in reverse time-insertion order within a window on purpose (latest first), so the
coordinator has to order them by time itself; same-time events keep the order given here (``i`` ascending).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol_adapter import serve

config: dict[str, Any] = {}


def on_init(message: Mapping[str, Any]) -> None:
    config.update(message.get("config") or {})


def advance(current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    every = int(config.get("every_us", 1000))
    count = int(config.get("count", 3))
    out: list[dict[str, Any]] = []
    first = (current // every + 1) * every
    for at in reversed(range(first, target + 1, every)):
        out.extend({"type": "burst", "time_us": at, "data": {"at": at, "i": i}} for i in range(count))
    out.extend({"type": "seen", "time_us": e["time_us"], "data": {"source": e["source"], "seq": e["seq"]}}
               for e in events)
    return out


if __name__ == "__main__":
    serve(advance, on_init=on_init)
