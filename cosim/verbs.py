"""The verbs the ``cosim`` command reads without invoke (``up``), and what every task shares (``call``): this
module imports neither invoke nor anything heavy, so `cosim up X --runtime local` starts with only what the run
needs (cosim.console's fast path). cosim.tasks makes the same functions invoke tasks, with the same help: one
definition per verb.
"""

from __future__ import annotations

import importlib
from typing import Any

from cosim.errors import CosimError
from cosim.options import DEFAULT_WATCHDOG_S
from cosim.paths import shown
from cosim.resources import data_path

SCENARIO_HELP = "scenario YAML file (default: cosim's bundled scenarios/default.yaml)"
WATCHDOG_HELP = f"seconds a node may take to answer before the run fails (default {DEFAULT_WATCHDOG_S:g})"


def call(target: str, *args: Any, **kwargs: Any) -> Any:
    """Call ``cosim.<module>.<function>`` (``target`` is "module.function"), importing it now; a CosimError
    becomes ``cosim: error: ...`` on stderr and the error's exit code (invoke's Exit), never a traceback."""
    module_name, _, function_name = target.rpartition(".")
    function = getattr(importlib.import_module(f"cosim.{module_name}"), function_name)
    try:
        return function(*args, **kwargs)
    except CosimError as error:
        from invoke.exceptions import Exit  # (only now: a run that succeeds never imports invoke)

        raise Exit(f"cosim: error: {error}", code=error.exit_code) from None


def default_scenario() -> str:
    """The bundled default scenario: relative to the current directory when it lies below it (from the checkout's
    root: ``scenarios/default.yaml``, as the README shows it), else its absolute path."""
    return shown(data_path("scenarios", "default.yaml"))


UP_HELP = {
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
    "no_report": "write no HTML report (`cosim report TRACE` writes it later)",
}


def up(c: Any, scenario: str | None = None, runtime: str = "docker", trace: str | None = None,
       watchdog: str | None = None, quiet: bool = False, registry: str | None = None,
       advance: str | None = None, checkpoint_at: str | None = None, stop_after_checkpoint: bool = False,
       no_report: bool = False) -> None:
    """Run a scenario in virtual time and write its trace."""
    # Numeric options arrive as text: cosim checks them and names the option in its error.
    call("cli.up", scenario or default_scenario(), runtime=runtime, trace=trace,
         watchdog_s=watchdog or DEFAULT_WATCHDOG_S, progress=not quiet, registry=registry, advance=advance,
         checkpoint_at=checkpoint_at, stop_after_checkpoint=stop_after_checkpoint, report=not no_report)


# The verbs cosim.console runs without invoke: name -> (function, its positional arguments). The console reads
# only long options of these functions' parameters and hands anything else to invoke.
FAST = {"up": (up, ("scenario",))}
