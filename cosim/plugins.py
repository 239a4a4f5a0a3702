"""Plug-ins: what an application adds to cosim without the core knowing it.

A sensor in a scenario names its model (``model: vibration``); the model is looked up here, by name. A plug-in
registers a ``SensorPlugin``: what one reading of such a sensor carries, the default type of its events, and what
the application adds to a run's summary and HTML report (asked only for a scenario that uses the model). The plug-ins shipped with
cosim (cosim.edge, the demo application) are imported on the first lookup; they register themselves on import.
"""

from __future__ import annotations

import importlib
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TextIO

from cosim.model import Scenario, SensorSpec

if TYPE_CHECKING:
    from cosim.trace import Trace

Event = Mapping[str, Any]  # a delivered event as a sink got it (cosim.core.contracts.Input is one)

# Shipped with cosim; imported (and so registered) on the first lookup.
BUILTIN = ("cosim.edge",)
# What a sensor without `model:` is: scenario files written before models were plug-ins stay valid (and their
# SHA-256, which names every trace, unchanged).
DEFAULT_SENSOR_MODEL = "vibration"


@dataclass(frozen=True)
class ReportParts:
    """What a plug-in adds to `invoke report`'s page (HTML fragments): beside the per-link latencies, and sections
    of its own after the drops."""

    latency: list[str]
    sections: list[str]


@dataclass(frozen=True)
class SensorPlugin:
    """A sensor model: ``reading(rng, severity)`` gives the application's fields of one reading (``severity`` is
    that of the injected anomaly the reading falls in, 0.0 outside any); cosim adds the sensor, window, sampling
    time and ground truth. ``summary(scenario, sink_events, out)``, if given, adds lines to a run's summary;
    ``report(trace, scenario)``, if given, parts to its HTML report (None: nothing to add for this run)."""

    name: str
    event_type: str  # the type of its readings' events unless the scenario's `event_type` says otherwise
    reading: Callable[[random.Random, float], dict[str, Any]]
    summary: Callable[[Scenario, Sequence[Event], TextIO], None] | None = None
    report: Callable[[Trace, Scenario], ReportParts | None] | None = None


_registered: dict[str, SensorPlugin] = {}
_builtins_loaded = False


def register(plugin: SensorPlugin) -> None:
    if plugin.name in _registered and _registered[plugin.name] != plugin:
        raise ValueError(f"sensor model {plugin.name!r} is registered twice")  # a programming error, not the user's
    _registered[plugin.name] = plugin


def sensor_models() -> dict[str, SensorPlugin]:
    """Every registered sensor model by name (the built-in plug-ins imported first)."""
    global _builtins_loaded
    if not _builtins_loaded:
        _builtins_loaded = True
        for module in BUILTIN:
            importlib.import_module(module)
    return dict(_registered)


def sensor_model(name: str) -> SensorPlugin:
    """The model ``name``; KeyError if none is registered under it (the loader has already refused such a file)."""
    return sensor_models()[name]


def used_by(scenario: Scenario) -> list[SensorPlugin]:
    """The sensor models a scenario's sensors use, each once, by name."""
    names = {node.model for node in scenario.nodes if isinstance(node, SensorSpec)}
    return [sensor_model(name) for name in sorted(names)]


def _uniform_reading(rng: random.Random, severity: float) -> dict[str, Any]:
    return {"value": rng.random(), "severity": severity}


# A generic model that is part of cosim itself: one seeded uniform value per reading (and the injected severity).
# For workloads that need a sensor's timing but no application signal, such as the benchmark's sparse workload.
register(SensorPlugin(name="uniform", event_type="reading", reading=_uniform_reading))
