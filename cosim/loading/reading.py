"""Reading a scenario file defensively: bounded size, UTF-8, YAML with the safe loader, nesting and alias-expanded
size bounded (alias bombs are refused quickly), duplicate keys refused, and the line of every field recorded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cosim.errors import ScenarioError
from cosim.loading.positions import FieldPath, Positions, format_path

MAX_FILE_BYTES = 1 << 20
MAX_YAML_NODES = 100_000  # after alias expansion; a real scenario has a few hundred
MAX_YAML_DEPTH = 100


def read_bytes(path: Path, source: str) -> bytes:
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


def decode(data: bytes, source: str) -> str:
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
            return super().compose_node(parent, index)  # type: ignore[return-value, unused-ignore]  # yaml's base class says Node | None; a node is always composed here
        finally:
            self._depth -= 1


def parse_yaml(text: str, source: str) -> tuple[dict[str, Any], Positions]:
    """The document (a mapping) and where each of its fields is."""
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
        if exc.problem and "could not determine a constructor" in exc.problem:
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
    return document, Positions(source, lines)


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
                    source, f"duplicate key {key!r} (first at line {seen[key]})", line=line, path=format_path(path)
                )
            if key is not None:
                seen[key] = line
                lines[path + (key,)] = line
                _collect_lines(value_node, path + (key,), lines, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _collect_lines(item, path + (index,), lines, source)
