"""The Swarm runtime: stack file -> images on every node -> `docker stack deploy` -> attach through each node's engine.

Every run is its own stack (``cosim-<scenario>-<run id>``; services ``<stack>_<node id>``), labelled like the
docker runtime's containers (``cosim.run=<run id>``, on the services and their containers), and holds the same
run lock while it lives, so ``invoke down`` removes only stacks whose run is over. The coordinator attaches to
each task's container through the engine of the Swarm node that runs it (cosim.runtimes.swarm.nodes): the
engine's attach endpoint on a unix socket, ``docker --context <node> attach`` otherwise.

Starting waits (up to START_TIMEOUT_S) until every task runs, and fails at once, naming the node, when Swarm
says a task cannot be placed or did not start. Teardown: ``docker stack rm``, then wait until no container and no
network of the stack is left on any node's engine.

The schedule's crash kills the task's container through its node's engine; with restart condition ``none`` Swarm
leaves the task dead. Its restart is a new task of the same service (``docker service update --force``), waited
for like the first, and attached through the engine of the node Swarm put it on; its service name resolves to
the new task's address (dnsrr), so a restarted broker is reachable where its clients look.
"""

from __future__ import annotations

import secrets
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

from python_on_whales import DockerClient, DockerException

from cosim.errors import NodeFailure, NodeStartError, SwarmError
from cosim.model import ContainerSpec, Scenario
from cosim.runtimes.docker.attach import EngineAttachTransport
from cosim.runtimes.docker.engine import (
    check_engine,
    docker_command,
    docker_errors,
    run_bounded,
    run_cli,
    stderr_tail,
    wait_exit,
)
from cosim.runtimes.docker.runtime import (
    LABEL_NODE,
    LABEL_PROJECT,
    LABEL_RUN,
    RUNS_DIR,
    STOP_TIMEOUT_S,
    RunLock,
    endpoints_by_service_name,
    prepare_images,
    run_alive,
)
from cosim.runtimes.swarm import images as swarm_images
from cosim.runtimes.swarm import stack as stack_file
from cosim.runtimes.swarm.nodes import (
    ANSWER_TIMEOUT_S,
    NodeEngine,
    check_manager,
    manager_client,
    manager_context,
    node_engines,
)
from cosim.tails import file_tail, last_lines
from cosim.transport import PipeTransport, Transport, TransportClosed

START_TIMEOUT_S = 120.0
TEARDOWN_TIMEOUT_S = 60.0
POLL_S = 0.25
TASK_END_WAIT_S = 10.0
STACK_LABEL = "com.docker.stack.namespace"
FAILED_STATES = {"failed", "rejected", "shutdown", "complete", "orphaned", "remove"}


class TaskTransport:
    """A task's attached stream, whose end is explained: when it closes, the Swarm node is asked whether it is still
    there, so that a failure names a node that went down or left rather than only "stdout closed"."""

    def __init__(self, inner: Transport, engine: NodeEngine, task_end: Callable[[], str]) -> None:
        self.inner = inner
        self.engine = engine
        self.task_end = task_end  # what Swarm says of the task's end ("" if it does not say)
        self.name = inner.name

    def _explained(self, exc: TransportClosed) -> TransportClosed:
        why = self.engine.diagnose() or self.task_end()
        return TransportClosed(f"{exc}; {why}") if why else exc

    def send(self, line: bytes) -> None:
        try:
            self.inner.send(line)
        except TransportClosed as exc:
            raise self._explained(exc) from None

    def receive(self, deadline: float) -> bytes:
        try:
            return self.inner.receive(deadline)
        except TransportClosed as exc:
            raise self._explained(exc) from None

    def exit_code(self) -> int | None:
        return self.inner.exit_code()

    def wait_exit(self, deadline: float) -> int | None:
        return self.inner.wait_exit(deadline)

    def log_tail(self, lines: int = 15) -> str:
        return self.inner.log_tail(lines)

    def close_stdin(self) -> None:
        self.inner.close_stdin()

    def close(self, grace_s: float) -> None:
        self.inner.close(grace_s)


