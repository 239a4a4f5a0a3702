"""The Docker runtime: compose file -> images -> `docker compose up` (bounded by a deadline) -> stdio attach.

Every run is its own compose project (``cosim-<scenario>-<run id>``) and every container and network carries
the label ``cosim.run=<run id>``, so two runs never collide and ``invoke down`` can find what a crashed run
left. The coordinator talks to each service's *main process* through the engine's attach endpoint
(cosim.runtimes.docker.attach; a ``docker attach`` process for engines not on a local socket): no exec, no
sidecar. Services print nothing before INIT, so attaching after start loses nothing.

While a run lives it holds an flock on ``<tmp>/cosim-runs-<uid>/<run id>.lock``: ``invoke down`` removes only
what belongs to runs whose lock is free (crashed, killed, or started by hand), never a run in progress. A run
that ends removes its lock file; one whose lock file is still there but free had its coordinator killed
(``kill -9``, a crash), and the next Docker run reaps it (``reap_orphans``) without being asked.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from cosim import compose, options
from cosim.errors import (
    BringUpTimeout,
    ComposeUpFailed,
    DockerCommandFailed,
    ExitStatus,
    ImageBuildError,
    NodeError,
    NodeFailure,
    NodeImageError,
    OutputWriteError,
    out_of_memory,
)
from cosim.model import ContainerSpec, Scenario
from cosim.runtimes.docker import api
from cosim.runtimes.docker.attach import EngineAttachTransport
from cosim.runtimes.docker.base_image import try_pull
from cosim.runtimes.docker.engine import check_engine, docker_command, docker_errors, stderr_tail
from cosim.runtimes.docker.engine_watch import EngineWatch, engine_host
from cosim.runtimes.docker.service_images import ImageSpec, ensure_images
from cosim.tails import file_tail, last_lines
from cosim.transport import PipeTransport, Transport

if TYPE_CHECKING:  # python-on-whales is imported where it is used (restart, crash, logs, engines without a socket):
    # it costs 0.2 to 0.45 s to import, and a run's bring-up and teardown go through the engine API and compose.
    from python_on_whales import DockerClient, DockerException

LABEL_RUN = f"{compose.LABEL_PREFIX}.run"
LABEL_NODE = f"{compose.LABEL_PREFIX}.node"
LABEL_PROJECT = f"{compose.LABEL_PREFIX}.project"
STOP_TIMEOUT_S = 2
ENGINE_RETURN_S = 20.0  # after the engine went away mid-run: how long the teardown waits for it to be back
BRINGUP_TIMEOUT_ENV = "COSIM_BRINGUP_TIMEOUT"
END_COMPOSE_S = 5.0
BRINGUP_TIMEOUT_S = 300.0  # `compose up` of 100 containers takes about 30 s on a 2-core machine
RUNS_DIR = Path(tempfile.gettempdir()) / f"cosim-runs-{os.getuid()}"


class RunLock:
    """An flock held for the lifetime of a run, so that `invoke down` can tell live runs from leftovers."""

    def __init__(self, run_id: str) -> None:
        self.path = RUNS_DIR / f"{run_id}.lock"
        self._handle: IO[str] | None = None

    def acquire(self) -> None:
        if self._handle is not None:
            return
        RUNS_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
        while True:
            handle = self.path.open("a")
            fcntl.flock(handle, fcntl.LOCK_EX)
            if _still_at(handle, self.path):
                break
            handle.close()  # a reaper removed the file between our open and our lock: lock a fresh one
        self._handle = handle

    def release(self, *, keep_file: bool = False) -> None:
        """``keep_file``: the run could not remove what it started (the engine is gone): its lock file stays, free,
        so that the next run on this machine reaps it (``reap_orphans``)."""
        if self._handle is not None:
            if not keep_file:
                self.path.unlink(missing_ok=True)
            self._handle.close()
            self._handle = None


def _still_at(handle: IO[str], path: Path) -> bool:
    """True when the open file ``handle`` is still the file at ``path`` (not unlinked or replaced)."""
    try:
        return os.fstat(handle.fileno()).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


@docker_errors()
def reap_orphans() -> dict[str, tuple[int, int]]:
    """Remove the containers and networks of runs whose coordinator is gone: their lock file is still there (a
    run that ends removes it) and nobody holds its lock. Each lock is held while its run is reaped, so a run
    cannot be both reaped and alive. Returns {run id: (containers, networks) removed}."""
    reaped: dict[str, tuple[int, int]] = {}
    for path in sorted(RUNS_DIR.glob("*.lock")) if RUNS_DIR.is_dir() else []:
        try:
            handle = path.open("r")
        except OSError:
            continue  # ended (and removed its lock file) in the meantime
        with handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue  # alive
            if not _still_at(handle, path):
                continue  # ended in the meantime
            run_id = path.name[: -len(".lock")]
            reaped[run_id] = remove_by_label(f"{LABEL_RUN}={run_id}")
            path.unlink(missing_ok=True)
    return reaped


def run_alive(run_id: str) -> bool:
    """True while the process running ``run_id`` (on this machine, as this user) is alive."""
    try:
        handle = (RUNS_DIR / f"{run_id}.lock").open("r")
    except OSError:
        return False
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(handle, fcntl.LOCK_UN)
        return False


def image_specs(scenario: Scenario) -> list[ImageSpec]:
    """One spec per distinct image the scenario's containers use (replicas share theirs)."""
    specs: dict[str, ImageSpec] = {}
    for node in scenario.containers:
        if node.build is not None:
            specs.setdefault(node.image, ImageSpec(tag=node.image, service_dir=node.build))
    return list(specs.values())


