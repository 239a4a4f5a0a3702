"""Runtimes bring a scenario's container nodes to life and hand the coordinator a Transport per service.

``local`` runs each service as a subprocess on this machine; ``docker`` renders the compose file, brings
the project up through python-on-whales and attaches to each container's main process; ``swarm`` deploys the
same compose file (plus `deploy:` sections) as a stack on a Docker Swarm and attaches through each node's
engine. All implement ``Runtime``; the coordinator never sees the difference.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from cosim.errors import OptionError
from cosim.model import Scenario
from cosim.transport import Transport

RUNTIMES = ("docker", "local", "swarm")


class Runtime(Protocol):
    name: str

    def start(self, while_starting: Callable[[], object] | None = None) -> None:
        """Start infrastructure and services; raise a CosimError (after cleaning up) when that fails.
        ``while_starting`` is called once while the engine (or the processes) bring them up and this process would
        only wait: the caller's own preparation (importing the window loop) costs no wall time there."""
        ...

    def transport(self, node_id: str) -> Transport: ...

    def endpoints(self) -> dict[str, dict[str, Any]]:
        """Where each infrastructure node listens, as the services should reach it: {id: {host, port}}."""
        ...

    def manifest(self) -> dict[str, Any]:
        """Facts for the trace header's environment block: stable across runs on one machine (image ids)."""
        ...

    def run_facts(self) -> dict[str, Any]:
        """Facts about this one run (project name, run id, ports) for the metrics file only."""
        ...

    def exited_infrastructure(self, wait_s: float = 0.0) -> list[tuple[str, int | None]]:
        """Infrastructure nodes that are no longer running, with their exit codes (128 + n for signal n); each one
        still running is given up to ``wait_s`` to be seen exiting (its exit may be recorded a moment late)."""
        ...

    def crash(self, node_id: str) -> None:
        """Kill a service's or infrastructure node's process/container now (the schedule's planned crash); a
        service's transport is closed. Nothing restarts it until ``restart``."""
        ...

    def restart(self, node_id: str) -> Transport | None:
        """Start a fresh process/container for a crashed node and return once it is up: a service's new
        transport (the caller sends INIT), None for an infrastructure node (listening again at its endpoint)."""
        ...

    def stop(self, while_stopping: Callable[[], object] | None = None) -> None:
        """Remove everything started; idempotent and safe to call after a partial start. ``while_stopping`` is
        called once while the engine (or the processes) tear down, like ``start``'s ``while_starting``."""
        ...


def create(name: str, scenario: Scenario, log_dir: Path) -> Runtime:
    if name == "local":
        from cosim.runtimes.local import LocalRuntime

        return LocalRuntime(scenario, log_dir)
    if name == "docker":
        from cosim.runtimes.docker import DockerRuntime

        return DockerRuntime(scenario, log_dir)
    if name == "swarm":
        from cosim.runtimes.swarm import SwarmRuntime

        return SwarmRuntime(scenario, log_dir)
    raise OptionError("--runtime", name, "one of " + ", ".join(RUNTIMES))