class SwarmRuntime:
    """The ``swarm`` runtime (see the module docstring)."""

    name = "swarm"

    def __init__(self, scenario: Scenario, log_dir: Path) -> None:
        self.scenario = scenario
        self.log_dir = log_dir
        self.run_id = f"{scenario.name}-{secrets.token_hex(4)}"
        self.stack = f"cosim-{self.run_id}"
        self.stack_path: Path | None = None
        self.manager: DockerClient | None = None
        self._deployed = False
        self._engines: dict[str, NodeEngine] = {}  # Swarm node id -> engine
        self._services: dict[str, str] = {}  # Swarm service id -> cosim node id
        self._tasks: dict[str, tuple[NodeEngine, str]] = {}  # cosim node id -> (its node's engine, container id)
        self._restarted_on: dict[str, list[str]] = {}  # cosim node id -> the Swarm node of each restart's task
        self._transports: dict[str, Transport] = {}
        self._attach_modes: dict[str, str] = {}  # node id -> engine-api | docker-cli (for the metrics)
        self._image_ids: dict[str, str] = {}
        self._copied: dict[str, list[str]] = {}
        self._lock = RunLock(self.run_id)

    # -- Runtime interface ------------------------------------------------------------------------

    @docker_errors()
    def start(self, while_starting: Callable[[], object] | None = None) -> None:
        check_engine()  # the engine the images are built on
        self.manager = manager_client()
        info = check_manager(self.manager)
        for stack in remove_stacks(self.manager, orphans_only=True):
            sys.stderr.write(f"cosim: removed stack {stack}, whose coordinator is gone\n")
        self._engines = node_engines(self.manager, info.swarm.node_id)
        self._image_ids = prepare_images(self.scenario)
        references = None
        if (registry := swarm_images.registry()) is not None:
            references = swarm_images.push(self._image_ids, registry)
        else:
            self._copied = swarm_images.copy_missing(self._image_ids, self._engines.values())
        self.stack_path = stack_file.render(self.scenario, self.log_dir / "stack.yaml", references)
        self._lock.acquire()
        try:
            self._deploy(resolve_image="always" if references else "never")
            if while_starting is not None:  # the Swarm schedules and starts the tasks meanwhile
                while_starting()
            self._wait_running(self.scenario.containers)
            self._attach_all()
        except BaseException:
            self.stop()
            raise

    def transport(self, node_id: str) -> Transport:
        return self._transports[node_id]

    def endpoints(self) -> dict[str, dict[str, Any]]:
        return endpoints_by_service_name(self.scenario)  # dnsrr: the name resolves to the task's own address

    def manifest(self) -> dict[str, Any]:
        return {"runtime": "swarm", "images": dict(sorted(self._image_ids.items())),
                "nodes": {node_id: engine.hostname for node_id, (engine, _) in sorted(self._tasks.items())}}

    def run_facts(self) -> dict[str, Any]:
        return {"stack": self.stack, "run_id": self.run_id, "stack_file": str(self.stack_path) if self.stack_path else None,
                "images_copied": self._copied, "registry": swarm_images.registry(),
                "attach": dict(sorted(self._attach_modes.items())),
                "restarted_on": dict(sorted(self._restarted_on.items()))}

    def exited_infrastructure(self, wait_s: float = 0.0) -> list[tuple[str, int | None]]:
        exited: list[tuple[str, int | None]] = []
        for node in self.scenario.containers:
            if node.speaks_protocol or node.id not in self._tasks:
                continue
            engine, container_id = self._tasks[node.id]
            done = run_bounded(["inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", container_id], 10,
                               context=engine.context)
            if done is None or done.returncode != 0:
                exited.append((node.id, None))  # gone, or its node with it
                continue
            running, code = done.stdout.split()
            if running != "true":
                exited.append((node.id, int(code)))
            elif wait_s > 0 and (waited := wait_exit(container_id, wait_s, context=engine.context)) is not None:
                exited.append((node.id, waited))
        return exited

    def crash(self, node_id: str) -> None:
        """SIGKILL the task's container through the engine of its Swarm node. Swarm does not replace the task
        (restart condition none); the dead container stays, labelled with the stack, until the restart's new task
        replaces it or the teardown removes the stack."""
        engine, container_id = self._tasks[node_id]
        killed = run_bounded(["kill", container_id], ANSWER_TIMEOUT_S, context=engine.context)
        if wait_exit(container_id, STOP_TIMEOUT_S, context=engine.context) is None:  # (dead already: its exit code)
            why = engine.diagnose() or (last_lines(killed.stderr, 2) if killed is not None else "") or "it still runs"
            raise NodeFailure(node_id, f"the schedule's crash could not kill its task's container {container_id[:12]} "
                                       f"on Swarm node {engine.hostname!r}: {why}")
        transport = self._transports.pop(node_id, None)
        if transport is not None:
            transport.close(grace_s=0.0)  # killed before its stdin closed: no orderly shutdown, a crash

    @docker_errors()
    def restart(self, node_id: str) -> Transport | None:
        """A new task of the node's Swarm service, running (START_TIMEOUT_S at most) and attached through the engine
        of the node Swarm put it on. `docker service update --force` makes it: a dead task of a service with
        restart condition none is replaced only when the service changes. (Swarm may keep the dead tasks, and their
        containers, until the stack is removed: the teardown waits for those too.)"""
        assert self.manager is not None
        node = next(node for node in self.scenario.containers if node.id == node_id)
        service = f"{self.stack}_{node_id}"
        services = self._service_nodes()
        old_tasks = {task.id for task in self.manager.stack.ps(self.stack)
                     if services.get(task.service_id or "") == node_id}
        try:
            # The spec's image as deployed (--no-resolve-image: no registry is asked); the CLI's chatter captured.
            run_cli(["service", "update", "--force", "--detach", "--quiet", "--no-resolve-image", service],
                    context=manager_context())
        except DockerException as exc:
            raise NodeFailure(node_id, f"restart failed: `docker service update --force {service}` failed:\n"
                                       f"{last_lines(exc.stderr or str(exc), 4)}") from None
        self._wait_running([node], old_tasks=old_tasks)
        engine, container_id = self._tasks[node_id]
        self._restarted_on.setdefault(node_id, []).append(engine.hostname)  # maybe not where it ran before
        if not node.speaks_protocol:
            return None  # reachable again at its service name: dnsrr resolves it to the new task's address
        self._transports[node_id] = TaskTransport(self._attach(node, engine, container_id), engine,
                                                  partial(self._task_end, container_id))
        return self._transports[node_id]

    def stop(self, while_stopping: Callable[[], object] | None = None) -> None:
        try:
            for transport in self._transports.values():
                transport.close_stdin()
            if self._deployed and self.manager is not None:
                try:
                    self.manager.stack.remove(self.stack)
                except DockerException:
                    pass  # the manager went away: `invoke down` removes the stack once it is back
            try:
                if while_stopping is not None:  # the Swarm removes the tasks meanwhile
                    while_stopping()
            finally:
                if self._deployed and self.manager is not None:
                    self._wait_removed()
            for transport in self._transports.values():
                transport.close(grace_s=1.0)
            self._transports.clear()
        finally:
            self._lock.release()

    # -- bring-up ---------------------------------------------------------------------------------

    def _deploy(self, resolve_image: str) -> None:
        assert self.manager is not None and self.stack_path is not None
        self._deployed = True  # also when deploy fails half-way: stop() removes what it created
        try:
            # python-on-whales' runner, as its stack.deploy, but with the CLI's chatter captured, not printed.
            run_cli(["stack", "deploy", "--compose-file", str(self.stack_path), "--resolve-image", resolve_image,
                     self.stack], env={"COSIM_RUN_ID": self.run_id}, context=manager_context())
        except DockerException as exc:
            raise SwarmError(f"docker stack deploy could not deploy scenario {self.scenario.name!r} "
                             f"(stack file {self.stack_path}):\n{last_lines(exc.stderr or str(exc), 8)}") from None

    def _service_nodes(self) -> dict[str, str]:
        """{Swarm service id: cosim node id} of this run's stack (fixed once deployed: updates keep the ids)."""
        assert self.manager is not None
        if not self._services:
            self._services = {service.id: (service.spec.labels or {}).get(LABEL_NODE, "") for service in
                              self.manager.service.list(filters=[("label", f"{STACK_LABEL}={self.stack}")])}
        return self._services

    def _wait_running(self, wanted: Sequence[ContainerSpec], *, old_tasks: set[str] | None = None) -> None:
        """Until each wanted node's task runs; at once a clear error when Swarm gives up on one; START_TIMEOUT_S at
        most. ``old_tasks``: a restart's, whose task must be none of these (the dead ones it replaces)."""
        assert self.manager is not None
        nodes = {node.id: node for node in wanted}
        replacing, stale = old_tasks is not None, old_tasks or set()
        services = self._service_nodes()
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            latest: dict[str, Any] = {}
            for task in self.manager.stack.ps(self.stack):
                node_id = services.get(task.service_id or "")
                if node_id in nodes and task.id not in stale and \
                        (node_id not in latest or _created(task) > _created(latest[node_id])):
                    latest[node_id] = task
            waiting = []
            for node_id, node in nodes.items():
                current = latest.get(node_id)
                state = current.status.state if current is not None else "new"
                if current is not None and state == "running":
                    container = current.status.container_status
                    if container is not None and container.container_id:
                        self._tasks[node_id] = (self._engine_of(current), container.container_id)
                        continue
                if current is not None and (problem := self._task_problem(node, current)) is not None:
                    # Mid-run, a node that does not come back fails the run under its name, as one that dies does.
                    raise NodeFailure(node_id, f"restart failed: {problem}") if replacing else \
                        NodeStartError(node_id, problem)
                waiting.append(f"{node_id} ({state}{': ' + current.status.err if current and current.status.err else ''})")
            if not waiting:
                return
            if time.monotonic() > deadline:
                if replacing:
                    (node_id,) = nodes
                    raise NodeFailure(node_id, f"restart failed: the new task of service {self.stack}_{waiting[0]} "
                                               f"did not run within {START_TIMEOUT_S:g} s")
                raise SwarmError(f"the tasks of stack {self.stack} did not all start within {START_TIMEOUT_S:g} s; "
                                 f"still waiting for: {', '.join(waiting)}")
            time.sleep(POLL_S)  # a watchdog poll on Swarm's state (bring-up, not the simulation path)

    def _engine_of(self, task: Any) -> NodeEngine:
        engine = self._engines.get(task.node_id or "")
        if engine is None:
            raise SwarmError(f"a task of stack {self.stack} runs on Swarm node {task.node_id}, which was not Ready "
                             f"when the run started: cosim has no engine for it")
        return engine

    def _task_problem(self, node: ContainerSpec, task: Any) -> str | None:
        """Why Swarm gave up on the node's task ("cannot be placed: ..." or "did not start: ..."); None: not (yet)."""
        state, error = task.status.state, task.status.err or task.status.message or ""
        if state == "pending" and "no suitable node" in error:
            constraints = " and ".join(f"`{c}`" for c in node.placement) or "(none)"
            return f"cannot be placed: no Swarm node satisfies its placement {constraints} (Swarm says: {error})"
        if state in FAILED_STATES:
            engine = self._engines.get(task.node_id or "")
            container = task.status.container_status
            tail = ""
            if engine is not None and container is not None and container.container_id:
                tail = last_lines(_logs(engine, container.container_id), 5)
            return f"did not start: {self._task_failure(task)}" + (f"; last lines of its log:\n{tail}" if tail else "")
        return None

    def _task_failure(self, task: Any) -> str:
        """``its task on Swarm node 'n1' failed (Swarm says: task: non-zero exit (127))``."""
        engine = self._engines.get(task.node_id or "")
        where = f"on Swarm node {engine.hostname!r} " if engine is not None else ""
        return f"its task {where}{task.status.state} (Swarm says: {task.status.err or task.status.message or 'no reason given'})"

    def _task_end(self, container_id: str) -> str:
        """What Swarm says of the end of the task running ``container_id``, once its stream ended:
        Swarm records it a moment after the container stops (TASK_END_WAIT_S at most); "" if it does not say.
        A task seen running just before its program failed to start (tini's exec) ends here, not in the start."""
        if self.manager is None:
            return ""
        deadline = time.monotonic() + TASK_END_WAIT_S
        while True:
            try:
                tasks = self.manager.stack.ps(self.stack)
            except DockerException:
                return ""
            for task in tasks:
                container = task.status.container_status
                if container is not None and container.container_id == container_id \
                        and task.status.state in FAILED_STATES:
                    return self._task_failure(task)
            if time.monotonic() > deadline:
                return ""
            time.sleep(POLL_S)  # a watchdog poll on Swarm's state (a failing run, not the simulation path)

    def _attach_all(self) -> None:
        for node in self.scenario.containers:
            if node.speaks_protocol:
                engine, container_id = self._tasks[node.id]
                self._transports[node.id] = TaskTransport(self._attach(node, engine, container_id), engine,
                                                          partial(self._task_end, container_id))

    def _attach(self, node: ContainerSpec, engine: NodeEngine, container_id: str) -> Transport:
        log_path = self.log_dir / f"{node.id}.log"

        def exit_code() -> int | None:
            return _exit_code(engine, container_id)

        def log_tail(lines: int) -> str:
            return stderr_tail(container_id, lines, context=engine.context) or file_tail(log_path, lines)

        socket = engine.socket()
        self._attach_modes[node.id] = "engine-api" if socket is not None else "docker-cli"
        if socket is not None:
            try:
                return EngineAttachTransport(node.id, container_id, socket, log_path=log_path, exit_code=exit_code,
                                             log_tail=log_tail)
            except OSError as exc:
                raise NodeFailure(node.id, f"cannot attach to its task's container on Swarm node {engine.hostname!r} "
                                           f"through the engine API ({exc})") from None
        return PipeTransport(node.id, docker_command("attach", "--sig-proxy=false", container_id, context=engine.context),
                             log_path=log_path, exit_code=exit_code, log_tail=log_tail)

    # -- teardown ---------------------------------------------------------------------------------

    def _wait_removed(self) -> None:
        """Until no container and no network of the stack is left on any node's engine (those that answer)."""
        deadline = time.monotonic() + TEARDOWN_TIMEOUT_S
        label = f"{STACK_LABEL}={self.stack}"
        while True:
            left = [engine.hostname for engine in self._engines.values() if _leftovers(engine, label)]
            if not left:
                return
            if time.monotonic() > deadline:
                for engine in self._engines.values():
                    _force_remove(engine, label)
                sys.stderr.write(f"cosim: stack {self.stack} was not gone from {', '.join(left)} within "
                                 f"{TEARDOWN_TIMEOUT_S:g} s: removed its containers and networks there by force\n")
                return
            time.sleep(POLL_S)  # a watchdog poll on the engines (teardown, not the simulation path)


