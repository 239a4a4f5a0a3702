"""Trace identity and the first divergence between two traces.

A trace's identity (its hash) covers every byte of every record except the header's ``environment`` block:
facts that legitimately differ between machines and runtimes (image ids, library versions, which runtime
ran it). The diff reports those separately, so "the traces differ" always means the simulation differed.
Compared *across advance modes* (fixed vs next-event), the header's ``advance`` and the footer's ``executed``
counts (what the step loop did) are left out too: every other byte must be the same.

Both follow the file's bytes: records are split on LF (0x0A) only (never on U+2028, U+2029, U+0085 or CR, which
may appear raw inside a record's strings), and a CR before the LF or a missing final LF is a difference.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from cosim import protocol
from cosim.errors import TraceReadError

ENVIRONMENT = "environment"


@dataclass(frozen=True)
class TraceLines:
    """A trace file as its records' lines: split on LF (0x0A) only, bytes kept as they are."""

    lines: list[bytes]
    final_newline: bool  # the file ends with LF (as every trace cosim writes does)


def read_lines(path: Path) -> TraceLines:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise TraceReadError(f"{path}: no such trace file") from None
    except OSError as exc:
        raise TraceReadError(f"{path}: cannot be read as a trace ({exc.strerror})") from None
    if not data:
        return TraceLines([], False)
    lines = data.split(b"\n")
    final_newline = lines[-1] == b""
    if final_newline:
        lines.pop()
    return TraceLines(lines, final_newline)


def _parse(path: Path, number: int, line: bytes) -> dict[str, Any]:
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is a ValueError too
        raise TraceReadError(f"{path}:{number}: not a JSON record") from None
    if not isinstance(record, dict) or "record" not in record:
        raise TraceReadError(f"{path}:{number}: not a trace record (no 'record' field)")
    return record


MODE_FIELDS = {"header": ("advance",), "footer": ("executed",)}  # what may differ between advance modes
_FOOTER_MARK = b'"record":"footer"'


def hashed_line(line: bytes, index: int, *, across_modes: bool = False) -> bytes:
    """The line as it enters the hash: the header without its environment block (and, ``across_modes``, the
    header without its advance mode and the footer without its executed counts). A record that is not canonical
    JSON enters as it is, so that re-encoding cannot hide a difference in its bytes."""
    if index == 0 and (ENVIRONMENT.encode() in line or across_modes):
        drop: tuple[str, ...] = (ENVIRONMENT, *MODE_FIELDS["header"]) if across_modes else (ENVIRONMENT,)
    elif across_modes and _FOOTER_MARK in line:
        drop = MODE_FIELDS["footer"]
    else:
        return line
    try:
        record = json.loads(line.decode("utf-8"))
    except ValueError:
        return line
    if not isinstance(record, dict) or protocol.canonical(record).encode("utf-8") != line:
        return line
    for name in drop:
        record.pop(name, None)
    return protocol.canonical(record).encode("utf-8")


def trace_hash(path: Path, *, across_modes: bool = False) -> str:
    """SHA-256 of the file's bytes with the header's environment block removed (``across_modes``: and the fields
    that depend on the advance mode)."""
    trace = read_lines(path)
    digest = hashlib.sha256()
    for index, line in enumerate(trace.lines):
        if index:
            digest.update(b"\n")
        digest.update(hashed_line(line, index, across_modes=across_modes))
    if trace.final_newline:
        digest.update(b"\n")
    return digest.hexdigest()


@dataclass(frozen=True)
class Divergence:
    index: int  # 0-based record index (= line number - 1)
    a: dict[str, Any] | None  # None: trace A ended here
    b: dict[str, Any] | None
    context: list[str]  # the records before it (identical in both traces)
    bytes_a: bytes | None = None  # the raw lines, when the records parse equal but their bytes differ
    bytes_b: bytes | None = None
    note: str | None = None  # what differs when it is not a record's content (line ends, the final newline)

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


