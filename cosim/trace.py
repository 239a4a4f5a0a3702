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
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._handle: IO[str] = path.open("w", encoding="utf-8", newline="\n")
        self.counts = {kind: 0 for kind in ("sent", "delivered", "dropped", "unroutable")}
        self.closed = False

    def write(self, record: Mapping[str, Any]) -> None:
        kind = record["record"]
        if kind in self.counts:
            self.counts[kind] += 1
        self._handle.write(protocol.canonical(record) + "\n")

    def header(self, manifest: Mapping[str, Any]) -> None:
        self.write({"record": "header", "format": FORMAT, **manifest})

    def footer(self, end_us: int, steps: int) -> None:
        self.write({"record": "footer", "status": "ok", "end_us": end_us, "steps": steps, "counts": dict(self.counts)})

    def error(self, time_us: int, node: str | None, error: str, detail: str) -> None:
        self.write({"record": "error", "time_us": time_us, "node": node, "error": error, "detail": detail,
                    "counts": dict(self.counts)})

    def flush(self) -> None:
        self._handle.flush()

    def close(self) -> None:
        if not self.closed:
            self._handle.close()
            self.closed = True


def base_manifest(scenario_name: str, scenario_sha256: str, seed: int, duration_us: int, quantum_us: int,
                  nodes: Mapping[str, str]) -> dict[str, Any]:
    """What the header says about the run; identical for the local and the Docker runtime."""
    return {
        "scenario": scenario_name,
        "scenario_sha256": scenario_sha256,
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
