"""`cosim sweep SCENARIO`: many runs of one scenario over seeds and parameter values, as one experiment.

The grid is the product of the swept parameters' values (``--set PATH=V1,V2``, repeatable, or a sweep file); every
variant runs with the same seeds (common random numbers: differences between variants are paired). Each run is
written out as a plain scenario file, ``runs/<variant>-seed-<n>/scenario.yaml``, beside its trace: the sweep runs
exactly that file, so ``cosim up`` of it by hand gives the same trace hash. Every variant is loaded (schema and
rules) before anything runs.

Runs go to a process pool (``--jobs N``): each worker process works in the run's directory while it runs it
(so concurrent Docker runs render their compose files apart; each run is its own compose project already). A run
whose trace is complete and whose hashed header matches its scenario file is not run again (resumable); a failed run
is reported with its reason and the others are kept. ``results.csv`` (and ``results.parquet`` with pandas and
pyarrow) holds one row per run: parameters, seed, trace hash, status and the measures (cosim.sweep_measures);
cosim.sweep_stats gives the per-variant intervals, the paired differences, the summary and the HTML report.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import csv
import importlib
import itertools
import json
import math
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import yaml

from cosim import loading, options, segments
from cosim.errors import (
    CosimError,
    Interrupted,
    OptionError,
    ScenarioError,
    SweepError,
    UsageError,
)
from cosim.options import DEFAULT_WATCHDOG_S

RUNTIMES = ("local", "docker", "swarm")
MAX_RUNS = 10_000
RESULTS = "results.csv"
INTERRUPTED = "interrupted"  # a run's status when Ctrl-C stopped the sweep before it ended
Measure = Callable[[Any], Mapping[str, float]]
Task = tuple[str, Callable[..., "Outcome"], tuple[Any, ...]]  # (name, function, arguments) for a worker process


# -- the grid -----------------------------------------------------------------------------------------------------


def parse_seeds(text: str | int | Sequence[int], option: str = "--seeds") -> list[int]:
    """``1-20``, ``1,3,5``, ``1-3,10`` (or a list of ints from a sweep file): the seeds, each once, in order."""
    if isinstance(text, int) and not isinstance(text, bool):
        text = str(text)
    parts = [str(item) for item in text] if isinstance(text, (list, tuple)) else str(text).split(",")
    seeds: list[int] = []
    for part in (item.strip() for item in parts):
        first, dash, last = part.partition("-")
        try:
            low = int(first)
            high = int(last) if dash else low
        except ValueError:
            raise OptionError(option, text, "seeds as ranges and lists, e.g. 1-20 or 1,3,5 or 1-3,10") from None
        if low < 0 or high < low:
            raise OptionError(option, text, f"ranges LOW-HIGH with 0 <= LOW <= HIGH (not {part!r})")
        seeds.extend(seed for seed in range(low, high + 1) if seed not in seeds)
    if not seeds:
        raise OptionError(option, text, "at least one seed")
    return seeds


def parse_value(text: str) -> Any:
    """One value of ``--set`` as YAML reads it: ``500`` is a number, ``0.1`` a float, ``true`` a boolean, ``abc`` text."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_set(text: str) -> tuple[str, list[Any]]:
    """``PATH=V1,V2,...`` -> (PATH, [values])."""
    path, equals, values = text.partition("=")
    if not equals or not path.strip() or not values.strip():
        raise OptionError("--set", text, "PATH=V1,V2,... (e.g. nodes.gateway.config.broker_delay_us=500,2000)")
    return path.strip(), [parse_value(value.strip()) for value in values.split(",")]


@dataclass(frozen=True)
class Variant:
    """One point of the grid: its id (``v1``, ``v2``, ... in grid order) and its parameter values."""

    id: str
    parameters: tuple[tuple[str, Any], ...]

    def label(self) -> str:
        return ", ".join(f"{path}={_show(value)}" for path, value in self.parameters) or "(the scenario as it is)"


@dataclass(frozen=True)
class RunSpec:
    """One run: a variant with one seed, in its own directory."""

    variant: Variant
    seed: int
    directory: Path

    @property
    def name(self) -> str:
        return self.directory.name

    @property
    def scenario(self) -> Path:
        return self.directory / "scenario.yaml"

    @property
    def trace(self) -> Path:
        return self.directory / "trace.jsonl"


