"""Checkpoints: a run's whole state at a window boundary, in one file, to resume it later or fork it.

At the end of the window ending at T every service is between steps and, once the MQTT clients have settled,
nothing is in flight in the broker: the run's state is the coordinator's (pending deliveries, per-source sequence
numbers, each link's random generator, the schedule's effects so far, the counters, the trace written so far) plus
each node's (in-process models directly; services through the protocol's SNAPSHOT). The file (format documented
in docs/checkpoint-format.md) is one canonical JSON object::

    {"format": "cosim-checkpoint/2", "sha256": <SHA-256 of canonical(content)>, "content": {...}}

Reading one checks, in this order and with one message each: that it is JSON, its format, its hash, the
protocol and cosim versions it was written by, then (``check_scenario``) the scenario it is resumed with. A file of
the previous format (``cosim-checkpoint/1``: the per-node state in node-keyed maps of the coordinator's) is read into
the current one (``_upgrade_v1``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cosim import __version__, protocol
from cosim import schedule as scheduling
from cosim.errors import CheckpointError, OptionError, cannot_write
from cosim.model import Scenario

FORMAT = "cosim-checkpoint/2"
FORMAT_V1 = "cosim-checkpoint/1"  # still read: converted on reading
DIRECTORY = Path("checkpoints")


def content_sha256(content: Mapping[str, Any]) -> str:
    return hashlib.sha256(protocol.canonical(content).encode("utf-8")).hexdigest()


def path_for(scenario: Scenario, time_us: int, directory: Path = DIRECTORY) -> Path:
    return directory / f"{scenario.name}-{time_us}us.checkpoint.json"


def write(path: Path, content: Mapping[str, Any]) -> str:
    """Write a checkpoint (atomically: a file that exists is complete); return its hash."""
    digest = content_sha256(content)
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(protocol.canonical({"format": FORMAT, "sha256": digest, "content": content}) + "\n",
                           encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise CheckpointError(cannot_write("the checkpoint", path, exc)) from None
    return digest


def read(path: str | Path) -> tuple[dict[str, Any], str]:
    """(content, sha256) of a checkpoint file, checked; CheckpointError naming the file and what is wrong."""
    path = Path(path)
    try:
        document = json.loads(path.read_bytes().decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except (OSError, ValueError) as exc:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointError(f"{path}: not a checkpoint (truncated or not JSON: {exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("content"), dict):
        raise CheckpointError(f"{path}: not a checkpoint (expected an object with 'format', 'sha256' and 'content')")
    if document.get("format") not in (FORMAT_V1, FORMAT):
        raise CheckpointError(f"{path}: checkpoint format {document.get('format')!r}; this cosim reads {FORMAT_V1!r} "
                              f"and {FORMAT!r}")
    content = document["content"]
    digest = content_sha256(content)
    if document.get("sha256") != digest:
        raise CheckpointError(f"{path}: the content's SHA-256 is {digest[:16]}..., the file says "
                              f"{str(document.get('sha256'))[:16]}...: the checkpoint was edited or damaged")
    if content.get("protocol") != protocol.VERSION or content.get("cosim") != __version__:
        raise CheckpointError(f"{path}: written by cosim {content.get('cosim')!r} (protocol {content.get('protocol')!r});"
                              f" this is cosim {__version__!r} (protocol {protocol.VERSION}): it cannot be resumed here")
    if document["format"] == FORMAT_V1:
        content = {**content, "state": _upgrade_v1(content["state"], content["scenario"]["structure"]["nodes"])}
    return content, digest


# The per-node fields of a slot (cosim.core.slots.NodeSlot's saved fields) and where format 1 kept them.
_V1_SLOT_FIELDS: dict[str, tuple[str, Any]] = {
    "next_seq": ("next_seq", 0), "promise": ("promises", None), "config": ("configs", {}), "restarts": ("restarts", 0),
    "lost": ("lost", 0)}
_V1_PROCESS_FIELDS = ("restarts", "lost")  # an infrastructure node's slot (cosim.core.slots.ProcessSlot) has only these


def _upgrade_v1(state: Mapping[str, Any], nodes: Mapping[str, str]) -> dict[str, Any]:
    """A format-1 state in format 2: the coordinator's node-keyed maps become one slot per node. Format 1 did not save
    ``down``: it was written only when every node ran (``parse_times``)."""
    coordinator = dict(state["coordinator"])
    maps = {old: coordinator.pop(old, {}) for old, _ in _V1_SLOT_FIELDS.values()}
    slots = {node_id: {name: maps[old].get(node_id, default) for name, (old, default) in _V1_SLOT_FIELDS.items()
                       if kind != "infrastructure" or name in _V1_PROCESS_FIELDS} | {"down": False}
             for node_id, kind in nodes.items()}
    return {**state, "coordinator": coordinator, "slots": slots}


def parse_times(option: str, value: str | Sequence[int] | None, scenario: Scenario) -> tuple[int, ...]:
    """``--checkpoint-at T[,T2,...]`` (us): each on the quantum grid, after 0 and within the duration, and at a
    time when no node is down (crashed by the schedule and not yet restarted)."""
    if value is None or value == "" or value == ():
        return ()
    parts: list[Any] = []
    parts.extend(value.split(",") if isinstance(value, str) else value)
    allowed = (f"times in us on the quantum grid (multiples of {scenario.quantum_us}) in "
               f"({0}, {scenario.duration_us}], comma-separated")
    times = []
    for part in parts:
        try:
            time_us = int(str(part).replace("_", "").strip())
        except ValueError:
            raise OptionError(option, value, allowed) from None
        if time_us <= 0 or time_us > scenario.steps * scenario.quantum_us or time_us % scenario.quantum_us:
            raise OptionError(option, part, allowed)
        down = down_at(scenario, time_us)
        if down:
            raise OptionError(option, part, f"a time when every node runs ({', '.join(down)} crashed by the schedule "
                                             f"and not restarted by {time_us} us)")
        times.append(time_us)
    return tuple(sorted(set(times)))


def down_at(scenario: Scenario, time_us: int) -> list[str]:
    """The nodes the schedule has crashed and not restarted when the window ending at ``time_us`` ends."""
    down: set[str] = set()
    for action in scenario.schedule.actions:
        if action.at_us >= time_us:
            break
        if isinstance(action, scheduling.Restart):
            down.discard(action.node)
        elif isinstance(action, scheduling.Crash):
            down.add(action.node)
    return sorted(down)


def declared_configs(scenario: Scenario) -> dict[str, dict[str, Any]]:
    return {node.id: dict(node.config) for node in scenario.containers if node.speaks_protocol}


def structure(scenario: Scenario) -> dict[str, Any]:
    """What a fork may not change: the nodes (ids and kinds), the seed and the quantum."""
    return {"nodes": {node.id: node.kind for node in scenario.nodes}, "seed": scenario.seed,
            "quantum_us": scenario.quantum_us}


def scenario_file(content: Mapping[str, Any]) -> Path:
    """The checkpointed run's scenario file: its path as the run was given it (from the working directory), else
    where that was then (``absolute_path``; checkpoints written before it was kept have only ``path``), so a
    checkpoint resumes from any directory. ``check_scenario`` then refuses the file if it changed."""
    scenario = content["scenario"]
    candidates = [Path(scenario["path"])]
    if scenario.get("absolute_path"):
        candidates.append(Path(scenario["absolute_path"]))
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    return candidates[-1]  # missing: loading it names the file


def check_scenario(path: Path, content: Mapping[str, Any], scenario: Scenario, *, fork: bool) -> None:
    """Resume: the scenario file must be the one checkpointed (same hash). Fork (``--scenario``): the variant may
    change config, links, the schedule after T and the duration, not the structure (named when it does)."""
    parent = content["scenario"]
    time_us = content["time_us"]
    if not fork:
        if scenario.sha256 != parent["sha256"]:
            raise CheckpointError(f"{path}: a checkpoint of scenario {parent['name']!r} ({parent['path']}, sha256 "
                                  f"{parent['sha256'][:12]}), but that file is now {scenario.sha256[:12]}: another "
                                  f"scenario (give it with --scenario to fork)")
        return
    want, have = parent["structure"], structure(scenario)
    for key in ("seed", "quantum_us"):
        if want[key] != have[key]:
            raise CheckpointError(f"{scenario.path}: {key} is {have[key]}, the checkpoint's scenario has {want[key]}: "
                                  f"a fork may not change it")
    if want["nodes"] != have["nodes"]:
        added = sorted(set(have["nodes"]) - set(want["nodes"]))
        removed = sorted(set(want["nodes"]) - set(have["nodes"]))
        changed = sorted(n for n in set(want["nodes"]) & set(have["nodes"]) if want["nodes"][n] != have["nodes"][n])
        what = "; ".join(part for part in (f"nodes added: {', '.join(added)}" if added else "",
                                           f"nodes removed: {', '.join(removed)}" if removed else "",
                                           f"kind changed: {', '.join(changed)}" if changed else "") if part)
        raise CheckpointError(f"{scenario.path}: {what}: a fork may not add, remove or change nodes")
    if scenario.steps * scenario.quantum_us < time_us:
        raise CheckpointError(f"{scenario.path}: duration_us {scenario.duration_us} ends before the checkpoint's "
                              f"{time_us} us")


def config_changes(content: Mapping[str, Any], scenario: Scenario) -> dict[str, dict[str, Any]]:
    """A fork's new service config: per service, the keys whose declared value differs from the parent's."""
    parent = content["declared_configs"]
    changes = {}
    for node in scenario.containers:
        if node.speaks_protocol:
            before = parent.get(node.id, {})
            changed = {key: value for key, value in node.config.items() if before.get(key) != value}
            if changed:
                changes[node.id] = changed
    return changes

