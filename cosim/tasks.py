"""cosim's invoke tasks: the verbs of the ``cosim`` command, and a collection a project's own tasks.py extends.

The ``cosim`` command (cosim.console) is an invoke Program over ``namespace``. A project adds its own tasks the
way invoke projects share tasks::

    # tasks.py of an experiment: `invoke --list` shows cosim's verbs and `hello`
    from invoke import task
    from cosim.tasks import namespace

    @task
    def hello(c):
        \"\"\"Say hello.\"\"\"
        print("hello")

    namespace.add_task(hello)

Each task only parses its arguments and calls one function of cosim.cli (or cosim.scaffold, cosim.conformance),
imported when the task runs, so that ``cosim --help`` and ``cosim --list`` import nothing heavy. A user error
becomes one line and a non-zero exit (``call``), never a traceback.
"""

from __future__ import annotations

import importlib.util
import shlex
import sys

from invoke import Collection, Context, task
from invoke.exceptions import Exit

from cosim import verbs
from cosim.invoke_support import optional_positional
from cosim.options import DEFAULT_WATCHDOG_S
from cosim.verbs import SCENARIO_HELP, WATCHDOG_HELP, call, default_scenario

__all__ = ["call", "default_scenario", "namespace", "remainder"]


def remainder(c: Context) -> list[str]:
    """The words after a standalone ``--`` (``cosim conformance -- python service.py``). invoke hands a task
    them as ``c.remainder``: one string, joined with spaces, so an argument with a space in it would split. The
    same words from ``sys.argv`` (invoke's own split: everything after the first ``--``) keep their boundaries;
    when they do not match (a Program run with another argv), ``c.remainder`` is split as a shell would."""
    joined = getattr(c, "remainder", "") or ""
    if not joined:
        return []
    if "--" in sys.argv:
        words = sys.argv[sys.argv.index("--") + 1:]
        if " ".join(words) == joined:
            return words
    return shlex.split(joined)


@optional_positional("scenario")
@task(positional=["scenario"], help={"scenario": SCENARIO_HELP})
def validate(c: Context, scenario: str | None = None) -> None:
    """Check a scenario file against the schema and cosim's own rules."""
    call("cli.validate", scenario or default_scenario())


@optional_positional("scenario")
@task(positional=["scenario"], help={"scenario": SCENARIO_HELP})
def render(c: Context, scenario: str | None = None) -> None:
    """Write the scenario's docker-compose file under compose/ and print its path."""
    call("cli.render", scenario or default_scenario())


up = optional_positional("scenario")(task(positional=["scenario"], help=verbs.UP_HELP)(verbs.up))


