"""`cosim bench`'s sweep rows (issue 26's targets), ratios of two measurements taken in one bench run:

- ``sweep_docker_jobs4_vs_sequential``: the wall time of a Docker sweep (echo scenario, 2 variants x 4 seeds) with
  ``--jobs 4`` against the same sweep one run at a time (target <= 0.5, i.e. at least twice the runs per second;
  the runs spend most of their time waiting on the engine: containers starting and being removed);
- ``sweep_fork_half_vs_full``: a local sweep (4 variants, one seed) with ``--fork-at`` at half the duration: the
  variants' total time (the sum of the branches' wall times) against the same variants run in full (target <= 0.6);
  ``sweep_fork_half_vs_full_with_prefix`` (no target): the whole sweep's wall time, the shared prefix included,
  against the full runs' (with k variants per seed, at best (1 + k) / 2k).

Each sweep writes to a directory of its own, so nothing is skipped as complete. Wall clock: measurement only.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cosim.resources import data_path

TARGETS = {"sweep_docker_jobs4_vs_sequential": 0.5, "sweep_fork_half_vs_full": 0.6}
DOCKER_SEEDS = "1-4"
FORK_DURATION_US = 4_000_000
FORK_VALUES = "2500,5000,10000,20000"  # the echo's tick_us: the variants of the --fork-at rows


def _scenario(directory: Path, name: str, duration_us: int) -> Path:
    """sensor -> echo -> sink over lossy jittered links (seeds matter), the echo built from cosim's containers."""
    path = directory / f"{name}.yaml"
    path.write_text(f"""name: {name}
seed: 1
duration_us: {duration_us}
quantum_us: 1000
network:
  default_link: {{latency_us: 1000, jitter_us: 2000, loss: 0.1}}
nodes:
  - {{id: sensor, kind: sensor, model: uniform, period_us: 1000}}
  - {{id: echo, kind: service, build: {data_path("containers", "echo")}, config: {{tick_us: 10000}}}}
  - {{id: sink, kind: sink}}
routes:
  - {{from: sensor, to: [echo]}}
  - {{from: echo, to: [sink]}}
""", encoding="utf-8")
    return path


def _timed_sweep(directory: Path, scenario: Path, out: str, values: str, **settings: Any) -> tuple[float, float]:
    """(the sweep's wall time, the sum of its runs' wall times)."""
    from cosim import sweep as sweeping
    from cosim.errors import SweepRunsFailed

    started = time.monotonic()
    result = sweeping.sweep(str(scenario), out_stream=io.StringIO(), progress=False, report=False,
                            out=str(directory / out), sets=[f"nodes.echo.config.tick_us={values}"], **settings)
    elapsed = time.monotonic() - started
    if result.failed:
        raise SweepRunsFailed(f"bench sweep {out}: {len(result.failed)} run(s) failed: {result.failed[0].error}")
    return elapsed, sum(outcome.wall_s for outcome in result.outcomes)


def sweep_rows(result: Any, directory: Path, say: Callable[[str], None], *, docker: bool = True) -> None:
    """Measure both ratios into ``result.ratios`` (the wall times into ``result.settings['sweep_wall_s']``)."""
    walls: dict[str, float] = result.settings.setdefault("sweep_wall_s", {})
    if docker:
        scenario = _scenario(directory, "bench-sweep-docker", 40_000)
        say(f"sweep: 2 variants x seeds {DOCKER_SEEDS} on Docker, one at a time, then --jobs 4")
        walls["docker_sequential"], _ = _timed_sweep(directory, scenario, "sweep-seq", "5000,10000", seeds=DOCKER_SEEDS,
                                                     jobs=1, runtime="docker")
        walls["docker_jobs4"], _ = _timed_sweep(directory, scenario, "sweep-jobs4", "5000,10000", seeds=DOCKER_SEEDS,
                                                jobs=4, runtime="docker")
        result.ratios["sweep_docker_jobs4_vs_sequential"] = walls["docker_jobs4"] / walls["docker_sequential"]
    scenario = _scenario(directory, "bench-sweep-fork", FORK_DURATION_US)
    say(f"sweep: {FORK_VALUES.count(',') + 1} variants, local, {FORK_DURATION_US / 1e6:g} s in full, then --fork-at "
        f"half of it")
    walls["fork_full"], walls["fork_full_runs"] = _timed_sweep(directory, scenario, "sweep-full", FORK_VALUES,
                                                               seeds="1", jobs=1, runtime="local")
    walls["fork_half"], walls["fork_half_branches"] = _timed_sweep(directory, scenario, "sweep-fork", FORK_VALUES,
                                                                   seeds="1", jobs=1, runtime="local",
                                                                   fork_at=FORK_DURATION_US // 2)
    result.ratios["sweep_fork_half_vs_full"] = walls["fork_half_branches"] / walls["fork_full_runs"]
    result.ratios["sweep_fork_half_vs_full_with_prefix"] = walls["fork_half"] / walls["fork_full"]
