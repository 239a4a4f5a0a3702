"""Subscriptions, fan-out and shared: which client keeps which message (docs/protocol.md §12).

A plain filter fans out: every subscriber keeps every matching message. A filter ``$share/<group>/<filter>``,
where ``<group>`` is the id of a replicated service (its replicas are ``<group>-<n>``), is subscribed at the broker
as plain ``<filter>`` (the broker's own ``$share`` would pick a replica by timing), and each message is kept by
exactly one replica: number ``sha256(node \\x1f node_seq) mod n`` of the group's sorted replica ids.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from paho.mqtt.client import topic_matches_sub

SHARE_PREFIX = "$share/"


@dataclass(frozen=True)
class Subscription:
    topic_filter: str  # as subscribed at the broker
    share: str | None  # the share group of a `$share/<group>/<filter>` subscription, else None (fan-out)

    def text(self) -> str:
        """As it was written in the config."""
        return self.topic_filter if self.share is None else f"{SHARE_PREFIX}{self.share}/{self.topic_filter}"


def parse_subscriptions(filters: Iterable[str]) -> list[Subscription]:
    out = []
    for text in filters:
        if text.startswith(SHARE_PREFIX):
            group, _, inner = text[len(SHARE_PREFIX):].partition("/")
            if not group or not inner or any(c in group for c in "+#"):
                raise ValueError(f"bad shared subscription {text!r}: expected $share/<group>/<filter>")
            out.append(Subscription(inner, group))
        else:
            out.append(Subscription(text, None))
    return out


def share_owner(members: list[str], node: str, node_seq: int) -> str:
    """The member of a share group that keeps message (node, node_seq): a stable hash, no broker timing."""
    digest = hashlib.sha256(f"{node}\x1f{node_seq}".encode()).digest()
    return sorted(members)[int.from_bytes(digest[:8], "big") % len(members)]


class Subscriptions:
    """This client's subscriptions and, once the barrier group is known, each share group's replicas."""

    def __init__(self, node_id: str, filters: Iterable[str]) -> None:
        self.node_id = node_id
        self.items = parse_subscriptions(filters)
        self.share_members: dict[str, list[str]] = {}  # share group -> its replicas (sorted), set at the first step

    def topic_filters(self) -> set[str]:
        """The filters as subscribed at the broker."""
        return {s.topic_filter for s in self.items}

    def resolve(self, members: set[str]) -> None:
        """Each share group's replicas among the barrier group's ``members`` (once); we must be one of them."""
        if self.share_members:
            return
        groups = {}
        for share in sorted({s.share for s in self.items if s.share is not None}):
            replicas = sorted(m for m in members if m == share or re.fullmatch(re.escape(share) + r"-[0-9]+", m))
            if self.node_id not in replicas:
                raise ValueError(f"subscription $share/{share}/...: {share!r} must be the id of this replicated service "
                                 f"(this node is {self.node_id!r}; the broker's clients are {sorted(members)})")
            groups[share] = replicas
        self.share_members = groups

    def keeps(self, topic: str, node: str, node_seq: int) -> bool:
        """Fan-out filters always keep a message; shared filters keep it on one replica of the share group."""
        for sub in self.items:
            if not topic_matches_sub(sub.topic_filter, topic):
                continue
            if sub.share is None:
                return True
            if share_owner(self.share_members[sub.share], node, node_seq) == self.node_id:
                return True
        return False
