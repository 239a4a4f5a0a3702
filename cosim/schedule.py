"""A scenario's schedule: changes applied at exact virtual times (reconfigure, link, partition, heal, crash,
restart), as a typed, frozen list of actions.

The coordinator applies the actions due at the start of a window with one call (``Schedule.due(start_us)``),
before that window's deliveries and ADVANCE; ``next_time(t)`` says when the next action is due, so a loop that
skips idle windows can wake up for it. Actions sit on the quantum grid, within the duration (the loader checks).

The scenario file's `schedule:` section is read into a Schedule by ``cosim.loading.schedule``.
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

ACTION_KEYS = ("reconfigure", "link", "partition", "heal", "crash", "restart")
LINK_KEYS = ("latency_us", "jitter_us", "loss")
# Keys an in-process model accepts in `reconfigure` (services check their own, and refuse unknown ones).
MODEL_CONFIG_KEYS: dict[str, dict[str, str]] = {
    "sensor": {"period_us": "an integer > 0 (readings from the next one on come this far apart)",
               "event_type": "a string (the type of the events it emits)"},
    "sink": {},
}


@dataclass(frozen=True)
class Action:
    """One scheduled change at ``at_us`` (a window start on the quantum grid)."""

    at_us: int
    kind: ClassVar[str] = ""  # each kind of action names itself (the schedule's key, the trace record's `action`)

    def fields(self) -> dict[str, Any]:
        """What the action does, for the trace (its `action` record) and the header's manifest."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        return {"at_us": self.at_us, "action": self.kind, **self.fields()}


@dataclass(frozen=True)
class Reconfigure(Action):
    node: str
    config: Mapping[str, Any] = field(default_factory=dict)
    kind = "reconfigure"

    def fields(self) -> dict[str, Any]:
        return {"node": self.node, "config": dict(self.config)}


@dataclass(frozen=True)
class SetLink(Action):
    source: str  # node ids (a replicated group is expanded into one action per replica at load)
    dest: str
    changes: Mapping[str, Any] = field(default_factory=dict)  # some of latency_us, jitter_us, loss
    kind = "link"

    def fields(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.dest, "set": dict(self.changes)}


@dataclass(frozen=True)
class Partition(Action):
    groups: tuple[tuple[str, ...], ...] = ()  # node ids, replicas expanded
    kind = "partition"

    def fields(self) -> dict[str, Any]:
        return {"groups": [list(group) for group in self.groups]}


@dataclass(frozen=True)
class Heal(Action):
    kind = "heal"

    def fields(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Crash(Action):
    """Kill a service's or infrastructure node's process (container) now."""

    node: str
    kind = "crash"

    def fields(self) -> dict[str, Any]:
        return {"node": self.node}


@dataclass(frozen=True)
class Restart(Crash):
    """Bring a crashed node back: a fresh process (container), INIT again with the same seed."""

    kind = "restart"


@dataclass(frozen=True)
class Schedule:
    """The actions of a scenario in the order they apply: by ``at_us``, then as listed in the file."""

    actions: tuple[Action, ...] = ()
    _times: tuple[int, ...] = field(init=False, repr=False, compare=False)  # each action's at_us, for bisect

    def __post_init__(self) -> None:
        object.__setattr__(self, "_times", tuple(action.at_us for action in self.actions))

    def __bool__(self) -> bool:
        return bool(self.actions)

    def due(self, start_us: int) -> tuple[Action, ...]:
        """The actions applied at the start of the window that begins at ``start_us``."""
        times = self._times
        return self.actions[bisect.bisect_left(times, start_us):bisect.bisect_right(times, start_us)]

    def next_time(self, at_or_after_us: int) -> int | None:
        """The time of the first action at or after ``at_or_after_us`` (a wake-up for a loop that skips idle
        windows), or None when there is none."""
        times = self._times
        index = bisect.bisect_left(times, at_or_after_us)
        return times[index] if index < len(times) else None

    def manifest(self) -> list[dict[str, Any]]:
        """The schedule as it goes into the trace header (hashed: it shapes the run)."""
        return [action.record() for action in self.actions]


def describe(record: Mapping[str, Any]) -> str:
    """One line for people about an action record of the trace (run summary, report)."""
    kind = record["action"]
    if kind == "reconfigure":
        return f"reconfigure {record['node']}: " + ", ".join(f"{k}={v}" for k, v in sorted(record["config"].items()))
    if kind == "link":
        return f"link {record['from']} -> {record['to']}: " + ", ".join(f"{k}={v}" for k, v in sorted(record["set"].items()))
    if kind == "partition":
        return "partition " + " | ".join(", ".join(group) for group in record["groups"])
    if kind == "heal":
        return "heal (every partition ends)"
    if kind == "restart":
        lost = f"; {record['lost']} event(s) sent to it while it was down were lost" if record.get("lost") else ""
        return f"restart {record['node']} (restart {record['restart']}{lost})"
    return f"{kind} {record.get('node', '')}".rstrip()


# -- reading a scenario's `schedule:` ------------------------------------------------------------------
