"""A scenario's schedule: changes applied at exact virtual times (reconfigure, link, partition, heal, crash,
restart), as a typed, frozen list of actions, and the scenario file's `schedule:` section read into it.

The coordinator applies the actions due at the start of a window with one call (``Schedule.due(start_us)``),
before that window's deliveries and ADVANCE; ``next_time(t)`` says when the next action is due, so a loop that
skips idle windows can wake up for it. Actions sit on the quantum grid, within the duration (the loader checks).

No YAML or schema library here: ``parse`` receives the already schema-validated document section and a
``fail(message, field path)`` that raises the scenario's error.
"""

from __future__ import annotations

import bisect
import difflib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Union

FieldPath = tuple[Union[str, int], ...]
Fail = Callable[[str, FieldPath], Exception]

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

    @property
    def kind(self) -> str:
        raise NotImplementedError

    def fields(self) -> dict[str, Any]:
        """What the action does, for the trace (its `action` record) and the header's manifest."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        return {"at_us": self.at_us, "action": self.kind, **self.fields()}


@dataclass(frozen=True)
class Reconfigure(Action):
    node: str
    config: Mapping[str, Any] = field(default_factory=dict)
    kind = "reconfigure"  # type: ignore[assignment]

    def fields(self) -> dict[str, Any]:
        return {"node": self.node, "config": dict(self.config)}


@dataclass(frozen=True)
class SetLink(Action):
    source: str  # node ids (a replicated group is expanded into one action per replica at load)
    dest: str
    changes: Mapping[str, Any] = field(default_factory=dict)  # some of latency_us, jitter_us, loss
    kind = "link"  # type: ignore[assignment]

    def fields(self) -> dict[str, Any]:
        return {"from": self.source, "to": self.dest, "set": dict(self.changes)}


@dataclass(frozen=True)
class Partition(Action):
    groups: tuple[tuple[str, ...], ...] = ()  # node ids, replicas expanded
    kind = "partition"  # type: ignore[assignment]

    def fields(self) -> dict[str, Any]:
        return {"groups": [list(group) for group in self.groups]}


@dataclass(frozen=True)
class Heal(Action):
    kind = "heal"  # type: ignore[assignment]

    def fields(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True)
class Crash(Action):
    """Kill a service's or infrastructure node's process (container) now."""

    node: str
    kind = "crash"  # type: ignore[assignment]

    def fields(self) -> dict[str, Any]:
        return {"node": self.node}


@dataclass(frozen=True)
class Restart(Crash):
    """Bring a crashed node back: a fresh process (container), INIT again with the same seed."""

    kind = "restart"  # type: ignore[assignment]


@dataclass(frozen=True)
class Schedule:
    """The actions of a scenario in the order they apply: by ``at_us``, then as listed in the file."""

    actions: tuple[Action, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_times", tuple(action.at_us for action in self.actions))

    def __bool__(self) -> bool:
        return bool(self.actions)

    def due(self, start_us: int) -> tuple[Action, ...]:
        """The actions applied at the start of the window that begins at ``start_us``."""
        times: tuple[int, ...] = self._times  # type: ignore[attr-defined]
        return self.actions[bisect.bisect_left(times, start_us):bisect.bisect_right(times, start_us)]

    def next_time(self, at_or_after_us: int) -> int | None:
        """The time of the first action at or after ``at_or_after_us`` (a wake-up for a loop that skips idle
        windows), or None when there is none."""
        times: tuple[int, ...] = self._times  # type: ignore[attr-defined]
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


@dataclass(frozen=True)
class NodeFacts:
    """What ``parse`` needs to know of the scenario's nodes: kind per node id (replicas expanded) and the
    replicated groups (declared id -> replica ids)."""

    kinds: Mapping[str, str]
    groups: Mapping[str, tuple[str, ...]]


def parse(items: list[dict[str, Any]], nodes: NodeFacts, quantum_us: int, duration_us: int, fail: Fail) -> Schedule:
    """The schema-validated `schedule:` list as a Schedule, or ``fail`` for the first rule it breaks."""
    actions: list[Action] = []
    for index, item in enumerate(items):
        at: FieldPath = ("schedule", index)
        at_us = item["at_us"]
        if at_us % quantum_us:
            below = at_us - at_us % quantum_us
            raise fail(f"at_us {at_us} is not on the quantum grid ({quantum_us} us): actions apply at the start of a "
                       f"window, e.g. {below} or {below + quantum_us}", at + ("at_us",))
        if at_us >= duration_us:
            raise fail(f"at_us {at_us} is not before the end of the run ({duration_us} us)", at + ("at_us",))
        present = [key for key in ACTION_KEYS if key in item]
        if len(present) != 1:
            what = "none" if not present else ", ".join(present)
            raise fail(f"an action needs exactly one of {', '.join(ACTION_KEYS)}; found {what}", at)
        kind = present[0]
        for companion, owner in (("config", "reconfigure"), ("set", "link")):
            if companion in item and kind != owner:
                raise fail(f"`{companion}` belongs to a `{owner}` action, not to `{kind}`", at + (companion,))
        actions.extend(_action(kind, item, at, nodes, quantum_us, fail))
    _check_crashes(items, fail)
    ordered = sorted(range(len(actions)), key=lambda i: (actions[i].at_us, i))  # stable: file order at one time
    return Schedule(tuple(actions[i] for i in ordered))


def _action(kind: str, item: dict[str, Any], at: FieldPath, nodes: NodeFacts, quantum_us: int,
            fail: Fail) -> list[Action]:
    at_us = item["at_us"]
    if kind == "reconfigure":
        node = _one_node(item["reconfigure"], at + ("reconfigure",), nodes, fail)
        node_kind = nodes.kinds[node]
        if node_kind == "infrastructure":
            raise fail(f"{node!r} is an infrastructure node; it does not speak the protocol, so it cannot be "
                       f"reconfigured (crash and restart it instead)", at + ("reconfigure",))
        if "config" not in item:
            raise fail("a reconfigure action needs `config`: the keys to change", at)
        config = item["config"]
        if node_kind in MODEL_CONFIG_KEYS:
            _check_model_config(node, node_kind, config, at + ("config",), fail)
        return [Reconfigure(at_us, node, dict(config))]
    if kind == "link":
        link = item["link"]
        sources = _expand(link["from"], at + ("link", "from"), nodes, fail)
        dests = _expand(link["to"], at + ("link", "to"), nodes, fail)
        if "set" not in item:
            raise fail(f"a link action needs `set` with some of {', '.join(LINK_KEYS)}", at)
        changes = dict(item["set"])
        if changes.get("latency_us", quantum_us) < quantum_us:
            raise fail(f"latency {changes['latency_us']} us is shorter than the quantum {quantum_us} us; every link "
                       f"needs latency_us >= quantum_us", at + ("set", "latency_us"))
        shared = sorted(set(sources) & set(dests))
        if shared:
            raise fail(f"a link joins two different nodes; `from` and `to` both name {', '.join(shared)}", at + ("link",))
        return [SetLink(at_us, source, dest, changes) for source in sources for dest in dests]
    if kind == "partition":
        groups: list[tuple[str, ...]] = []
        seen: dict[str, int] = {}
        for number, group in enumerate(item["partition"]):
            members: list[str] = []
            for position, name in enumerate(group):
                where = at + ("partition", number, position)
                for node in _expand(name, where, nodes, fail):
                    if node in seen:
                        also = f"group {seen[node]}" if seen[node] != number else "the same group"
                        raise fail(f"{node!r} is named twice in the partition (also in {also}); each node belongs "
                                   f"to one side", where)
                    seen[node] = number
                    members.append(node)
            groups.append(tuple(members))
        return [Partition(at_us, tuple(groups))]
    if kind == "heal":
        if item["heal"] is not True:
            raise fail("heal takes `true` (it ends every partition)", at + ("heal",))
        return [Heal(at_us)]
    node = _one_node(item[kind], at + (kind,), nodes, fail)
    node_kind = nodes.kinds[node]
    if node_kind in ("sensor", "sink"):
        raise fail(f"{node!r} is a {node_kind}, an in-process model "
                   f"with no process to {kind}; only service and infrastructure nodes can", at + (kind,))
    return [Crash(at_us, node) if kind == "crash" else Restart(at_us, node)]


def _check_crashes(items: list[dict[str, Any]], fail: Fail) -> None:
    """A node is crashed only while up and restarted only while down, in time order."""
    down: set[str] = set()
    crash_items = [(item["at_us"], i, kind) for i, item in enumerate(items)
                   for kind in ("crash", "restart") if kind in item]
    for at_us, index, kind in sorted(crash_items):
        node = items[index][kind]
        if kind == "crash":
            if node in down:
                raise fail(f"{node!r} is crashed again at {at_us} us while it is still down; restart it first",
                           ("schedule", index, "crash"))
            down.add(node)
        else:
            if node not in down:
                raise fail(f"restart of {node!r} at {at_us} us without an earlier crash of it; a restart brings back a "
                           f"crashed node", ("schedule", index, "restart"))
            down.discard(node)


def _check_model_config(node: str, kind: str, config: Mapping[str, Any], at: FieldPath, fail: Fail) -> None:
    allowed = MODEL_CONFIG_KEYS[kind]
    for key, value in config.items():
        if key not in allowed:
            accepted = f"accepted: {', '.join(allowed)}" if allowed else "it accepts none"
            raise fail(f"unknown config key {key!r} for {node!r}, an in-process {kind} ({accepted})", at + (key,))
        if key == "period_us" and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise fail(f"period_us must be {allowed[key]}, got {value!r}", at + (key,))
        if key == "event_type" and not (isinstance(value, str) and value):
            raise fail(f"event_type must be {allowed[key]}, got {value!r}", at + (key,))


def _known(nodes: NodeFacts) -> list[str]:
    return sorted(set(nodes.kinds) | set(nodes.groups))


def _unknown(name: str, nodes: NodeFacts) -> str:
    close = difflib.get_close_matches(name, _known(nodes), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known nodes: {', '.join(_known(nodes))}"
    return f"unknown node {name!r}{hint}"


def _one_node(name: str, at: FieldPath, nodes: NodeFacts, fail: Fail) -> str:
    """A crash, restart or reconfigure names one node: for a replicated service, one of its replicas."""
    if name in nodes.groups:
        raise fail(f"{name!r} is a replicated service; name one replica ({', '.join(nodes.groups[name])}): crash, "
                   f"restart and reconfigure act on one process", at)
    if name not in nodes.kinds:
        raise fail(_unknown(name, nodes), at)
    return name


def _expand(name: str, at: FieldPath, nodes: NodeFacts, fail: Fail) -> tuple[str, ...]:
    """Links and partitions may name a replicated service: that means every replica."""
    if name in nodes.groups:
        return tuple(nodes.groups[name])
    if name not in nodes.kinds:
        raise fail(_unknown(name, nodes), at)
    return (name,)
