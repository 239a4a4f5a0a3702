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


def _call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """User errors become one message and a non-zero exit, never a traceback."""
    try:
        return function(*args, **kwargs)
    except CosimError as error:
        raise Exit(f"cosim: error: {error}", code=error.exit_code) from None


@optional_positional("scenario")
@task(positional=["scenario"], help={"scenario": "scenario YAML file (default: scenarios/default.yaml)"})
def validate(c: Context, scenario: str | None = None) -> None:
    """Check a scenario file against the schema and cosim's own rules."""
    _call(cli.validate, scenario or DEFAULT)


@optional_positional("scenario")
@task(positional=["scenario"], help={"scenario": "scenario YAML file (default: scenarios/default.yaml)"})
def render(c: Context, scenario: str | None = None) -> None:
    """Write the scenario's docker-compose file under compose/ and print its path."""
    _call(cli.render, scenario or DEFAULT)


@optional_positional("scenario")
@task(
    positional=["scenario"],
    help={
        "scenario": "scenario YAML file (default: scenarios/default.yaml)",
        "runtime": "docker (default) or local (services as subprocesses, no Docker)",
        "trace": "where the JSONL trace goes (default: the scenario's `trace`, else traces/<name>.jsonl)",
        "watchdog": f"seconds a node may take to answer before the run fails (default {DEFAULT_WATCHDOG_S:g})",
        "quiet": "no progress line",
    }
)
def up(c: Context, scenario: str | None = None, runtime: str = "docker", trace: str | None = None,
       watchdog: float = DEFAULT_WATCHDOG_S, quiet: bool = False) -> None:
    """Run a scenario in virtual time and write its trace."""
    _call(cli.up, scenario or DEFAULT, runtime=runtime, trace=trace, watchdog_s=watchdog, progress=not quiet)


@task
def down(c: Context) -> None:
    """Remove containers and networks that earlier (e.g. crashed) runs left behind."""
    _call(cli.down)


@optional_positional("scenario")
@task(positional=["scenario"], help={"scenario": "scenario YAML file (default: scenarios/default.yaml)",
                                     "force": "rebuild without the layer cache"})
def images(c: Context, scenario: str | None = None, force: bool = False) -> None:
    """Build the images a scenario needs (idempotent; works without a registry)."""
    _call(cli.images, scenario or DEFAULT, force=force)


@optional_positional("scenario")
@task(positional=["scenario"])
def determinism(c: Context, scenario: str | None = None, runs: int = 3, runtime: str = "docker") -> None:
    """Run a scenario N times and prove the traces are identical."""
    _call(cli.not_implemented, "determinism", 6)


@task(positional=["trace_a", "trace_b"])
def diff(c: Context, trace_a: str = "", trace_b: str = "") -> None:
    """Show the first record where two traces differ."""
    _call(cli.not_implemented, "diff", 6)


@task
def bench(c: Context) -> None:
    """Measure cosim's per-step cost against the transport floors."""
    _call(cli.not_implemented, "bench", 6)


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
