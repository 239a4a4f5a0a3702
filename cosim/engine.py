"""Is a usable container engine there? ``check_engine()`` answers with one clear sentence when it is not.

Three things must hold: the ``docker`` CLI is installed, the Docker daemon answers, and the Compose v2 plugin
(``docker compose``) is installed. A positive answer is cached per process and per Docker endpoint
(DOCKER_HOST / DOCKER_CONTEXT / DOCKER_CONFIG), so callers may check before every command at no cost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import Iterator

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from cosim.errors import DockerCommandFailed, EngineUnavailable

_ENDPOINT_VARS = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG")
_checked_ok: set[tuple[str | None, ...]] = set()

INSTALL_DOCKER = "install Docker Engine (https://docs.docker.com/engine/install/)"


def _endpoint() -> tuple[str | None, ...]:
    return tuple(os.environ.get(name) for name in _ENDPOINT_VARS)


def _stderr(exc: DockerException) -> str:
    return (exc.stderr or "").strip()


def check_engine() -> None:
    """Return when Docker and Compose v2 are usable; raise EngineUnavailable with a one-sentence fix otherwise."""
    endpoint = _endpoint()
    if endpoint in _checked_ok:
        return
    if shutil.which("docker") is None:
        raise EngineUnavailable(f"The docker command was not found: {INSTALL_DOCKER}, then run ./inv once.")
    docker = DockerClient()  # reads DOCKER_HOST etc. from the environment at call time
    try:
        docker.version()
    except DockerException as exc:
        raise EngineUnavailable(_daemon_problem(_stderr(exc))) from None
    except Exception as exc:  # an unexpected answer (e.g. unparsable output) still means "not usable"
        raise EngineUnavailable(f"The Docker Engine did not answer as expected ({exc}): check `docker version`.") from None
    try:
        docker.compose.version()
    except DockerException:
        raise EngineUnavailable(
            "Docker Compose v2 is missing (`docker compose version` fails): run ./inv once, or install the "
            "Compose v2 plugin (https://docs.docker.com/compose/install/linux/)."
        ) from None
    _checked_ok.add(endpoint)


def _daemon_problem(stderr: str) -> str:
    where = os.environ.get("DOCKER_HOST")
    at = f" at DOCKER_HOST={where}" if where else ""
    if "permission denied" in stderr.lower():
        return (
            f"Your user may not use the Docker Engine{at}: add it to the docker group "
            "(`sudo usermod -aG docker $USER`, then log in again) or run as root."
        )
    return (
        f"Docker Engine is not running or not reachable{at}: start it (e.g. `sudo systemctl start docker`) "
        f"or {INSTALL_DOCKER}; `docker info` shows the details."
    )


@contextlib.contextmanager
def docker_errors() -> Iterator[None]:
    """The Docker boundary: a python-on-whales exception that cosim did not foresee (and catch where it happens)
    leaves as DockerCommandFailed, so that callers catch cosim's own types only. Also a decorator."""
    try:
        yield
    except DockerException as exc:
        raise DockerCommandFailed("\n".join(str(exc).strip().splitlines()[-6:])) from None