def prebuilt_images(scenario: Scenario) -> list[str]:
    """Images the scenario uses as they are (no `build`), e.g. the upstream eclipse-mosquitto."""
    return sorted({node.image for node in scenario.containers if node.build is None})


def ensure_pulled(images: list[str]) -> dict[str, str]:
    """Pull each prebuilt image that is not present; {tag: image id}. A failed pull names the image."""
    ids: dict[str, str] = {}
    for image in images:
        found = api.default_engine().image(image)
        if found is None:
            pulled, why = try_pull(image)  # bounded by COSIM_PULL_TIMEOUT: a silent registry cannot hang the run
            found = api.default_engine().image(image) if pulled else None
            if found is None:
                reason = last_lines(why, 1) or "no reason given"
                raise ImageBuildError(f"image {image} is not here and cannot be pulled ({reason}); "
                                      f"pull or load it by hand, or give the node a `build:` directory")
        ids[image] = str(found["Id"])
    return ids


def endpoints_by_service_name(scenario: Scenario) -> dict[str, dict[str, Any]]:
    """Inside the scenario network (a compose project's, or a stack's overlay) each infrastructure node is
    reachable by its service name."""
    return {node.id: {"host": node.id, "port": node.port} for node in scenario.containers if not node.speaks_protocol}


def prepare_images(scenario: Scenario) -> dict[str, str]:
    """Every image the scenario's containers use, on this engine: built when missing or stale (one at a time, so
    that a failure can name the nodes that need it), prebuilt ones pulled when missing; {tag: image id}."""
    def users(image: str) -> list[str]:
        return [node.id for node in scenario.containers if node.image == image]

    ids: dict[str, str] = {}
    for spec in image_specs(scenario):
        try:
            ids.update(ensure_images([spec]))
        except ImageBuildError as error:
            raise NodeImageError(users(spec.tag), error) from None
    for image in prebuilt_images(scenario):
        try:
            ids.update(ensure_pulled([image]))
        except ImageBuildError as error:
            raise NodeImageError(users(image), error) from None
    return ids


def bringup_deadline_s() -> float:
    """How long `compose up` may take: $COSIM_BRINGUP_TIMEOUT seconds, else BRINGUP_TIMEOUT_S (a bound for an
    engine that stalls, far above what a healthy engine needs for hundreds of containers)."""
    value = os.environ.get(BRINGUP_TIMEOUT_ENV)
    return BRINGUP_TIMEOUT_S if value is None else options.positive_seconds(BRINGUP_TIMEOUT_ENV, value)


