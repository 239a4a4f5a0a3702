"""The checks a schema cannot express, made while building the typed Scenario (cosim.model) from a schema-valid
document: the quantum divides the duration, every link is at least one quantum long (the lookahead), ids are unique
after replica expansion, links and routes name existing nodes, and defaults are filled in.
"""

from __future__ import annotations

import difflib
from dataclasses import replace
from pathlib import Path
from typing import Any

from cosim import plugins
from cosim.loading import schedule as scheduling
from cosim.loading.positions import FieldPath, Positions
from cosim.model import (
    MEDIUM_DEFAULTS,
    RADIO_MEDIA,
    WIFI_DEFAULT_MODES,
    Anomaly,
    ContainerSpec,
    LinkProperties,
    NodeSpec,
    Resources,
    Route,
    Scenario,
    Segment,
    SensorSpec,
    SinkSpec,
)
from cosim.service_sources import image_name, source_hash

MAX_STEPS = 50_000_000
DEFAULT_QUANTUM_US = 1000


def build(doc: dict[str, Any], positions: Positions, path: Path, sha256: str) -> Scenario:
    """The typed scenario from a schema-valid document, after the checks the schema cannot express."""
    duration = doc["duration_us"]
    quantum = doc.get("quantum_us", DEFAULT_QUANTUM_US)
    if quantum > duration:
        if "quantum_us" in doc:
            raise positions.error(f"quantum {quantum} us is longer than duration_us {duration}", ("quantum_us",))
        raise positions.error(f"duration {duration} us is shorter than the default quantum_us {quantum}; set quantum_us",
                              ("duration_us",))
    if duration % quantum:
        raise positions.error(f"quantum {quantum} us does not divide duration_us {duration} (remainder {duration % quantum} us)",
                              ("quantum_us",) if "quantum_us" in doc else ("duration_us",))
    if duration // quantum > MAX_STEPS:
        raise positions.error(f"{duration // quantum} steps is more than {MAX_STEPS}; use a larger quantum_us", ("quantum_us",))

    default_link_doc = (doc.get("network") or {}).get("default_link", {})
    default_link = LinkProperties(
        latency_us=default_link_doc.get("latency_us", quantum),
        jitter_us=default_link_doc.get("jitter_us", 0),
        loss=float(default_link_doc.get("loss", 0.0)),
    )
    if default_link.latency_us < quantum:
        raise positions.error(_lookahead_message(default_link.latency_us, quantum), ("network", "default_link", "latency_us"))

    declared: dict[str, int] = {}
    for index, node_doc in enumerate(doc["nodes"]):
        node_id = node_doc["id"]
        if node_id in declared:
            raise positions.error(f"duplicate node id {node_id!r} (also nodes[{declared[node_id]}])", ("nodes", index, "id"))
        declared[node_id] = index
    # Links may name one replica of a replicated service (`<id>-<n>`) as well as the whole group.
    linkable = set(declared) | {f"{node_doc['id']}-{n}" for node_doc in doc["nodes"]
                                for n in range(1, node_doc.get("replicas", 1) + 1) if node_doc.get("replicas", 1) > 1}

    nodes: list[NodeSpec] = []
    groups: dict[str, tuple[str, ...]] = {}
    for index, node_doc in enumerate(doc["nodes"]):
        at: FieldPath = ("nodes", index)
        links = _links(node_doc, linkable, quantum, at, positions)
        built = _node(node_doc, links, duration, path.resolve().parent, at, positions)
        replicas = node_doc.get("replicas", 1)
        if replicas == 1:
            nodes.append(built)
            continue
        ids = tuple(f"{built.id}-{n}" for n in range(1, replicas + 1))
        for replica_id in ids:
            if replica_id in declared:
                raise positions.error(f"replica id {replica_id!r} of {built.id!r} collides with another node's id",
                                      at + ("replicas",))
        groups[built.id] = ids
        nodes.extend(replace(built, id=replica_id, group=built.id) for replica_id in ids)

    by_id = {node.id: node for node in nodes}
    routes = [_route(route_doc, index, by_id, groups, positions) for index, route_doc in enumerate(doc.get("routes", []))]
    routes = [_during(route, doc["routes"][index], index, positions) for index, route in enumerate(routes)]
    segments = _segments((doc.get("network") or {}).get("segments", []), by_id, groups, positions)
    trace = doc.get("trace") or f"traces/{doc['name']}.jsonl"
    schedule = scheduling.parse(doc.get("schedule", []), scheduling.NodeFacts({n.id: n.kind for n in nodes}, groups),
                                quantum, duration, positions)
    return Scenario(
        name=doc["name"], seed=doc["seed"], duration_us=duration, quantum_us=quantum, nodes=tuple(nodes),
        routes=tuple(routes), default_link=default_link, trace=trace, path=path, sha256=sha256,
        description=doc.get("description", ""), groups=groups, schedule=schedule,
        advance=doc.get("advance", "next-event"), segments=segments,
    )


