"""The Docker runtime: compose file -> images -> `compose up` through python-on-whales -> stdio attach.

Every run is its own compose project (``cosim-<scenario>-<run id>``) and every container and network carries
the label ``cosim.run=<run id>``, so two runs never collide and ``invoke down`` can find what a crashed run
left. The coordinator talks to each service's *main process* through ``docker attach`` (no exec, no sidecar);
services print nothing before INIT, so attaching after start loses nothing.
"""

from __future__ import annotations

import secrets
import subprocess
from pathlib import Path
from typing import Any

from python_on_whales import DockerClient, DockerException, docker

from cosim import compose
from cosim.engine import check_engine
from cosim.errors import CosimError, NodeFailure
from cosim.images import ImageSpec, ensure_images, image_ids
from cosim.scenario import ContainerNode, Scenario
from cosim.transport import PipeTransport, Transport, tail

LABEL_RUN = f"{compose.LABEL_PREFIX}.run"
LABEL_NODE = f"{compose.LABEL_PREFIX}.node"
LABEL_PROJECT = f"{compose.LABEL_PREFIX}.project"
STOP_TIMEOUT_S = 2


def image_specs(scenario: Scenario) -> list[ImageSpec]:
    """One spec per distinct image the scenario's containers use (replicas share theirs)."""
    specs: dict[str, ImageSpec] = {}
    for node in scenario.containers:
        specs.setdefault(node.image, ImageSpec(tag=node.image, service_dir=node.build))
    return list(specs.values())


def _error_text(exc: DockerException) -> str:
    text = (exc.stderr or exc.stdout or str(exc)).strip()
    return "\n".join(text.splitlines()[-8:])


class DockerRuntime:
    name = "docker"

    def __init__(self, scenario: Scenario, log_dir: Path, *, build: bool = True) -> None:
        self.scenario = scenario
        self.log_dir = log_dir
        self.build = build
        # Unique per run so that concurrent runs never share containers or networks (not simulation state).
        self.run_id = f"{scenario.name}-{secrets.token_hex(4)}"
        self.project = f"cosim-{self.run_id}"
        self.compose_file: Path | None = None
        self.client: DockerClient | None = None
        self._containers: dict[str, str] = {}  # node id -> container id
        self._transports: dict[str, PipeTransport] = {}
        self._image_ids: dict[str, str] = {}

    # -- Runtime interface ------------------------------------------------------------------------

    def start(self) -> None:
        check_engine()
        self.compose_file = compose.render(self.scenario)
        specs = image_specs(self.scenario)
        if self.build:
            self._image_ids = ensure_images(specs)
        else:
            self._image_ids = image_ids([spec.tag for spec in specs])
        env_file = self.log_dir / "compose.env"
        env_file.parent.mkdir(parents=True, exist_ok=True)
        env_file.write_text(f"COSIM_RUN_ID={self.run_id}\n", encoding="utf-8")
        self.client = DockerClient(compose_files=[self.compose_file], compose_project_name=self.project,
                                   compose_env_files=[env_file])
        try:
            self._up()
            self._attach_all()
        except BaseException:
            self.stop()
            raise

    def transport(self, node_id: str) -> Transport:
        return self._transports[node_id]

    def endpoints(self) -> dict[str, dict[str, Any]]:
        # Inside the scenario network each node is reachable by its compose service name.
        return {node.id: {"host": node.id, "port": node.port} for node in self.scenario.containers
                if not node.speaks_protocol}

    def manifest(self) -> dict[str, Any]:
        return {
            "runtime": "docker",
            "project": self.project,
            "run_id": self.run_id,
            "compose_file": str(self.compose_file) if self.compose_file else None,
            "images": dict(sorted(self._image_ids.items())),
        }

    def stop(self) -> None:
        for transport in self._transports.values():
            transport.close(grace_s=1.0)
        self._transports.clear()
        if self.client is not None:
            try:
                self.client.compose.down(remove_orphans=True, volumes=True, timeout=STOP_TIMEOUT_S, quiet=True)
            except DockerException:
                pass  # fall through to the label sweep below
        remove_by_label(f"{LABEL_RUN}={self.run_id}")

    # -- bring-up ---------------------------------------------------------------------------------

    def _up(self) -> None:
        assert self.client is not None
        try:
            self.client.compose.up(detach=True, build=False, pull="never", quiet=True)
        except DockerException as exc:
            raise CosimError(f"docker compose could not start scenario {self.scenario.name!r} "
                             f"(compose file {self.compose_file}):\n{_error_text(exc)}") from None
        for container in self.client.compose.ps(all=True):
            node_id = container.config.labels.get(LABEL_NODE)
            if node_id is not None:
                self._containers[node_id] = container.id

    def _attach_all(self) -> None:
        for node in self.scenario.containers:
            container_id = self._containers.get(node.id)
            if container_id is None:
                raise CosimError(f"node {node.id!r}: docker compose did not create its container")
            state = docker.container.inspect(container_id).state
            if not state.running:
                raise NodeFailure(node.id, "its container is not running after start", exit_code=state.exit_code,
                                  log_tail=self._logs(container_id, 15))
            if node.speaks_protocol:
                self._transports[node.id] = self._attach(node, container_id)

    def _attach(self, node: ContainerNode, container_id: str) -> PipeTransport:
        log_path = self.log_dir / f"{node.id}.log"
        return PipeTransport(
            node.id,
            ["docker", "attach", "--sig-proxy=false", container_id],
            log_path=log_path,  # the attached stderr stream: the service's own log lines
            exit_code=lambda: self._exit_code(container_id),
            log_tail=lambda lines: tail(log_path, lines) or self._logs(container_id, lines),
        )

    @staticmethod
    def _exit_code(container_id: str) -> int | None:
        """The container's exit code; None while it runs. Called once its attached stdout has closed, when
        the engine may still be recording the exit: `docker wait` (bounded) bridges that moment."""
        try:
            state = docker.container.inspect(container_id).state
            if not state.running:
                return state.exit_code
            done = subprocess.run(["docker", "wait", container_id], capture_output=True, text=True, timeout=3)
            return int(done.stdout.strip()) if done.returncode == 0 and done.stdout.strip() else None
        except (DockerException, subprocess.TimeoutExpired, ValueError):
            return None

    @staticmethod
    def _logs(container_id: str, lines: int) -> str:
        """The container's own log (its stderr and stdout), which also covers a container that never started."""
        try:
            return docker.container.logs(container_id, tail=lines)
        except DockerException:
            return ""


def remove_by_label(label: str) -> tuple[int, int]:
    """Force-remove every container, then every network, carrying ``label`` (key=value); (containers, networks)."""
    containers = docker.container.list(all=True, filters={"label": label})
    if containers:
        docker.container.remove(containers, force=True, volumes=True)
    networks = docker.network.list(filters={"label": label})
    for network in networks:
        try:
            docker.network.remove(network)
        except DockerException:
            pass  # already gone with its project
    return len(containers), len(networks)


def down_all() -> tuple[int, int]:
    """What `invoke down` does: remove every container and network any cosim run left behind."""
    check_engine()
    return remove_by_label(f"{LABEL_PROJECT}=cosim")

