"""The JSONL trace: a header, one record per event sent, delivered, dropped or unroutable, then a footer.

Canonical JSON (sorted keys, fixed separators), so the same run gives the same bytes. Nothing measured on the
wall clock belongs here (that goes to the metrics file). A run that fails ends with an ``error`` record
instead of the footer; everything before it is kept.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import IO, Any, Mapping

from cosim import __version__, protocol

FORMAT = "cosim-trace/1"
RECORD_KINDS = ("header", "sent", "delivered", "dropped", "unroutable", "error", "footer")


class TraceWriter:
    """Writes one trace. The header goes out once the run knows its environment (after INIT); a run that
    fails before that still gets a header (without environment) ahead of its error record."""

    def __init__(self, path: Path, manifest: Mapping[str, Any]) -> None:
        self.path = path
        self.manifest = dict(manifest)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = path.open("w", encoding="utf-8", newline="\n")
        self.counts = {kind: 0 for kind in ("sent", "delivered", "dropped", "unroutable")}
        self.header_written = False
        self.closed = False

    def write(self, record: Mapping[str, Any]) -> None:
        kind = record["record"]
        if kind in self.counts:
            self.counts[kind] += 1
        self._handle.write(protocol.canonical(record) + "\n")

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

    def footer(self, end_us: int, steps: int, in_flight: int) -> None:
        """``in_flight``: events still on a link when the run ended (delivery after the end)."""
        self.write({"record": "footer", "status": "ok", "end_us": end_us, "steps": steps, "in_flight": in_flight,
                    "counts": dict(self.counts)})

    def error(self, time_us: int, node: str | None, error: str, detail: str) -> None:
        if not self.header_written:
            self.header()
        self.write({"record": "error", "time_us": time_us, "node": node, "error": error, "detail": detail,
                    "counts": dict(self.counts)})

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
            self.closed = True


def base_manifest(scenario_name: str, scenario_sha256: str, seed: int, duration_us: int, quantum_us: int,
                  nodes: Mapping[str, str], compose_sha256: str) -> dict[str, Any]:
    """The hashed part of the header: identical for the local and the Docker runtime, on any machine."""
    return {
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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