def _segments(docs: list[dict[str, Any]], nodes: dict[str, NodeSpec], groups: dict[str, tuple[str, ...]],
              positions: Positions) -> tuple[Segment, ...]:
    """The ns-3 segments: ids unique, nodes known and listed once (a replicated id stands for its replicas), each
    medium's own settings only, defaults filled in (cosim.model.MEDIUM_DEFAULTS)."""
    segments: list[Segment] = []
    seen: dict[str, int] = {}
    known = set(nodes) | set(groups)
    for index, doc in enumerate(docs):
        at: FieldPath = ("network", "segments", index)
        if doc["id"] in seen:
            raise positions.error(f"duplicate segment id {doc['id']!r} (also network.segments[{seen[doc['id']]}])",
                                  at + ("id",))
        seen[doc["id"]] = index
        medium = doc["medium"]
        members: list[str] = []
        for position, name in enumerate(doc["nodes"]):
            if name not in known:
                raise positions.error(f"segment node {name!r} is not a node of the scenario{_suggest(name, known)}",
                                      at + ("nodes", position))
            kind = nodes[groups.get(name, (name,))[0]].kind
            if kind == "infrastructure":
                raise positions.error(f"{name!r} is an infrastructure node: it neither sends nor takes events, so it "
                                      f"cannot be on a segment", at + ("nodes", position))
            for member in groups.get(name, (name,)):
                if member in members:
                    raise positions.error(f"node {member!r} is listed twice on segment {doc['id']!r}",
                                          at + ("nodes", position))
                members.append(member)
        if medium == "p2p" and len(members) != 2:
            raise positions.error(f"a p2p segment joins exactly 2 nodes, not {len(members)}", at + ("nodes",))
        defaults = MEDIUM_DEFAULTS[medium]
        allowed = set(defaults) | ({"positions"} if medium in RADIO_MEDIA else set()) | (
            {"data_mode"} if medium == "wifi" else set())
        for key in doc:
            if key not in ("id", "medium", "nodes") and key not in allowed:
                raise positions.error(f"{key} is not a setting of medium {medium!r} (its settings: "
                                      f"{', '.join(sorted(allowed))})", at + (key,))
        settings = {**defaults, **{key: value for key, value in doc.items() if key in allowed}}
        if "data_rate" in doc and float(doc["data_rate"].rstrip("bpskMG")) <= 0:
            raise positions.error(f"data rate {doc['data_rate']!r} is zero; write e.g. \"250kbps\"", at + ("data_rate",))
        if "data_mode" in doc and settings["rate_manager"] != "constant":
            raise positions.error(f"data_mode applies only to the constant rate manager, not {settings['rate_manager']!r}",
                                  at + ("data_mode",))
        if medium == "wifi" and settings["rate_manager"] == "constant":
            settings.setdefault("data_mode", WIFI_DEFAULT_MODES[settings["standard"]])
        if "positions" in doc:
            if "distance_m" in doc:
                raise positions.error("give either positions or distance_m, not both", at + ("distance_m",))
            del settings["distance_m"]
            placed = doc["positions"]
            for name in placed:
                if name not in members:
                    raise positions.error(f"position for {name!r}, which is not a node of segment {doc['id']!r} "
                                          f"(its nodes: {', '.join(members)})", at + ("positions", name))
            missing = [member for member in members if member not in placed]
            if missing:
                raise positions.error(f"no position for {', '.join(repr(m) for m in missing)}: with positions, every "
                                      f"node of the segment needs one", at + ("positions",))
            settings["positions"] = {member: [float(v) for v in placed[member]] for member in members}
        segments.append(Segment(doc["id"], medium, tuple(members), settings))
    return tuple(segments)


