"""``--fork-at T``: the full run a branch stands for.

A branch forked at T from its seed's prefix (``cosim resume CHECKPOINT --scenario`` the variant) stands for the full
run of the base scenario with the variant's changes *scheduled* at T: each service whose config differs gets a
``reconfigure`` with the top-level keys that differ, each link (per route, source and target) whose properties
differ gets a ``link`` action with the properties that differ, and the duration is the variant's. The sweep writes
that scenario beside each branch (``scheduled.yaml``); ``cosim up scheduled.yaml`` gives the branch's records, except
the ``action`` records the schedule writes at T (a fork applies the changes without a schedule, so it writes none).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cosim.model import LinkProperties, Scenario

SCHEDULED = "scheduled.yaml"
LINK_FIELDS = ("latency_us", "jitter_us", "loss")


def scheduled_document(prefix: Mapping[str, Any], variant: Mapping[str, Any], before: Scenario, after: Scenario,
                       time_us: int) -> dict[str, Any]:
    """The prefix's scenario document (the base with the seed) with the variant's changes as schedule actions at
    ``time_us`` and the variant's duration. ``before``/``after``: the two documents loaded (for the links in force)."""
    document: dict[str, Any] = json.loads(json.dumps(prefix))  # a deep copy of plain YAML data
    if "duration_us" in variant:
        document["duration_us"] = variant["duration_us"]
    actions = list(_reconfigures(prefix, variant, after, time_us)) + list(_link_changes(before, after, time_us))
    existing = list(document.get("schedule") or [])
    earlier = [action for action in existing if int(action["at_us"]) <= time_us]  # file order: the same time first
    document["schedule"] = earlier + actions + existing[len(earlier):]
    if not document["schedule"]:
        del document["schedule"]
    return document


def _reconfigures(prefix: Mapping[str, Any], variant: Mapping[str, Any], after: Scenario,
                  time_us: int) -> Iterator[dict[str, Any]]:
    old = {node["id"]: node.get("config") or {} for node in prefix.get("nodes") or []}
    for node in variant.get("nodes") or []:
        config = node.get("config") or {}
        changed = {key: value for key, value in config.items() if old.get(node["id"], {}).get(key) != value}
        if changed:
            for replica in after.groups.get(node["id"], (node["id"],)):  # a reconfigure names one process
                yield {"at_us": time_us, "reconfigure": replica, "config": changed}


def _link_changes(before: Scenario, after: Scenario, time_us: int) -> Iterator[dict[str, Any]]:
    seen: set[tuple[str, str]] = set()
    for route in after.routes:
        for source in after.groups.get(route.source, (route.source,)):
            for declared in route.targets:
                for target in after.groups.get(declared, (declared,)):
                    if (source, target) in seen:
                        continue
                    seen.add((source, target))
                    changes = _differences(before.link(source, target), after.link(source, target))
                    if changes:
                        yield {"at_us": time_us, "link": {"from": source, "to": target}, "set": changes}


def _differences(old: LinkProperties, new: LinkProperties) -> dict[str, Any]:
    return {name: getattr(new, name) for name in LINK_FIELDS if getattr(old, name) != getattr(new, name)}


def comparable_records(trace: Path) -> list[bytes]:
    """A trace's records as a branch and its full run (``scheduled.yaml``) share them, byte for byte: every line
    after the header except the ``action`` records, the footer without its ``counts.action`` (the only other place
    the schedule's actions show)."""
    lines = [line for line in trace.read_bytes().split(b"\n")[1:] if line.strip()]
    kept = []
    for line in lines:
        record = json.loads(line)
        if record.get("record") == "action":
            continue
        if record.get("record") == "footer" and "action" in record.get("counts", {}):
            del record["counts"]["action"]
            line = json.dumps(record, sort_keys=True, separators=(",", ":")).encode()
        kept.append(line)
    return kept
