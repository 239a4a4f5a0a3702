"""The infrastructure `cosim conformance --broker` puts around the service it checks: an MQTT broker, as a scenario's
infrastructure node would be, named in INIT's ``endpoints`` (docs/protocol.md §4.1).

- A command target gets a local Mosquitto, started as the local runtime starts one (cosim.runtimes.local
  ``start_daemon``, the bundled broker's ``mosquitto-local.conf``, a free port on 127.0.0.1), stopped at the end.
- An image target gets the bundled broker image (``containers/mqtt-broker``, built when missing) on a private
  internal Docker network created for the check; the service's containers join that network, and find the broker
  under its node id (a network alias), as in a compose project. Both carry cosim's labels; the container and the
  network are removed at the end.

One broker serves every case of the check: the cases run one after another, each with fresh processes; a client
gets a clean session (the bundled MQTT clients connect with one), so nothing of an earlier case is delivered to a
later one. Everything is removed when the check ends, however it ends (a failure, an exception, Ctrl-C).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cosim.errors import DockerCommandFailed, NodeStartError
from cosim.resources import data_path

BROKER_NODE = "mqtt-broker"  # the node id INIT's endpoints name the broker by (the SDK's and the scenario's default)
BROKER_FOLDER = "mqtt-broker"  # containers/<this>: the bundled broker
BROKER_PORT = 1883  # the port the bundled broker image listens on
# The bundled scenario's local_command for the broker (scenarios/default.yaml), run in the broker's folder.
LOCAL_BROKER_COMMAND = ("mosquitto", "-c", "mosquitto-local.conf", "-p", "{port}")
BROKER_START_S = 15.0  # wall clock the broker may take to answer
LABELS = {"cosim.project": "cosim", "cosim.run": "conformance"}


def label_options() -> list[str]:
    """``--label key=value`` for every one of cosim's conformance labels (a docker command's options)."""
    return [part for key, value in LABELS.items() for part in ("--label", f"{key}={value}")]


@contextlib.contextmanager
def local_broker(node_id: str, log_dir: Path) -> Iterator[dict[str, dict[str, Any]]]:
    """A Mosquitto on 127.0.0.1 at a free port while the block runs; yields INIT's endpoints for it."""
    from cosim.runtimes.local import free_port, start_daemon, stop_daemon

    port = free_port()
    command = [part.replace("{port}", str(port)) for part in LOCAL_BROKER_COMMAND]
    process = start_daemon(node_id, command, port, cwd=data_path("containers", BROKER_FOLDER), env=os.environ,
                           log_path=log_dir / f"{node_id}.log", instead="check the service's image instead")
    try:
        yield {node_id: {"host": "127.0.0.1", "port": port}}
    finally:
        stop_daemon(process)


@contextlib.contextmanager
def docker_broker(node_id: str, prefix: str) -> Iterator[tuple[str, dict[str, dict[str, Any]]]]:
    """The bundled broker image on a private internal network ``<prefix>-net`` while the block runs (container
    ``<prefix>-broker``, reachable as ``node_id`` on that network); yields (the network, INIT's endpoints)."""
    from cosim.compose import SERVICE_USER
    from cosim.runtimes.docker.engine import check_engine
    from cosim.runtimes.docker.service_images import ensure_images, service_spec

    check_engine()
    spec = service_spec(BROKER_FOLDER)
    ensure_images([spec])
    network, container = f"{prefix}-net", f"{prefix}-broker"
    try:
        _docker(["network", "create", "--internal", *label_options(), network], f"create the network {network}")
        # Locked down as compose runs it: a non-root user, a read-only root, no capabilities.
        _docker(["run", "--detach", "--name", container, "--network", network, "--network-alias", node_id,
                 *label_options(), "--user", SERVICE_USER, "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
                 "--security-opt", "no-new-privileges:true", "--init", "--pull", "never", spec.tag],
                f"start the broker {spec.tag}")
        _wait_for_broker(node_id, container)
        yield network, {node_id: {"host": node_id, "port": BROKER_PORT}}
    finally:
        from cosim.runtimes.docker.engine import run_bounded

        run_bounded(["rm", "--force", "--volumes", container], 30)
        run_bounded(["network", "rm", network], 30)


def _docker(args: list[str], what: str) -> str:
    from cosim.runtimes.docker.engine import run_bounded

    done = run_bounded(args, 60)
    if done is None:
        raise DockerCommandFailed(f"conformance: could not {what}: docker did not answer within 60 s")
    if done.returncode != 0:
        raise DockerCommandFailed(f"conformance: could not {what}: {(done.stderr or done.stdout).strip()[-300:]}")
    return done.stdout.strip()


def _wait_for_broker(node_id: str, container: str) -> None:
    """Until the broker answers MQTT inside its container (its version, which Mosquitto keeps as a retained $SYS
    message): a service that connects once, without retrying, then finds it ready. Each try is one bounded
    ``docker exec``; a broker that exits or stays silent for BROKER_START_S fails with its log's last lines."""
    from cosim.runtimes.docker.engine import run_bounded, stderr_tail

    deadline = time.monotonic() + BROKER_START_S
    probe = ["exec", container, "mosquitto_sub", "-h", "127.0.0.1", "-p", str(BROKER_PORT), "-t",
             "$SYS/broker/version", "-C", "1", "-W", "2"]
    while True:
        done = run_bounded(probe, 10)
        if done is not None and done.returncode == 0:
            return
        state = run_bounded(["inspect", "--format", "{{.State.Running}}", container], 10)
        running = state is not None and state.stdout.strip() == "true"
        if not running or time.monotonic() > deadline:
            why = "exited" if not running else f"did not answer MQTT within {BROKER_START_S:g} s"
            raise NodeStartError(node_id, f"(container {container}) {why}; its log ends:\n"
                                          f"{stderr_tail(container, 10) or '(nothing)'}")
