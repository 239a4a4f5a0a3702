"""`cosim bench`'s rows for what a run costs around its step loop (issue 25), each against the engine's own floor
measured in the same bench run, on the same compose file:

- ``up_default_docker_excess_s``: the default scenario on Docker, the whole ``cosim up`` command (a fresh process:
  interpreter, imports, images checked, bring-up, the step loop, teardown, summary and report) minus its step loop
  and minus ``docker compose up --detach`` and ``docker compose down`` of the same compose file (target <= 0.5 s);
  the median of ``UP_PAIRS`` pairs of runs taken in turn;
- ``bringup_100_vs_compose_up`` and ``teardown_100_vs_compose_down``: 100 echo containers (100 Hz each, 2 s
  virtual): cosim's bring-up (the runtime's start: engine check, images, compose up, the containers listed, every
  service attached) against ``docker compose up --detach`` of the same file, and its teardown (SHUTDOWN to every
  service and their exits, then the runtime's stop) against ``docker compose down`` (targets <= 1.1).

The compose-only runs use a project of their own (``cosim-bench-floor-<random>``) and leave nothing behind. Minutes for
the 100-container row: it runs in the bench, never in the test suite. ``cosim bench --rows up,containers-100`` runs
these rows alone. Wall clock: measurement only.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from cosim.resources import data_path

if TYPE_CHECKING:  # (cosim.bench.result imports this module's TARGETS)
    from cosim.bench.result import BenchResult

TARGETS = {"up_default_docker_excess_s": 0.5, "bringup_100_vs_compose_up": 1.1, "teardown_100_vs_compose_down": 1.1}
UP_PAIRS = 5  # the median of five: one pair swings by a tenth of a second either way
MANY = 100


def compose_up_down(compose_file: Path, project: str) -> tuple[float, float]:
    """Wall seconds of `docker compose up --detach` and then `docker compose down` of ``compose_file`` as its own
    project (the engine's floor for a run's bring-up and teardown), with the same flags cosim uses."""
    from cosim.runtimes.docker.engine import docker_command

    base = docker_command("compose", "--file", str(compose_file), "--project-name", project)
    environment = {**os.environ, "COSIM_RUN_ID": project}
    started = time.monotonic()
    up = subprocess.run([*base, "up", "--detach", "--pull", "never"], capture_output=True, text=True, env=environment,
                        check=False)
    up_s = time.monotonic() - started
    down_command = [*base, "down", "--remove-orphans", "--volumes", "--timeout", "2"]
    started = time.monotonic()
    down = subprocess.run(down_command, capture_output=True, text=True, env=environment, check=False)
    down_s = time.monotonic() - started
    if down.returncode != 0:  # e.g. "network ... has active endpoints" (the engine's race): once more, untimed
        down = subprocess.run(down_command, capture_output=True, text=True, env=environment, check=False)
    if up.returncode != 0 or down.returncode != 0:
        raise RuntimeError(f"bench floor: docker compose failed: {(up.stderr + down.stderr).strip()[-400:]}")
    return up_s, down_s


def _whole_up(directory: Path, scenario: Path, name: str) -> tuple[float, dict[str, object]]:
    """The whole `cosim up` command as a user runs it (a fresh process), and its metrics."""
    trace = directory / f"{name}.jsonl"
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "cosim", "up", str(scenario), "--trace", str(trace), "--quiet"],
                          capture_output=True, text=True, check=False, cwd=directory)
    wall_s = time.monotonic() - started
    if done.returncode != 0:
        raise RuntimeError(f"bench: cosim up {scenario} failed: {done.stderr.strip()[-400:]}")
    metrics = json.loads(trace.with_name(f"{name}.metrics.json").read_text(encoding="utf-8"))
    return wall_s, metrics


def up_rows(result: BenchResult, directory: Path, say: Callable[[str], None]) -> None:
    """The default scenario on Docker: the whole command against its step loop plus compose up and down."""
    from cosim import compose
    from cosim.loading import load
    from cosim.runtimes.docker import prepare_images

    scenario_path = data_path("scenarios", "default.yaml")
    scenario = load(scenario_path)
    prepare_images(scenario)
    compose_file = compose.render(scenario, directory / "compose")
    say(f"fixed costs: the default scenario on Docker, the whole `cosim up` and compose up/down of its file in turn, "
        f"{UP_PAIRS} pairs")
    excess, rows = [], []
    for index in range(UP_PAIRS):
        wall_s, metrics = _whole_up(directory, scenario_path, f"up-default-{index}")
        up_s, down_s = compose_up_down(compose_file, f"cosim-bench-floor-{secrets.token_hex(4)}")
        loop_s = float(metrics["step_loop_s"])  # type: ignore[arg-type]
        excess.append(wall_s - (loop_s + up_s + down_s))
        rows.append({"whole_s": wall_s, "step_loop_s": loop_s, "compose_up_s": up_s, "compose_down_s": down_s,
                     "run_wall_s": float(metrics["wall_s"]),  # type: ignore[arg-type]
                     "init_s": float(metrics.get("init_s") or 0.0),  # type: ignore[arg-type]
                     "shutdown_s": float(metrics.get("shutdown_s") or 0.0),  # type: ignore[arg-type]
                     "bringup_s": float(metrics["environment"].get("bringup_s", 0.0)),  # type: ignore[attr-defined]
                     "teardown_s": float(metrics["environment"].get("teardown_s", 0.0))})  # type: ignore[attr-defined]
    middle = sorted(range(UP_PAIRS), key=lambda i: excess[i])[UP_PAIRS // 2]
    result.fixed_costs["up_default_docker"] = rows[middle]
    result.ratios["up_default_docker_excess_s"] = excess[middle]


def many_rows(result: BenchResult, directory: Path, say: Callable[[str], None], count: int = MANY) -> None:
    """``count`` echo containers: cosim's bring-up and teardown against compose up and down of the same file."""
    from cosim import compose
    from cosim.bench.workloads import workload
    from cosim.loading import load
    from cosim.run import run
    from cosim.runtimes.docker import prepare_images

    scenario_path = workload(directory, f"bench-many-{count}", services=count, duration_us=2_000_000,
                             period_us=10_000, tick_us=10_000)  # every container busy at 100 Hz
    scenario = load(scenario_path)
    prepare_images(scenario)
    compose_file = compose.render(scenario, directory / "compose")
    say(f"fixed costs: {count} echo containers, a cosim run (docker) then compose up/down of the same file")
    done = run(scenario_path, runtime="docker", trace_path=directory / f"many-{count}.jsonl")
    facts = done.metrics.environment
    bringup_s, stop_s = float(facts["bringup_s"]), float(facts["teardown_s"])
    init_s, shutdown_s = done.metrics.init_s or 0.0, done.metrics.shutdown_s or 0.0
    teardown_s = shutdown_s + stop_s
    say(f"  cosim: bring-up {bringup_s:.1f} s, teardown {teardown_s:.1f} s (shutdown {shutdown_s:.1f} s + stop "
        f"{stop_s:.1f} s); now compose up/down of the same file")
    up_s, down_s = compose_up_down(compose_file, f"cosim-bench-floor-{secrets.token_hex(4)}")
    result.fixed_costs[f"containers_{count}"] = {
        "bringup_s": bringup_s, "init_s": init_s, "step_loop_s": done.metrics.step_loop_s,
        "shutdown_s": shutdown_s, "stop_s": stop_s, "teardown_s": teardown_s,
        "whole_run_s": done.metrics.wall_s, "compose_up_s": up_s, "compose_down_s": down_s}
    result.ratios[f"bringup_{count}_vs_compose_up"] = bringup_s / up_s
    result.ratios[f"teardown_{count}_vs_compose_down"] = teardown_s / down_s