def _during(route: Route, doc: dict[str, Any], index: int, positions: Positions) -> Route:
    """A route's `during:` windows: each [from_us, to_us) non-empty."""
    if "during" not in doc:
        return route
    windows = []
    for position, window in enumerate(doc["during"]):
        if window["to_us"] <= window["from_us"]:
            raise positions.error(f"window [{window['from_us']}, {window['to_us']}) us is empty: to_us must be after "
                                  f"from_us", ("routes", index, "during", position))
        windows.append((window["from_us"], window["to_us"]))
    return replace(route, during=tuple(windows))


def _lookahead_message(latency: int, quantum: int) -> str:
    return (f"latency {latency} us is shorter than the quantum {quantum} us; every link needs latency_us >= quantum_us "
            f"so that nodes can advance a whole step concurrently (lower quantum_us or raise the latency)")


def _links(node_doc: dict[str, Any], linkable: set[str], quantum: int, at: FieldPath,
           positions: Positions) -> dict[str, LinkProperties]:
    links: dict[str, LinkProperties] = {}
    for index, link_doc in enumerate(node_doc.get("links", [])):
        link_at = at + ("links", index)
        target = link_doc["to"]
        if target not in linkable:
            raise positions.error(f"link to unknown node {target!r}{_suggest(target, linkable)}", link_at + ("to",))
        if target == node_doc["id"]:
            raise positions.error("a node cannot link to itself", link_at + ("to",))
        if target in links:
            raise positions.error(f"second link to {target!r}; one link per destination", link_at + ("to",))
        if link_doc["latency_us"] < quantum:
            raise positions.error(_lookahead_message(link_doc["latency_us"], quantum), link_at + ("latency_us",))
        links[target] = LinkProperties(link_doc["latency_us"], link_doc.get("jitter_us", 0), float(link_doc.get("loss", 0.0)))
    return links


