"""`cosim bench`'s network segment rows (issue 27), measured in one bench run; only with ns-3 installed:

- ``segment_sparse_vs_links``: the step loop of a sparse workload (a 1 Hz sensor -> echo -> sink, next-event) whose
  hops go through an ns-3 CSMA segment, against the same run on plain links (target <= 1.2): the price of asking
  the worker, once it is up (its start-up is in the run's INIT, outside the step loop); pairs of runs in turn, the
  pairs' median;
- the worker's start-up on its own row (``settings['segment_worker_start_s']``): from starting the process to its
  answer to init (loading ns-3's CSMA modules and compiling the worker's C++), the median of the pairs' runs.

Wall clock: measurement only.
"""

from __future__ import annotations

import importlib.util
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from cosim.bench.stats import in_turn, paired_ratio
from cosim.bench.workloads import workload

TARGETS = {"segment_sparse_vs_links": 1.2}
PAIRS = 3  # each run with a segment starts a worker: seconds of CPU for ns-3's libraries
SPARSE_S = 300  # virtual seconds of the sparse workload


def segment_rows(result: Any, directory: Path, say: Callable[[str], None], *, sparse_s: int = SPARSE_S) -> None:
    """Measure ``segment_sparse_vs_links`` into ``result.ratios`` (its interval and fastest beside) and the worker's
    start-up into ``result.settings``."""
    from cosim.run import run

    if importlib.util.find_spec("ns") is None:
        say("segments: skipped (ns-3 is not installed: pip install 'cosim[ns3]')")
        return
    links = workload(directory, "bench-segment-links", services=1, duration_us=sparse_s * 1_000_000,
                     period_us=1_000_000)
    segment = directory / "bench-segment.yaml"
    text = links.read_text(encoding="utf-8").replace("name: bench-segment-links", "name: bench-segment")
    segment.write_text(text.replace("nodes:\n", "network:\n  segments:\n    - {id: wire, medium: csma, nodes: "
                                                 "[sensor, echo-1, sink]}\nnodes:\n", 1), encoding="utf-8")
    say(f"segments: sparse 1 Hz sensor -> echo -> sink, {sparse_s} s virtual, on plain links and through an ns-3 "
        f"CSMA segment, {PAIRS} pairs (local)")
    runs = in_turn(PAIRS, [partial(run, scenario, runtime="local", trace_path=directory / f"{scenario.stem}.jsonl",
                                   advance="next-event") for scenario in (links, segment)])
    plain, through = ([summary.metrics.step_loop_s for summary in done] for done in runs)
    name = "segment_sparse_vs_links"
    result.ratios[name], result.ratio_intervals[name], result.ratio_fastest[name] = paired_ratio(plain, through)
    result.settings["segment_step_loop_s"] = {"links": statistics.median(plain), "segment": statistics.median(through)}
    say(f"segments: the ns-3 worker's start-up (process start to its answer to init), {PAIRS} times")
    result.settings["segment_worker_start_s"] = statistics.median(worker_start_s(segment, directory)
                                                                  for _ in range(PAIRS))


def worker_start_s(scenario_path: Path, directory: Path) -> float:
    """Wall seconds from starting a worker for the scenario's segments to its ``ready``."""
    from cosim.loading import load
    from cosim.segments import SegmentWorker

    worker = SegmentWorker(load(scenario_path), directory / "bench-segment-worker.log", timeout_s=600.0)
    started = time.monotonic()
    try:
        worker.start()
        worker.ready()
        return time.monotonic() - started
    finally:
        worker.close()
