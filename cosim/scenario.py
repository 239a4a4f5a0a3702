"""Scenario files: YAML in, a validated, typed ``Scenario`` (cosim.model) out, or one clear ScenarioError.

Reading is defensive because scenario files come from users: the bytes must be UTF-8, the YAML is loaded
with the safe loader and a bound on its expanded size (alias bombs are refused quickly), duplicate keys are
errors, the document is validated against schemas/scenario.schema.json, and then the checks a schema cannot
express are made (unique ids, routes and links naming existing nodes, the quantum, the lookahead).
Every error names the file, the line where there is one, and the path of the field.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cosim.errors import ScenarioError
from cosim.model import Anomaly, ContainerSpec, LinkProperties, NodeSpec, Route, Scenario, SensorSpec, SinkSpec
from cosim.paths import REPO_ROOT, service_image

SCHEMA_PATH = REPO_ROOT / "schemas" / "scenario.schema.json"

MAX_FILE_BYTES = 1 << 20
MAX_YAML_NODES = 100_000  # after alias expansion; a real scenario has a few hundred
MAX_YAML_DEPTH = 100
MAX_STEPS = 50_000_000
DEFAULT_QUANTUM_US = 1000

FieldPath = tuple[str | int, ...]


# -- reading ------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


def load(path: str | Path) -> Scenario:
    """Read, validate and type a scenario file. Raises ScenarioError with a message for the user."""
    path = Path(path)
    source = str(path)
    data = _read_bytes(path, source)
    text = _decode(data, source)
    document, lines = _parse_yaml(text, source)
    _validate_schema(document, lines, source)
    return _build(document, lines, source, path, hashlib.sha256(data).hexdigest())


def _read_bytes(path: Path, source: str) -> bytes:
    if not path.exists():
        raise ScenarioError(source, "no such file")
    if path.is_dir():
        raise ScenarioError(source, "is a directory, expected a scenario YAML file")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise ScenarioError(source, f"cannot be read: {exc.strerror}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise ScenarioError(source, f"is larger than {MAX_FILE_BYTES // 1024} KiB; a scenario file is small")
    return data


def _decode(data: bytes, source: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ScenarioError(source, f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start})", line=line) from exc
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise ScenarioError(source, "is empty; expected a scenario mapping (name, seed, duration_us, nodes, ...)")
    return text


class _TooDeep(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


class _LineLoader(yaml.SafeLoader):
    """The safe loader, refusing absurd nesting while composing (PyYAML's composer recurses, and its scanner is
    quadratic in the nesting depth, so stopping at MAX_YAML_DEPTH keeps a hostile file cheap). Tags other than
    YAML's own are already refused by the safe loader; duplicate keys are refused by _collect_lines."""

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise _TooDeep(self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _parse_yaml(text: str, source: str) -> tuple[Any, dict[FieldPath, int]]:
    loader = _LineLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            raise ScenarioError(source, "is empty; expected a scenario mapping")
        _check_size(root, source)
        lines: dict[FieldPath, int] = {}
        _collect_lines(root, (), lines, source)
        document = loader.construct_document(root)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = exc.problem or exc.context or "invalid YAML"
        if exc.context and problem.startswith("but "):  # "but found another document" needs its context to read
            problem = f"{exc.context}, {problem}"
        if "could not determine a constructor" in (exc.problem or ""):
            tag = exc.problem.split("tag ")[-1].strip().strip("'").replace("tag:yaml.org,2002:", "!!")
            raise ScenarioError(source, f"unsupported YAML tag {tag}; only plain YAML is allowed", line=line) from exc
        raise ScenarioError(source, f"YAML syntax error: {problem}", line=line) from exc
    except yaml.YAMLError as exc:
        raise ScenarioError(source, f"YAML error: {exc}") from exc
    except _TooDeep as exc:
        raise ScenarioError(source, f"YAML nesting deeper than {MAX_YAML_DEPTH} levels; refused", line=exc.line) from None
    finally:
        loader.dispose()
    if document is None:
        raise ScenarioError(source, "is empty; expected a scenario mapping (name, seed, duration_us, nodes, ...)", line=1)
    if not isinstance(document, dict):
        raise ScenarioError(source, f"top level is {_kind_of(document)}; expected a mapping with name, seed, duration_us, "
                            "nodes", line=1)
    return document, lines


def _kind_of(value: Any) -> str:
    names = {list: "a list", str: "a string", int: "an integer", float: "a number", bool: "true or false"}
    return names.get(type(value), f"a {type(value).__name__}")


def _check_size(root: yaml.Node, source: str) -> None:
    """Refuse documents whose alias-expanded size is absurd (billion laughs), without expanding them."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()  # on the current path: meeting one again means an alias refers to itself

    def size(node: yaml.Node, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise ScenarioError(source, f"YAML nesting deeper than {MAX_YAML_DEPTH} levels; refused",
                                line=node.start_mark.line + 1)
        key = id(node)
        if key in open_nodes:
            raise ScenarioError(source, "YAML alias refers to itself (recursive anchor); refused",
                                line=node.start_mark.line + 1)
        if key in sizes:
            return sizes[key]
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.MappingNode):
            total += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            total += sum(size(item, depth + 1) for item in node.value)
        if total > MAX_YAML_NODES:
            raise ScenarioError(
                source,
                f"YAML expands to more than {MAX_YAML_NODES} values (aliases/anchors); refused",
                line=node.start_mark.line + 1,
            )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    size(root, 0)


def _collect_lines(node: yaml.Node, path: FieldPath, lines: dict[FieldPath, int], source: str) -> None:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key in seen:
                raise ScenarioError(
                    source, f"duplicate key {key!r} (first at line {seen[key]})", line=line, path=_format_path(path)
                )
            if key is not None:
                seen[key] = line
                lines[path + (key,)] = line
                _collect_lines(value_node, path + (key,), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, path + (index,), lines, source)


def _format_path(path: FieldPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _line_for(path: FieldPath, lines: dict[FieldPath, int]) -> int | None:
    while path not in lines and path:
        path = path[:-1]
    return lines.get(path)


# -- schema validation --------------------------------------------------------------------------------


def _strict_integer(checker: Any, instance: Any) -> bool:
    return isinstance(instance, int) and not isinstance(instance, bool)


# JSON Schema counts 1000.0 as an integer; a scenario's times and counts must be written as integers.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _strict_integer),
)


def _validate_schema(document: dict[str, Any], lines: dict[FieldPath, int], source: str) -> None:
    validator = _Validator(schema())
    errors = sorted(validator.iter_errors(document), key=_error_rank)
    if not errors:
        return
    error = _deepest(errors[0])
    path = tuple(error.absolute_path)
    line_path = path
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        unknown = sorted(set(error.instance) - set(_allowed_keys(error)), key=str)
        line_path = path + tuple(str(key) for key in unknown[:1])  # the misspelt key itself (lines has YAML's text)
    elif "propertyNames" in error.absolute_schema_path and isinstance(error.instance, str):
        line_path = path + (error.instance,)  # a bad key name: point at the key
    raise ScenarioError(source, _describe(error, document), line=_line_for(line_path, lines), path=_format_path(path))


def _error_rank(error: jsonschema.ValidationError) -> tuple[Any, ...]:
    # Report the first problem in file order; prefer the most specific one at a place.
    path = tuple(error.absolute_path)
    return (tuple((0, p) if isinstance(p, int) else (1, str(p)) for p in path), -len(error.absolute_schema_path))


def _deepest(error: jsonschema.ValidationError) -> jsonschema.ValidationError:
    """For if/then and allOf, the interesting error is the nested one."""
    while error.context:
        error = sorted(error.context, key=lambda e: (-len(e.absolute_path), len(e.absolute_schema_path)))[0]
    return error


def _allowed_keys(error: jsonschema.ValidationError) -> list[str]:
    return sorted(error.schema.get("properties", {})) if isinstance(error.schema, dict) else []


def _describe(error: jsonschema.ValidationError, document: Any) -> str:
    value = error.instance
    kind = error.validator
    expected = error.validator_value
    if kind == "additionalProperties":
        allowed = _allowed_keys(error)
        extra = sorted(set(value) - set(allowed), key=str) if isinstance(value, dict) else []
        unknown = extra[0] if extra else "?"
        close = difflib.get_close_matches(str(unknown), allowed, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else f"; allowed: {', '.join(allowed)}"
        return f"unknown key {unknown!r}{hint}"
    if kind == "required":
        missing = [name for name in expected if name not in value]
        return f"missing required key {missing[0]!r}" if missing else error.message
    if kind == "type":
        names = expected if isinstance(expected, list) else [expected]
        return f"expected {' or '.join(_type_name(n) for n in names)}, got {_show(value)}"
    if kind in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
        relation = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}[kind]
        return f"expected a value {relation} {expected}, got {_show(value)}"
    if kind == "enum":
        return f"expected one of {', '.join(map(str, expected))}; got {_show(value)}"
    if kind == "const":
        return f"expected {expected!r}, got {_show(value)}"
    if kind == "pattern":
        if "propertyNames" in error.absolute_schema_path:
            return (f"{_show(value)} is not a valid environment variable name: "
                    f"letters, digits and underscores, not starting with a digit")
        if "a-z0-9-" in expected:
            return (f"{_show(value)} is not allowed here: expected lowercase letters, digits and dashes, "
                    f"starting with a letter (pattern {expected})")
        return f"{_show(value)} does not match {expected}"
    if kind in ("minItems", "minLength"):
        return "must not be empty" if expected == 1 else f"needs at least {expected} items"
    if kind == "maxItems":
        return f"has more than {expected} items"
    if kind == "propertyNames":
        return f"invalid name: {error.message}"
    return error.message


def _type_name(name: str) -> str:
    return {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
            "object": "a mapping", "array": "a list", "null": "null"}.get(name, name)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, float) and value.is_integer():
        return f"{value!r} (a float)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- building the typed scenario and the checks the schema cannot express -----------------------------


def _build(doc: dict[str, Any], lines: dict[FieldPath, int], source: str, path: Path, sha256: str) -> Scenario:
    def fail(message: str, at: FieldPath) -> ScenarioError:
        return ScenarioError(source, message, line=_line_for(at, lines), path=_format_path(at))

    duration = doc["duration_us"]
    quantum = doc.get("quantum_us", DEFAULT_QUANTUM_US)
    if quantum > duration:
        if "quantum_us" in doc:
            raise fail(f"quantum {quantum} us is longer than duration_us {duration}", ("quantum_us",))
        raise fail(f"duration {duration} us is shorter than the default quantum_us {quantum}; set quantum_us",
                   ("duration_us",))
    if duration % quantum:
        raise fail(f"quantum {quantum} us does not divide duration_us {duration} (remainder {duration % quantum} us)",
                   ("quantum_us",) if "quantum_us" in doc else ("duration_us",))
    if duration // quantum > MAX_STEPS:
        raise fail(f"{duration // quantum} steps is more than {MAX_STEPS}; use a larger quantum_us", ("quantum_us",))

    default_link_doc = (doc.get("network") or {}).get("default_link", {})
    default_link = LinkProperties(
        latency_us=default_link_doc.get("latency_us", quantum),
        jitter_us=default_link_doc.get("jitter_us", 0),
        loss=float(default_link_doc.get("loss", 0.0)),
    )
    if default_link.latency_us < quantum:
        raise fail(_lookahead_message(default_link.latency_us, quantum), ("network", "default_link", "latency_us"))

    declared: dict[str, int] = {}
    for index, node_doc in enumerate(doc["nodes"]):
        node_id = node_doc["id"]
        if node_id in declared:
            raise fail(f"duplicate node id {node_id!r} (also nodes[{declared[node_id]}])", ("nodes", index, "id"))
        declared[node_id] = index
    # Links may name one replica of a replicated service (`<id>-<n>`) as well as the whole group.
    linkable = set(declared) | {f"{node_doc['id']}-{n}" for node_doc in doc["nodes"]
                                for n in range(1, node_doc.get("replicas", 1) + 1) if node_doc.get("replicas", 1) > 1}

    nodes: list[NodeSpec] = []
    groups: dict[str, tuple[str, ...]] = {}
    for index, node_doc in enumerate(doc["nodes"]):
        at: FieldPath = ("nodes", index)
        links = _links(node_doc, linkable, quantum, at, fail)
        built = _node(node_doc, links, duration, path.resolve().parent, at, fail)
        replicas = node_doc.get("replicas", 1)
        if replicas == 1:
            nodes.append(built)
            continue
        ids = tuple(f"{built.id}-{n}" for n in range(1, replicas + 1))
        for replica_id in ids:
            if replica_id in declared:
                raise fail(f"replica id {replica_id!r} of {built.id!r} collides with another node's id",
                           at + ("replicas",))
        groups[built.id] = ids
        nodes.extend(replace(built, id=replica_id, group=built.id) for replica_id in ids)

    by_id = {node.id: node for node in nodes}
    routes = [_route(route_doc, index, by_id, groups, fail) for index, route_doc in enumerate(doc.get("routes", []))]
    trace = doc.get("trace") or f"traces/{doc['name']}.jsonl"
    return Scenario(
        name=doc["name"], seed=doc["seed"], duration_us=duration, quantum_us=quantum, nodes=tuple(nodes),
        routes=tuple(routes), default_link=default_link, trace=trace, path=path, sha256=sha256,
        description=doc.get("description", ""), groups=groups, advance=doc.get("advance", "next-event"),
    )


def _lookahead_message(latency: int, quantum: int) -> str:
    return (f"latency {latency} us is shorter than the quantum {quantum} us; every link needs latency_us >= quantum_us "
            f"so that nodes can advance a whole step concurrently (lower quantum_us or raise the latency)")


def _links(node_doc: dict[str, Any], linkable: set[str], quantum: int, at: FieldPath, fail: Any) -> dict[str, LinkProperties]:
    links: dict[str, LinkProperties] = {}
    for index, link_doc in enumerate(node_doc.get("links", [])):
        link_at = at + ("links", index)
        target = link_doc["to"]
        if target not in linkable:
            raise fail(f"link to unknown node {target!r}{_suggest(target, linkable)}", link_at + ("to",))
        if target == node_doc["id"]:
            raise fail("a node cannot link to itself", link_at + ("to",))
        if target in links:
            raise fail(f"second link to {target!r}; one link per destination", link_at + ("to",))
        if link_doc["latency_us"] < quantum:
            raise fail(_lookahead_message(link_doc["latency_us"], quantum), link_at + ("latency_us",))
        links[target] = LinkProperties(link_doc["latency_us"], link_doc.get("jitter_us", 0), float(link_doc.get("loss", 0.0)))
    return links


def _node(doc: dict[str, Any], links: dict[str, LinkProperties], duration: int, base_dir: Path, at: FieldPath,
          fail: Any) -> NodeSpec:
    kind = doc["kind"]
    if kind in ("service", "infrastructure"):
        service_dir: Path | None = None
        if "build" in doc:
            service_dir = (base_dir / doc["build"]).resolve()
            if not (service_dir / "Dockerfile").is_file():
                raise fail(f"no Dockerfile in {doc['build']!r} (looked for {service_dir / 'Dockerfile'})", at + ("build",))
        elif "image" not in doc:
            raise fail("needs `build` (a service directory with a Dockerfile) or `image` (a prebuilt image)", at)
        _check_shared_subscriptions(doc, at, fail)
        return ContainerSpec(
            id=doc["id"], kind=kind, links=links, build=service_dir, base_dir=base_dir,
            image=doc["image"] if "image" in doc else service_image(service_dir.name),  # type: ignore[union-attr]
            command=tuple(doc["command"]) if "command" in doc else None,
            local_command=tuple(doc["local_command"]) if "local_command" in doc else None,
            config=doc.get("config", {}),
            environment={k: _env_value(v) for k, v in doc.get("environment", {}).items()},
            read_only=doc.get("read_only", True), port=doc.get("port"),
        )
    if kind == "sensor":
        period = doc["period_us"]
        if doc.get("offset_us", period) > duration:
            raise fail(f"first reading at {doc.get('offset_us', period)} us is after the end of the run ({duration} us)",
                       at + ("offset_us" if "offset_us" in doc else "period_us",))
        anomalies = []
        for index, anomaly in enumerate(doc.get("anomalies", [])):
            if anomaly["at_us"] >= duration:
                raise fail(f"anomaly at {anomaly['at_us']} us is not before the end of the run ({duration} us)",
                           at + ("anomalies", index, "at_us"))
            anomalies.append(Anomaly(anomaly["at_us"], anomaly.get("duration_us", period), float(anomaly.get("severity", 1.0))))
        return SensorSpec(
            id=doc["id"], kind=kind, links=links, model=doc.get("model", "vibration"), period_us=period,
            offset_us=doc.get("offset_us", period), event_type=doc.get("event_type", "inference_request"),
            anomalies=tuple(anomalies),
        )
    return SinkSpec(id=doc["id"], kind=kind, links=links)


def _check_shared_subscriptions(doc: dict[str, Any], at: FieldPath, fail: Any) -> None:
    """An MQTT client's `$share/<group>/<filter>` splits messages over the replicas of <group>: its own id."""
    subscribe = (doc.get("config") or {}).get("subscribe")
    for index, topic_filter in enumerate(subscribe if isinstance(subscribe, list) else []):
        if not isinstance(topic_filter, str) or not topic_filter.startswith("$share/"):
            continue
        group, _, inner = topic_filter[len("$share/"):].partition("/")
        if group != doc["id"] or not inner:
            raise fail(f"{topic_filter!r} shares among the replicas of {group!r}, but this node is {doc['id']!r}; "
                       f"write '$share/{doc['id']}/<filter>' (a plain filter fans out to every subscriber)",
                       at + ("config", "subscribe", index))


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _route(doc: dict[str, Any], index: int, nodes: dict[str, NodeSpec], groups: dict[str, tuple[str, ...]], fail: Any) -> Route:
    at: FieldPath = ("routes", index)
    known = set(nodes) | set(groups)
    source = doc["from"]
    if source not in known:
        raise fail(f"route from unknown node {source!r}{_suggest(source, known)}", at + ("from",))
    sources = groups.get(source, (source,))
    if nodes[sources[0]].kind in ("sink", "infrastructure"):
        raise fail(f"route from {source!r}, {_article(nodes[sources[0]].kind)} node, which emits no events", at + ("from",))
    for position, target in enumerate(doc["to"]):
        if target not in known:
            raise fail(f"route to unknown node {target!r}{_suggest(target, known)}", at + ("to", position))
        kind = nodes[groups.get(target, (target,))[0]].kind
        if kind in ("sensor", "infrastructure"):
            raise fail(f"route to {target!r}, {_article(kind)} node, which takes no events", at + ("to", position))
        if target == source:
            raise fail("a route cannot lead back to its own source", at + ("to", position))
    if len(set(doc["to"])) != len(doc["to"]):
        raise fail("the same destination is listed twice", at + ("to",))
    events = tuple(doc["events"]) if "events" in doc else None
    return Route(source=source, targets=tuple(doc["to"]), events=events)


def _article(word: str) -> str:
    return f"an {word}" if word[:1] in "aeiou" else f"a {word}"


def _suggest(name: str, known: Any) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean {close[0]!r}?" if close else f"; known nodes: {', '.join(sorted(known))}"

