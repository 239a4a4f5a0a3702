"""The scenario file's `schedule:` section, schema-validated, read into a :class:`cosim.schedule.Schedule`:
the rules the schema cannot say (grid, duration, node names and kinds, crash before restart, model keys)."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cosim.loading.positions import FieldPath, Positions
from cosim.schedule import (
    ACTION_KEYS,
    LINK_KEYS,
    MODEL_CONFIG_KEYS,
    Action,
    Crash,
    Heal,
    Partition,
    Reconfigure,
    Restart,
    Schedule,
    SetLink,
)


@dataclass(frozen=True)
class NodeFacts:
    """What ``parse`` needs to know of the scenario's nodes: kind per node id (replicas expanded) and the
    replicated groups (declared id -> replica ids)."""

    kinds: Mapping[str, str]
    groups: Mapping[str, tuple[str, ...]]


def parse(items: list[dict[str, Any]], nodes: NodeFacts, quantum_us: int, duration_us: int, positions: Positions) -> Schedule:
    """The schema-validated `schedule:` list as a Schedule, or the ScenarioError of the first rule it breaks."""
    actions: list[Action] = []
    for index, item in enumerate(items):
        at: FieldPath = ("schedule", index)
        at_us = item["at_us"]
        if at_us % quantum_us:
            below = at_us - at_us % quantum_us
            raise positions.error(f"at_us {at_us} is not on the quantum grid ({quantum_us} us): actions apply at the start of a "
                                  f"window, e.g. {below} or {below + quantum_us}", at + ("at_us",))
        if at_us >= duration_us:
            raise positions.error(f"at_us {at_us} is not before the end of the run ({duration_us} us)", at + ("at_us",))
        present = [key for key in ACTION_KEYS if key in item]
        if len(present) != 1:
            what = "none" if not present else ", ".join(present)
            raise positions.error(f"an action needs exactly one of {', '.join(ACTION_KEYS)}; found {what}", at)
        kind = present[0]
        for companion, owner in (("config", "reconfigure"), ("set", "link")):
            if companion in item and kind != owner:
                raise positions.error(f"`{companion}` belongs to a `{owner}` action, not to `{kind}`", at + (companion,))
        actions.extend(_action(kind, item, at, nodes, quantum_us, positions))
    _check_crashes(items, positions)
    ordered = sorted(range(len(actions)), key=lambda i: (actions[i].at_us, i))  # stable: file order at one time
    return Schedule(tuple(actions[i] for i in ordered))


def _action(kind: str, item: dict[str, Any], at: FieldPath, nodes: NodeFacts, quantum_us: int,
            positions: Positions) -> list[Action]:
    at_us = item["at_us"]
    if kind == "reconfigure":
        node = _one_node(item["reconfigure"], at + ("reconfigure",), nodes, positions)
        node_kind = nodes.kinds[node]
        if node_kind == "infrastructure":
            raise positions.error(f"{node!r} is an infrastructure node; it does not speak the protocol, so it cannot be "
                                  f"reconfigured (crash and restart it instead)", at + ("reconfigure",))
        if "config" not in item:
            raise positions.error("a reconfigure action needs `config`: the keys to change", at)
        config = item["config"]
        if node_kind in MODEL_CONFIG_KEYS:
            _check_model_config(node, node_kind, config, at + ("config",), positions)
        return [Reconfigure(at_us, node, dict(config))]
    if kind == "link":
        link = item["link"]
        sources = _expand(link["from"], at + ("link", "from"), nodes, positions)
        dests = _expand(link["to"], at + ("link", "to"), nodes, positions)
        if "set" not in item:
            raise positions.error(f"a link action needs `set` with some of {', '.join(LINK_KEYS)}", at)
        changes = dict(item["set"])
        if changes.get("latency_us", quantum_us) < quantum_us:
            raise positions.error(f"latency {changes['latency_us']} us is shorter than the quantum {quantum_us} us; every link "
                                  f"needs latency_us >= quantum_us", at + ("set", "latency_us"))
        shared = sorted(set(sources) & set(dests))
        if shared:
            raise positions.error(f"a link joins two different nodes; `from` and `to` both name {', '.join(shared)}", at + ("link",))
        return [SetLink(at_us, source, dest, changes) for source in sources for dest in dests]
    if kind == "partition":
        groups: list[tuple[str, ...]] = []
        seen: dict[str, int] = {}
        for number, group in enumerate(item["partition"]):
            members: list[str] = []
            for position, name in enumerate(group):
                where = at + ("partition", number, position)
                for node in _expand(name, where, nodes, positions):
                    if node in seen:
                        also = f"group {seen[node]}" if seen[node] != number else "the same group"
                        raise positions.error(f"{node!r} is named twice in the partition (also in {also}); each node belongs "
                                              f"to one side", where)
                    seen[node] = number
                    members.append(node)
            groups.append(tuple(members))
        return [Partition(at_us, tuple(groups))]
    if kind == "heal":
        if item["heal"] is not True:
            raise positions.error("heal takes `true` (it ends every partition)", at + ("heal",))
        return [Heal(at_us)]
    node = _one_node(item[kind], at + (kind,), nodes, positions)
    node_kind = nodes.kinds[node]
    if node_kind in ("sensor", "sink"):
        raise positions.error(f"{node!r} is a {node_kind}, an in-process model "
                              f"with no process to {kind}; only service and infrastructure nodes can", at + (kind,))
    return [Crash(at_us, node) if kind == "crash" else Restart(at_us, node)]


def _check_crashes(items: list[dict[str, Any]], positions: Positions) -> None:
    """A node is crashed only while up and restarted only while down, in time order."""
    down: set[str] = set()
    crash_items = [(item["at_us"], i, kind) for i, item in enumerate(items)
                   for kind in ("crash", "restart") if kind in item]
    for at_us, index, kind in sorted(crash_items):
        node = items[index][kind]
        if kind == "crash":
            if node in down:
                raise positions.error(f"{node!r} is crashed again at {at_us} us while it is still down; restart it first",
                                      ("schedule", index, "crash"))
            down.add(node)
        else:
            if node not in down:
                raise positions.error(f"restart of {node!r} at {at_us} us without an earlier crash of it; a restart brings back a "
                                      f"crashed node", ("schedule", index, "restart"))
            down.discard(node)


def _check_model_config(node: str, kind: str, config: Mapping[str, Any], at: FieldPath, positions: Positions) -> None:
    allowed = MODEL_CONFIG_KEYS[kind]
    for key, value in config.items():
        if key not in allowed:
            accepted = f"accepted: {', '.join(allowed)}" if allowed else "it accepts none"
            raise positions.error(f"unknown config key {key!r} for {node!r}, an in-process {kind} ({accepted})", at + (key,))
        if key == "period_us" and not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
            raise positions.error(f"period_us must be {allowed[key]}, got {value!r}", at + (key,))
        if key == "event_type" and not (isinstance(value, str) and value):
            raise positions.error(f"event_type must be {allowed[key]}, got {value!r}", at + (key,))


def _known(nodes: NodeFacts) -> list[str]:
    return sorted(set(nodes.kinds) | set(nodes.groups))


def _unknown(name: str, nodes: NodeFacts) -> str:
    close = difflib.get_close_matches(name, _known(nodes), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; known nodes: {', '.join(_known(nodes))}"
    return f"unknown node {name!r}{hint}"


def _one_node(name: str, at: FieldPath, nodes: NodeFacts, positions: Positions) -> str:
    """A crash, restart or reconfigure names one node: for a replicated service, one of its replicas."""
    if name in nodes.groups:
        raise positions.error(f"{name!r} is a replicated service; name one replica ({', '.join(nodes.groups[name])}): crash, "
                              f"restart and reconfigure act on one process", at)
    if name not in nodes.kinds:
        raise positions.error(_unknown(name, nodes), at)
    return name


def _expand(name: str, at: FieldPath, nodes: NodeFacts, positions: Positions) -> tuple[str, ...]:
    """Links and partitions may name a replicated service: that means every replica."""
    if name in nodes.groups:
        return tuple(nodes.groups[name])
    if name not in nodes.kinds:
        raise positions.error(_unknown(name, nodes), at)
    return (name,)
