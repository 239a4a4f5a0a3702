"""The JSONL trace: a header, one record per event sent, delivered, dropped, unroutable or filtered and per action of
the schedule, then a footer.

Canonical JSON (sorted keys, fixed separators), so the same run gives the same bytes. Nothing measured on the
wall clock belongs here (that goes to the metrics file). A run that fails ends with an ``error`` record
instead of the footer; everything before it is kept.

Writing: ``TraceWriter``. Reading: ``read(path)`` gives a ``Trace`` of typed, frozen records (the format is
documented in docs/trace-format.md), and ``Trace.to_dataframe()`` a pandas DataFrame (``cosim[analysis]``).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from cosim import __version__, protocol
from cosim.environment import dependency_versions
from cosim.errors import ToolError, TraceReadError, TraceWriteError

if TYPE_CHECKING:
    import pandas

    from cosim.model import Scenario

FORMAT = "cosim-trace/1"
RECORD_KINDS = ("header", "sent", "delivered", "dropped", "unroutable", "filtered", "action", "error", "footer")
OPTIONAL_COUNTS = ("filtered", "action")  # counted in the footer only once a run has one (older traces unchanged)
BUFFER_CHARS = 1 << 16  # the writer's buffer of complete lines


SENT: Final = "sent"  # the queued records' kinds (QueueEntry)
UNROUTABLE: Final = "unroutable"
DROPPED: Final = "dropped"
DELIVERED: Final = "delivered"

# An event's payload as the trace holds it until its records are written: [data, its canonical JSON or None]. The
# JSON is encoded once, by the first ``drain`` that needs it; the event's sent, delivered and dropped records share
# it. (A list, not an object: the coordinator makes one per event.)
PayloadCell = list


# The event records queued for ``TraceWriter.queue``: flat tuples, the kind first, then the payload cell and the
# record's other values, one type per kind. The type checker holds every tuple built to its kind's fields and narrows
# on the kind in ``drain``; at run time they are plain tuples, the cheapest the interpreter has. (NamedTuples were
# measured here: a tuple subclass is allocated without the tuple free list and unpacked on the interpreter's generic
# path: 20-27% more CPU for the queue-format-free cycle of an event's records, measured; see issue 24.)
QueuedSent = tuple[Literal["sent"], PayloadCell, int, str, int, str]  # kind, cell, seq, source, time_us, type_json
QueuedUnroutable = tuple[Literal["unroutable"], PayloadCell, int, str, int, str]  # the same fields
# kind, cell, dest, reason, seq, source, time_us, type_json
QueuedDropped = tuple[Literal["dropped"], PayloadCell, str, str, int, str, int, str]
# kind, cell, dest, sent_us, seq, source, time_us (of the delivery), type_json
QueuedDelivered = tuple[Literal["delivered"], PayloadCell, str, int, int, str, int, str]
QueueEntry = QueuedSent | QueuedUnroutable | QueuedDropped | QueuedDelivered


def payload_json(cell: PayloadCell) -> str:
    """The cell's payload as canonical JSON (encoded now if no record has needed it yet)."""
    if cell[1] is None:
        cell[1] = protocol.canonical(cell[0])
    return cell[1]