@task(positional=["checkpoint"], help={
    "checkpoint": "a checkpoint file written by `cosim up --checkpoint-at T`",
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
    call("cli.resume", checkpoint, runtime=runtime, trace=trace, scenario=scenario,
         watchdog_s=watchdog or DEFAULT_WATCHDOG_S, progress=not quiet)


@task
def down(c: Context) -> None:
    """Remove containers, networks (and Swarm stacks) that earlier (e.g. crashed) runs left behind."""
    call("cli.down")


@task(positional=["action"], help={"action": "up or down", "nodes": "how many engines (default 3; the first is the manager)",
                                   "name": "the cluster's name (default cosim): its nodes and contexts are NAME-1 ..."})
def cluster(c: Context, action: str, nodes: str = "3", name: str = "cosim") -> None:
    """A local test Swarm of extra Docker engines (root): `cluster up --nodes 3`, `cluster down`."""
    call("cli.cluster", action, nodes=nodes, name=name)


@optional_positional("scenario")
@task(positional=["scenario"], help={"scenario": SCENARIO_HELP,
                                     "force": "rebuild without the layer cache"})
def images(c: Context, scenario: str | None = None, force: bool = False) -> None:
    """Build the images a scenario needs (idempotent; works without a registry)."""
    call("cli.images", scenario or default_scenario(), force=force)


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
    call("cli.determinism", scenario or default_scenario(), runs=runs, runtime=runtime,
         watchdog_s=watchdog or DEFAULT_WATCHDOG_S, advance=advance, checkpoint_at=checkpoint_at)


@optional_positional("scenario")
@task(
    positional=["scenario"],
    iterable=["set", "measure"],
    help={
        "scenario": "the scenario YAML file to sweep (or the sweep file's `scenario`)",
        "seeds": "seeds, ranges and lists: 1-20, 1,3,5, 1-3,10 (default 1); the same seeds in every variant",
        "set": "PATH=V1,V2,...: a swept parameter (repeatable; the grid is the product), a dotted path into the "
               "scenario, e.g. nodes.gateway.config.broker_delay_us=500,2000 or network.default_link.loss=0,0.1",
        "sweep": "a sweep file (YAML: scenario, seeds, parameters, measures, baseline, jobs, runtime, out); "
                 "options on the command line win",
        "jobs": "runs at once (default 1)",
        "runtime": "local (default), docker or swarm (runs spread over the Swarm's nodes, each its own stack)",
        "out": "the sweep's directory (default sweeps/<scenario name>/)",
        "measure": "module:function: a measure of your own (takes the trace, returns a dict of numbers); repeatable",
        "baseline": "the variant the others are compared with: v2, or PATH=VALUE[,PATH=VALUE] (default v1)",
        "watchdog": WATCHDOG_HELP,
        "quiet": "no progress line",
        "fork_at": "run each seed's prefix up to T us once, checkpoint it, and fork every variant from it (parameters "
                   "a fork can change: service config, links, duration)",
    },
)
def sweep(c: Context, scenario: str | None = None, seeds: str | None = None, set: list[str] | None = None,
          sweep: str | None = None, jobs: str | None = None, runtime: str | None = None, out: str | None = None,
          measure: list[str] | None = None, baseline: str | None = None, watchdog: str | None = None,
          quiet: bool = False, fork_at: str | None = None) -> None:
    """Run a scenario over seeds and parameter values; results, confidence intervals and a report."""
    call("cli.sweep", scenario, seeds=seeds, sets=set or [], sweep_file=sweep, jobs=jobs, runtime=runtime, out_dir=out,
         measures=measure or [], baseline=baseline, watchdog_s=watchdog or DEFAULT_WATCHDOG_S, progress=not quiet,
         fork_at=fork_at)


@task(positional=["trace_a", "trace_b"])
def diff(c: Context, trace_a: str, trace_b: str) -> None:
    """Compare two traces: identical, or the first divergent record side by side."""
    call("cli.diff", trace_a, trace_b)


@task(positional=["trace"], help={"trace": "a trace file (.jsonl); the report goes beside it (.report.html)"})
def report(c: Context, trace: str) -> None:
    """Write a self-contained HTML report of a run (charts, manifest, metrics) and print its path."""
    call("cli.report", trace)


@task(help={"steps": "steps per measured run (default 2000)", "local_only": "skip the Docker measurements",
            "no_swarm": "skip the local Swarm measurements (they need root)",
            "output": "where the JSON results go (default traces/bench.json)",
            "sparse_s": "virtual seconds of the sparse next-event workload (default 600)",
            "rows": "run only these rows, comma-separated: up (the default scenario's whole `up` against compose "
                    "up/down), containers-100 (bring-up and teardown of 100 containers against compose up/down), "
                    "mosaik (the sparse shape as a whole process against mosaik 3.6)",
            "no_mosaik": "skip the whole-process row against mosaik 3.6 (installed on demand from PyPI)"})
def bench(c: Context, steps: str = "2000", local_only: bool = False, no_swarm: bool = False,
          output: str = "traces/bench.json", sparse_s: str = "600", rows: str = "", no_mosaik: bool = False) -> None:
    """Measure cosim's per-step cost, scaling and throughput against floors measured in the same run."""
    call("cli.bench", steps=steps, docker=not local_only, swarm=not no_swarm, output=output, sparse_s=sparse_s,
         rows=rows, mosaik=not no_mosaik)


@task(positional=["kind", "name"], help={
    "kind": "experiment (a new project directory) or service (a new service in the experiment you are in)",
    "name": "experiment: the directory to create; service: its name (lowercase letters, digits and dashes)",
    "lang": "service: python (default) or node",
})
def new(c: Context, kind: str, name: str, lang: str | None = None) -> None:
    """Create an experiment of your own (`new experiment DIR`) or add a service to it (`new service NAME`)."""
    call("scaffold.new", kind, name, lang=lang)


@optional_positional("image")
@task(positional=["image"], help={
    "image": "a service image to check; or, after `--`, the command that runs the service (`-- node service.js`)",
    "config": "the INIT config as a JSON object (default {})",
    "broker": "provide an MQTT broker, named in INIT's endpoints (a local mosquitto for a command; the bundled broker "
              "image on a private network for an image)",
    "broker_node": "the broker's node id in INIT's endpoints (default mqtt-broker; implies --broker)",
    "init": "INIT fields to set, as a JSON object: node_id, seed, endpoints (added to the broker's)",
})
def conformance(c: Context, image: str | None = None, config: str | None = None, broker: bool = False,
                broker_node: str | None = None, init: str | None = None) -> None:
    """Check a service against the protocol and print a table: `conformance IMAGE` or `conformance -- COMMAND...`."""
    if importlib.util.find_spec("cosim.conformance") is None:
        raise Exit("cosim: error: `cosim conformance` is not available in this version of cosim", code=1)
    node = broker_node or ("mqtt-broker" if broker else None)
    code = call("conformance.main", image or None, remainder(c), sys.stdout, config=config, broker=node, init=init)
    if code:
        raise Exit(code=code)


namespace = Collection(validate, render, up, resume, down, cluster, images, determinism, diff, report, bench, new,
                       conformance, sweep)
