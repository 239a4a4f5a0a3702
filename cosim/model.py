"""The scenario model: the frozen, typed form of a scenario file that the rest of cosim reads (what the scenario
declares; the live proxies the coordinator drives are in cosim.nodes). Light on purpose: no YAML or schema
library; reading and validating a file is cosim.loading's job.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cosim.schedule import Schedule


@dataclass(frozen=True)
class LinkProperties:
    latency_us: int
    jitter_us: int = 0
    loss: float = 0.0


@dataclass(frozen=True)
class Anomaly:
    at_us: int
    duration_us: int
    severity: float


@dataclass(frozen=True)
class NodeSpec:
    """A node as the scenario declares it (the live proxies the coordinator drives are in cosim.nodes); replicas
    are already expanded into distinct nodes."""

    id: str
    kind: str  # service | infrastructure | sensor | sink
    links: dict[str, LinkProperties] = field(default_factory=dict)
    group: str | None = None  # the declared id of a replicated service


@dataclass(frozen=True)
class Resources:
    """Limits on a node's container (the docker and swarm runtimes; the local runtime enforces ``memory`` with a
    memory cgroup where it can, see cosim.runtimes.memory_cgroup, and ignores ``cpus``)."""

    cpus: float | None = None  # CPU time as a number of CPUs
    memory: str | None = None  # as Docker writes it, lower case: "64m"
    memory_bytes: int | None = None


@dataclass(frozen=True)
class ContainerSpec(NodeSpec):
    """A declared service (speaks the protocol) or infrastructure node (e.g. the broker): one container each."""

    build: Path | None = None  # the service directory (with its Dockerfile); None: a prebuilt `image`
    source_sha256: str = ""  # the content hash of `build` (cosim.service_sources.source_hash); "" without one
    base_dir: Path = Path()  # the scenario file's directory (where a local_command runs without `build`)
    image: str = ""
    command: tuple[str, ...] | None = None
    local_command: tuple[str, ...] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    read_only: bool = True
    port: int | None = None  # infrastructure only
    placement: tuple[str, ...] = ()  # Swarm placement constraints (the swarm runtime only)
    resources: Resources | None = None  # container limits (docker, swarm)

    @property
    def speaks_protocol(self) -> bool:
        return self.kind == "service"


@dataclass(frozen=True)
class SensorSpec(NodeSpec):
    """A declared in-process sensor: a reading every ``period_us`` from ``offset_us``, anomalies injected. ``model``
    names the plug-in that makes its readings (cosim.plugins); ``event_type`` is filled in from it when not given."""

    model: str = ""
    period_us: int = 0
    offset_us: int = 0
    event_type: str = ""
    anomalies: tuple[Anomaly, ...] = ()

    def anomaly_at(self, time_us: int) -> Anomaly | None:
        """The injected anomaly a reading at ``time_us`` falls in, if any."""
        for anomaly in self.anomalies:
            if anomaly.at_us <= time_us < anomaly.at_us + anomaly.duration_us:
                return anomaly
        return None


@dataclass(frozen=True)
class SinkSpec(NodeSpec):
    """A declared in-process sink: keeps what reaches it."""


@dataclass(frozen=True)
class Route:
    source: str
    targets: tuple[str, ...]  # declared ids: a replicated group or a single node
    events: tuple[str, ...] | None  # None: every event type
    during: tuple[tuple[int, int], ...] | None = None  # windows [from_us, to_us) of sent time; None: always

    def open_at(self, time_us: int) -> bool:
        """Whether an event sent at ``time_us`` may take this route (`during:`)."""
        return self.during is None or any(start <= time_us < end for start, end in self.during)


ADVANCE_MODES = ("next-event", "fixed")

# Each medium's settings and their defaults (docs/segments.md); the worker is handed every one of them.
RADIO_MEDIA = ("wifi", "lrwpan")
MEDIUM_DEFAULTS: dict[str, dict[str, Any]] = {
    "csma": {"data_rate": "100Mbps", "delay_us": 2, "queue_packets": 100},
    "p2p": {"data_rate": "10Mbps", "delay_us": 1000, "queue_packets": 100},
    "wifi": {"standard": "802.11a", "rate_manager": "constant", "mode": "ap", "propagation": "log-distance",
             "tx_power_dbm": 16.0206, "distance_m": 10, "range_m": 250},
    "lrwpan": {"propagation": "log-distance", "tx_power_dbm": 0, "distance_m": 10, "range_m": 250},
}
# WiFi's constant rate manager: the default data mode of each standard (the lowest rate it has).
WIFI_DEFAULT_MODES = {"802.11a": "OfdmRate6Mbps", "802.11b": "DsssRate1Mbps", "802.11g": "ErpOfdmRate6Mbps",
                      "802.11n-2.4GHz": "HtMcs0", "802.11n-5GHz": "HtMcs0", "802.11ac": "VhtMcs0",
                      "802.11ax-5GHz": "HeMcs0"}


@dataclass(frozen=True)
class Segment:
    """A network segment simulated by ns-3 (cosim.segments): its medium, its nodes in file order (the first is the
    access point / PAN coordinator of a radio) and the medium's settings with every default filled in."""

    id: str
    medium: str  # csma | p2p | wifi | lrwpan
    nodes: tuple[str, ...]
    settings: dict[str, Any] = field(default_factory=dict)

    def wire(self) -> dict[str, Any]:
        """The segment as the worker's init takes it (and the trace header records it)."""
        return {"id": self.id, "medium": self.medium, "nodes": list(self.nodes), **self.settings}


@dataclass(frozen=True)
class Scenario:
    """A loaded, validated scenario (frozen): its nodes (replicas expanded), routes and links, and the seed,
    duration and quantum of virtual time. ``sha256`` is the scenario file's hash, named in every trace."""

    name: str
    seed: int
    duration_us: int
    quantum_us: int
    nodes: tuple[NodeSpec, ...]
    routes: tuple[Route, ...]
    default_link: LinkProperties
    trace: str
    path: Path
    sha256: str
    description: str = ""
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)  # replicated id -> replica ids
    schedule: Schedule = field(default_factory=Schedule)  # changes at set virtual times (cosim.schedule)
    advance: str = "next-event"  # "next-event": skip quanta in which nothing can happen; "fixed": step every quantum
    segments: tuple[Segment, ...] = ()  # network segments simulated by ns-3, in file order

    def segment_between(self, source: str, dest: str) -> Segment | None:
        """The segment an event from ``source`` to ``dest`` travels on: the first in file order that has both."""
        for segment in self.segments:
            if source in segment.nodes and dest in segment.nodes:
                return segment
        return None

    @property
    def steps(self) -> int:
        return self.duration_us // self.quantum_us

    def node(self, node_id: str) -> NodeSpec:
        for node in self.nodes:
            if node.id == node_id:
                return node
        raise KeyError(node_id)

    @property
    def containers(self) -> tuple[ContainerSpec, ...]:
        return tuple(node for node in self.nodes if isinstance(node, ContainerSpec))

    def link(self, source: str, target: str) -> LinkProperties:
        """The link an event takes from ``source`` to ``target`` (a replica's group links apply)."""
        node = self.node(source)
        target_node = self.node(target)
        for name in (target, target_node.group):
            if name is not None and name in node.links:
                return node.links[name]
        return self.default_link
