"""The determinism gate: run a scenario N times (fresh containers each time) and prove the traces identical."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cosim import loading, options
from cosim.errors import NotDeterministic
from cosim.run import DEFAULT_WATCHDOG_S, run
from cosim.tracediff import compare, print_comparison, trace_hash

RUNTIME_CHOICES = ("docker", "local", "swarm", "both")


@dataclass(frozen=True)
class GateRun:
    number: int
    runtime: str
    trace: Path
    hash: str


def plan(runs: int | str, runtime: str) -> list[str]:
    """The runtime of each run, in order; `both` alternates so each runtime runs ``runs`` times."""
    options.choice("--runtime", runtime, RUNTIME_CHOICES)
    if runtime == "both":  # one run on each runtime is already a comparison
        each = options.integer_at_least("--runs", runs, 1, "one run on each runtime")
        return [name for _ in range(each) for name in ("local", "docker")]
    return [runtime] * options.integer_at_least("--runs", runs, 2, "two runs to compare")


def gate(scenario_path: str, *, runs: int | str = 3, runtime: str = "docker", out_dir: Path | None = None,
         watchdog_s: float | str = DEFAULT_WATCHDOG_S, out: TextIO = sys.stdout) -> list[GateRun]:
    """Run and compare; raises NotDeterministic (after printing the first divergence) on FAIL."""
    runtimes = plan(runs, runtime)
    watchdog_s = options.positive_seconds("--watchdog", watchdog_s)
    name = loading.load(scenario_path).name
    directory = out_dir if out_dir is not None else Path("traces") / "determinism"
    results: list[GateRun] = []
    for number, runtime_name in enumerate(runtimes, start=1):
        trace = directory / f"{name}-{number}-{runtime_name}.jsonl"
        run(scenario_path, runtime=runtime_name, trace_path=trace, watchdog_s=watchdog_s)
        results.append(GateRun(number, runtime_name, trace, trace_hash(trace)))
        out.write(f"run {number} ({runtime_name:>6}): sha256 {results[-1].hash}  {trace}\n")
        out.flush()
    reference = results[0]
    different = [result for result in results[1:] if result.hash != reference.hash]
    if not different:
        out.write(f"PASS: {len(results)} runs of {name!r} gave identical traces\n")
        return results
    first = different[0]
    out.write(f"FAIL: run {first.number} ({first.runtime}) differs from run 1 ({reference.runtime})\n")
    print_comparison(compare(reference.trace, first.trace), out, label_a="run1", label_b=f"run{first.number}")
    raise NotDeterministic(f"{len(different)} of {len(results) - 1} runs differ from run 1; "
                           f"see the first divergent record above")
