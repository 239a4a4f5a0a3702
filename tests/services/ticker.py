"""ticker: a service that does not declare next-event advance (an "old" service): a ``tick`` every tick_us of
virtual time (config, default 5000) and an echo of each input. The coordinator must advance it every quantum."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol_adapter import serve

config: dict[str, Any] = {}


def on_init(message: Mapping[str, Any]) -> None:
    config.update(message.get("config") or {})


def advance(current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    every = int(config.get("tick_us", 5000))
    out = [{"type": "tick", "time_us": at, "data": {"at": at}} for at in range((current // every + 1) * every, target + 1, every)]
    out += [{"type": "echo", "time_us": event["time_us"], "data": event["data"]} for event in events]
    return out


if __name__ == "__main__":
    serve(advance, on_init=on_init)