def grid(parameters: Sequence[tuple[str, Sequence[Any]]]) -> list[Variant]:
    """The product of the parameters' values, the first parameter varying slowest."""
    paths = [path for path, _ in parameters]
    duplicated = sorted({path for path in paths if paths.count(path) > 1})
    if duplicated:
        raise SweepError(f"--set {duplicated[0]} is given more than once; list all its values in one --set")
    combos = list(itertools.product(*(values for _, values in parameters)))
    return [Variant(f"v{index}", tuple(zip(paths, combo))) for index, combo in enumerate(combos, start=1)]


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


# -- writing variants ---------------------------------------------------------------------------------------------


def set_path(document: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path in a scenario document. Lists are entered by the ``id`` of an element (``nodes.gateway``),
    by the ``to`` of a link (``nodes.pump-1.links.gateway.loss``) or by index. Mappings on the way may be missing
    (``network.default_link.loss`` in a scenario without ``network``); lists must hold what the path names."""
    parts = path.split(".")
    if any(not part for part in parts):
        raise SweepError(f"--set {path}: empty part in the path")
    current: Any = document
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        where = ".".join(parts[:depth]) or "the scenario"
        if isinstance(current, list):
            index = _list_index(current, part, path, where)
            if last:
                current[index] = value
                return
            current = current[index]
        elif isinstance(current, dict):
            if last:
                current[part] = value
                return
            if part not in current or current[part] is None:
                current[part] = {}
            current = current[part]
        else:
            raise SweepError(f"--set {path}: {where} is {_show(current)}, not a mapping or list to go into")


def _list_index(items: list[Any], part: str, path: str, where: str) -> int:
    for key in ("id", "to"):
        for index, item in enumerate(items):
            if isinstance(item, dict) and item.get(key) == part:
                return index
    if part.isdigit() and int(part) < len(items):
        return int(part)
    known = [str(item.get("id", item.get("to"))) for item in items if isinstance(item, dict)
             and ("id" in item or "to" in item)]
    return _missing(path, part, where, known)


def _missing(path: str, part: str, where: str, known: list[str]) -> int:
    import difflib

    close = difflib.get_close_matches(part, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else (f"; known: {', '.join(known)}" if known else "")
    raise SweepError(f"--set {path}: no {part!r} in {where}{hint}")


def variant_document(base: Mapping[str, Any], base_dir: Path, run: RunSpec) -> dict[str, Any]:
    """The scenario document of one run: the base with the run's seed and parameters, `build:` paths rewritten so
    that they resolve from the run's directory, and no `trace:` (the sweep names each run's trace)."""
    document = json.loads(json.dumps(base))  # a deep copy of plain YAML data
    document["seed"] = run.seed
    document.pop("trace", None)
    for path, value in run.variant.parameters:
        set_path(document, path, value)
    for node in document.get("nodes") or []:
        if isinstance(node, dict) and isinstance(node.get("build"), str):
            target = (base_dir / node["build"]).resolve()
            node["build"] = os.path.relpath(target, run.directory.resolve())
    return document


def write_variant(run: RunSpec, document: Mapping[str, Any], checkpoint: Path | None = None) -> None:
    """The run's scenario file; left as it is when its bytes are already these (its hash names the trace)."""
    if checkpoint is None:
        how = f"cosim up {run.scenario.name} --runtime local (or docker)"
    else:
        how = f"cosim resume {os.path.relpath(checkpoint, run.directory)} --scenario {run.scenario.name} --runtime local"
    text = (f"# cosim sweep run {run.name}: {run.variant.label()}, seed {run.seed}\n"
            f"# Repeat it by hand, from this directory: {how};\n"
            f"# the trace hash is the same as in the sweep.\n"
            + yaml.safe_dump(document, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True))
    run.directory.mkdir(parents=True, exist_ok=True)
    if not run.scenario.is_file() or run.scenario.read_text(encoding="utf-8") != text:
        run.scenario.write_text(text, encoding="utf-8")


# -- the plan -----------------------------------------------------------------------------------------------------


@dataclass
class Plan:
    scenario: Path
    name: str
    seeds: list[int]
    variants: list[Variant]
    out: Path
    runtime: str = "local"
    jobs: int = 1
    measures: list[str] = field(default_factory=list)
    baseline: str = "v1"
    watchdog_s: float = DEFAULT_WATCHDOG_S
    fork_at: int | None = None  # us: each run forks from its seed's prefix, checkpointed at this time

    @property
    def prefixes(self) -> dict[int, RunSpec]:
        """``--fork-at``: per seed, the shared prefix (the scenario as it is, with that seed) run up to T once."""
        if self.fork_at is None:
            return {}
        return {seed: RunSpec(PREFIX, seed, self.out / "prefix" / f"seed-{seed}") for seed in self.seeds}

    @property
    def runs(self) -> list[RunSpec]:
        return [RunSpec(variant, seed, self.out / "runs" / f"{variant.id}-seed-{seed}")
                for variant in self.variants for seed in self.seeds]

    @property
    def parameters(self) -> list[str]:
        return [path for path, _ in self.variants[0].parameters] if self.variants else []


