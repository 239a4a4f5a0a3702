"""A run's wall-clock measurements: never part of the trace. Built once when a run ends (``RunMetrics.measure``),
written beside the trace (``write``), printed by the CLI and read by the bench from the object itself."""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cosim.core.results import StepTimings
from cosim.errors import OutputWriteError
from cosim.model import Scenario


def percentiles(samples: list[float]) -> dict[str, float]:
    """count, p50/p95/p99 and mean (us) of wall-clock samples given in seconds; {} for none."""
    if not samples:
        return {}
    ordered = sorted(samples)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e6

    return {"count": len(ordered), "p50_us": pick(0.50), "p95_us": pick(0.95), "p99_us": pick(0.99),
            "mean_us": math.fsum(ordered) / len(ordered) * 1e6}  # (statistics.fmean's sum: 3 ms to import it)


@dataclass(frozen=True)
class RunMetrics:
    """The wall-clock side of one run, rounded as written to ``<trace>.metrics.json``. ``None`` where the run
    ended before the coordinator measured it (a failed start)."""

    scenario: str
    scenario_file: str  # where `invoke report` finds the injected anomalies
    runtime: str
    environment: dict[str, Any]  # the runtime's manifest and this run's facts (project, run id, attach path)
    wall_s: float  # the whole run: starting the services (image builds included), the step loop, the teardown
    virtual_s: float
    # Speed-ups: virtual seconds per wall second (>1: faster than real time), of the step loop and of the whole run
    speedup_step_loop: float | None
    speedup_whole_run: float | None
    steps: int  # steps executed
    advance: str  # the advance mode: "next-event" or "fixed"
    advances: int  # ADVANCE messages sent to services
    advances_ahead: int  # of those, sent a window ahead to services nothing sends to (lookahead)
    quanta_skipped: int  # quanta in which nothing could happen (next-event mode)
    step_loop_s: float
    # cosim's own cost: CPU time of the coordinator process in the step loop (in-process models included); the
    # rest of the loop's wall time is the services computing and the transport.
    overhead_cpu_s: float
    overhead_share: float | None
    overhead_per_step_us: float | None
    waiting_for_nodes_s: float | None
    init_s: float | None
    shutdown_s: float | None
    round_trip: dict[str, dict[str, float]]  # service id -> ADVANCE->DONE percentiles

    @classmethod
    def measure(cls, scenario: Scenario, runtime: str, wall_s: float, timings: StepTimings | None, virtual_us: int,
                round_trips_s: Mapping[str, list[float]], environment: Mapping[str, Any]) -> RunMetrics:
        virtual_s = virtual_us / 1e6
        steps = timings.steps if timings else 0
        loop_s = timings.loop_s if timings else 0.0
        overhead_s = timings.loop_cpu_s if timings else 0.0
        return cls(
            scenario=scenario.name,
            scenario_file=str(scenario.path),
            runtime=runtime,
            environment=dict(environment),
            wall_s=round(wall_s, 6),
            virtual_s=virtual_s,
            speedup_step_loop=round(virtual_s / loop_s, 6) if loop_s > 0 else None,
            speedup_whole_run=round(virtual_s / wall_s, 6) if wall_s > 0 else None,
            steps=steps,
            advance=scenario.advance,
            advances=timings.advances if timings else 0,
            advances_ahead=timings.ahead if timings else 0,
            quanta_skipped=timings.skipped if timings else 0,
            step_loop_s=round(loop_s, 6),
            overhead_cpu_s=round(overhead_s, 6),
            overhead_share=round(overhead_s / loop_s, 6) if loop_s > 0 else None,
            overhead_per_step_us=round(overhead_s / steps * 1e6, 3) if steps else None,
            waiting_for_nodes_s=round(timings.waiting_s, 6) if timings else None,
            init_s=round(timings.init_s, 6) if timings else None,
            shutdown_s=round(timings.shutdown_s, 6) if timings else None,
            round_trip={node_id: percentiles(samples) for node_id, samples in round_trips_s.items()},
        )

    @property
    def step_us(self) -> float:
        """Mean wall time of one executed step of the step loop, in us."""
        return self.step_loop_s / self.steps * 1e6 if self.steps else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "scenario": self.scenario,
            "scenario_file": self.scenario_file,
            "runtime": self.runtime,
            "environment": self.environment,
            "wall_s": self.wall_s,
            "virtual_s": self.virtual_s,
            "speedup_step_loop": self.speedup_step_loop,
            "speedup_whole_run": self.speedup_whole_run,
            "steps": self.steps,
            "advance": self.advance,
            "advances": self.advances,
            "advances_ahead": self.advances_ahead,
            "quanta_skipped": self.quanta_skipped,
            "step_loop_s": self.step_loop_s,
            "coordinator_overhead": {
                "cpu_s": self.overhead_cpu_s,
                "share": self.overhead_share,
                "per_step_us": self.overhead_per_step_us,
                "waiting_for_nodes_s": self.waiting_for_nodes_s,
            },
            "init_s": self.init_s,
            "shutdown_s": self.shutdown_s,
            "round_trip": self.round_trip,
        }


# The two speed-ups, in the order and with the names the summary and the report show: metrics key ->
# (name, the wall time it is measured against, what that wall time covers)
SPEEDUPS = {"speedup_step_loop": ("step loop", "step_loop_s", ""),
            "speedup_whole_run": ("whole run", "wall_s", ", with start and teardown")}


def speedups(metrics: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The speed-ups of a metrics file's content, as (name, text), e.g. ("step loop", "16.7x real time (0.60 s
    wall)") and ("whole run", "2.4x real time (4.10 s wall, with start and teardown)")."""
    rows = []
    for key, (name, wall_key, covers) in SPEEDUPS.items():
        factor = metrics.get(key)
        speed = "n/a" if not factor else f"{factor:.1f}x real time" if factor >= 1 else f"{factor:.2g}x real time"
        rows.append((name, f"{speed} ({metrics.get(wall_key) or 0:.2f} s wall{covers})"))
    return rows


def write(metrics: RunMetrics, path: Path) -> None:
    """Write the metrics file whole or not at all (a full disk leaves no half file): OutputWriteError naming it."""
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(json.dumps(metrics.to_json(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        partial.replace(path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            partial.unlink(missing_ok=True)
        raise OutputWriteError("the metrics", path, exc) from None
