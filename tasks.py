"""invoke tasks of cosim's checkout: cosim's own verbs (cosim.tasks, the same as the `cosim` command's) and the
ones that only make sense in this repository (test, lock, golden). Run `./inv --list`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from invoke import Context, task
from invoke.exceptions import Exit

from cosim.tasks import call, namespace

ROOT = Path(__file__).resolve().parent


@task(help={"k": "only tests matching this expression", "fast": "skip tests that need Docker"})
def test(c: Context, k: str = "", fast: bool = False) -> None:
    """Run the test suite (Docker tests included unless --fast)."""
    args = [sys.executable, "-m", "pytest"]
    if k:
        args += ["-k", k]
    if fast:
        args += ["-m", "not docker"]
    with c.cd(str(ROOT)):  # the suite's configuration and paths are the checkout's, wherever ./inv was started
        result = c.run(shlex.join(args), pty=False, warn=True)
    if result is None or result.exited != 0:
        raise Exit(code=result.exited if result is not None else 1)


@task(help={"upgrade": "move every pin to the newest version allowed by pyproject.toml (default: keep pins)"})
def lock(c: Context, upgrade: bool = False) -> None:
    """Re-resolve pyproject.toml into requirements.lock (pinned, with hashes); ./inv then installs it."""
    call("cli.lock", upgrade=upgrade)


@task
def golden(c: Context) -> None:
    """Re-render the golden compose files under tests/golden/ after an intended rendering change (review the diff)."""
    call("cli.golden")


for repo_task in (test, lock, golden):
    namespace.add_task(repo_task)
