"""Which Docker engine serves which Swarm node, and whether it answers.

The Swarm manager is the engine of the Docker context ``$COSIM_SWARM_CONTEXT`` (default: the engine the docker
CLI talks to, i.e. DOCKER_HOST / DOCKER_CONTEXT / the current context). Each other node's engine is the Docker
context named by the node's label ``cosim.context`` (``docker node update --label-add cosim.context=NAME``), else
the context named after the node's hostname (what ``docker node ls`` shows); the manager's own node is the
manager's engine. cosim talks to a node's engine for three things: copying images, attaching to its tasks'
containers and checking their exits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from python_on_whales import DockerClient, DockerException

from cosim.errors import SwarmError, SwarmNodeUnreachable
from cosim.runtimes.docker.attach import DEFAULT_SOCKET
from cosim.runtimes.docker.engine import context_host, run_bounded
from cosim.tails import last_lines

CONTEXT_ENV = "COSIM_SWARM_CONTEXT"
CONTEXT_LABEL = "cosim.context"
ANSWER_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class NodeEngine:
    """The engine of one Swarm node. ``context`` None: the docker CLI's default engine."""

    hostname: str
    node_id: str
    context: str | None

    @property
    def where(self) -> str:
        return f"context {self.context!r}" if self.context else "the default Docker engine"

    def client(self) -> DockerClient:
        return DockerClient(context=self.context) if self.context else DockerClient()

    def socket(self) -> str | None:
        """The engine's unix socket (for the attach endpoint); None when it is reached over TCP or SSH."""
        host = context_host(self.context) if self.context else (os.environ.get("DOCKER_HOST") or context_host())
        host = host or f"unix://{DEFAULT_SOCKET}"
        if not host.startswith("unix://"):
            return None
        path = host[len("unix://"):]
        return path if os.path.exists(path) else None

    def swarm_state(self) -> str | None:
        """The engine's own view of its Swarm membership ("active", "inactive", ...); None: it does not answer."""
        done = run_bounded(["info", "--format", "{{.Swarm.LocalNodeState}}"], ANSWER_TIMEOUT_S, context=self.context)
        if done is None or done.returncode != 0:
            return None
        return done.stdout.strip()

    def diagnose(self) -> str | None:
        """Why this node's tasks may have gone: None when its engine answers and it is still in the Swarm."""
        state = self.swarm_state()
        if state is None:
            return f"its Swarm node {self.hostname!r} does not answer ({self.where}): the engine is down or unreachable"
        if state != "active":
            return f"its Swarm node {self.hostname!r} left the Swarm (its engine reports Swarm state {state!r})"
        return None


def manager_context() -> str | None:
    return os.environ.get(CONTEXT_ENV) or None


def manager_client() -> DockerClient:
    context = manager_context()
    return DockerClient(context=context) if context else DockerClient()


def check_manager(manager: DockerClient) -> Any:
    """The manager's ``docker info``; a clear SwarmError when it does not answer or is no Swarm manager."""
    context = manager_context()
    where = f"the engine of Docker context {context!r} (${CONTEXT_ENV})" if context else \
        f"the default Docker engine (set ${CONTEXT_ENV} to a manager's context)"
    try:
        info = manager.system.info()
    except DockerException as exc:
        raise SwarmNodeUnreachable(f"the Swarm manager, {where}, does not answer: "
                                   f"{last_lines(exc.stderr or str(exc), 2)}") from None
    swarm = info.swarm
    if swarm is None or swarm.local_node_state != "active" or not swarm.control_available:
        raise SwarmError(f"--runtime swarm needs a Swarm manager, and {where} is not one "
                         f"(`docker swarm init` makes it one; `invoke cluster up` starts a local test cluster)")
    return info


def node_engines(manager: DockerClient, manager_node_id: str) -> dict[str, NodeEngine]:
    """{Swarm node id: its engine} for every node that can run tasks (Ready and Active), each checked to answer.
    Raises SwarmError naming a node without a context, SwarmNodeUnreachable naming one whose engine is silent."""
    contexts = {context.name for context in DockerClient().context.list()}
    engines: dict[str, NodeEngine] = {}
    for node in manager.node.list():
        if node.status.state != "ready" or node.spec.availability != "active":
            continue
        hostname = node.description.hostname or node.id  # an engine always reports its hostname
        label = (node.spec.labels or {}).get(CONTEXT_LABEL)
        if label is not None:
            if label not in contexts:
                raise SwarmError(f"Swarm node {hostname!r} names Docker context {label!r} (label {CONTEXT_LABEL}), "
                                 f"and there is no such context: `docker context create {label} --docker host=...`")
            context: str | None = label
        elif hostname in contexts:
            context = hostname
        elif node.id == manager_node_id:
            context = manager_context()
        else:
            raise SwarmError(f"no Docker context reaches the engine of Swarm node {hostname!r}: create one named after "
                             f"it (`docker context create {hostname} --docker host=ssh://...`), or label the node "
                             f"(`docker node update --label-add {CONTEXT_LABEL}=NAME {hostname}`)")
        engine = NodeEngine(hostname, node.id, context)
        if engine.swarm_state() is None:
            raise SwarmNodeUnreachable(f"the engine of Swarm node {hostname!r} ({engine.where}) does not answer "
                                       f"within {ANSWER_TIMEOUT_S:g} s: start it, fix the context, or drain the "
                                       f"node (`docker node update --availability drain {hostname}`)")
        engines[node.id] = engine
    if not engines:
        raise SwarmError("the Swarm has no node that is Ready and Active")
    return engines
