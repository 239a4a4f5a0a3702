"""Routing and links: where an emitted event goes, when it arrives, and whether it is lost.

Each (source, destination) link has its own random generator seeded from the scenario seed and the two node
ids. Every event on a link draws exactly two numbers (jitter, then loss) whatever the link's settings (and
whether or not a partition cuts it), so changing one property does not shift the other's draws.

The schedule changes links while a run goes on (``set_link``, ``partition``, ``heal``): a change applies to events
sent after it; an event already on a link keeps the delivery time it was given when it was sent.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from cosim.model import LinkProperties, Route, Scenario
from cosim.seeds import link_seed

NONE_FILTERED: list[str] = []  # ``split``'s filtered targets when no route has `during:` windows (never mutated)


class Lost(enum.Enum):
    """Why a link drops an event (``value``: the reason as the trace names it)."""

    LOSS = "loss"
    PARTITION = "partition"


@dataclass(frozen=True)
class Delivery:
    dest: str
    time_us: int  # virtual delivery time


@dataclass(frozen=True)
class Drop:
    dest: str
    reason: str


class Router:
    """Where the events of one run go: the routes that match an event (replicated targets taken round-robin) and,
    per link, its delivery time or its loss, drawn from the link's own seeded generator. Routes per (source,
    type) and links per (source, destination) are looked up once; the schedule's changes replace a link's entry."""

    def __init__(self, scenario: Scenario) -> None:
        self.scenario = scenario
        self._rngs: dict[tuple[str, str], random.Random] = {}
        self._round_robin: dict[tuple[int, str], int] = {}
        self._group_of = {node.id: node.group for node in scenario.nodes}
        self._routes: dict[tuple[str, str], list[tuple[int, Route]]] = {}
        self._links: dict[tuple[str, str], LinkProperties] = {}
        # Per (source, type) without a replicated target: the destinations never change, so they are kept.
        self._fixed_dests: dict[tuple[str, str], list[str]] = {}
        # Per link: (its generator's random(), latency, jitter, loss), looked up once (the per-event hot path).
        self._draws: dict[tuple[str, str], tuple[Any, int, int, float]] = {}
        self._windowed = any(route.during is not None for route in scenario.routes)  # some route has `during:`
        self._sides: list[dict[str, int]] = []  # per partition in force: node id -> its group's index

    # -- changes from the schedule ------------------------------------------------------------------

    def set_link(self, source: str, dest: str, changes: Mapping[str, Any]) -> None:
        """Change some properties of the link source -> dest (the others stay) for events sent from now on."""
        key = (source, dest)
        current = self._links.get(key) or self.scenario.link(source, dest)
        changed: dict[str, Any] = {name: float(v) if name == "loss" else v for name, v in changes.items()}
        link = self._links[key] = replace(current, **changed)
        rng = self._rngs.get(key)
        if rng is not None:  # the link's generator goes on where it was
            self._draws[key] = (rng.random, link.latency_us, link.jitter_us, link.loss)

    def partition(self, groups: Iterable[Iterable[str]]) -> None:
        """Links between nodes of different groups drop every event (reason ``partition``) until ``heal``."""
        self._sides.append({node: index for index, group in enumerate(groups) for node in group})

    def heal(self) -> None:
        """End every partition."""
        self._sides.clear()

    # -- checkpoints ------------------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Each used link's generator state and changed properties, the round-robin turns, the partitions."""
        links = []
        for source, dest in sorted(set(self._rngs) | set(self._links)):
            rng = self._rngs.get((source, dest))
            props = self._links.get((source, dest), self.scenario.link(source, dest))
            changed = props != self.scenario.link(source, dest)  # a fork's own links apply where not changed
            links.append({"from": source, "to": dest,
                          "rng": None if rng is None else _state(rng),
                          "set": {"latency_us": props.latency_us, "jitter_us": props.jitter_us, "loss": props.loss}
                          if changed else None})
        return {"links": links, "round_robin": [[index, target, turn] for (index, target), turn
                                                in sorted(self._round_robin.items())],
                "partitions": [dict(sorted(sides.items())) for sides in self._sides]}

    def restore(self, saved: Mapping[str, Any]) -> None:
        for link in saved["links"]:
            key = (link["from"], link["to"])
            props = self._links[key] = (LinkProperties(**link["set"]) if link["set"] is not None
                                        else self.scenario.link(*key))
            if link["rng"] is not None:  # a link already used: its generator goes on where it was
                version, internal, gauss = link["rng"]
                rng = self._rngs[key] = random.Random()
                rng.setstate((version, tuple(internal), gauss))
                self._draws[key] = (rng.random, props.latency_us, props.jitter_us, props.loss)
        self._round_robin = {(index, target): turn for index, target, turn in saved["round_robin"]}
        self._sides = [dict(sides) for sides in saved["partitions"]]

    def _cut(self, source: str, dest: str) -> bool:
        return any(source in sides and dest in sides and sides[source] != sides[dest] for sides in self._sides)

    # -- routing ------------------------------------------------------------------------------------

    def _routes_for(self, source: str, event_type: str) -> list[tuple[int, Route]]:
        routes = self._routes.get((source, event_type))
        if routes is None:
            group = self._group_of.get(source)
            routes = self._routes[(source, event_type)] = [
                (index, route)
                for index, route in enumerate(self.scenario.routes)
                if route.source in (source, group) and (route.events is None or event_type in route.events)
            ]
        return routes

    def destinations(self, source: str, event_type: str) -> list[str]:
        """Node ids the event goes to, in route order; a replicated group picks its next replica round-robin
        (`during:` windows ignored: see ``split``)."""
        fixed = self._fixed_dests.get((source, event_type))
        if fixed is not None:
            return fixed
        if not any(self.scenario.groups.get(target) for _, route in self._routes_for(source, event_type)
                   for target in route.targets):
            fixed = self._fixed_dests[(source, event_type)] = self._split(source, event_type, None)[0]
            return fixed
        return self._split(source, event_type, None)[0]

    def split(self, source: str, event_type: str, sent_us: int) -> tuple[list[str], list[str]]:
        """(destinations, filtered): where an event sent at ``sent_us`` goes, and the targets (as the routes name
        them) of the matching routes whose `during:` windows leave it out."""
        if not self._windowed:
            return self.destinations(source, event_type), NONE_FILTERED
        return self._split(source, event_type, sent_us)

    def _split(self, source: str, event_type: str, sent_us: int | None) -> tuple[list[str], list[str]]:
        dests: list[str] = []
        filtered: list[str] = []
        for index, route in self._routes_for(source, event_type):
            if sent_us is not None and not route.open_at(sent_us):
                filtered.extend(target for target in route.targets if target not in filtered)
                continue
            for target in route.targets:
                replicas = self.scenario.groups.get(target)
                if replicas:
                    turn = self._round_robin.get((index, target), 0)
                    self._round_robin[(index, target)] = turn + 1
                    target = replicas[turn % len(replicas)]
                if target not in dests:
                    dests.append(target)
        return dests, filtered

    # -- links --------------------------------------------------------------------------------------

    def transmit(self, source: str, dest: str, sent_us: int) -> Delivery | Drop:
        """Send one event over the link source -> dest: its delivery, or its loss."""
        at = self.delivery_time(source, dest, sent_us)
        return Delivery(dest, at) if isinstance(at, int) else Drop(dest, at.value)

    def delivery_time(self, source: str, dest: str, sent_us: int) -> int | Lost:
        """``transmit`` without the objects (the coordinator's hot path): the delivery time, or why the event is
        lost."""
        key = (source, dest)
        draws = self._draws.get(key)
        if draws is None:
            rng = self._rngs[key] = random.Random(link_seed(self.scenario.seed, source, dest))
            link = self._links.get(key) or self.scenario.link(source, dest)
            self._links[key] = link
            draws = self._draws[key] = (rng.random, link.latency_us, link.jitter_us, link.loss)
        draw, latency_us, jitter_us, loss = draws
        jitter_draw, loss_draw = draw(), draw()  # always both, whatever the link's settings or a partition
        if self._sides and self._cut(source, dest):
            return Lost.PARTITION
        if loss_draw < loss:
            return Lost.LOSS
        if not jitter_us:
            return sent_us + latency_us
        return sent_us + latency_us + min(int(jitter_draw * (jitter_us + 1)), jitter_us)  # jitter uniform over [0, jitter_us]


def _state(rng: random.Random) -> list[Any]:
    """A generator's state as JSON (``getstate()``'s tuple as lists)."""
    version, internal, gauss = rng.getstate()
    return [version, list(internal), gauss]
