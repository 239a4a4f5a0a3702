"""The local runtime: every service is a subprocess on this machine, spoken to over pipes.

Fast tests, and a way to develop a service before containerising it. Infrastructure nodes (e.g. the MQTT
broker) run from their ``local_command`` with ``{port}`` replaced by a free local port.

Where and how a service runs: its ``local_command`` (``{python}`` is this Python) in its ``build`` folder, or in the
scenario file's folder without one; a ``build`` service without ``local_command`` runs ``python -u service.py`` in
its folder. Every process finds the SDKs as in an image: ``PYTHONPATH`` names the directory of the ``cosim_service``
package, and ``NODE_PATH`` a directory holding ``cosim-service`` (the Node SDK, staged in cosim's cache).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from cosim.errors import ExitStatus, NodeStartError, out_of_memory
from cosim.model import ContainerSpec, Scenario
from cosim.runtimes import memory_cgroup
from cosim.runtimes.memory_cgroup import MemoryCgroup
from cosim.service_sources import node_path, python_sdk_package
from cosim.tails import file_tail
from cosim.transport import PipeTransport, Transport

INFRA_START_TIMEOUT_S = 15.0
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_for_port(port: int, deadline: float, process: subprocess.Popen[bytes]) -> bool:
    """True once something accepts TCP connections on 127.0.0.1:port; False if the process died or time ran out."""
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            # Connection refused comes back at once: wait for the process (not a sleep) before retrying.
            try:
                process.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                pass
    return False


def find_command(name: str) -> str | None:
    """Where the command ``name`` is: on PATH, else in the sbin directories (daemons such as mosquitto live in sbin,
    which is not on every user's PATH); None when it is not installed."""
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN_DIRS))


def start_daemon(node_id: str, command: list[str], port: int, *, cwd: Path, env: Mapping[str, str], log_path: Path,
                 instead: str) -> subprocess.Popen[bytes]:
    """Start an infrastructure daemon (e.g. mosquitto) in its own session, its output appended to ``log_path``, and
    wait until it accepts TCP connections on 127.0.0.1:``port``. ``command[0]`` is also looked for in the sbin
    directories. Raises NodeStartError (the daemon stopped first) when it is not installed, exits or does not
    listen; ``instead`` is the alternative the error suggests (e.g. "use --runtime docker")."""
    command = list(command)
    found = find_command(command[0])
    if found is None and not Path(command[0]).is_file():
        raise NodeStartError(node_id, f"needs `{command[0]}` to run locally, and it is not installed: install the "
                                      f"package that provides it (for mosquitto: apt-get install mosquitto), or {instead}")
    if found is not None:
        command[0] = found
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=cwd, env=dict(env),
                                   start_new_session=True)
    try:
        listening = wait_for_port(port, time.monotonic() + INFRA_START_TIMEOUT_S, process)
    except BaseException:  # Ctrl-C while it starts: the caller does not know this process yet, so stop it here
        stop_daemon(process)
        raise
    if not listening:
        code = process.poll()
        stop_daemon(process)
        state = f"exited with code {code}" if code is not None else f"not listening after {INFRA_START_TIMEOUT_S:g} s"
        raise NodeStartError(node_id, f"({' '.join(command)}) {state}; last lines of {log_path}:\n"
                                      + file_tail(log_path, 10))
    return process