PREFIX = Variant("prefix", ())
# What a fork at T can change (cosim resume --scenario): service config (CONFIGURE at T), links, the duration.
FORKABLE = ("nodes.*.config.", "nodes.*.links.", "network.default_link.", "duration_us")
FORKABLE_TEXT = "nodes.<id>.config.*, nodes.<id>.links.*, network.default_link.*, duration_us"


def forkable(path: str) -> bool:
    parts = path.split(".")
    for pattern in FORKABLE:
        want = pattern.rstrip(".").split(".")
        if len(parts) >= len(want) + (1 if pattern.endswith(".") else 0) and all(
                w == "*" or w == p for w, p in zip(want, parts)):
            return True
    return False


def read_sweep_file(path: str | Path) -> dict[str, Any]:
    """A sweep file: ``scenario``, ``seeds``, ``parameters`` (PATH: [values]), and optionally ``measures``,
    ``baseline``, ``jobs``, ``runtime``, ``out``. Paths in it are relative to the file."""
    path = Path(path)
    source = str(path)
    text = loading.reading.decode(loading.reading.read_bytes(path, source), source)
    document, _ = loading.reading.parse_yaml(text, source)
    allowed = {"scenario", "seeds", "parameters", "measures", "baseline", "jobs", "runtime", "out", "fork_at"}
    for key in document:
        if key not in allowed:
            raise ScenarioError(source, f"unknown key {key!r}; a sweep file has {', '.join(sorted(allowed))}")
    parameters = document.get("parameters") or {}
    if not isinstance(parameters, dict) or not all(isinstance(v, list) and v for v in parameters.values()):
        raise ScenarioError(source, "parameters: expected a mapping of PATH: [value, ...]", path="parameters")
    measures = document.get("measures") or []
    if isinstance(measures, str):
        measures = [measures]
    for key in ("scenario", "out"):
        if isinstance(document.get(key), str):
            document[key] = str(path.parent / document[key])
    document["parameters"] = parameters
    document["measures"] = measures
    return document


def plan(scenario: str | None = None, *, seeds: str | Sequence[int] | None = None, sets: Iterable[str] = (),
         sweep_file: str | None = None, jobs: int | str | None = None, runtime: str | None = None,
         out: str | None = None, measures: Iterable[str] = (), baseline: str | None = None,
         watchdog_s: float | str = DEFAULT_WATCHDOG_S, fork_at: int | str | None = None) -> Plan:
    """The sweep from the command line (which overrides the sweep file's settings); nothing written yet."""
    file = read_sweep_file(sweep_file) if sweep_file else {}
    scenario = scenario or file.get("scenario")
    if not scenario:
        raise UsageError("usage: cosim sweep SCENARIO --seeds 1-20 --set PATH=V1,V2 ... (or --sweep FILE)")
    parameters: list[tuple[str, list[Any]]] = [(str(p), list(v)) for p, v in file.get("parameters", {}).items()]
    given = [parse_set(text) for text in sets]
    overridden = {path for path, _ in given}
    parameters = [item for item in parameters if item[0] not in overridden] + given
    if any(path == "seed" for path, _ in parameters):
        raise SweepError("--set seed: the seeds are --seeds (or the sweep file's `seeds`), the same in every variant")
    seed_list = parse_seeds(seeds if seeds is not None else file.get("seeds", "1"))
    runtime = options.choice("--runtime", runtime or file.get("runtime", "local"), RUNTIMES)
    jobs_n = options.integer_at_least("--jobs", jobs if jobs is not None else file.get("jobs", 1), 1)
    variants = grid(parameters)
    if len(variants) * len(seed_list) > MAX_RUNS:
        raise SweepError(f"{len(variants)} variants x {len(seed_list)} seeds is more than {MAX_RUNS} runs")
    base = loading.load(scenario)  # the base scenario itself must be valid
    segments.check_available(base)  # ns-3, for a scenario with network segments: before any run
    target = Path(out or file.get("out") or Path("sweeps") / base.name)
    names = [str(m) for m in file.get("measures", [])] + [m for m in measures if m not in file.get("measures", [])]
    chosen = _baseline(baseline if baseline is not None else file.get("baseline"), variants)
    fork = fork_at if fork_at is not None else file.get("fork_at")
    fork_us = None
    if fork is not None:
        from cosim import checkpoint as checkpointing

        fork_us = checkpointing.parse_times("--fork-at", str(fork), base)[0]
        if base.segments:
            raise SweepError(segments.NO_CHECKPOINTS.format(option="--fork-at", name=base.name))
        for path, _ in parameters:
            if not forkable(path):
                raise SweepError(f"--fork-at: --set {path} cannot change at a fork (a fork at T changes only "
                                 f"{FORKABLE_TEXT}); sweep it without --fork-at")
    return Plan(Path(scenario), base.name, seed_list, variants, target, runtime, jobs_n, names, chosen,
                options.positive_seconds("--watchdog", watchdog_s), fork_us)


