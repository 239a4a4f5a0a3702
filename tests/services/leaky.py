"""leaky: a deliberately broken test service that lets the wall clock or an unseeded generator decide its output.

Config: source = "clock" (time.time_ns()) or "random" (the global, unseeded random module); every_us (default
1000): emit a reading at each multiple of it, then echo nothing. A determinism check must catch it.
"""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

from protocol_adapter import serve

config: dict[str, Any] = {}


def on_init(message: Mapping[str, Any]) -> None:
    config.update(message.get("config") or {})


def reading() -> int:
    if config.get("source") == "random":
        return random.randrange(1 << 30)  # the global generator, seeded from the OS at start-up
    return time.time_ns()  # exactly what a service must never do


def advance(current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    every = int(config.get("every_us", 1000))
    first = (current // every + 1) * every
    return [{"type": "reading", "time_us": at, "data": {"value": reading()}} for at in range(first, target + 1, every)]


if __name__ == "__main__":
    serve(advance, on_init=on_init)
