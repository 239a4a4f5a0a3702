"""The local runtime: every service is a subprocess on this machine, spoken to over pipes.

Fast tests, and a way to develop a service before containerising it. Infrastructure nodes (e.g. the MQTT
broker) run from their ``local_command`` with ``{port}`` replaced by a free local port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from cosim.errors import NodeStartError
from cosim.model import ContainerSpec, Scenario
from cosim.tails import file_tail
from cosim.transport import PipeTransport, Transport

# The checkout's Python SDK (TEMPORARY: see LocalRuntime._environment).
SDK_PYTHON = Path(__file__).resolve().parents[2] / "sdk" / "python"

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


class LocalRuntime:
    name = "local"

    def __init__(self, scenario: Scenario, log_dir: Path) -> None:
        self.scenario = scenario
        self.log_dir = log_dir
        self._transports: dict[str, PipeTransport] = {}
        self._infrastructure: dict[str, subprocess.Popen[bytes]] = {}
        self._endpoints: dict[str, dict[str, Any]] = {}

    def start(self) -> None:
        try:
            for node in self.scenario.containers:
                if not node.speaks_protocol:
                    self._start_infrastructure(node)
            for node in self.scenario.containers:
                if node.speaks_protocol:
                    self._start_service(node)
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
        exited = []
        for node_id, process in self._infrastructure.items():
            try:
                code = process.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                continue
            exited.append((node_id, 128 - code if code < 0 else code))  # Popen says -n for signal n; shells 128 + n
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

    def stop(self) -> None:
        for transport in self._transports.values():
            transport.close(grace_s=1.0)
        self._transports.clear()
        for process in self._infrastructure.values():
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        self._infrastructure.clear()

    # -- starting ---------------------------------------------------------------------------------

    def _command(self, node: ContainerSpec, port: int | None = None) -> list[str]:
        if node.local_command is None:
            if not node.speaks_protocol:
                raise NodeStartError(node.id, "has no local_command, so --runtime local cannot start it; "
                                              "add one to the scenario or use --runtime docker")
            if node.build is None:
                raise NodeStartError(node.id, "uses a prebuilt image and has no local_command, so "
                                              "--runtime local cannot start it; add one or use --runtime docker")
            return [sys.executable, "-u", str(node.build / "service.py")]
        return [part.replace("{python}", sys.executable).replace("{port}", str(port)) for part in node.local_command]

    def _environment(self, node: ContainerSpec) -> dict[str, str]:
        # The services import the SDK (cosim_service), which images install from the wheelhouse. TEMPORARY, until
        # cosim's own distribution ships cosim_service: the checkout's sdk/python. protocol_adapter.py lives in the
        # services' parent directory, for services that copy it.
        containers_dir = str(node.build.parent) if node.build is not None else None
        sdk = str(SDK_PYTHON) if SDK_PYTHON.is_dir() else None
        pythonpath = os.pathsep.join(filter(None, [sdk, containers_dir, os.environ.get("PYTHONPATH")]))
        return {**os.environ, **node.environment, "PYTHONPATH": pythonpath, "COSIM_NODE_ID": node.id,
                "PYTHONUNBUFFERED": "1"}

    def _start_infrastructure(self, node: ContainerSpec, port: int | None = None) -> None:
        port = port if port is not None else free_port()
        command = self._command(node, port)
        # Daemons such as mosquitto live in sbin, which is not on every user's PATH.
        found = shutil.which(command[0]) or shutil.which(command[0], path=os.pathsep.join(SBIN_DIRS))
        if found is None and not Path(command[0]).is_file():
            raise NodeStartError(node.id, f"needs `{command[0]}` for --runtime local, and it is not installed: "
                             f"install the package that provides it (for mosquitto: apt-get install mosquitto), "
                             f"or use --runtime docker")
        if found is not None:
            command[0] = found
        log_path = self.log_dir / f"{node.id}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as log:
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                       cwd=node.build or node.base_dir, env=self._environment(node),
                                       start_new_session=True)
        self._infrastructure[node.id] = process
        if not wait_for_port(port, time.monotonic() + INFRA_START_TIMEOUT_S, process):
            code = process.poll()
            state = f"exited with code {code}" if code is not None else f"not listening after {INFRA_START_TIMEOUT_S:g} s"
            raise NodeStartError(node.id, f"({' '.join(command)}) {state}; last lines of {log_path}:\n"
                             + file_tail(log_path, 10))
        self._endpoints[node.id] = {"host": "127.0.0.1", "port": port}

    def _start_service(self, node: ContainerSpec) -> None:
        command = self._command(node)
        try:
            self._transports[node.id] = PipeTransport(node.id, command, log_path=self.log_dir / f"{node.id}.log",
                                                      env=self._environment(node), cwd=node.build or node.base_dir)
        except OSError as exc:
            raise NodeStartError(node.id, f"cannot start {' '.join(command)}: {exc.strerror}") from exc