def table_rows(result: BenchResult) -> list[tuple[str, str, str, str]]:
    """The rows for the bench's table (measurement, value, ratio, target), with the measurements behind each."""
    rows = []
    row = result.fixed_costs.get("up_default_docker")
    if row is not None:
        rows.append(("default scenario, docker: whole `cosim up` - (step loop + compose up + compose down)",
                     f"{row['whole_s']:.2f} s - ({row['step_loop_s']:.2f} + {row['compose_up_s']:.2f} + "
                     f"{row['compose_down_s']:.2f}) s", f"{result.ratios['up_default_docker_excess_s']:+.2f} s",
                     f"<= +{TARGETS['up_default_docker_excess_s']} s"))
        # where the excess goes: cosim's bring-up and stop against the floor's compose up and down, the services'
        # own start (INIT: they load their libraries) and exit (SHUTDOWN), and the process around the run
        rows.append(("  of which: bring-up / INIT / step loop / SHUTDOWN / stop; outside the run (imports, report)",
                     f"{row['bringup_s']:.2f} / {row['init_s']:.2f} / {row['step_loop_s']:.2f} / "
                     f"{row['shutdown_s']:.2f} / {row['teardown_s']:.2f} s; {row['whole_s'] - row['run_wall_s']:.2f} s",
                     "", ""))
    for name, row in sorted(result.fixed_costs.items()):
        if not name.startswith("containers_"):
            continue
        count = name.split("_", 1)[1]
        rows.append((f"{count} containers: bring-up vs compose up",
                     f"{row['bringup_s']:.1f} s vs {row['compose_up_s']:.1f} s",
                     f"{result.ratios[f'bringup_{count}_vs_compose_up']:.2f}x",
                     f"<= {TARGETS['bringup_100_vs_compose_up']}x"))
        rows.append((f"{count} containers: teardown (shutdown + stop) vs compose down",
                     f"{row['teardown_s']:.1f} s ({row['shutdown_s']:.1f} + {row['stop_s']:.1f}) vs "
                     f"{row['compose_down_s']:.1f} s",
                     f"{result.ratios[f'teardown_{count}_vs_compose_down']:.2f}x",
                     f"<= {TARGETS['teardown_100_vs_compose_down']}x"))
        rows.append((f"{count} containers: whole run (step loop)", f"{row['whole_run_s']:.1f} s "
                     f"({row['step_loop_s']:.1f} s)", "", ""))
    return rows