MEMORY_UNITS = {"b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MIN_MEMORY_BYTES = 6 << 20  # Docker refuses a smaller limit


def _resources(doc: dict[str, Any], at: FieldPath, positions: Positions) -> Resources:
    """A node's container limits (the schema checked their form; here what it cannot: Docker's minimum memory)."""
    memory = memory_bytes = None
    if "memory" in doc:
        memory = doc["memory"].lower()
        unit = memory[-1] if memory[-1] in MEMORY_UNITS else "b"
        memory_bytes = int(memory.rstrip("bkmg")) * MEMORY_UNITS[unit]
        if memory_bytes < MIN_MEMORY_BYTES:
            raise positions.error(f"memory {doc['memory']!r} is {memory_bytes} bytes, below Docker's minimum limit of 6m",
                                  at + ("memory",))
    return Resources(cpus=doc.get("cpus"), memory=memory, memory_bytes=memory_bytes)


def _node(doc: dict[str, Any], links: dict[str, LinkProperties], duration: int, base_dir: Path, at: FieldPath,
          positions: Positions) -> NodeSpec:
    kind = doc["kind"]
    if kind in ("service", "infrastructure"):
        service_dir: Path | None = None
        digest = ""
        if "build" in doc:
            service_dir = (base_dir / doc["build"]).resolve()
            if not (service_dir / "Dockerfile").is_file():
                raise positions.error(f"no Dockerfile in {doc['build']!r} (looked for {service_dir / 'Dockerfile'})", at + ("build",))
            digest = source_hash(service_dir)
        elif "image" not in doc:
            raise positions.error("needs `build` (a service directory with a Dockerfile) or `image` (a prebuilt image)", at)
        _check_shared_subscriptions(doc, at, positions)
        return ContainerSpec(
            id=doc["id"], kind=kind, links=links, build=service_dir, source_sha256=digest, base_dir=base_dir,
            image=doc["image"] if "image" in doc else image_name(service_dir, digest),  # type: ignore[arg-type]  # set together with build
            command=tuple(doc["command"]) if "command" in doc else None,
            local_command=tuple(doc["local_command"]) if "local_command" in doc else None,
            config=doc.get("config", {}),
            environment={k: _env_value(v) for k, v in doc.get("environment", {}).items()},
            read_only=doc.get("read_only", True), port=doc.get("port"),
            placement=tuple(doc.get("placement", ())),
            resources=_resources(doc["resources"], at + ("resources",), positions) if "resources" in doc else None,
        )
    if kind == "sensor":
        model = _sensor_model(doc, at, positions)
        period = doc["period_us"]
        if doc.get("offset_us", period) > duration:
            raise positions.error(f"first reading at {doc.get('offset_us', period)} us is after the end of the run ({duration} us)",
                                  at + ("offset_us" if "offset_us" in doc else "period_us",))
        anomalies = []
        for index, anomaly in enumerate(doc.get("anomalies", [])):
            if anomaly["at_us"] >= duration:
                raise positions.error(f"anomaly at {anomaly['at_us']} us is not before the end of the run ({duration} us)",
                                      at + ("anomalies", index, "at_us"))
            anomalies.append(Anomaly(anomaly["at_us"], anomaly.get("duration_us", period), float(anomaly.get("severity", 1.0))))
        return SensorSpec(
            id=doc["id"], kind=kind, links=links, model=model.name, period_us=period,
            offset_us=doc.get("offset_us", period), event_type=doc.get("event_type", model.event_type),
            anomalies=tuple(anomalies),
        )
    return SinkSpec(id=doc["id"], kind=kind, links=links)


def _sensor_model(doc: dict[str, Any], at: FieldPath, positions: Positions) -> plugins.SensorPlugin:
    """The plug-in a sensor's ``model`` names (cosim.plugins)."""
    name = doc.get("model", plugins.DEFAULT_SENSOR_MODEL)
    models = plugins.sensor_models()
    if name not in models:
        raise positions.error(f"unknown sensor model {name!r}; known: {', '.join(sorted(models))}", at + ("model",))
    return models[name]


def _check_shared_subscriptions(doc: dict[str, Any], at: FieldPath, positions: Positions) -> None:
    """An MQTT client's `$share/<group>/<filter>` splits messages over the replicas of <group>: its own id."""
    subscribe = (doc.get("config") or {}).get("subscribe")
    for index, topic_filter in enumerate(subscribe if isinstance(subscribe, list) else []):
        if not isinstance(topic_filter, str) or not topic_filter.startswith("$share/"):
            continue
        group, _, inner = topic_filter[len("$share/"):].partition("/")
        if group != doc["id"] or not inner:
            raise positions.error(f"{topic_filter!r} shares among the replicas of {group!r}, but this node is {doc['id']!r}; "
                                  f"write '$share/{doc['id']}/<filter>' (a plain filter fans out to every subscriber)",
                                  at + ("config", "subscribe", index))


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _route(doc: dict[str, Any], index: int, nodes: dict[str, NodeSpec], groups: dict[str, tuple[str, ...]],
           positions: Positions) -> Route:
    at: FieldPath = ("routes", index)
    known = set(nodes) | set(groups)
    source = doc["from"]
    if source not in known:
        raise positions.error(f"route from unknown node {source!r}{_suggest(source, known)}", at + ("from",))
    sources = groups.get(source, (source,))
    if nodes[sources[0]].kind in ("sink", "infrastructure"):
        raise positions.error(f"route from {source!r}, {_article(nodes[sources[0]].kind)} node, which emits no events", at + ("from",))
    for position, target in enumerate(doc["to"]):
        if target not in known:
            raise positions.error(f"route to unknown node {target!r}{_suggest(target, known)}", at + ("to", position))
        kind = nodes[groups.get(target, (target,))[0]].kind
        if kind in ("sensor", "infrastructure"):
            raise positions.error(f"route to {target!r}, {_article(kind)} node, which takes no events", at + ("to", position))
        if target == source:
            raise positions.error("a route cannot lead back to its own source", at + ("to", position))
    if len(set(doc["to"])) != len(doc["to"]):
        raise positions.error("the same destination is listed twice", at + ("to",))
    events = tuple(doc["events"]) if "events" in doc else None
    return Route(source=source, targets=tuple(doc["to"]), events=events)


def _article(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _suggest(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known nodes: {', '.join(sorted(known))}"

