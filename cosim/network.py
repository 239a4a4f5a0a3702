"""Routing and links: where an emitted event goes, when it arrives, and whether it is lost.

Each (source, destination) link has its own random generator seeded from the scenario seed and the two node
ids. Every event on a link draws exactly two numbers (jitter, then loss) whatever the link's settings, so
changing one property does not shift the other's draws.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

from cosim.model import LinkProperties, Route, Scenario
from cosim.seeds import link_seed


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
    type) and links per (source, destination) are looked up once: the scenario is immutable."""

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
        """Node ids the event goes to, in route order; a replicated group picks its next replica round-robin."""
        fixed = self._fixed_dests.get((source, event_type))
        if fixed is not None:
            return fixed
        if not any(self.scenario.groups.get(target) for _, route in self._routes_for(source, event_type)
                   for target in route.targets):
            fixed = self._fixed_dests[(source, event_type)] = self._destinations(source, event_type)
            return fixed
        return self._destinations(source, event_type)

    def _destinations(self, source: str, event_type: str) -> list[str]:
        dests: list[str] = []
        for index, route in self._routes_for(source, event_type):
            for target in route.targets:
                replicas = self.scenario.groups.get(target)
                if replicas:
                    turn = self._round_robin.get((index, target), 0)
                    self._round_robin[(index, target)] = turn + 1
                    target = replicas[turn % len(replicas)]
                if target not in dests:
                    dests.append(target)
        return dests

    def transmit(self, source: str, dest: str, sent_us: int) -> Delivery | Drop:
        """Send one event over the link source -> dest: its delivery, or its loss."""
        at = self.delivery_time(source, dest, sent_us)
        return Drop(dest, "loss") if at is None else Delivery(dest, at)

    def delivery_time(self, source: str, dest: str, sent_us: int) -> int | None:
        """``transmit`` without the objects (the coordinator's hot path): the delivery time, or None when lost."""
        draws = self._draws.get((source, dest))
        if draws is None:
            rng = self._rngs[(source, dest)] = random.Random(link_seed(self.scenario.seed, source, dest))
            link = self._links[(source, dest)] = self.scenario.link(source, dest)
            draws = self._draws[(source, dest)] = (rng.random, link.latency_us, link.jitter_us, link.loss)
        draw, latency_us, jitter_us, loss = draws
        jitter_draw, loss_draw = draw(), draw()  # always both, whatever the link's settings
        if loss_draw < loss:
            return None
        return sent_us + latency_us + min(int(jitter_draw * (jitter_us + 1)), jitter_us)  # jitter uniform over [0, jitter_us]