def _created(task: Any) -> float:
    return task.created_at.timestamp() if task.created_at is not None else 0.0


def _exit_code(engine: NodeEngine, container_id: str) -> int | None:
    done = run_bounded(["inspect", "--format", "{{.State.Running}} {{.State.ExitCode}}", container_id], 10,
                       context=engine.context)
    if done is None or done.returncode != 0:
        return None
    running, code = done.stdout.split()
    return int(code) if running != "true" else wait_exit(container_id, 3, context=engine.context)


def _logs(engine: NodeEngine, container_id: str) -> str:
    """The container's own log, stdout and stderr (also for one that never got to run)."""
    done = run_bounded(["logs", "--tail", "20", container_id], 10, context=engine.context)
    return (done.stdout + done.stderr) if done is not None and done.returncode == 0 else ""


def _ids(engine: NodeEngine, kind: list[str], label: str) -> list[str] | None:
    done = run_bounded([*kind, "--filter", f"label={label}", "--quiet"], 10, context=engine.context)
    return done.stdout.split() if done is not None and done.returncode == 0 else None


def _leftovers(engine: NodeEngine, label: str) -> bool:
    """Whether the engine still has a container or network carrying ``label`` (False when it does not answer:
    nothing more can be done there, and waiting would not help)."""
    return bool(_ids(engine, ["ps", "-a"], label) or _ids(engine, ["network", "ls"], label))


