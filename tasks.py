"""invoke tasks: each parses its arguments and calls cosim. Run `invoke --list` (or `./inv --list`)."""

from __future__ import annotations

import shlex
import sys
from typing import Any, Callable

from invoke import Context, task
from invoke.exceptions import Exit

from cosim import cli
from cosim.invoke_support import optional_positional
from cosim.errors import CosimError
from cosim.run import DEFAULT_WATCHDOG_S

DEFAULT = cli.DEFAULT_SCENARIO
SCENARIO_HELP = f"scenario YAML file (default: {DEFAULT})"
WATCHDOG_HELP = f"seconds a node may take to answer before the run fails (default {DEFAULT_WATCHDOG_S:g})"


def _call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """User errors become one message and a non-zero exit, never a traceback."""
    try:
        return function(*args, **kwargs)
    except CosimError as error:
        raise Exit(f"cosim: error: {error}", code=error.exit_code) from None


@optional_positional("scenario")
@task(positional=["scenario"], help={"scenario": SCENARIO_HELP})
def validate(c: Context, scenario: str | None = None) -> None:
    """Check a scenario file against the schema and cosim's own rules."""
    _call(cli.validate, scenario or DEFAULT)


@optional_positional("scenario")
@task(positional=["scenario"], help={"scenario": SCENARIO_HELP})
def render(c: Context, scenario: str | None = None) -> None:
    """Write the scenario's docker-compose file under compose/ and print its path."""
    _call(cli.render, scenario or DEFAULT)


@optional_positional("scenario")
@task(
    positional=["scenario"],
    help={
        "scenario": SCENARIO_HELP,
        "runtime": "docker (default), local (services as subprocesses, no Docker) or swarm (a stack on the Swarm of "
                   "$COSIM_SWARM_CONTEXT, default the Docker engine)",
        "trace": "where the JSONL trace goes (default: the scenario's `trace`, else traces/<name>.jsonl)",
        "watchdog": WATCHDOG_HELP,
        "quiet": "no progress line",
        "registry": "swarm: push the images to this registry (HOST:PORT) for the nodes to pull, instead of copying",
        "advance": "next-event or fixed: overrides the scenario's `advance` (default: the scenario's, next-event)",
        "checkpoint_at": "write a checkpoint at the end of the window ending at T us (T[,T2,...]) under checkpoints/",
        "stop_after_checkpoint": "stop the run after its last checkpoint",
    }
)
def up(c: Context, scenario: str | None = None, runtime: str = "docker", trace: str | None = None,
       watchdog: str | None = None, quiet: bool = False, registry: str | None = None,
       advance: str | None = None, checkpoint_at: str | None = None, stop_after_checkpoint: bool = False) -> None:
    """Run a scenario in virtual time and write its trace."""
    # Numeric options arrive as text: cosim checks them and names the option in its error.
    _call(cli.up, scenario or DEFAULT, runtime=runtime, trace=trace, watchdog_s=watchdog or DEFAULT_WATCHDOG_S,
          progress=not quiet, registry=registry, advance=advance, checkpoint_at=checkpoint_at,
          stop_after_checkpoint=stop_after_checkpoint)


@task(positional=["checkpoint"], help={
    "checkpoint": "a checkpoint file written by `invoke up --checkpoint-at T`",
    "runtime": "docker (default) or local: where the fresh services run (need not be where the checkpoint was taken)",
    "trace": "where the trace goes (default: the scenario's)",
    "scenario": "fork: a variant of the checkpointed scenario (other config, links, schedule after T; same nodes, "
                "seed and quantum)",
    "watchdog": WATCHDOG_HELP,
    "quiet": "no progress line",
})
def resume(c: Context, checkpoint: str, runtime: str = "docker", trace: str | None = None,
           scenario: str | None = None, watchdog: str | None = None, quiet: bool = False) -> None:
    """Continue a checkpointed run with fresh containers (or fork it with --scenario)."""
    _call(cli.resume, checkpoint, runtime=runtime, trace=trace, scenario=scenario,
          watchdog_s=watchdog or DEFAULT_WATCHDOG_S, progress=not quiet)


@task
def down(c: Context) -> None:
    """Remove containers, networks (and Swarm stacks) that earlier (e.g. crashed) runs left behind."""
    _call(cli.down)


@task(positional=["action"], help={"action": "up or down", "nodes": "how many engines (default 3; the first is the manager)",
                                   "name": "the cluster's name (default cosim): its nodes and contexts are NAME-1 ..."})
