"""The bench's whole-process row against mosaik 3.6 (a bench-only peer, like the floors: measured in the same run).

The sparse shape (a 1 Hz source -> an echo in a process of its own -> a sink, ``sparse_s`` virtual seconds): cosim
as a user runs it (`cosim up SCENARIO --runtime local --quiet --no-report`, the `uniform` sensor, the echo service),
and the same shape in mosaik (cosim/bench/mosaik_world.py, run by the interpreter of a venv of its own). Each side is
a whole process, interpreter start to exit, timed from here; the pairs are taken in turn (``stats.in_turn``) and
the verdict is the median of the pairs' ratios.

mosaik is installed on demand from PyPI into ``<cosim cache>/bench/mosaik-3.6`` (a venv beside cosim's, never in
cosim's own dependencies); without it (offline) the row is skipped, saying why. Both sides run once first (not
measured) and with bytecode caching on (``PYTHONDONTWRITEBYTECODE`` removed): a user's second run, compiled modules
and remembered scenario validation on both sides.

mosaik's echo and sink are time-based simulators stepped at 1 Hz: with event-based ones, mosaik 3.6 keeps a waiter
per step of each (its ``Progress`` futures of cancelled ``has_reached`` tasks) and the same run takes four times as
long; the bench measures mosaik at its better configuration. Wall clock: measurement only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from cosim.bench.result import BenchResult
from cosim.bench.stats import in_turn, paired_ratio
from cosim.bench.workloads import workload

MOSAIK_REQUIREMENT = "mosaik==3.6.*"  # mosaik-api-v3 comes with it
MOSAIK_WORLD = Path(__file__).with_name("mosaik_world.py")
WHOLE_PAIRS = 5


def mosaik_python() -> Path | str:
    """The interpreter of the bench's mosaik venv, made (and mosaik installed) on first use; or why there is none."""
    from cosim.service_sources import cache_dir

    venv = cache_dir() / "bench" / "mosaik-3.6"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import mosaik, mosaik_api_v3"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    made = subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], capture_output=True, text=True)
    if made.returncode != 0:
        return f"could not create a venv at {venv}: {made.stderr.strip().splitlines()[-1:]}"
    installed = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                MOSAIK_REQUIREMENT], capture_output=True, text=True)
    if installed.returncode != 0:
        last = (installed.stderr.strip().splitlines() or ["?"])[-1]
        return f"pip install {MOSAIK_REQUIREMENT} into {venv} failed: {last}"
    return python


def _whole(argv: Sequence[str], env: dict[str, str]) -> float:
    """Wall seconds of one whole process; a failure is the bench's (it names the command)."""
    started = time.perf_counter()
    done = subprocess.run(list(argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited with {done.returncode}: {done.stderr.strip()[-500:]}")
    return elapsed


def mosaik_rows(result: BenchResult, directory: Path, say: Callable[[str], None], sparse_s: int) -> None:
    """cosim's whole process (local runtime) against mosaik's on the sparse shape, ``WHOLE_PAIRS`` pairs."""
    say("whole process: the sparse shape, cosim up --runtime local against mosaik 3.6 (installing mosaik if needed)")
    python = mosaik_python()
    if isinstance(python, str):
        say(f"whole process against mosaik: skipped ({python})")
        result.settings["mosaik"] = f"skipped: {python}"
        return
    scenario = workload(directory, "bench-whole", services=1, duration_us=sparse_s * 1_000_000, period_us=1_000_000)
    env = {name: value for name, value in os.environ.items() if name != "PYTHONDONTWRITEBYTECODE"}
    sides = [
        partial(_whole, [sys.executable, "-m", "cosim", "up", str(scenario), "--runtime", "local", "--quiet",
                         "--no-report", "--trace", str(directory / "bench-whole.jsonl")], env),
        partial(_whole, [str(python), str(MOSAIK_WORLD), str(sparse_s)], env),
    ]
    for side in sides:  # (not measured: compiled modules, the remembered validation, the page cache)
        side()
    cosim_s, mosaik_s = in_turn(WHOLE_PAIRS, sides)
    name = "sparse_local_whole_vs_mosaik"
    ratio = paired_ratio(mosaik_s, cosim_s)
    result.ratios[name], result.ratio_intervals[name], result.ratio_fastest[name] = ratio
    result.settings["whole_process_s"] = {"cosim": sorted(cosim_s), "mosaik": sorted(mosaik_s)}