def _force_remove(engine: NodeEngine, label: str) -> None:
    if containers := _ids(engine, ["ps", "-a"], label):
        run_bounded(["rm", "-f", *containers], 30, context=engine.context)
    if networks := _ids(engine, ["network", "ls"], label):
        run_bounded(["network", "rm", *networks], 30, context=engine.context)


def remove_stacks(manager: DockerClient, *, orphans_only: bool = False) -> list[str]:
    """Remove the stacks of cosim runs that are over (their coordinator is gone), never one in progress; returns
    their names. What `invoke down` does on a Swarm manager. With ``orphans_only`` (what a Swarm run does before
    it starts) only those of runs started on this machine whose coordinator was killed (their lock file is still
    here, and free): a shared Swarm's stacks of runs coordinated elsewhere are left alone."""
    stacks: dict[str, str | None] = {}
    for service in manager.service.list(filters=[("label", f"{LABEL_PROJECT}=cosim")]):
        labels = service.spec.labels or {}
        if STACK_LABEL in labels:
            stacks[labels[STACK_LABEL]] = labels.get(LABEL_RUN)

    def over(run: str | None) -> bool:
        if orphans_only:
            return run is not None and (RUNS_DIR / f"{run}.lock").exists() and not run_alive(run)
        return run is None or not run_alive(run)

    ended: list[str | Any] = sorted(stack for stack, run in stacks.items() if over(run))
    if ended:
        manager.stack.remove(ended)
        for stack in ended:
            if (run := stacks[stack]) is not None:
                (RUNS_DIR / f"{run}.lock").unlink(missing_ok=True)
    return ended


@docker_errors()
def down_stacks() -> list[str]:
    """`invoke down` on a Swarm: when the manager ($COSIM_SWARM_CONTEXT, else the default engine) is a Swarm
    manager, remove the stacks cosim runs left behind; [] when it is no manager."""
    manager = manager_client()
    try:
        info = manager.system.info()
    except DockerException:
        return []
    if info.swarm is None or info.swarm.local_node_state != "active" or not info.swarm.control_available:
        return []
    return remove_stacks(manager)
