"""The determinism gate: run a scenario N times (fresh containers each time) and prove the traces identical.

With ``checkpoint_at`` (``invoke determinism --checkpoint-at T``) every run also writes a checkpoint at T, and each
checkpoint is resumed with fresh containers (with ``--runtime both``, on the other runtime): the resumed runs'
traces must be identical to the others too."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cosim import checkpoint as checkpointing, loading, options
from cosim.errors import NotDeterministic
from cosim.run import DEFAULT_WATCHDOG_S, resume, run
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
         watchdog_s: float | str = DEFAULT_WATCHDOG_S, checkpoint_at: str | None = None,
         out: TextIO = sys.stdout) -> list[GateRun]:
    """Run and compare; raises NotDeterministic (after printing the first divergence) on FAIL."""
    runtimes = plan(runs, runtime)
    watchdog_s = options.positive_seconds("--watchdog", watchdog_s)
    scenario = loading.load(scenario_path)
    name = scenario.name
    times = checkpointing.parse_times("--checkpoint-at", checkpoint_at, scenario)
    directory = out_dir if out_dir is not None else Path("traces") / "determinism"
    results: list[GateRun] = []

    def record(label: str, trace: Path) -> None:
        results.append(GateRun(len(results) + 1, label, trace, trace_hash(trace)))
        out.write(f"run {results[-1].number} ({label:>6}): sha256 {results[-1].hash}  {trace}\n")
        out.flush()

    for number, runtime_name in enumerate(runtimes, start=1):
        trace = directory / f"{name}-{number}-{runtime_name}.jsonl"
        written: list[Path] = []
        run(scenario_path, runtime=runtime_name, trace_path=trace, watchdog_s=watchdog_s, checkpoint_at=times,
            checkpoint_dir=directory / f"{name}-{number}-checkpoints",
            checkpoint_written=lambda path, size, seconds: written.append(path))
        record(runtime_name, trace)
        for checkpoint, time_us in zip(written, times):
            # A resume in fresh containers; with `both`, on the other runtime than the one checkpointed.
            again = {"local": "docker", "docker": "local"}[runtime_name] if runtime == "both" else runtime_name
            resumed = directory / f"{name}-{number}-{runtime_name}-resumed-{time_us}us-{again}.jsonl"
            resume(checkpoint, runtime=again, trace_path=resumed, watchdog_s=watchdog_s)
            record(f"{again} from {runtime_name} checkpoint at {time_us} us", resumed)
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
