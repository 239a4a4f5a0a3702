"""promiser: a test service for next-event advance (docs/protocol.md §13), driven by its config.

Config (all optional):
  delay_us:        answer every input event with a ``late`` output stamped delay_us after it (held by the adapter
                   across the windows in between, and folded into its promise)
  report_windows:  answer every input event with ``seen`` at its delivery time, carrying the ADVANCE window
                   (current, target) it arrived in: shows where the coordinator jumped
  promise_us:      promise (DONE next_us) to act on its own at this time ...
  emit_at_us:      ... but emit a ``lie`` at this earlier time, in whichever window it is advanced over it:
                   a broken promise the coordinator must catch
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol_adapter import serve

config: dict[str, Any] = {}


def on_init(message: Mapping[str, Any]) -> None:
    config.update(message.get("config") or {})


def wakeup(target: int) -> int | None:
    promise = config.get("promise_us")
    return promise if promise is not None and promise > target else None


def advance(current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for event in events:
        if config.get("report_windows"):
            out.append({"type": "seen", "time_us": event["time_us"],
                        "data": {"current": current, "target": target, "seq": event["seq"]}})
        if config.get("delay_us"):
            out.append({"type": "late", "time_us": event["time_us"] + config["delay_us"], "data": event["data"]})
    lie = config.get("emit_at_us")
    if lie is not None and current < lie <= target:
        out.append({"type": "lie", "time_us": lie, "data": None})
    return out


if __name__ == "__main__":
    serve(advance, on_init=on_init, wakeup=wakeup)
