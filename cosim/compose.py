"""Scenario -> docker-compose file under compose/, byte-identical for the same scenario.

One compose service per container node (replicas are already distinct nodes), attached stdio without a TTY,
one internal network, the node's ``resources`` as limits (``cpus``, ``mem_limit``, ``memswap_limit``), and
locked-down defaults: no published ports, all capabilities dropped, no new privileges, a non-root user, an init
process so containers stop promptly, a read-only root filesystem unless the scenario says otherwise, and never the
Docker socket. Values that change per run (the run id label, the base image) are compose variables, so the file
itself never changes between runs. Everything that comes from the scenario is written with ``$`` doubled
(``literal``), so Compose never interpolates it: a service sees its environment and command exactly as the
scenario wrote them, as it does on the local runtime.

A service with ``build:`` is built from its staged context (cosim.service_sources): ``build.context`` is that
directory's absolute path in cosim's cache (so ``docker compose -f compose/X.yaml build`` works by hand once
``invoke images`` or ``invoke up`` has staged it), with build args ``BASE_IMAGE`` and ``NODE_BASE_IMAGE``. That
path is the only machine-specific part of the file; the trace header's ``compose_sha256`` (``sha256``) hashes the
spec with each ``build`` section replaced by the folder's source hash, so the same scenario and services in any
two directories, on any two machines, give the same hash. Rendering reads files only: no Docker, no network.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import yaml

from cosim.errors import OutputWriteError
from cosim.model import ContainerSpec, Scenario
from cosim.service_sources import cache_dir, context_dir

OUTPUT_DIR = Path("compose")  # rendered files go under the current directory
DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
DEFAULT_NODE_BASE_IMAGE = "cosim/node-base:bookworm"
SERVICE_USER = "10001:10001"
NETWORK = "sim"
LABEL_PREFIX = "cosim"


def literal(text: str) -> str:
    """``text`` protected from Compose interpolation: ``$$`` is how a compose file writes one ``$``."""
    return text.replace("$", "$$")


def compose_path(scenario: Scenario, compose_dir: Path = OUTPUT_DIR) -> Path:
    return compose_dir / f"{scenario.name}.yaml"


def labels(scenario: Scenario, node_id: str | None = None) -> dict[str, str]:
    out = {
        f"{LABEL_PREFIX}.project": "cosim",
        f"{LABEL_PREFIX}.scenario": scenario.name,
        f"{LABEL_PREFIX}.run": "${COSIM_RUN_ID:-manual}",
    }
    if node_id is not None:
        out[f"{LABEL_PREFIX}.node"] = node_id
    return out


def _build(node: ContainerSpec, cache: Path | None) -> dict[str, Any]:
    """The service's ``build`` section; with ``cache`` None, what stands for it in the hash: the source hash."""
    assert node.build is not None
    if cache is None:
        return {"source_sha256": node.source_sha256}
    return {
        "context": literal(context_dir(node.build, node.source_sha256, cache).as_posix()),
        "dockerfile": "Dockerfile",
        "args": {"BASE_IMAGE": "${COSIM_BASE_IMAGE:-" + DEFAULT_BASE_IMAGE + "}",
                 "NODE_BASE_IMAGE": "${COSIM_NODE_BASE_IMAGE:-" + DEFAULT_NODE_BASE_IMAGE + "}"},
    }


def _service(scenario: Scenario, node: ContainerSpec, cache: Path | None) -> dict[str, Any]:
    service: dict[str, Any] = {"image": literal(node.image)}
    if node.build is not None:
        service["build"] = _build(node, cache)
        service["pull_policy"] = "never"  # built by `invoke images`; there may be no registry
    else:
        service["pull_policy"] = "missing"  # a prebuilt image, pulled by cosim before `up` when missing
    service.update({
        "labels": labels(scenario, node.id),
        "environment": {"COSIM_NODE_ID": node.id,
                        **{name: literal(value) for name, value in sorted(node.environment.items())}},
        "networks": [NETWORK],
        "user": SERVICE_USER,
        "init": True,
        "read_only": node.read_only,
        "tmpfs": ["/tmp"],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges:true"],
        "stop_grace_period": "2s",
    })
    if node.speaks_protocol:
        service["stdin_open"] = True  # the coordinator attaches to the main process's stdin/stdout
        service["tty"] = False  # a TTY would mangle the JSON-lines stream
        service["restart"] = "no"
    service.update(_limits(node))
    if node.command is not None:
        # The scenario's command replaces the whole command line: the images use an ENTRYPOINT.
        service["entrypoint"] = [literal(part) for part in node.command]
        service["command"] = []
    return service


LIMIT_KEYS = ("cpus", "mem_limit", "memswap_limit")


def _limits(node: ContainerSpec) -> dict[str, Any]:
    """The node's `resources` as compose keys (none without them); swap limited to the memory, so that a service
    short of memory is killed for it (and named) rather than slowed down by swapping."""
    limits: dict[str, Any] = {}
    if node.resources is not None:
        if node.resources.cpus is not None:
            limits["cpus"] = node.resources.cpus
        if node.resources.memory is not None:
            limits["mem_limit"] = limits["memswap_limit"] = node.resources.memory
    return limits


def compose_spec(scenario: Scenario, cache: Path | None = None) -> dict[str, Any]:
    """The compose file as a dict; build contexts under ``cache`` (default: cosim's cache directory)."""
    return _spec(scenario, cache if cache is not None else cache_dir())


def _spec(scenario: Scenario, cache: Path | None) -> dict[str, Any]:
    return {
        "name": f"cosim-{scenario.name}",
        "services": {node.id: _service(scenario, node, cache) for node in scenario.containers},
        "networks": {NETWORK: {"internal": True, "labels": labels(scenario)}},
    }


def _text(scenario: Scenario, spec: dict[str, Any]) -> str:
    header = (
        f"# Rendered by cosim from scenario {scenario.name!r} (sha256 {scenario.sha256}).\n"
        "# Do not edit: edit the scenario and run `invoke render`. Inspect with `docker compose -f <this file> config`.\n"
    )
    return header + yaml.safe_dump(spec, sort_keys=False, default_flow_style=False, width=120)


def render_text(scenario: Scenario, cache: Path | None = None) -> str:
    return _text(scenario, compose_spec(scenario, cache))


def sha256(scenario: Scenario) -> str:
    """The hash of the scenario's compose spec without its machine-specific parts (each build context's path is
    replaced by its folder's source hash), for the trace header: the same for every runtime (the local runtime
    renders no file, yet its trace names the compose file a Docker run of it would use) and every directory."""
    return hashlib.sha256(_text(scenario, _spec(scenario, None)).encode("utf-8")).hexdigest()


def render(scenario: Scenario, compose_dir: Path = OUTPUT_DIR) -> Path:
    """Write the compose file (atomically) and return its path."""
    path = compose_path(scenario, compose_dir)
    text = render_text(scenario)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.read_text(encoding="utf-8") == text:
            return path
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # unique per writer
    except OSError as exc:
        raise OutputWriteError("the compose file", path, exc) from None
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException as exc:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(exc, OSError):  # e.g. the disk is full
            raise OutputWriteError("the compose file", path, exc) from None
        raise
    return path