class TraceWriter:
    """Writes one trace. The header goes out once the run knows its environment (after INIT); a run that
    fails before that still gets a header (without environment) ahead of its error record.

    Event records are appended to ``queue`` as QueueEntry tuples: the coordinator's hot
    path, a list append each. ``drain`` formats and counts them; the coordinator calls it once the services are
    computing the next window, so the formatting overlaps with their work. Every other write, ``counts``, ``flush`` and ``close``
    drain first: the order of the records never changes."""

    def __init__(self, path: Path, manifest: Mapping[str, Any]) -> None:
        self.path = path
        self.manifest = dict(manifest)
        try:  # created now, before anything starts: a path that cannot be written stops the run first
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        except OSError as exc:
            raise TraceWriteError(path, exc) from None
        # Complete lines not written yet (written once BUFFER_CHARS gather, and by ``flush``/``close``), and the
        # bytes on disk: each of them part of a complete line.
        self._lines: list[str] = []
        self._buffered = 0
        self._size = 0
        self._counts = {kind: 0 for kind in ("sent", "delivered", "dropped", "unroutable")}
        self.header_written = False
        self.closed = False
        self.failed: TraceWriteError | None = None
        self.queue: list[QueueEntry] = []  # event records not written yet

    @property
    def counts(self) -> dict[str, int]:
        """Records written so far, per kind (the footer's and the error record's ``counts``)."""
        self.drain()
        return self._counts

    def write(self, record: Mapping[str, Any]) -> None:
        if self.failed is not None:
            return  # the failure was raised when it happened; the run is stopping
        self.drain()
        kind = record["record"]
        if kind in self._counts:
            self._counts[kind] += 1
        elif kind in OPTIONAL_COUNTS:
            self._counts[kind] = 1
        self._out(protocol.canonical(record) + "\n")

    def drain(self) -> None:
        """Format, count and write the queued event records, in the order they were queued.

        Each line is the record's canonical JSON (keys sorted, no spaces), written out by hand around the payload's
        JSON: node ids need no escaping (the scenario allows only [a-z0-9-]), the type is JSON already, and times and
        sequence numbers are ints. tests/test_trace_writer.py checks every kind against the canonical encoder."""
        queue = self.queue
        if not queue:
            return
        if self.failed is not None:
            queue.clear()
            return
        lines: list[str] = []
        try:
            self._format(queue, lines.append, self._counts)
        finally:  # a record that cannot be written (a payload JSON cannot carry) ends the batch; the ones before stay
            queue.clear()
            self._out("".join(lines))

    def _out(self, text: str) -> None:
        """Buffer whole lines; write them out once enough have gathered."""
        self._lines.append(text)
        self._buffered += len(text)
        if self._buffered >= BUFFER_CHARS:
            self._write_out()

    def _write_out(self) -> None:
        """Write the buffered lines. A write the system refuses (a full disk: ENOSPC, EIO, ...) ends the trace: the
        file is cut back to its last complete line, closed, and TraceWriteError raised, once; from then on the writer
        drops whatever it is given (the run is stopping)."""
        if not self._lines or self.failed is not None:
            self._lines.clear()
            return
        data = "".join(self._lines).encode("utf-8")
        self._lines.clear()
        self._buffered = 0
        written = 0
        try:
            while written < len(data):
                written += os.write(self._fd, data[written:] if written else data)
        except OSError as exc:
            self._size += data.rfind(b"\n", 0, written) + 1  # the complete lines of what did get written
            self._fail(exc)
        self._size += written

    def _fail(self, error: OSError) -> None:
        self.failed = TraceWriteError(self.path, error)
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, self._size)  # no partial last line (freeing blocks works on a full disk)
        with contextlib.suppress(OSError):
            os.close(self._fd)
        self.closed = True
        raise self.failed from None

    @staticmethod
    def _format(queue: list[QueueEntry], append: Callable[[str], None],
                counts: dict[str, int]) -> None:
        """Append each record's line and count it (up to a record that cannot be written: that one raises)."""
        sent = delivered = 0  # the kinds of nearly every record, counted here; the others in ``counts`` directly
        try:
            for entry in queue:  # each unpacked whole, once its kind (which the type checker narrows on) is known
                if entry[0] == DELIVERED:
                    _, cell, dest, sent_us, seq, source, time_us, type_json = entry
                    data = cell[1] or payload_json(cell)  # canonical JSON is never empty
                    append(f'{{"data":{data},"dest":"{dest}","record":"delivered","sent_us":{sent_us},"seq":{seq},'
                           f'"source":"{source}","time_us":{time_us},"type":{type_json}}}\n')
                    delivered += 1
                elif entry[0] == DROPPED:
                    _, cell, dest, reason, seq, source, time_us, type_json = entry
                    data = cell[1] or payload_json(cell)
                    append(f'{{"data":{data},"dest":"{dest}","reason":"{reason}","record":"dropped","seq":{seq},'
                           f'"source":"{source}","time_us":{time_us},"type":{type_json}}}\n')
                    counts[DROPPED] += 1
                else:  # SENT, UNROUTABLE
                    kind, cell, seq, source, time_us, type_json = entry
                    data = cell[1] or payload_json(cell)
                    append(f'{{"data":{data},"record":"{kind}","seq":{seq},"source":"{source}","time_us":{time_us},'
                           f'"type":{type_json}}}\n')
                    if kind == SENT:
                        sent += 1
                    else:
                        counts[UNROUTABLE] += 1
        finally:
            counts[SENT] += sent
            counts[DELIVERED] += delivered

    def header(self, environment: Mapping[str, Any] | None = None,
               barrier_groups: Mapping[str, list[str]] | None = None) -> None:
        """The reproducibility manifest. ``environment`` holds what may differ between machines and runtimes
        (image ids, library versions); it is excluded from the trace's hash (see cosim.tracediff).
        ``barrier_groups`` (hashed: it shapes the run) are the groups the services declared in READY."""
        record = {"record": "header", "format": FORMAT, **self.manifest}
        record["barrier_groups"] = {group: list(members) for group, members in sorted((barrier_groups or {}).items())}
        if environment is not None:
            record["environment"] = dict(environment)
        self.write(record)
        self.header_written = True

    def records_so_far(self) -> str:
        """Every record written after the header (for a checkpoint), as the file's text."""
        self.flush()
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TraceWriteError(self.path, exc) from None
        return text[text.index("\n") + 1:]

    def replay(self, records: str, counts: Mapping[str, int]) -> None:
        """A resumed run: the records of the run up to its checkpoint, as they were written, after the header."""
        self.drain()
        self._out(records)
        self._counts = dict(counts)

    def footer(self, end_us: int, steps: int, in_flight: int, executed: Mapping[str, int] | None = None,
               status: str = "ok") -> None:
        """``in_flight``: events still on a link when the run ended (delivery after the end). ``executed``: what the
        step loop did (steps executed, ADVANCE messages sent, quanta skipped); it depends on the advance mode.
        ``status``: "ok", or "stopped" for a run stopped after its checkpoint (--stop-after-checkpoint)."""
        record = {"record": "footer", "status": status, "end_us": end_us, "steps": steps, "in_flight": in_flight,
                  "counts": dict(self.counts)}
        if executed is not None:
            record["executed"] = dict(executed)
        self.write(record)

    def error(self, time_us: int, node: str | None, error: str, detail: str) -> None:
        if not self.header_written:
            self.header()
        self.write({"record": "error", "time_us": time_us, "node": node, "error": error, "detail": detail,
                    "counts": dict(self.counts)})

    def flush(self) -> None:
        if self.failed is None:
            self.drain()
            self._write_out()

    def close(self) -> None:
        if not self.closed:
            self.flush()
            self.closed = True
            try:
                os.close(self._fd)
            except OSError as exc:  # a file system that reports a failed write only now (NFS, EIO)
                raise TraceWriteError(self.path, exc) from None