def _baseline(text: Any, variants: list[Variant]) -> str:
    """``--baseline v3`` or ``--baseline PATH=V[,PATH=V]``: the variant the others are compared with (default v1)."""
    if text is None or text == "":
        return variants[0].id
    text = str(text)
    if any(variant.id == text for variant in variants):
        return text
    wanted = {}
    for part in text.split(";" if ";" in text else ","):
        path, equals, value = part.partition("=")
        if not equals:
            raise OptionError("--baseline", text, "a variant id (v1, v2, ...) or PATH=VALUE[,PATH=VALUE]")
        wanted[path.strip()] = parse_value(value.strip())
    for variant in variants:
        values = dict(variant.parameters)
        if all(path in values and values[path] == value for path, value in wanted.items()):
            return variant.id
    raise OptionError("--baseline", text, "a variant of the grid: " + "; ".join(f"{v.id} {v.label()}" for v in variants))


def prepare(sweep: Plan) -> list[RunSpec]:
    """Write every run's scenario file and load each (schema and rules) before anything runs: a bad parameter path
    or value is one error naming it, and nothing has started."""
    base_path = sweep.scenario
    source = str(base_path)
    document, _ = loading.reading.parse_yaml(
        loading.reading.decode(loading.reading.read_bytes(base_path, source), source), source)
    runs = sweep.runs
    checked: set[str] = set()
    prefix_documents: dict[int, tuple[dict[str, Any], Any]] = {}  # seed -> the prefix's document and scenario
    for seed, prefix in sweep.prefixes.items():
        prefix_document = variant_document(document, base_path.resolve().parent, prefix)
        write_variant(prefix, prefix_document)
        prefix_documents[seed] = (prefix_document, loading.load(prefix.scenario))
    prefixes = sweep.prefixes
    for run in runs:
        written = variant_document(document, base_path.resolve().parent, run)
        parent = checkpoint_of(prefixes[run.seed], sweep.fork_at) if sweep.fork_at is not None else None
        write_variant(run, written, parent)
        try:
            loaded = loading.load(run.scenario)
        except ScenarioError as error:
            if run.variant.id in checked:
                raise
            raise SweepError(_value_error(run, error)) from None
        checked.add(run.variant.id)
        if sweep.fork_at is not None:
            _write_scheduled(run, *prefix_documents[run.seed], written, loaded, sweep.fork_at)
    _write_variants(sweep)
    return runs


def _write_scheduled(run: RunSpec, prefix_document: Mapping[str, Any], prefix_scenario: Any, written: Mapping[str, Any],
                     loaded: Any, time_us: int) -> None:
    """``--fork-at``: beside the branch, the full run it stands for (cosim.sweep_fork): ``scheduled.yaml``."""
    from cosim import sweep_fork

    scheduled = sweep_fork.scheduled_document(prefix_document, written, prefix_scenario, loaded, time_us)
    text = (f"# cosim sweep run {run.name} as a full run: the base scenario with the variant's changes scheduled at "
            f"{time_us} us.\n# Its records equal the branch's (trace.jsonl) except the `action` records of the "
            f"schedule:\n# cosim up {sweep_fork.SCHEDULED} --runtime local --trace full.jsonl\n"
            + yaml.safe_dump(scheduled, sort_keys=False, default_flow_style=False, width=120, allow_unicode=True))
    target = run.directory / sweep_fork.SCHEDULED
    if not target.is_file() or target.read_text(encoding="utf-8") != text:
        target.write_text(text, encoding="utf-8")


