"""{{name}}: an alarm for every reading over a threshold, and a heartbeat every 250 ms of virtual time.

A cosim service on the Python SDK (cosim_service): the coordinator drives it over stdin/stdout in virtual time.

Input:   ``reading`` events, data ``{"value": number}`` (e.g. from a sensor with ``model: uniform``).
Output:  ``alarm`` at the reading's time, data ``{"value", "threshold", "from"}``, for each reading over the threshold;
         ``heartbeat`` every ``heartbeat_us``, data ``{"beat": n, "alarms": alarms so far}``.
Config:  ``threshold`` (0.9) and ``heartbeat_us`` (250000; 0: no heartbeat), both reconfigurable during a run.

Next-event advance: ``wakeup`` tells the coordinator when the next heartbeat is due, so the windows in between are
skipped (the trace is the same as when stepping every quantum). Checkpoints: ``snapshot``/``restore``.
Log to stderr (``logging`` or ``print(..., file=sys.stderr)``): stdout carries the protocol, and the SDK sends a
stray ``print()`` to the log.
"""

from __future__ import annotations

import logging
from typing import Any

from cosim_service import Service

log = logging.getLogger("{{name}}")


def _check(config: dict[str, Any]) -> None:
    threshold = config.get("threshold", 0.9)
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool):
        raise ValueError(f"threshold must be a number, got {threshold!r}")
    heartbeat = config.get("heartbeat_us", 250_000)
    if not isinstance(heartbeat, int) or isinstance(heartbeat, bool) or heartbeat < 0:
        raise ValueError(f"heartbeat_us must be an integer >= 0 (0: no heartbeat), got {heartbeat!r}")


class ThresholdAlarm(Service):
    capabilities = ("alarm",)
    reconfigurable = ("threshold", "heartbeat_us")  # any other key is refused at a reconfigure

    def __init__(self) -> None:
        self.alarms = 0  # the state a checkpoint carries (config is carried by the SDK)
        self.beats = 0

    def init(self, node_id: str, seed: int, config: dict[str, Any]) -> None:
        unknown = sorted(set(config) - set(self.reconfigurable))
        if unknown:
            raise ValueError(f"unknown config keys {unknown}; {{name}} takes threshold, heartbeat_us")
        _check(config)

    def configure(self, changes: dict[str, Any]) -> None:
        super().configure(changes)  # refuses unknown keys
        _check(changes)  # check everything before anything changes: the SDK merges the changes afterwards
        log.info("reconfigured at %d us: %s", self.now_us, changes)

    def wakeup(self, after_us: int) -> int | None:
        """The next heartbeat after ``after_us`` (None: no heartbeat)."""
        period = self.config.get("heartbeat_us", 250_000)
        return (after_us // period + 1) * period if period else None

    def advance(self, until_us: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        threshold = self.config.get("threshold", 0.9)
        out = []
        for event in events:
            value = (event.get("data") or {}).get("value")
            if event["type"] == "reading" and isinstance(value, (int, float)) and value > threshold:
                self.alarms += 1
                out.append({"type": "alarm", "time_us": event["time_us"],
                            "data": {"value": value, "threshold": threshold, "from": event.get("source")}})
        period = self.config.get("heartbeat_us", 250_000)
        if period:  # every beat in the window (now_us, until_us], however long it is
            for beat_us in range((self.now_us // period + 1) * period, until_us + 1, period):
                self.beats += 1
                out.append({"type": "heartbeat", "time_us": beat_us, "data": {"beat": self.beats,
                                                                              "alarms": self.alarms}})
        return out

    def snapshot(self) -> dict[str, Any]:
        return {"alarms": self.alarms, "beats": self.beats}

    def restore(self, state: dict[str, Any]) -> None:
        self.alarms, self.beats = state["alarms"], state["beats"]


if __name__ == "__main__":
    ThresholdAlarm().run()
