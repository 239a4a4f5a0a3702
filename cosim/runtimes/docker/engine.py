"""cosim's boundary with the Docker CLI: python-on-whales where it is used, and the calls it lacks.

python-on-whales costs 0.2 to 0.45 s to import (pydantic), more than a run's whole overhead should be, so it is
imported inside the functions that use it (builds, restart, crash, logs, `invoke down`, engines without a local
socket); a run's bring-up and teardown use `docker compose` processes and the engine API (cosim.runtimes.docker.api).

- ``check_engine()``: is a usable engine there? One clear sentence when it is not. Three things must hold: the
  ``docker`` CLI is installed, the Docker daemon answers, and the Compose v2 plugin is installed. A positive
  answer is cached per process and per Docker endpoint (DOCKER_HOST / DOCKER_CONTEXT / DOCKER_CONFIG).
- ``docker_errors()``: python-on-whales' exceptions leave as cosim's DockerCommandFailed.
- What python-on-whales lacks, run with the same binary, each bounded by a timeout but builds (``run_cli``):
  ``pull`` (its pull has none: a blackholed registry would hang), ``wait_exit`` (a bounded `docker wait`),
  ``stderr_tail`` (its logs() merges stdout into stderr), ``context_host``, and ``docker_command`` for the argv of
  a `docker attach` process or of `docker compose`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cosim.errors import DockerCommandFailed, EngineUnavailable
from cosim.tails import last_lines, log_tail

_ENDPOINT_VARS = ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_CONFIG")
_checked_ok: set[tuple[str | None, ...]] = set()

INSTALL_DOCKER = "install Docker Engine (https://docs.docker.com/engine/install/)"
# Where the docker CLI looks for its plugins (docs.docker.com/engine/extend/cli_plugins), besides $DOCKER_CONFIG.
PLUGIN_DIRS = ("/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins",
               "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins")

if TYPE_CHECKING:
    from python_on_whales.exceptions import DockerException


def endpoint() -> tuple[str | None, ...]:
    """What selects the engine the docker CLI talks to (a cache key)."""
    return tuple(os.environ.get(name) for name in _ENDPOINT_VARS)


def _stderr(exc: DockerException) -> str:
    return (exc.stderr or "").strip()


def check_engine() -> None:
    """Return when Docker and Compose v2 are usable; raise EngineUnavailable with a one-sentence fix otherwise.

    On a local socket the daemon is asked `GET /_ping` (a millisecond) and the Compose plugin is found where the
    CLI finds it; otherwise, and when either is in doubt, `docker version` and `docker compose version` say
    (two CLI processes: python-on-whales, imported only then)."""
    endpoint_now = endpoint()
    if endpoint_now in _checked_ok:
        return
    if shutil.which("docker") is None:
        raise EngineUnavailable(f"The docker command was not found: {INSTALL_DOCKER}, then run ./inv once.")
    if not (_pings() and _compose_plugin_installed()):
        _check_through_cli()
    _checked_ok.add(endpoint_now)


def _pings() -> bool:
    from cosim.runtimes.docker.api import default_engine

    return default_engine().ping()


def _compose_plugin_installed() -> bool:
    config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker")
    return any((Path(directory) / "docker-compose").is_file()
               for directory in (config / "cli-plugins", *PLUGIN_DIRS))


def _check_through_cli() -> None:
    from python_on_whales import DockerClient
    from python_on_whales.exceptions import DockerException

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
    except Exception as exc:
        # python-on-whales is imported only where it is used: none of its exceptions exists before that.
        module = sys.modules.get("python_on_whales.exceptions")
        if module is not None and isinstance(exc, module.DockerException):
            raise DockerCommandFailed(last_lines(str(exc), 6)) from None
        raise


def docker_command(*args: str, context: str | None = None) -> list[str]:
    """The argv of a docker CLI command, as python-on-whales runs it; ``context``: through that Docker context."""
    return [docker_binary()] + (["--context", context] if context else []) + list(args)


def docker_binary() -> str:
    """The docker CLI, as python-on-whales finds it (on the PATH) without importing it."""
    return shutil.which("docker") or "docker"


def run_cli(args: list[str], *, env: Mapping[str, str] | None = None, context: str | None = None) -> str:
    """A docker command that python-on-whales offers no suitable method for, run the way it runs its own (its
    stdout; raises DockerException with the command's output when it fails). No timeout: for builds."""
    from python_on_whales.utils import run as docker_run

    return str(docker_run(docker_command(*args, context=context), env=dict(env or {})))


def run_bounded(args: list[str], timeout_s: float, *, context: str | None = None,
                host: str | None = None) -> subprocess.CompletedProcess[str] | None:
    """A docker command's outcome within ``timeout_s``; None when it could not run or did not answer in time.
    ``host``: the socket of a daemon that has no context yet (DOCKER_HOST; the current context does not apply)."""
    environment = None
    if host is not None:
        environment = {key: value for key, value in os.environ.items() if key != "DOCKER_CONTEXT"}
        environment["DOCKER_HOST"] = host
    try:
        return subprocess.run(docker_command(*args, context=context), capture_output=True, text=True, errors="replace",
                              timeout=timeout_s, check=False, env=environment)
    except (OSError, subprocess.TimeoutExpired):
        return None


def pull(image: str, timeout_s: float) -> tuple[bool, str]:
    """Pull ``image`` within ``timeout_s``: (succeeded, docker's last words)."""
    done = run_bounded(["pull", "--quiet", image], timeout_s)
    if done is None:
        return False, f"no answer within {timeout_s:.0f} s"
    return done.returncode == 0, (done.stderr or done.stdout).strip()


def wait_exit(container_id: str, timeout_s: float, *, context: str | None = None) -> int | None:
    """The container's exit code once it has exited, waiting up to ``timeout_s``; None while it still runs."""
    done = run_bounded(["wait", container_id], timeout_s, context=context)
    if done is None or done.returncode != 0 or not done.stdout.strip().isdigit():
        return None
    return int(done.stdout.strip())


_LOG_SCAN_LINES = 2000  # `docker logs --tail` counts stdout and stderr lines together


def stderr_tail(container_id: str, lines: int, *, context: str | None = None) -> str:
    """The last lines the container wrote on stderr, from the start of a stack trace they cut into (``log_tail``;
    "" when there are none or the engine cannot say)."""
    done = run_bounded(["logs", "--tail", str(_LOG_SCAN_LINES), container_id], 10, context=context)
    if done is None or done.returncode != 0:
        return ""
    return log_tail(done.stderr, lines)


def context_host(context: str | None = None) -> str:
    """The engine endpoint of a docker context (default: the current one), e.g. ``unix:///var/run/docker.sock``;
    "" if unknown."""
    done = run_bounded(["context", "inspect", "--format", "{{.Endpoints.docker.Host}}", *([context] if context else [])], 10)
    return done.stdout.strip() if done is not None and done.returncode == 0 else ""