def _value_error(run: RunSpec, error: ScenarioError) -> str:
    swept = ", ".join(f"{path}={_show(value)}" for path, value in run.variant.parameters)
    field_path = f" {error.path}:" if error.path else ""
    return f"variant {run.variant.id} ({swept or 'no parameters'}) is not a valid scenario:{field_path} {error.message}"


def _write_variants(sweep: Plan) -> None:
    """``sweep.json``: what the sweep is (the grid, the seeds, the baseline), for the report and for people."""
    sweep.out.mkdir(parents=True, exist_ok=True)
    content = {"scenario": str(sweep.scenario), "name": sweep.name, "seeds": sweep.seeds,
               "parameters": sweep.parameters, "baseline": sweep.baseline, "measures": sweep.measures,
               "variants": [{"id": v.id, "parameters": {p: val for p, val in v.parameters}} for v in sweep.variants]}
    (sweep.out / "sweep.json").write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


# -- one run (in a worker process) --------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What a worker returns for one run: ``status`` ok, failed or skipped (complete already), the trace hash, the
    reason a run failed, its measures, and its wall time (for the progress display only)."""

    run: str
    status: str
    trace_sha256: str = ""
    error: str = ""
    measures: dict[str, float] = field(default_factory=dict)
    wall_s: float = 0.0


def complete(run: RunSpec) -> bool:
    """The run's trace is complete (a footer with status ok) and its hashed header is that of the run's scenario
    file as it is now (same bytes, same compose spec, same cosim): running it again would give the same trace."""
    from cosim import compose
    from cosim import trace as tracing
    from cosim.errors import TraceReadError

    if not run.trace.is_file():
        return False
    try:
        lines = run.trace.read_bytes().split(b"\n")
        header, last = json.loads(lines[0]), json.loads(next(line for line in reversed(lines) if line.strip()))
        if last.get("record") != "footer" or last.get("status") != "ok":
            return False
        scenario = loading.load(run.scenario)
        expected = tracing.scenario_manifest(scenario, compose.sha256(scenario))
        return all(header.get(key) == value for key, value in expected.items())
    except (ValueError, StopIteration, CosimError, TraceReadError):
        return False


def execute(run: RunSpec, runtime: str, watchdog_s: float, measures: Sequence[str], cwd: str,
            checkpoint: Path | None = None) -> Outcome:
    """Run one sweep run (unless complete) and measure it: the body of a worker task. With ``checkpoint``, the run
    is a fork of it (``cosim resume CHECKPOINT --scenario`` the run's file)."""
    from cosim.run import resume as resume_run
    from cosim.run import run as run_scenario
    from cosim.sweep_measures import measure
    from cosim.tracediff import trace_hash

    started = time.monotonic()  # wall clock: the progress display's ETA only
    status, error = "skipped", ""
    if not complete(run):
        status = "ok"
        scenario, trace = run.scenario.resolve(), run.trace.resolve()
        parent = checkpoint.resolve() if checkpoint is not None else None
        os.chdir(run.directory)  # this process only: compose/ and checkpoints/ of this run stay in its directory
        try:
            if parent is not None:
                resume_run(parent, runtime=runtime, trace_path=trace, watchdog_s=watchdog_s, scenario_path=scenario)
            else:
                run_scenario(scenario, runtime=runtime, trace_path=trace, watchdog_s=watchdog_s)
        except Interrupted as exc:
            status, error = INTERRUPTED, _one_line(str(exc))
        except CosimError as exc:
            status, error = "failed", _one_line(str(exc))
        except Exception as exc:  # noqa: BLE001  (a bug or a surprise: reported for this run, the others go on)
            status, error = "failed", _one_line(f"{type(exc).__name__}: {exc}")
        finally:
            os.chdir(cwd)
    outcome = Outcome(run.name, status, error=error, wall_s=time.monotonic() - started)
    if run.trace.is_file():
        try:
            outcome.trace_sha256 = trace_hash(run.trace)
            outcome.measures = measure(run.trace, run.scenario, [load_measure(name) for name in measures])
        except CosimError as exc:
            outcome.status, outcome.error = "failed", outcome.error or _one_line(str(exc))
        except Exception as exc:  # noqa: BLE001  (a measure of the user's raised: this run's row says so)
            outcome.status = "failed"
            outcome.error = outcome.error or _one_line(f"a measure raised {type(exc).__name__}: {exc}")
    return outcome


def checkpoint_of(prefix: RunSpec, time_us: int) -> Path:
    """Where a prefix's checkpoint goes (beside its trace)."""
    return prefix.directory / f"{prefix.variant.id}-{time_us}us.checkpoint.json"


def execute_prefix(prefix: RunSpec, runtime: str, watchdog_s: float, time_us: int) -> Outcome:
    """``--fork-at``: run a seed's prefix up to T and checkpoint it (unless its checkpoint is there and reads)."""
    from cosim import checkpoint as checkpointing
    from cosim.run import run as run_scenario

    started = time.monotonic()
    target = checkpoint_of(prefix, time_us)
    scenario = loading.load(prefix.scenario)
    try:
        content, _ = checkpointing.read(target)
        if content["scenario"]["sha256"] == scenario.sha256 and content["time_us"] == time_us:
            return Outcome(prefix.name, "skipped")
    except CosimError:
        pass
    written = checkpointing.path_for(scenario, time_us, prefix.directory.resolve())
    try:
        run_scenario(prefix.scenario.resolve(), runtime=runtime, trace_path=prefix.trace.resolve(),
                     watchdog_s=watchdog_s, checkpoint_at=[time_us], stop_after_checkpoint=True,
                     checkpoint_dir=prefix.directory.resolve())
        os.replace(written, target)
    except Interrupted as exc:
        return Outcome(prefix.name, INTERRUPTED, error=_one_line(str(exc)), wall_s=time.monotonic() - started)
    except CosimError as exc:
        return Outcome(prefix.name, "failed", error=_one_line(str(exc)), wall_s=time.monotonic() - started)
    return Outcome(prefix.name, "ok", wall_s=time.monotonic() - started)


def _one_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else ""


def load_measure(name: str) -> Measure:
    """``module:function`` -> the function (``--measure``): it takes the trace (cosim.trace.Trace), returns numbers."""
    module_name, colon, function_name = name.partition(":")
    if not colon or not module_name or not function_name:
        raise OptionError("--measure", name, "module:function (a function taking the trace, returning a dict of numbers)")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # a measure of the user's is found where the sweep was started
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OptionError("--measure", name, f"an importable module ({exc})") from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise OptionError("--measure", name, f"a function {function_name!r} in module {module_name!r}")
    return function


# -- the sweep ----------------------------------------------------------------------------------------------------


class Progress:
    """One line across runs: done, running, failed, skipped, ETA. Redrawn in place on a terminal, else one line per
    finished run. Wall clock: display only."""

    def __init__(self, total: int, jobs: int, out: TextIO = sys.stderr) -> None:
        self.total, self.jobs, self.out = total, jobs, out
        self.terminal = out.isatty()
        self.done = self.failed = self.skipped = self.running = 0
        self.executed_s: list[float] = []
        self.started = time.monotonic()

    def finished(self, outcome: Outcome) -> None:
        self.done += 1
        self.failed += outcome.status == "failed"
        self.skipped += outcome.status == "skipped"
        if outcome.status != "skipped":
            self.executed_s.append(outcome.wall_s)
        if not self.terminal:
            why = f": {outcome.error}" if outcome.error else ""
            self.out.write(f"  {outcome.run} {outcome.status}{why}\n")
        self.draw()

    def draw(self) -> None:
        remaining = self.total - self.done
        if self.executed_s and remaining:
            eta = f"{sum(self.executed_s) / len(self.executed_s) * math.ceil(remaining / self.jobs):.0f} s"
        else:
            eta = "?" if remaining else "0 s"
        line = (f"sweep: {self.done}/{self.total} done ({self.skipped} skipped), {self.running} running, "
                f"{self.failed} failed, ETA {eta}")
        if self.terminal:
            self.out.write("\r" + line + "\x1b[K")
            if not remaining:
                self.out.write("\n")
        elif not remaining:
            self.out.write(line + "\n")
        self.out.flush()


def run_all(sweep: Plan, runs: Sequence[RunSpec], progress: Progress | None = None) -> list[Outcome]:
    """Every run through a pool of ``jobs`` worker processes. Ctrl-C stops the
    sweep: runs not started are reported as not run, and the finished ones are kept. With ``--fork-at``, each
    seed's prefix runs first (once), then every run forks from its seed's checkpoint."""
    for name in sweep.measures:
        load_measure(name)  # a bad --measure is found before anything runs
    cwd = os.getcwd()
    if sweep.runtime == "swarm" and runs:
        images_on_every_node(runs[0].scenario)
    outcomes: dict[str, Outcome] = {}
    checkpoints: dict[int, Path] = {}
    if sweep.fork_at is not None:
        prefixes = sweep.prefixes
        prefix_tasks: list[Task] = [(prefix.name, execute_prefix, (prefix, sweep.runtime, sweep.watchdog_s,
                                                                  sweep.fork_at)) for prefix in prefixes.values()]
        done = _pool(sweep.jobs, prefix_tasks, None)
        if any(outcome.status == INTERRUPTED for outcome in done.values()):
            return [Outcome(run.name, INTERRUPTED, error="not run: the sweep was interrupted") for run in runs]
        for seed, prefix in prefixes.items():
            if done[prefix.name].status == "failed":
                for run in runs:
                    if run.seed == seed:
                        outcomes[run.name] = Outcome(run.name, "failed",
                                                     error=f"its prefix {prefix.name} failed: {done[prefix.name].error}")
            else:
                checkpoints[seed] = checkpoint_of(prefix, sweep.fork_at)
    if progress is not None:
        for outcome in outcomes.values():
            progress.finished(outcome)
    tasks: list[Task] = [(run.name, execute, (run, sweep.runtime, sweep.watchdog_s, sweep.measures, cwd,
                                              checkpoints.get(run.seed))) for run in runs if run.name not in outcomes]
    outcomes.update(_pool(sweep.jobs, tasks, progress))
    return [outcomes[run.name] for run in runs]


def images_on_every_node(scenario_path: Path) -> None:
    """``--runtime swarm``: the scenario's images built once and copied to every Swarm node that lacks them (or
    pushed to ``$COSIM_REGISTRY``) before the runs start, so that concurrent runs do not each copy them. A Swarm
    that is not there fails the sweep here, once, with the runtime's own message."""
    from cosim.runtimes.docker.engine import check_engine, docker_errors
    from cosim.runtimes.docker.runtime import prepare_images
    from cosim.runtimes.swarm import images as swarm_images
    from cosim.runtimes.swarm.nodes import check_manager, manager_client, node_engines

    with docker_errors():
        check_engine()
        manager = manager_client()
        info = check_manager(manager)
        image_ids = prepare_images(loading.load(scenario_path))
        if (registry := swarm_images.registry()) is not None:
            swarm_images.push(image_ids, registry)
        else:
            swarm_images.copy_missing(image_ids, node_engines(manager, info.swarm.node_id).values())


@contextlib.contextmanager
def _workers_ignore_ctrl_c() -> Iterator[None]:
    """Start the worker processes with SIGINT ignored (inherited through exec): a Ctrl-C while one is starting or
    between runs leaves it alone, and during a run the run's own handler (cosim.run) ends it through its teardown."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _pool(jobs: int, tasks: Sequence[Task], progress: Progress | None) -> dict[str, Outcome]:
    """Run ``(name, function, args)`` tasks, ``jobs`` at a time, each in a fresh worker process."""
    outcomes: dict[str, Outcome] = {}
    context = multiprocessing.get_context("spawn")  # no inherited threads or locks; each worker imports cosim anew
    pending = list(tasks)
    with concurrent.futures.ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        active: dict[concurrent.futures.Future[Outcome], str] = {}
        try:
            with _workers_ignore_ctrl_c():  # the first submissions start the workers
                while pending and len(active) < jobs:
                    name, function, args = pending.pop(0)
                    active[pool.submit(function, *args)] = name
            while pending or active:
                while pending and len(active) < jobs:
                    name, function, args = pending.pop(0)
                    active[pool.submit(function, *args)] = name
                if progress is not None:
                    progress.running = len(active)
                    progress.draw()
                finished, _ = concurrent.futures.wait(active, return_when=concurrent.futures.FIRST_COMPLETED)
                for future in finished:
                    name = active.pop(future)
                    try:
                        outcome = future.result()
                    except Exception as exc:  # noqa: BLE001  (the worker process died: killed, out of memory)
                        outcome = Outcome(name, "failed", error=_one_line(f"worker failed: {exc}"))
                    outcomes[name] = outcome
                    if progress is not None:
                        progress.running = len(active)
                        progress.finished(outcome)
        except KeyboardInterrupt:
            for future in active:
                future.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            for future, name in active.items():  # a run that ended (or was measuring) as Ctrl-C came: its outcome
                if future.done() and not future.cancelled() and future.exception() is None:
                    outcomes[name] = future.result()
            for name in [task[0] for task in pending] + list(active.values()):
                outcomes.setdefault(name, Outcome(name, INTERRUPTED, error="not run to its end: the sweep was "
                                                                          "interrupted"))
    return outcomes


# -- results ------------------------------------------------------------------------------------------------------


def rows(sweep: Plan, runs: Sequence[RunSpec], outcomes: Sequence[Outcome]) -> list[dict[str, Any]]:
    """One row per run: run, variant, the parameters, seed, status, trace hash, error, then the measures."""
    table = []
    for run, outcome in zip(runs, outcomes):
        row: dict[str, Any] = {"run": run.name, "variant": run.variant.id}
        row.update({path: value for path, value in run.variant.parameters})
        row.update({"seed": run.seed, "status": "ok" if outcome.status == "skipped" else outcome.status,
                    "trace_sha256": outcome.trace_sha256, "error": outcome.error})
        row.update(outcome.measures)
        table.append(row)
    counted = {key for row in table for key in row if key.startswith("dropped.")}
    for row in table:  # a reason no event was dropped for in this run: 0 drops (not an unknown)
        if row["status"] == "ok":
            row.update({key: row.get(key, 0) for key in counted})
    return table


def columns(table: Sequence[Mapping[str, Any]], sweep: Plan) -> list[str]:
    fixed = ["run", "variant", *sweep.parameters, "seed", "status", "trace_sha256", "error"]
    measured = sorted({key for row in table for key in row} - set(fixed))
    return fixed + measured


def write_results(sweep: Plan, table: Sequence[Mapping[str, Any]], out: TextIO) -> list[Path]:
    """``results.csv``, and ``results.parquet`` when pandas and pyarrow are importable (said so otherwise)."""
    names = columns(table, sweep)
    csv_path = sweep.out / RESULTS
    with csv_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=names, lineterminator="\n")
        writer.writeheader()
        for row in table:
            writer.writerow({name: _cell(row.get(name)) for name in names})
    written = [csv_path]
    try:
        import pandas
        import pyarrow  # noqa: F401
    except ImportError:
        out.write("  results.parquet: skipped (needs pandas and pyarrow: pip install pandas pyarrow)\n")
        return written
    frame = pandas.DataFrame([{name: row.get(name) for name in names} for row in table], columns=names)
    parquet_path = sweep.out / "results.parquet"
    frame.to_parquet(parquet_path, index=False)
    written.append(parquet_path)
    return written


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ""
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return value


def read_results(path: Path) -> list[dict[str, Any]]:
    """``results.csv`` back as rows, numbers as numbers (for the statistics and the report)."""
    with path.open(encoding="utf-8", newline="") as handle:
        return [{key: _number(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def _number(text: str) -> Any:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


# -- the command --------------------------------------------------------------------------------------------------


@dataclass
class SweepResult:
    sweep: Plan
    runs: list[RunSpec]
    outcomes: list[Outcome]
    table: list[dict[str, Any]]
    files: list[Path]

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status == "failed"]

    @property
    def interrupted(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.status == INTERRUPTED]


def sweep(scenario: str | None = None, *, out_stream: TextIO = sys.stdout, progress: bool = True,
          report: bool = True, **settings: Any) -> SweepResult:
    """`cosim sweep`: plan, write and validate every variant, run, write the results, the summary and the report."""
    from cosim import sweep_stats

    planned = plan(scenario, **settings)
    runs = prepare(planned)
    out_stream.write(f"cosim: sweep {planned.name!r}: {len(planned.variants)} variant(s) x {len(planned.seeds)} "
                     f"seed(s) = {len(runs)} run(s) on the {planned.runtime} runtime, {planned.jobs} at a time; "
                     f"in {planned.out}\n")
    out_stream.flush()
    outcomes = run_all(planned, runs, Progress(len(runs), planned.jobs) if progress else None)
    table = rows(planned, runs, outcomes)
    files = write_results(planned, table, out_stream)
    result = SweepResult(planned, runs, outcomes, table, files)
    summary = sweep_stats.summarise(planned, table)
    files.append(sweep_stats.write_summary_csv(planned.out, summary))
    sweep_stats.print_summary(planned, table, summary, out_stream)
    if report:
        files.append(sweep_stats.write_report(planned, table, summary, out_stream))
    out_stream.writelines(f"  {path}\n" for path in files)
    if result.interrupted:
        out_stream.write(f"  interrupted: {len(result.interrupted)} run(s) not run to their end; the complete ones are "
                         f"kept, and the same command continues the sweep\n")
    if result.failed:
        out_stream.write(f"  {len(result.failed)} run(s) failed; the others are kept:\n")
        out_stream.writelines(f"    {outcome.run}: {outcome.error}\n" for outcome in result.failed)
    return result