def cluster(c: Context, action: str, nodes: str = "3", name: str = "cosim") -> None:
    """A local test Swarm of extra Docker engines (root): `cluster up --nodes 3`, `cluster down`."""
    _call(cli.cluster, action, nodes=nodes, name=name)


@optional_positional("scenario")
@task(positional=["scenario"], help={"scenario": SCENARIO_HELP,
                                     "force": "rebuild without the layer cache"})
def images(c: Context, scenario: str | None = None, force: bool = False) -> None:
    """Build the images a scenario needs (idempotent; works without a registry)."""
    _call(cli.images, scenario or DEFAULT, force=force)


@optional_positional("scenario")
@task(
    positional=["scenario"],
    help={
        "scenario": SCENARIO_HELP,
        "runs": "how many runs (default 3)",
        "runtime": "docker (default), local, swarm, or both (docker and local, N times each; all must agree)",
        "watchdog": WATCHDOG_HELP,
        "advance": "next-event, fixed, or both (each mode N times; records identical, headers differ only in the mode)",
        "checkpoint_at": "also checkpoint every run at T[,T2] us and resume each checkpoint (with `both` runtimes: on "
                         "the other runtime); the resumed traces must be identical too",
    },
)
def determinism(c: Context, scenario: str | None = None, runs: str = "3", runtime: str = "docker",
                watchdog: str | None = None, advance: str | None = None, checkpoint_at: str | None = None) -> None:
    """Run a scenario N times with fresh containers and prove the traces are identical."""
    _call(cli.determinism, scenario or DEFAULT, runs=runs, runtime=runtime, watchdog_s=watchdog or DEFAULT_WATCHDOG_S,
          advance=advance, checkpoint_at=checkpoint_at)


@task(positional=["trace_a", "trace_b"])
def diff(c: Context, trace_a: str, trace_b: str) -> None:
    """Compare two traces: identical, or the first divergent record side by side."""
    _call(cli.diff, trace_a, trace_b)


@task(help={"steps": "steps per measured run (default 2000)", "local_only": "skip the Docker measurements",
            "no_swarm": "skip the local Swarm measurements (they need root)",
            "output": "where the JSON results go (default traces/bench.json)",
            "sparse_s": "virtual seconds of the sparse next-event workload (default 600)"})
def bench(c: Context, steps: str = "2000", local_only: bool = False, no_swarm: bool = False,
          output: str = "traces/bench.json", sparse_s: str = "600") -> None:
    """Measure cosim's per-step cost, scaling and throughput against floors measured in the same run."""
    _call(cli.bench, steps=steps, docker=not local_only, swarm=not no_swarm, output=output, sparse_s=sparse_s)


@task
def golden(c: Context) -> None:
    """Re-render the golden compose files under tests/golden/ after an intended rendering change (review the diff)."""
    _call(cli.golden)


@task(help={"k": "only tests matching this expression", "fast": "skip tests that need Docker"})
def test(c: Context, k: str = "", fast: bool = False) -> None:
    """Run the test suite (Docker tests included unless --fast)."""
    args = [sys.executable, "-m", "pytest"]
    if k:
        args += ["-k", k]
    if fast:
        args += ["-m", "not docker"]
    result = c.run(shlex.join(args), pty=False, warn=True)
    if result is None or result.exited != 0:
        raise Exit(code=result.exited if result is not None else 1)


@task(help={"upgrade": "move every pin to the newest version allowed by pyproject.toml (default: keep pins)"})
def lock(c: Context, upgrade: bool = False) -> None:
    """Re-resolve pyproject.toml into requirements.lock (pinned, with hashes); ./inv then installs it."""
    _call(cli.lock, upgrade=upgrade)


@task(positional=["trace"], help={"trace": "a trace file (.jsonl); the report goes beside it (.report.html)"})
def report(c: Context, trace: str) -> None:
    """Write a self-contained HTML report of a run (charts, manifest, metrics) and print its path."""
    _call(cli.report, trace)


# TEMPORARY (branch conformance-node): the real `cosim conformance` task goes into cosim/tasks.py; drop this one
# when merging.
@optional_positional("image")
@task(positional=["image"], help={
    "image": "an image to check (or give a command after --: `invoke conformance -- node service.js`)",
    "config": "the INIT config as a JSON object (default {})",
})
def conformance(c: Context, image: str | None = None, config: str | None = None) -> None:
    """Check a service (an image, or a command after --) against the protocol, case by case."""
    from cosim import conformance as checker

    code = _call(checker.main, image, shlex.split(c.remainder), sys.stdout, config=config)
    if code:
        raise Exit(code=code)
