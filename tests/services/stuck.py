"""stuck: a test service that hangs for good at stuck_at_us: it ignores end of input and SIGTERM, so only
SIGKILL ends it (unlike echo's hang_at_us, which exits when its stdin closes)."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Mapping
from typing import Any

from protocol_adapter import serve

config: dict[str, Any] = {}


def on_init(message: Mapping[str, Any]) -> None:
    config.update(message.get("config") or {})


def advance(current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    if current < config.get("stuck_at_us", -1) <= target:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stuck: blocking forever as configured", file=sys.stderr, flush=True)
        threading.Event().wait()  # never set
    return []


if __name__ == "__main__":
    serve(advance, on_init=on_init)
