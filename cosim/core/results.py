"""What a run's step loop measured and produced (re-exported by cosim.coordinator)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StepTimings:
    """Wall-clock costs (metrics only; never in the trace)."""

    steps: int = 0  # steps executed
    advances: int = 0  # ADVANCE messages sent to services
    ahead: int = 0  # of those, sent a window ahead (lookahead)
    skipped: int = 0  # quanta in which nothing could happen (next-event mode)
    waiting_s: float = 0.0  # time spent waiting for DONE replies
    loop_s: float = 0.0  # the step loop, wall clock
    loop_cpu_s: float = 0.0  # CPU time cosim's own process used in the step loop (its overhead)
    init_s: float = 0.0
    shutdown_s: float = 0.0


@dataclass
class SimulationResult:
    """What the step loop produced (the trace holds the details): end time, steps, record counts, unroutable
    events per (source, type), and the wall-clock timings (metrics only)."""

    end_us: int
    steps: int
    counts: dict[str, int]
    unroutable: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, type) -> count
    timings: StepTimings = field(default_factory=StepTimings)
    dropped: dict[str, int] = field(default_factory=dict)  # reason (loss, partition, node_down) -> count
    actions: list[dict[str, Any]] = field(default_factory=list)  # the schedule's action records, as traced