def compare(path_a: Path, path_b: Path, context: int = 3, *, across_modes: bool = False) -> Comparison:
    trace_a, trace_b = read_lines(path_a), read_lines(path_b)
    lines_a, lines_b = trace_a.lines, trace_b.lines
    env_a = _parse(path_a, 1, lines_a[0]).get(ENVIRONMENT, {}) if lines_a else {}
    env_b = _parse(path_b, 1, lines_b[0]).get(ENVIRONMENT, {}) if lines_b else {}
    flat_a, flat_b = _flatten(env_a), _flatten(env_b)
    environment = {key: (flat_a.get(key), flat_b.get(key)) for key in sorted(set(flat_a) | set(flat_b))
                   if flat_a.get(key) != flat_b.get(key)}

    def before(index: int) -> list[str]:
        start = max(0, index - context)
        return [hashed_line(line, i, across_modes=across_modes).decode("utf-8", "replace")
                for i, line in enumerate(lines_a[start:index], start)]

    divergence = None
    for index in range(max(len(lines_a), len(lines_b))):
        a = hashed_line(lines_a[index], index, across_modes=across_modes) if index < len(lines_a) else None
        b = hashed_line(lines_b[index], index, across_modes=across_modes) if index < len(lines_b) else None
        if a != b:
            record_a = _parse(path_a, index + 1, lines_a[index]) if a is not None else None
            record_b = _parse(path_b, index + 1, lines_b[index]) if b is not None else None
            same_content = record_a is not None and record_a == record_b
            divergence = Divergence(
                index, record_a, record_b, before(index),
                bytes_a=a if same_content else None, bytes_b=b if same_content else None,
                note="the records are equal as JSON but their bytes differ" if same_content else None)
            break
    if divergence is None and trace_a.final_newline != trace_b.final_newline:
        without = "B" if trace_a.final_newline else "A"
        divergence = Divergence(len(lines_a), None, None, before(len(lines_a)),
                                note=f"trace {without} does not end with a newline (its last record is cut short)")
    return Comparison(path_a, path_b, divergence, environment, (_first_external(lines_a), _first_external(lines_b)))


EXTERNAL_MARK = b'"external":true'  # what an MQTT client writes on a message from a publisher outside virtual time


def _first_external(lines: list[bytes]) -> int | None:
    return next((index for index, line in enumerate(lines) if EXTERNAL_MARK in line), None)


def _describe(divergence: Divergence, label_a: str, label_b: str) -> list[str]:
    """What the divergent record is: its kind (per trace when they differ), its virtual time, its node (if any)."""
    kinds = [(label, record.get("record")) for label, record in ((label_a, divergence.a), (label_b, divergence.b))
             if record is not None]
    if len({kind for _, kind in kinds}) == 1:
        parts = [f"{kinds[0][1]!r} record"]
    else:
        parts = [f"{kind!r} record in {label}" for label, kind in kinds]
    if divergence.a is not None or divergence.b is not None:
        parts.append(f"virtual time {divergence.time_us} us" if divergence.time_us is not None else "no virtual time")
    if divergence.node is not None:
        parts.append(f"node {divergence.node!r}")
    return parts


def print_comparison(comparison: Comparison, out: TextIO, *, label_a: str = "A", label_b: str = "B") -> None:
    if comparison.environment:
        out.write("  environment (not hashed; may differ between machines and runtimes):\n")
        for key, (a, b) in comparison.environment.items():
            out.write(f"    {key}: {label_a}={json.dumps(a)}  {label_b}={json.dumps(b)}\n")
    divergence = comparison.divergence
    if divergence is None:
        out.write("  records: identical\n")
        return
    out.write(f"  first divergent record: #{divergence.index} (line {divergence.index + 1})"
              + "".join(f", {part}" for part in _describe(divergence, label_a, label_b)) + "\n")
    for line in divergence.context:
        out.write(f"      = {line}\n")
    if divergence.note:
        out.write(f"  {divergence.note}\n")
    if divergence.bytes_a is not None and divergence.bytes_b is not None:
        for label, raw in ((label_a, divergence.bytes_a), (label_b, divergence.bytes_b)):
            out.write(f"    {label:>2} {raw!r}\n")
        return
    if divergence.a is None and divergence.b is None:
        return
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
