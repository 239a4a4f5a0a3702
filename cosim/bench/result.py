"""What the bench measures against: its targets and repeat counts, and the result every row writes into (its JSON
is the result's fields plus the targets)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cosim.bench.costs import TARGETS as COST_TARGETS
from cosim.bench.segments import TARGETS as SEGMENT_TARGETS
from cosim.bench.sweeps import TARGETS as SWEEP_TARGETS

TARGETS = {"local_vs_pipe_floor": 1.5, "docker_vs_container_floor": 1.2, "scaling_8_vs_1": 3.0,
           # next-event advance: sparse wall time against fixed steps (lower is better), idle and dense ratios
           "sparse_local_next_vs_fixed": 1 / 50, "sparse_docker_next_vs_fixed": 1 / 50,
           "idle_16_vs_1": 1.5, "dense_local_next_vs_fixed": 1.05, "dense_docker_next_vs_fixed": 1.05,
           # the sparse shape as a whole process (start to exit), local runtime, against mosaik 3.6's
           "sparse_local_whole_vs_mosaik": 0.5,
           **SWEEP_TARGETS, **COST_TARGETS, **SEGMENT_TARGETS}
SPARSE_S = 600  # virtual seconds of the sparse workload
SPARSE_LOOP_TARGET_S = 0.15  # its next-event step loop, local runtime (mosaik 3.6: 0.17 s for the same shape)
DEFAULT_RTF_TARGET = 15.0  # the default scenario on Docker, next-event
THROUGHPUT_TARGET = 150_000  # events/s routed through the coordinator, local runtime
REPEATS = 5  # runs of each throughput measurement
# Pairs of runs behind a ratio of two measurements (idle: 1 and 16 containers; dense: fixed and next-event, whose
# difference is a few per cent against single runs that swing by 20%: more pairs, and more again where a run is
# short). Even: half the pairs run one side first, half the other, so that a bias of the second run of a pair cancels.
PAIRS = 10
DENSE_PAIRS = {"local": 30, "docker": 20}
DEFAULT_RUNS = 3  # runs of the default scenario on Docker in each advance mode, taken in turn

@dataclass
class BenchResult:
    settings: dict[str, Any]
    floors_us: dict[str, float] = field(default_factory=dict)
    per_node_step_us: dict[str, float] = field(default_factory=dict)
    scaling_step_us: dict[str, float] = field(default_factory=dict)
    throughput_events_per_s: dict[str, float] = field(default_factory=dict)  # the best of REPEATS where repeated
    throughput_median_events_per_s: dict[str, float] = field(default_factory=dict)  # and their median
    mqtt_step_us: dict[str, float] = field(default_factory=dict)  # "<runtime>_<n>_gateway(s)" -> step time
    swarm_step_us: dict[str, float] = field(default_factory=dict)  # "<n>_node(s)" -> step time
    # next-event advance: "<workload>_<runtime>_<mode>" -> {"loop_s", "steps", "advances", "events", "us_per_event"}
    advance: dict[str, dict[str, float]] = field(default_factory=dict)
    # the default scenario's speed-ups (virtual s per wall s): "<runtime>_<mode>" -> of the step loop (the best run),
    # "..._median" -> its median, "..._wall" -> of the whole run (the best run)
    default_rtf: dict[str, float] = field(default_factory=dict)
    ratios: dict[str, float] = field(default_factory=dict)
    # a paired ratio's CONFIDENCE interval, and the fastest run of each side against each other: name -> value
    ratio_intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    ratio_fastest: dict[str, float] = field(default_factory=dict)
    # fixed costs around the step loop (cosim.bench.costs): row -> its wall times (s), with the engine's floor
    fixed_costs: dict[str, dict[str, float]] = field(default_factory=dict)