def scenario_manifest(scenario: Scenario, compose_sha256: str) -> dict[str, Any]:
    """The hashed part of a run's header, from its scenario and the hash of its rendered compose file."""
    manifest = base_manifest(scenario.name, scenario.sha256, scenario.seed, scenario.duration_us, scenario.quantum_us,
                             {node.id: node.kind for node in scenario.nodes}, compose_sha256, advance=scenario.advance)
    if scenario.schedule:  # only when there is one: traces of scenarios without a schedule keep their bytes
        manifest["schedule"] = scenario.schedule.manifest()
    if scenario.segments:  # likewise: the ns-3 segments, defaults filled in (they shape the run)
        manifest["segments"] = [segment.wire() for segment in scenario.segments]
    return manifest


def header_environment(runtime: Mapping[str, Any], services: Mapping[str, Any]) -> dict[str, Any]:
    """The header's environment block (not hashed): the runtime's facts (e.g. image ids), the versions of cosim's
    own dependencies, and what each service said about itself in READY (``info``)."""
    return {**runtime, "dependencies": dependency_versions(), "services": dict(services)}


def base_manifest(scenario_name: str, scenario_sha256: str, seed: int, duration_us: int, quantum_us: int,
                  nodes: Mapping[str, str], compose_sha256: str, *, advance: str = "next-event") -> dict[str, Any]:
    """The hashed part of the header: identical for the local and the Docker runtime, on any machine."""
    return {
        "advance": advance,
        "scenario": scenario_name,
        "scenario_sha256": scenario_sha256,
        "compose_sha256": compose_sha256,
        "seed": seed,
        "duration_us": duration_us,
        "quantum_us": quantum_us,
        "nodes": dict(sorted(nodes.items())),
        "protocol": protocol.VERSION,
        "cosim": __version__,
    }




# -- reading ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Header:
    """The run's manifest. Everything but ``environment`` is hashed (the trace's identity)."""

    format: str
    scenario: str
    scenario_sha256: str
    compose_sha256: str
    seed: int
    duration_us: int
    quantum_us: int
    nodes: Mapping[str, str]  # node id -> kind
    protocol: int
    cosim: str
    environment: Mapping[str, Any] | None  # None: the run failed before INIT completed
    advance: str = "fixed"  # "next-event" or "fixed"; traces written before the mode existed stepped every quantum


