"""Getting the scenario's images to every Swarm node's engine.

The images are built (or pulled) on the engine the docker CLI talks to, as for the docker runtime. Then either:

- with a registry (``$COSIM_REGISTRY`` = ``HOST:PORT``): each image is tagged ``HOST:PORT/<tag>`` and pushed, and
  the stack names those references; every node pulls what it needs;
- without one: each node's engine that lacks an image (by image id, so a rebuilt image is copied again and an
  unchanged one never) gets it through ``docker save | docker load``.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Mapping

from cosim.errors import ImageBuildError, SwarmNodeUnreachable
from cosim.runtimes.docker.engine import docker_command, run_bounded, run_cli
from cosim.runtimes.swarm.nodes import NodeEngine
from cosim.tails import last_lines

REGISTRY_ENV = "COSIM_REGISTRY"
COPY_TIMEOUT_S = 900.0


def registry() -> str | None:
    return os.environ.get(REGISTRY_ENV) or None


def push(image_ids: Mapping[str, str], to: str) -> dict[str, str]:
    """Tag and push every image to the registry ``to``; {tag: the reference the nodes pull}."""
    references = {}
    for tag in sorted(image_ids):
        reference = f"{to}/{tag}"
        try:
            run_cli(["tag", tag, reference])
            run_cli(["push", "--quiet", reference])
        except Exception as exc:  # python-on-whales' DockerException carries docker's words
            raise ImageBuildError(f"cannot push {tag} to the registry {to} (${REGISTRY_ENV}): "
                                  f"{last_lines(str(exc), 3)}") from None
        references[tag] = reference
    return references


def engine_id(context: str | None) -> str | None:
    """What tells engines apart: the engine ID alone does not (engines on one machine can share its key file)."""
    done = run_bounded(["info", "--format", "{{.ID}} {{.Name}} {{.DockerRootDir}}"], 10, context=context)
    return done.stdout.strip() if done is not None and done.returncode == 0 else None


def image_id_on(engine: NodeEngine, tag: str) -> str | None:
    done = run_bounded(["image", "inspect", "--format", "{{.Id}}", tag], 10, context=engine.context)
    return done.stdout.strip() if done is not None and done.returncode == 0 else None


def copy_missing(image_ids: Mapping[str, str], engines: Iterable[NodeEngine]) -> dict[str, list[str]]:
    """Copy to each engine the images it lacks (save | load); {hostname: tags copied}. The engine the images were
    built on is skipped (it has them)."""
    source = engine_id(None)
    copied: dict[str, list[str]] = {}
    for engine in engines:
        if source is not None and engine_id(engine.context) == source:
            continue
        missing = sorted(tag for tag, image_id in image_ids.items() if image_id_on(engine, tag) != image_id)
        if not missing:
            continue
        save = subprocess.Popen(docker_command("save", *missing), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            load = subprocess.run(docker_command("load", "--quiet", context=engine.context), stdin=save.stdout,
                                  capture_output=True, text=True, timeout=COPY_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            save.kill()
            raise SwarmNodeUnreachable(f"copying images to Swarm node {engine.hostname!r} ({engine.where}) took "
                                       f"more than {COPY_TIMEOUT_S:g} s") from None
        finally:
            assert save.stdout is not None
            save.stdout.close()
            save_error = save.communicate()[1].decode(errors="replace")
        if save.returncode != 0 or load.returncode != 0:
            why = last_lines(load.stderr or save_error, 3)
            raise SwarmNodeUnreachable(f"cannot copy images {', '.join(missing)} to Swarm node {engine.hostname!r} "
                                       f"({engine.where}): {why}")
        copied[engine.hostname] = missing
    return copied
