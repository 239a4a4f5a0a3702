"""Trace identity and the first divergence between two traces.

A trace's identity (its hash) covers every byte of every record except the header's ``environment`` block:
facts that legitimately differ between machines and runtimes (image ids, library versions, which runtime
ran it). The diff reports those separately, so "the traces differ" always means the simulation differed.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cosim import protocol
from cosim.errors import CosimError

ENVIRONMENT = "environment"


class TraceReadError(CosimError):
    exit_code = 2


def read_lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise TraceReadError(f"{path}: no such trace file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceReadError(f"{path}: cannot be read as a trace ({exc})") from None


def _parse(path: Path, number: int, line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        raise TraceReadError(f"{path}:{number}: not a JSON record") from None
    if not isinstance(record, dict) or "record" not in record:
        raise TraceReadError(f"{path}:{number}: not a trace record (no 'record' field)")
    return record


def hashed_line(line: str, index: int) -> str:
    """The line as it enters the hash: the header without its environment block."""
    if index == 0 and ENVIRONMENT in line:
        header = json.loads(line)
        header.pop(ENVIRONMENT, None)
        return protocol.canonical(header)
    return line


def trace_hash(path: Path) -> str:
    digest = hashlib.sha256()
    for index, line in enumerate(read_lines(path)):
        digest.update(hashed_line(line, index).encode("utf-8"))
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Divergence:
    index: int  # 0-based record index (= line number - 1)
    a: dict[str, Any] | None  # None: trace A ended here
    b: dict[str, Any] | None
    context: list[str]  # the records before it (identical in both traces)

    @property
    def time_us(self) -> int | None:
        record = self.a or self.b or {}
        return record.get("time_us")

    @property
    def node(self) -> str | None:
        record = self.a or self.b or {}
        return record.get("node") or record.get("source") or record.get("dest")


@dataclass(frozen=True)
class Comparison:
    path_a: Path
    path_b: Path
    divergence: Divergence | None
    environment: dict[str, tuple[Any, Any]]  # field -> (A, B), for fields that differ
    external: tuple[int | None, int | None] = (None, None)  # first record (index) outside virtual time, per trace

    @property
    def identical(self) -> bool:
        return self.divergence is None


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out or {prefix: {}}
    return {prefix: value}


def compare(path_a: Path, path_b: Path, context: int = 3) -> Comparison:
    lines_a, lines_b = read_lines(path_a), read_lines(path_b)
    env_a = _parse(path_a, 1, lines_a[0]).get(ENVIRONMENT, {}) if lines_a else {}
    env_b = _parse(path_b, 1, lines_b[0]).get(ENVIRONMENT, {}) if lines_b else {}
    flat_a, flat_b = _flatten(env_a), _flatten(env_b)
    environment = {key: (flat_a.get(key), flat_b.get(key)) for key in sorted(set(flat_a) | set(flat_b))
                   if flat_a.get(key) != flat_b.get(key)}
    divergence = None
    for index in range(max(len(lines_a), len(lines_b))):
        a = hashed_line(lines_a[index], index) if index < len(lines_a) else None
        b = hashed_line(lines_b[index], index) if index < len(lines_b) else None
        if a != b:
            divergence = Divergence(
                index,
                _parse(path_a, index + 1, lines_a[index]) if a is not None else None,
                _parse(path_b, index + 1, lines_b[index]) if b is not None else None,
                [hashed_line(line, i) for i, line in enumerate(lines_a[max(0, index - context):index],
                                                               start=max(0, index - context))],
            )
            break
    return Comparison(path_a, path_b, divergence, environment, (_first_external(lines_a), _first_external(lines_b)))


EXTERNAL_MARK = '"external":true'  # what an MQTT client writes on a message from a publisher outside virtual time


def _first_external(lines: list[str]) -> int | None:
    return next((index for index, line in enumerate(lines) if EXTERNAL_MARK in line), None)


def print_comparison(comparison: Comparison, out: TextIO, *, label_a: str = "A", label_b: str = "B") -> None:
    if comparison.environment:
        out.write("  environment (not hashed; may differ between machines and runtimes):\n")
        for key, (a, b) in comparison.environment.items():
            out.write(f"    {key}: {label_a}={json.dumps(a)}  {label_b}={json.dumps(b)}\n")
    divergence = comparison.divergence
    if divergence is None:
        out.write("  records: identical\n")
        return
    when = f"virtual time {divergence.time_us} us" if divergence.time_us is not None else "no virtual time"
    out.write(f"  first divergent record: #{divergence.index} (line {divergence.index + 1}), {when}, "
              f"node {divergence.node!r}\n")
    for line in divergence.context:
        out.write(f"      = {line}\n")
    for label, record in ((label_a, divergence.a), (label_b, divergence.b)):
        shown = protocol.canonical(record) if record is not None else "(trace ends here)"
        out.write(f"    {label:>2} {shown}\n")
    external = [f"{label} at line {index + 1}" for label, index in zip((label_a, label_b), comparison.external)
                if index is not None and index <= divergence.index]
    if external:
        out.write(f"  likely source: a message from an MQTT client that cosim does not drive (\"external\": true; "
                  f"{', '.join(external)}): outside virtual time, it lands in whichever window it arrived in\n")
    if divergence.a is not None and divergence.b is not None:
        flat_a, flat_b = _flatten(divergence.a), _flatten(divergence.b)
        fields = [key for key in sorted(set(flat_a) | set(flat_b)) if flat_a.get(key) != flat_b.get(key)]
        width = max((len(key) for key in fields), default=0)
        out.write("  fields that differ:\n")
        for key in fields:
            out.write(f"    {key:<{width}}  {label_a}={json.dumps(flat_a.get(key))}  "
                      f"{label_b}={json.dumps(flat_b.get(key))}\n")