@dataclass(frozen=True)
class _Emission:
    """The fields every event record has: one emission, ``(source, seq)``, and its payload."""

    time_us: int  # emission time (delivery time for Delivered)
    source: str
    seq: int
    type: str
    data: Any


@dataclass(frozen=True)
class Sent(_Emission):
    pass


@dataclass(frozen=True)
class Delivered(_Emission):
    dest: str
    sent_us: int  # emission time; time_us is the delivery time
    segment: str | None = None  # the ns-3 segment it travelled on (None: a link)
    arrived_us: int | None = None  # on a segment: ns-3's exact arrival time (delivered one quantum later)

    @property
    def latency_us(self) -> int:
        """Virtual time from emission to delivery (a link's latency + jitter; on a segment, ns-3's + one quantum)."""
        return self.time_us - self.sent_us

    @property
    def network_latency_us(self) -> int:
        """Time on the network: on a segment, ns-3's (arrival - emission); on a link, ``latency_us``."""
        return (self.arrived_us if self.arrived_us is not None else self.time_us) - self.sent_us


@dataclass(frozen=True)
class Dropped(_Emission):
    dest: str
    reason: str
    at_us: int | None = None  # when it was lost, where known (ns-3's drop time on a segment; node_down: delivery)
    segment: str | None = None  # the ns-3 segment it was lost on (None: a link, or a crashed destination)


@dataclass(frozen=True)
class Unroutable(_Emission):
    pass


@dataclass(frozen=True)
class Filtered(_Emission):
    """A route's `during:` windows left the event out for ``dest`` (the target as the route names it)."""

    dest: str


@dataclass(frozen=True)
class Action:
    """One action of the schedule, applied at ``time_us``: ``action`` is its kind, ``details`` the rest of the
    record (node, config, link, groups; for a restart, its count and the events lost while it was down)."""

    time_us: int
    action: str
    details: Mapping[str, Any]


@dataclass(frozen=True)
class Footer:
    status: str
    end_us: int
    steps: int
    in_flight: int
    counts: Mapping[str, int]
    executed: Mapping[str, int] | None = None  # {"steps", "advances", "skipped"}; None in older traces


@dataclass(frozen=True)
class RunError:
    """The ``error`` record that ends a failed run, in place of the footer."""

    time_us: int
    node: str | None
    error: str
    detail: str
    counts: Mapping[str, int]


EventRecord = Sent | Delivered | Dropped | Unroutable | Filtered | Action
_EVENT_TYPES: dict[str, type] = {"sent": Sent, "delivered": Delivered, "dropped": Dropped, "unroutable": Unroutable,
                                 "filtered": Filtered}
_INT_FIELDS = {"time_us", "sent_us", "seq", "seed", "duration_us", "quantum_us", "protocol", "end_us", "steps",
               "in_flight", "arrived_us", "at_us"}


@dataclass(frozen=True)
class Trace:
    path: Path
    header: Header
    records: tuple[EventRecord, ...]  # in file order
    end: Footer | RunError | None  # None: the trace stops without either (the writer was killed)

    @property
    def footer(self) -> Footer | None:
        return self.end if isinstance(self.end, Footer) else None

    @property
    def error(self) -> RunError | None:
        return self.end if isinstance(self.end, RunError) else None

    def of(self, kind: type) -> list[Any]:
        """The records of one kind, e.g. ``trace.of(Delivered)``."""
        return [record for record in self.records if isinstance(record, kind)]

    def to_dataframe(self) -> pandas.DataFrame:
        """One row per event record: record, time_us, source, seq, type, dest, sent_us, latency_us, reason, data,
        segment and arrived_us (events on a network segment).

        Needs pandas (``pip install 'cosim[analysis]'``; ./inv's environment has it)."""
        try:
            import pandas
        except ImportError:
            raise ToolError("Trace.to_dataframe needs pandas: install cosim's analysis extra "
                             "(pip install 'cosim[analysis]')") from None
        columns = ["record", "time_us", "source", "seq", "type", "dest", "sent_us", "latency_us", "reason", "data",
                   "segment", "arrived_us"]
        rows = []
        for record in self.records:
            if isinstance(record, Action):
                continue  # not an event (trace.of(Action) lists them)
            rows.append({
                "record": _kind_of(record), "time_us": record.time_us, "source": record.source, "seq": record.seq,
                "type": record.type, "dest": getattr(record, "dest", None), "sent_us": getattr(record, "sent_us", None),
                "latency_us": record.latency_us if isinstance(record, Delivered) else None,
                "reason": getattr(record, "reason", None), "data": record.data,
                "segment": getattr(record, "segment", None), "arrived_us": getattr(record, "arrived_us", None),
            })
        frame = pandas.DataFrame(rows, columns=columns)
        for column in ("sent_us", "latency_us", "arrived_us"):
            frame[column] = frame[column].astype("Int64")  # nullable: only delivered records have them
        return frame