def stop_daemon(process: subprocess.Popen[bytes]) -> None:
    """Stop a daemon started by ``start_daemon``: SIGTERM, then SIGKILL after 5 s; reaped either way."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class LocalRuntime:
    name = "local"

    def __init__(self, scenario: Scenario, log_dir: Path) -> None:
        self.scenario = scenario
        self.log_dir = log_dir
        self._transports: dict[str, PipeTransport] = {}
        self._infrastructure: dict[str, subprocess.Popen[bytes]] = {}
        self._endpoints: dict[str, dict[str, Any]] = {}
        self._sdk_paths: dict[str, str] | None = None
        self._groups: dict[str, MemoryCgroup] = {}  # node id -> the memory cgroup of its process (resources.memory)
        self._unenforced: set[str] = set()  # nodes told that their memory limit cannot be enforced here

    def start(self, while_starting: Callable[[], object] | None = None) -> None:
        try:
            for node in self.scenario.containers:
                if not node.speaks_protocol:
                    self._start_infrastructure(node)
            for node in self.scenario.containers:
                if node.speaks_protocol:
                    self._start_service(node)
            if while_starting is not None:  # the services load their libraries meanwhile
                while_starting()
        except BaseException:
            self.stop()
            raise

    def transport(self, node_id: str) -> Transport:
        return self._transports[node_id]

    def endpoints(self) -> dict[str, dict[str, Any]]:
        return dict(self._endpoints)

    def manifest(self) -> dict[str, Any]:
        return {"runtime": "local", "python": sys.version.split()[0]}

    def run_facts(self) -> dict[str, Any]:
        return {"endpoints": self.endpoints()}

    def exited_infrastructure(self, wait_s: float = 0.0) -> list[tuple[str, int | None]]:
        exited: list[tuple[str, int | None]] = []
        for node_id, process in self._infrastructure.items():
            try:
                code = process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            exited.append((node_id, self._status(node_id, 128 - code if code < 0 else code)))  # Popen: -n for signal n
        return exited

    def crash(self, node_id: str) -> None:
        transport = self._transports.get(node_id)
        process = transport.process if transport is not None else self._infrastructure[node_id]
        try:
            os.killpg(process.pid, signal.SIGKILL)  # its own session (start_new_session): the whole group
        except ProcessLookupError:
            pass
        process.wait()
        if transport is not None:
            transport.close(grace_s=0.0)  # killed before its stdin closed: no orderly shutdown, a crash

    def restart(self, node_id: str) -> Transport | None:
        node = next(node for node in self.scenario.containers if node.id == node_id)
        if node.speaks_protocol:
            self._start_service(node)
            return self._transports[node_id]
        self._start_infrastructure(node, port=self._endpoints[node_id]["port"])  # where its clients look
        return None

    def stop(self, while_stopping: Callable[[], object] | None = None) -> None:
        for transport in self._transports.values():
            transport.close(grace_s=1.0)
        self._transports.clear()
        try:
            for process in self._infrastructure.values():
                if process.poll() is None:
                    process.terminate()  # all at once; each is reaped below
            if while_stopping is not None:  # the daemons exit meanwhile
                while_stopping()
        finally:
            for process in self._infrastructure.values():
                stop_daemon(process)
            self._infrastructure.clear()
        for group in self._groups.values():
            group.remove()
        self._groups.clear()

    # -- starting ---------------------------------------------------------------------------------

    def _command(self, node: ContainerSpec, port: int | None = None) -> list[str]:
        if node.local_command is None:
            if not node.speaks_protocol:
                raise NodeStartError(node.id, "has no local_command, so --runtime local cannot start it; "
                                              "add one to the scenario or use --runtime docker")
            if node.build is None:
                raise NodeStartError(node.id, "uses a prebuilt image and has no local_command, so "
                                              "--runtime local cannot start it; add one or use --runtime docker")
            return [sys.executable, "-u", "service.py"]  # in its folder
        return [part.replace("{python}", sys.executable).replace("{port}", str(port)) for part in node.local_command]

    def _environment(self, node: ContainerSpec) -> dict[str, str]:
        if self._sdk_paths is None:  # the same for every node: found (and the Node SDK staged) once per run
            package, modules = python_sdk_package(), node_path()
            self._sdk_paths = {
                "PYTHONPATH": os.pathsep.join(filter(None, [str(package.parent) if package else None,
                                                            os.environ.get("PYTHONPATH")])),
                "NODE_PATH": os.pathsep.join(filter(None, [str(modules) if modules else None,
                                                           os.environ.get("NODE_PATH")])),
            }
        return {**os.environ, **node.environment, **{k: v for k, v in self._sdk_paths.items() if v},
                "COSIM_NODE_ID": node.id, "PYTHONUNBUFFERED": "1"}

    # -- memory limits ----------------------------------------------------------------------------

    def _limited(self, node: ContainerSpec, command: list[str]) -> list[str]:
        """``command`` inside a fresh memory cgroup holding the node's ``resources.memory`` (see
        cosim.runtimes.memory_cgroup), when it has one and this machine lets cosim enforce it; else as it is (said
        once per node, on stderr)."""
        old = self._groups.pop(node.id, None)
        if old is not None:
            old.remove()  # a restart: its crashed process is gone, and the new one counts from 0
        if node.resources is None or node.resources.memory_bytes is None:
            return command
        why = memory_cgroup.available()
        if why is not None:
            if node.id not in self._unenforced:
                self._unenforced.add(node.id)
                sys.stderr.write(f"cosim: node {node.id!r}: its memory limit of {node.resources.memory} is not "
                                 f"enforced by --runtime local: {why}\n")
            return command
        self._groups[node.id] = MemoryCgroup(node.id, node.resources.memory_bytes)
        return self._groups[node.id].wrap(command)

    def _status(self, node_id: str, code: int | None) -> int | None:
        """An exit code (128 + n for signal n), with its cause when the kernel killed the node for memory."""
        group = self._groups.get(node_id)
        if code is None or group is None or code != 128 + signal.SIGKILL or not group.oom_killed():
            return code
        node = next(node for node in self.scenario.containers if node.id == node_id)
        return ExitStatus(code, out_of_memory(node.resources.memory if node.resources else None))

    def _service_exit(self, node_id: str, process: subprocess.Popen[bytes]) -> int | None:
        code = process.poll()
        return self._status(node_id, 128 - code if code is not None and code < 0 else code)

    # -- starting (continued) ---------------------------------------------------------------------

    def _start_infrastructure(self, node: ContainerSpec, port: int | None = None) -> None:
        port = port if port is not None else free_port()
        command = self._command(node, port)
        if (found := find_command(command[0])) is not None:  # (else start_daemon says it is not installed)
            command = self._limited(node, [found, *command[1:]])
        self._infrastructure[node.id] = start_daemon(
            node.id, command, port, cwd=node.build or node.base_dir, env=self._environment(node),
            log_path=self.log_dir / f"{node.id}.log", instead="use --runtime docker")
        self._endpoints[node.id] = {"host": "127.0.0.1", "port": port}

    def _start_service(self, node: ContainerSpec) -> None:
        command = self._command(node)
        started: list[PipeTransport] = []  # (the exit code's callback needs the transport it is given to)
        exit_code = (lambda: self._service_exit(node.id, started[0].process)) if node.resources else None
        try:
            transport = PipeTransport(node.id, self._limited(node, command), log_path=self.log_dir / f"{node.id}.log",
                                      env=self._environment(node), cwd=node.build or node.base_dir,
                                      exit_code=exit_code)
            started.append(transport)
            self._transports[node.id] = transport
        except OSError as exc:
            raise NodeStartError(node.id, f"cannot start {' '.join(command)}: {exc.strerror}") from exc
