"""The determinism gate: run a scenario N times (fresh containers each time) and prove the traces identical.

With ``advance="both"`` the runs alternate between the fixed and the next-event advance: their records must be
byte-identical, and their headers and footers may differ only in the advance mode and the executed counts.

With ``checkpoint_at`` (``invoke determinism --checkpoint-at T``) every run also writes a checkpoint at T, and each
checkpoint is resumed with fresh containers (with ``--runtime both``, on the other runtime): the resumed runs'
traces must be identical to the others too."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from cosim import checkpoint as checkpointing
from cosim import loading, options
from cosim.errors import NotDeterministic
from cosim.model import ADVANCE_MODES
from cosim.run import DEFAULT_WATCHDOG_S, resume, run
from cosim.tracediff import compare, print_comparison, trace_hash

RUNTIME_CHOICES = ("docker", "local", "swarm", "both")
ADVANCE_CHOICES = (*ADVANCE_MODES, "both")


@dataclass(frozen=True)
class GateRun:
    number: int
    runtime: str
    trace: Path
    hash: str
    advance: str | None = None  # None: the scenario's own mode


def plan(runs: int | str, runtime: str) -> list[str]:
    """The runtime of each run, in order; `both` alternates so each runtime runs ``runs`` times."""
    options.choice("--runtime", runtime, RUNTIME_CHOICES)
    if runtime == "both":  # one run on each runtime is already a comparison
        each = options.integer_at_least("--runs", runs, 1, "one run on each runtime")
        return [name for _ in range(each) for name in ("local", "docker")]
    return [runtime] * options.integer_at_least("--runs", runs, 2, "two runs to compare")


def plan_modes(runs: int | str, runtime: str, advance: str | None) -> list[tuple[str, str | None]]:
    """(runtime, advance mode) of each run; ``advance="both"`` runs each planned run in both modes."""
    if advance is None or advance != "both":
        if advance is not None:
            options.choice("--advance", advance, ADVANCE_CHOICES)
        return [(name, advance) for name in plan(runs, runtime)]
    options.choice("--runtime", runtime, RUNTIME_CHOICES)
    if runtime != "both":  # one run in each mode is already a comparison
        count = options.integer_at_least("--runs", runs, 1, "one run in each mode")
        return [(runtime, mode) for _ in range(count) for mode in ("fixed", "next-event")]
    return [(name, mode) for name in plan(runs, runtime) for mode in ("fixed", "next-event")]


def gate(scenario_path: str, *, runs: int | str = 3, runtime: str = "docker", out_dir: Path | None = None,
         watchdog_s: float | str = DEFAULT_WATCHDOG_S, advance: str | None = None, checkpoint_at: str | None = None,
         out: TextIO = sys.stdout) -> list[GateRun]:
    """Run and compare; raises NotDeterministic (after printing the first divergence) on FAIL."""
    planned = plan_modes(runs, runtime, advance)
    across_modes = advance == "both"
    watchdog_s = options.positive_seconds("--watchdog", watchdog_s)
    scenario = loading.load(scenario_path)
    name = scenario.name
    times = checkpointing.parse_times("--checkpoint-at", checkpoint_at, scenario)
    directory = out_dir if out_dir is not None else Path("traces") / "determinism"
    results: list[GateRun] = []

    def record(label: str, trace: Path, mode: str | None) -> None:
        results.append(GateRun(len(results) + 1, label.strip(), trace, trace_hash(trace, across_modes=across_modes), mode))
        out.write(f"run {results[-1].number} ({label}): sha256 {results[-1].hash}  {trace}\n")
        out.flush()

    for number, (runtime_name, mode) in enumerate(planned, start=1):
        trace = directory / f"{name}-{number}-{runtime_name}{f'-{mode}' if mode else ''}.jsonl"
        written: list[Path] = []

        def remember(path: Path, size: int, seconds: float, written: list[Path] = written) -> None:
            written.append(path)

        run(scenario_path, runtime=runtime_name, trace_path=trace, watchdog_s=watchdog_s, advance=mode,
            checkpoint_at=times, checkpoint_dir=directory / f"{name}-{number}-checkpoints", checkpoint_written=remember)
        record(f"{runtime_name:>6}{f', {mode}' if mode else ''}", trace, mode)
        for checkpoint, time_us in zip(written, times):
            # A resume in fresh containers; with `both` runtimes, on the other runtime than the one checkpointed.
            again = {"local": "docker", "docker": "local"}[runtime_name] if runtime == "both" else runtime_name
            resumed = directory / f"{name}-{number}-{runtime_name}-resumed-{time_us}us-{again}.jsonl"
            resume(checkpoint, runtime=again, trace_path=resumed, watchdog_s=watchdog_s)
            record(f"{again} from {runtime_name} checkpoint at {time_us} us{f', {mode}' if mode else ''}", resumed,
                   mode)
    reference = results[0]
    different = [result for result in results[1:] if result.hash != reference.hash]
    if not different:
        what = "identical records in both advance modes" if across_modes else "identical traces"
        out.write(f"PASS: {len(results)} runs of {name!r} gave {what}\n")
        return results
    first = different[0]
    out.write(f"FAIL: run {first.number} ({first.runtime}{f', {first.advance}' if first.advance else ''}) differs "
              f"from run 1 ({reference.runtime}{f', {reference.advance}' if reference.advance else ''})\n")
    print_comparison(compare(reference.trace, first.trace, across_modes=across_modes), out, label_a="run1",
                     label_b=f"run{first.number}")
    raise NotDeterministic(f"{len(different)} of {len(results) - 1} runs differ from run 1; "
                           f"see the first divergent record above")