def _kind_of(record: EventRecord) -> str:
    return next(kind for kind, cls in _EVENT_TYPES.items() if isinstance(record, cls))


_FIELD_NAMES: dict[type, tuple[str, ...]] = {}
# Fields a valid record may lack (older traces, failed starts, events not on a segment).
_OPTIONAL = {"environment", "advance", "executed", "segment", "arrived_us", "at_us"}


def _build(cls: type, record: dict[str, Any], where: str) -> Any:
    names = _FIELD_NAMES.get(cls) or _FIELD_NAMES.setdefault(cls, tuple(item.name for item in fields(cls)))
    values: dict[str, Any] = {}
    for name in names:
        if name not in record:
            if name == "environment":
                values[name] = None
                continue
            if name in _OPTIONAL:
                continue  # the dataclass default
            raise TraceReadError(f"{where}: {record['record']!r} record has no {name!r} field")
        value = record[name]
        if name in _INT_FIELDS and (type(value) is not int):  # bool is not an integer here
            raise TraceReadError(f"{where}: field {name!r} must be an integer, not {json.dumps(value)}")
        values[name] = value
    return cls(**values)


_NOT_JSON = object()


def _decoded(lines: list[str]) -> list[Any]:
    """Every line's JSON value, decoded as one array (a decoder call per line cost a third of reading a trace);
    line by line when that fails, a line that is not JSON then being ``_NOT_JSON`` (its error comes in turn)."""
    try:
        # One object per line and as many values as lines: then the array's values are the lines' own.
        if all(line[:1] == "{" and line[-1:] == "}" for line in lines):
            values = json.loads("[" + ",".join(lines) + "]")
            if len(values) == len(lines):
                return list(values)
    except ValueError:
        pass
    decoded = []
    for line in lines:
        try:
            decoded.append(json.loads(line))
        except ValueError:
            decoded.append(_NOT_JSON)
    return decoded


def read(path: str | Path) -> Trace:
    """Read a trace file into typed records. Raises TraceReadError, naming the file and line, for a file that is
    not a cosim trace. Lines are split on "\\n" only: payloads may hold other line separators (U+2028, ...)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise TraceReadError(f"{path}: no such trace file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceReadError(f"{path}: cannot be read as a trace ({exc})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline ending the last record
    if not lines:
        raise TraceReadError(f"{path}: empty file, not a trace")
    header: Header | None = None
    records: list[EventRecord] = []
    end: Footer | RunError | None = None
    for number, record in enumerate(_decoded(lines), start=1):
        where = f"{path}:{number}"
        if record is _NOT_JSON:
            raise TraceReadError(f"{where}: not a JSON record")
        if not isinstance(record, dict) or not isinstance(record.get("record"), str):
            raise TraceReadError(f"{where}: not a trace record (no 'record' field)")
        kind = record["record"]
        if end is not None:
            raise TraceReadError(f"{where}: a {kind!r} record after the run's last ({'footer' if isinstance(end, Footer) else 'error'}) record")
        if number == 1:
            if kind != "header":
                raise TraceReadError(f"{where}: the first record must be the header, not {kind!r}")
            if record.get("format") != FORMAT:
                raise TraceReadError(f"{where}: format {record.get('format')!r} is not {FORMAT!r}")
            header = _build(Header, record, where)
        elif kind in _EVENT_TYPES:
            records.append(_build(_EVENT_TYPES[kind], record, where))
        elif kind == "action":
            base = _build(Action, {**record, "details": {}}, where)
            details = {k: v for k, v in record.items() if k not in ("record", "time_us", "action")}
            records.append(Action(base.time_us, base.action, details))
        elif kind == "footer":
            end = _build(Footer, record, where)
        elif kind == "error":
            end = _build(RunError, record, where)
        else:
            expected = ", ".join(k for k in RECORD_KINDS if k != "header")
            raise TraceReadError(f"{where}: unknown record kind {kind!r} (expected one of {expected})")
    assert header is not None
    return Trace(path, header, tuple(records), end)