def _end(process: subprocess.Popen[str]) -> None:
    """Stop a `compose up` cut short: SIGTERM (compose finishes the requests it has made and returns), SIGKILL if
    it lingers (a stalled engine); waited for, so that no request of it reaches the engine after the teardown has
    listed and removed the run's containers."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(END_COMPOSE_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _error_text(exc: DockerException) -> str:
    return last_lines(exc.stderr or exc.stdout or str(exc), 8)


class DockerRuntime:
    """The ``docker`` runtime: one compose project per run (see the module docstring), its images built or
    pulled first; hands the coordinator one attached Transport per service and removes everything in ``stop``."""

    name = "docker"

    def __init__(self, scenario: Scenario, log_dir: Path) -> None:
        self.scenario = scenario
        self.log_dir = log_dir
        # Unique per run so that concurrent runs never share containers or networks (not simulation state).
        self.run_id = f"{scenario.name}-{secrets.token_hex(4)}"
        self.project = f"cosim-{self.run_id}"
        self.compose_file: Path | None = None
        self.client: DockerClient | None = None  # python-on-whales' compose, for restart() only
        self._compose: list[str] | None = None  # `docker compose` of this run's project (set once it may exist)
        self._containers: dict[str, str] = {}  # node id -> container id
        self._transports: dict[str, Transport] = {}
        # How the coordinator reaches each main process: the engine's attach endpoint on its unix socket, or
        # `docker attach` (engines over TCP/SSH, or COSIM_ATTACH=cli).
        # Inspections too: one request each on the socket (cosim.runtimes.docker.api), else batched CLI calls.
        self._engine = api.default_engine()
        self._engine_socket = self._engine.socket_path
        self._deadline_s = BRINGUP_TIMEOUT_S
        self._timings: dict[str, float] = {}  # bring-up (start) and teardown (stop) wall times, for run_facts
        self._listed: list[dict[str, Any]] = []  # the engine's summary of the run's containers after `compose up`
        self._image_ids: dict[str, str] = {}
        self._lock = RunLock(self.run_id)
        self._watch: EngineWatch | None = None  # tells a lost engine from a container that ended

    # -- Runtime interface ------------------------------------------------------------------------

    @docker_errors()
    def start(self, while_starting: Callable[[], object] | None = None) -> None:
        started = time.monotonic()  # wall clock: the bench's bring-up row (run_facts), never the trace
        self._deadline_s = bringup_deadline_s()  # a bad value stops the run before anything starts
        check_engine()
        self._watch = EngineWatch(self._engine_socket, engine_host(self._engine_socket))
        for run_id, (containers, networks) in reap_orphans().items():
            sys.stderr.write(f"cosim: removed {containers} container(s) and {networks} network(s) of run {run_id}, "
                             f"whose coordinator is gone\n")
        self.compose_file = compose.render(self.scenario)
        self._image_ids = prepare_images(self.scenario)
        self._lock.acquire()
        env_file = self.log_dir / "compose.env"
        try:
            env_file.parent.mkdir(parents=True, exist_ok=True)
            env_file.write_text(f"COSIM_RUN_ID={self.run_id}\n", encoding="utf-8")
        except OSError as exc:
            raise OutputWriteError("the compose environment file", env_file, exc) from None
        self._compose = docker_command("compose", "--file", str(self.compose_file), "--env-file", str(env_file),
                                       "--project-name", self.project)
        try:
            self._up(while_starting)
            self._attach_all()
        except BaseException:
            self.stop()
            raise
        self._timings["bringup_s"] = round(time.monotonic() - started, 6)

    def transport(self, node_id: str) -> Transport:
        return self._transports[node_id]

    def endpoints(self) -> dict[str, dict[str, Any]]:
        return endpoints_by_service_name(self.scenario)

    def manifest(self) -> dict[str, Any]:
        return {"runtime": "docker", "images": dict(sorted(self._image_ids.items()))}

    def run_facts(self) -> dict[str, Any]:
        return {"project": self.project, "run_id": self.run_id,
                "compose_file": str(self.compose_file) if self.compose_file else None,
                "attach": "engine-api" if self._engine_socket is not None else "docker-cli", **self._timings}

    @docker_errors()
    def exited_infrastructure(self, wait_s: float = 0.0) -> list[tuple[str, int | None]]:
        exited: list[tuple[str, int | None]] = []
        for node in self.scenario.containers:
            container_id = self._containers.get(node.id)
            if node.speaks_protocol or container_id is None:
                continue
            try:
                document = self._engine.container(container_id)
            except DockerCommandFailed:
                document = None  # the engine does not answer: as before, the node counts as gone
            if document is None:
                exited.append((node.id, None))  # gone altogether (removed by hand)
                continue
            state = api.state(document)
            if not state.get("Running"):
                exited.append((node.id, self._status(node, container_id, state.get("ExitCode"), state)))
            elif wait_s > 0 and (code := self._engine.wait(container_id, wait_s)) is not None:
                exited.append((node.id, self._status(node, container_id, code)))  # (running after wait_s: not the cause)
        return exited

    @docker_errors()
    def crash(self, node_id: str) -> None:
        """SIGKILL the node's container (it stays, stopped, until its restart recreates it or the run ends)."""
        from python_on_whales import DockerException, docker

        container_id = self._containers[node_id]
        try:
            docker.container.kill(container_id)
        except DockerException:
            pass  # already dead: the crash happened anyway
        self._engine.wait(container_id, STOP_TIMEOUT_S)
        transport = self._transports.pop(node_id, None)
        if transport is not None:
            transport.close(grace_s=0.0)

    @docker_errors()
    def restart(self, node_id: str) -> Transport | None:
        """A new container of the node's compose service (`compose up --force-recreate --no-deps`), attached."""
        from python_on_whales import DockerClient, DockerException

        assert self.compose_file is not None
        if self.client is None:
            self.client = DockerClient(compose_files=[self.compose_file], compose_project_name=self.project,
                                       compose_env_files=[self.log_dir / "compose.env"])
        try:
            self.client.compose.up(services=[node_id], detach=True, force_recreate=True, dependencies=False,
                                   build=False, pull="never", quiet=True)
        except DockerException as exc:
            raise ComposeUpFailed(f"docker compose could not restart node {node_id!r} of scenario "
                                  f"{self.scenario.name!r}:\n{_error_text(exc)}") from None
        for container in self.client.compose.ps(services=[node_id], all=True):
            if (container.config.labels or {}).get(LABEL_NODE) == node_id:
                self._containers[node_id] = container.id
        node = next(node for node in self.scenario.containers if node.id == node_id)
        container_id = self._containers[node_id]
        if node.speaks_protocol:
            self._transports[node_id] = self._attach(node, container_id)
            return self._transports[node_id]
        return None

    def stop(self, while_stopping: Callable[[], object] | None = None) -> None:
        meanwhile = _once(while_stopping)
        if self._watch is not None and self._watch.lost and not self._watch.wait_back(ENGINE_RETURN_S):
            self._abandon()
            meanwhile()
            return
        if self._watch is not None:
            self._watch.close()
        started = time.monotonic()
        try:
            # `docker attach` ends when its container does (not when its stdin closes): stop the containers
            # first, then the attach processes have already ended and nothing waits out a grace period.
            for transport in self._transports.values():
                transport.close_stdin()
            if self._compose is not None and not self._remove_through_engine(meanwhile):
                # (a failure falls through to the label sweep below)
                with subprocess.Popen([*self._compose, "down", "--remove-orphans", "--volumes", "--timeout",
                                       str(STOP_TIMEOUT_S)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL) as down:
                    meanwhile()
                    down.wait()
            meanwhile()  # (when nothing was started)
            for transport in self._transports.values():
                transport.close(grace_s=1.0)
            self._transports.clear()
            if self._compose is not None:  # None: nothing was started (e.g. no engine, or an image failed to build)
                try:
                    remove_by_label(f"{LABEL_RUN}={self.run_id}", engine=self._engine)
                except Exception:  # DockerCommandFailed, or python-on-whales' DockerException without a socket
                    pass  # the engine went away; `invoke down` removes what is left once it is back
        finally:
            self._lock.release()
            self._timings["teardown_s"] = round(time.monotonic() - started, 6)

    def _remove_through_engine(self, meanwhile: Callable[[], object]) -> bool:
        """What `docker compose down` does, as requests on the engine's socket: the run's containers stopped (with
        the compose file's grace period) and removed in parallel, then its network. It saves the compose CLI's
        start and project parsing (~0.1 s of the default scenario's teardown). False without a socket, or when the
        engine did not remove everything: compose down then does it."""
        if self._engine.socket_path is None:
            return False
        label = f"{LABEL_RUN}={self.run_id}"
        try:
            containers = [container["Id"] for container in self._engine.listed(label)]
            if not self._engine.remove_containers(containers, STOP_TIMEOUT_S, meanwhile=meanwhile):
                return False
            networks = [network["Id"] for network in self._engine.networks(label)]
            return all([self._engine.delete(f"/networks/{network_id}") for network_id in networks])
        except DockerCommandFailed:
            return False

    def _abandon(self) -> None:
        """The engine went away mid-run and is not back: nothing can be removed now. The streams are closed, and
        the run's lock file is kept (free), so that the next run, or `cosim down`, removes the rest once it is."""
        for transport in self._transports.values():
            transport.close(grace_s=0.0)
        self._transports.clear()
        self._lock.release(keep_file=True)
        sys.stderr.write(f"cosim: the Docker engine is not back after {ENGINE_RETURN_S:g} s: the containers and "
                         f"networks of run {self.run_id} are removed by the next run, or by `cosim down`, once it is\n")

    # -- bring-up ---------------------------------------------------------------------------------

    def _up(self, while_starting: Callable[[], object] | None) -> None:
        """`docker compose up --detach` within the bring-up deadline (the engine creates and starts the containers
        in parallel; ``while_starting`` runs meanwhile), then the run's containers in one request (no `compose ps`
        and one inspection each)."""
        assert self._compose is not None
        command = [*self._compose, "up", "--detach", "--pull", "never"]
        started = time.monotonic()
        with subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace") as process:
            try:
                if while_starting is not None:
                    while_starting()
                output, _ = process.communicate(timeout=max(self._deadline_s - (time.monotonic() - started), 0.0))
            except subprocess.TimeoutExpired:
                not_up = self._not_up(time.monotonic() - started)  # the state at the deadline, before compose ends
                _end(process)  # then compose is stopped and waited for; stop() removes what it made
                raise not_up from None
            except BaseException:
                _end(process)
                raise
        if process.returncode != 0:
            raise ComposeUpFailed(f"docker compose could not start scenario {self.scenario.name!r} "
                                  f"(compose file {self.compose_file}):\n{last_lines(output, 8)}")
        self._listed = self._engine.listed(f"{LABEL_RUN}={self.run_id}")
        for container in self._listed:
            node_id = api.labels(container).get(LABEL_NODE)
            if node_id is not None:
                self._containers[node_id] = container["Id"]

    def _not_up(self, waited_s: float) -> BringUpTimeout:
        """The deadline passed: which of the scenario's containers are not running, and in what state."""
        try:
            states = {api.labels(c).get(LABEL_NODE): str(c.get("State") or "unknown")
                      for c in self._engine.listed(f"{LABEL_RUN}={self.run_id}")}
        except DockerCommandFailed:
            states = {}
        not_up = [(node.id, states.get(node.id, "not created")) for node in self.scenario.containers
                  if states.get(node.id) != "running"]
        return BringUpTimeout(self.scenario.name, len(self.scenario.containers), not_up, waited_s)

    def _attach_all(self) -> None:
        by_id = {container["Id"]: container for container in self._listed}
        for node in self.scenario.containers:
            container_id = self._containers.get(node.id)
            if container_id is None:
                raise NodeError(node.id, f"node {node.id!r}: docker compose did not create its container")
            if by_id.get(container_id, {}).get("State") != "running":  # the listing's word; the exit code needs more
                state = api.state(self._engine.container(container_id))
                if not state.get("Running"):
                    raise NodeFailure(node.id, "its container is not running after start", exit_code=state.get("ExitCode"),
                                      log_tail=stderr_tail(container_id, 15) or self._logs(container_id, 15))
            if node.speaks_protocol:
                self._transports[node.id] = self._attach(node, container_id)

    def _status(self, node: ContainerSpec, container_id: str, code: int | None,
                state: Mapping[str, Any] | None = None) -> int | None:
        """The exit code of a node's container that has exited, with the cause when the kernel killed it for memory
        (State.OOMKilled): the node's memory limit and "out of memory"."""
        if code is None:
            return None
        if state is None:
            try:
                state = api.state(self._engine.container(container_id))
            except DockerCommandFailed:
                return code
        if not state.get("OOMKilled"):
            return code
        return ExitStatus(code, out_of_memory(node.resources.memory if node.resources else None))

    def _attach(self, node: ContainerSpec, container_id: str) -> Transport:
        log_path = self.log_dir / f"{node.id}.log"
        if self._engine_socket is not None:
            try:
                return EngineAttachTransport(
                    node.id, container_id, self._engine_socket, log_path=log_path,
                    exit_code=lambda: self._exit_code(node, container_id),
                    log_tail=lambda lines: stderr_tail(container_id, lines) or file_tail(log_path, lines),
                )
            except OSError as exc:
                raise NodeFailure(node.id, f"cannot attach to its container through the engine API ({exc})",
                                  log_tail=stderr_tail(container_id, 15)) from None
        return PipeTransport(
            node.id,
            docker_command("attach", "--sig-proxy=false", container_id),
            log_path=log_path,  # the attached stderr stream: the service's own log lines
            exit_code=lambda: self._exit_code(node, container_id),
            # The engine's copy of its stderr also has what it wrote before the attach (or when attach failed).
            log_tail=lambda lines: stderr_tail(container_id, lines) or file_tail(log_path, lines),
        )

    def _exit_code(self, node: ContainerSpec, container_id: str) -> int | None:
        """The container's exit code (with its cause when it was out of memory); None while it runs. Called once
        its attached stdout has closed, when the engine may still be recording the exit: `docker wait` (bounded)
        bridges that moment. First, whether the engine itself went away (EngineLost): then no node is to blame."""
        if self._watch is not None:
            self._watch.check(node.id)
        try:
            document = self._engine.container(container_id)
        except DockerCommandFailed:
            return None
        if document is None:
            return None
        state = api.state(document)
        if state.get("Running"):
            return self._status(node, container_id, self._engine.wait(container_id, 3))
        return self._status(node, container_id, state.get("ExitCode"), state)

    @staticmethod
    def _logs(container_id: str, lines: int) -> str:
        """The container's own log (its stderr and stdout), which also covers a container that never started."""
        from python_on_whales import DockerException, docker

        try:
            return str(docker.container.logs(container_id, tail=lines))
        except DockerException:
            return ""


def _once(call: Callable[[], object] | None) -> Callable[[], None]:
    """``call`` the first time the result is called, then nothing (a teardown's ``while_stopping``: called while
    the engine works, whichever way the teardown goes)."""
    pending = [call] if call is not None else []

    def once() -> None:
        if pending:
            pending.pop()()
    return once


def remove_by_label(label: str, *, keep_runs: Iterable[str] = (), engine: api.Engine | None = None) -> tuple[int, int]:
    """Force-remove every container, then every network, carrying ``label`` (key=value), except those of the
    runs in ``keep_runs``; returns how many (containers, networks) were removed. Through the engine API when it is
    on a local socket (after a run's teardown, usually two requests that find nothing)."""
    keep = set(keep_runs)
    engine = engine or api.default_engine()
    if engine.socket_path is not None:
        containers = [c["Id"] for c in engine.listed(label) if api.labels(c).get(LABEL_RUN) not in keep]
        for container_id in containers:
            engine.delete(f"/containers/{container_id}?force=1&v=1")
        networks = [n["Id"] for n in engine.networks(label) if (n.get("Labels") or {}).get(LABEL_RUN) not in keep]
        return len(containers), sum(engine.delete(f"/networks/{network_id}") for network_id in networks)
    from python_on_whales import DockerException, docker

    listed = [c for c in docker.container.list(all=True, filters=[("label", label)])
              if (c.config.labels or {}).get(LABEL_RUN) not in keep]
    if listed:
        docker.container.remove(listed, force=True, volumes=True)
    removed_networks = 0
    for network in docker.network.list(filters=[("label", label)]):
        if (network.labels or {}).get(LABEL_RUN) in keep:
            continue
        try:
            docker.network.remove(network)
            removed_networks += 1
        except DockerException:
            pass  # already gone with its project
    return len(listed), removed_networks


@docker_errors()
def down_all() -> tuple[int, int]:
    """What `invoke down` does: remove the containers and networks cosim runs left behind (crashed or killed
    runs, projects started by hand), but not those of runs still in progress."""
    from python_on_whales import docker

    check_engine()
    label = f"{LABEL_PROJECT}=cosim"
    runs = {(c.config.labels or {}).get(LABEL_RUN) for c in docker.container.list(all=True, filters=[("label", label)])}
    runs |= {(n.labels or {}).get(LABEL_RUN) for n in docker.network.list(filters=[("label", label)])}
    live = {run for run in runs if run is not None and run_alive(run)}
    return remove_by_label(label, keep_runs=live)

