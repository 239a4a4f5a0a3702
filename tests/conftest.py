"""Shared fixtures: the repository root and a protocol client for service subprocesses."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytest_plugins = ["tests.skip_policy"]  # CI=true or COSIM_NO_SKIP=1: a skip fails, naming what is missing

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS = ROOT / "containers"
SDK_PYTHON = ROOT / "sdk" / "python"
for _path in (CONTAINERS, SDK_PYTHON):  # protocol_adapter as in an image; cosim_service (TEMPORARY: until cosim
    if str(_path) not in sys.path:       # installs it, see sdk/python)
        sys.path.insert(0, str(_path))
# The test services under tests/services/ copy nothing: they import the single-file adapter from containers/, in
# this process and in the services a local run starts (the local runtime keeps PYTHONPATH's entries).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CONTAINERS), os.environ.get("PYTHONPATH")]))


@pytest.fixture
def root() -> Path:
    return ROOT


SERVICE_IMAGES = ("echo", "mqtt-broker", "mqtt-gateway", "cloud-aggregator", "ml-inference")


@pytest.fixture(scope="session")
def service_images() -> dict[str, str]:
    """Every service image, built once per session when missing or stale ({tag: image id}).

    Needs the Docker engine: tests using it carry @pytest.mark.docker. Without an engine they fail loudly
    rather than skip, so a CI machine that lost Docker cannot pass silently.
    """
    from cosim.runtimes.docker.engine import check_engine
    from cosim.runtimes.docker.service_images import ensure_images, service_spec

    check_engine()
    return ensure_images(service_spec(name) for name in SERVICE_IMAGES)


def cosim_resources(label: str) -> tuple[list[str], list[str]]:
    """Container and network ids carrying ``label`` (e.g. "cosim.scenario=default")."""
    import subprocess

    def ids(*command: str) -> list[str]:
        done = subprocess.run(["docker", *command, "--filter", f"label={label}", "-q"], capture_output=True,
                              text=True, check=True)
        return done.stdout.split()

    return ids("ps", "-a"), ids("network", "ls")


def assert_same_simulation(trace_a: Path, trace_b: Path) -> None:
    """Two traces of different runtimes: the same trace hash, and every record after the header byte-identical.

    Only the header's `environment` block (runtime, image ids, library versions) may differ; it is not hashed.
    """
    from cosim.tracediff import ENVIRONMENT, trace_hash

    lines_a, lines_b = trace_a.read_bytes().split(b"\n", 1), trace_b.read_bytes().split(b"\n", 1)
    assert lines_a[1] == lines_b[1], f"{trace_a} and {trace_b} differ after the header"
    assert trace_hash(trace_a) == trace_hash(trace_b)
    header_a, header_b = json.loads(lines_a[0]), json.loads(lines_b[0])
    header_a.pop(ENVIRONMENT), header_b.pop(ENVIRONMENT)
    assert header_a == header_b


def wait_until(condition: Callable[[], bool], process: subprocess.Popen[str], what: str, *,
               timeout_s: float = 120.0) -> None:
    """Poll ``condition`` until it holds; fail at once if ``process`` ends first, or after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            process.kill()
            process.communicate()
            pytest.fail(f"{what} did not happen within {timeout_s:g} s")
        try:
            process.wait(timeout=0.05)  # paces the polling; returns at once if the run ended early
        except subprocess.TimeoutExpired:
            continue
        out, err = process.communicate()
        pytest.fail(f"the run ended (exit {process.returncode}) before {what}:\n{out}\n{err}")


@contextlib.contextmanager
def invoke_up_session(scenario: Path, trace: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    """`invoke up` in a session of its own (its own process group, as a shell job is, so that a test can press
    Ctrl-C as a terminal does: os.killpg(process.pid, SIGINT)); killed with its group if still running at the end."""
    process = subprocess.Popen([sys.executable, "-m", "invoke", "up", str(scenario), "--trace", str(trace), "-q",
                                *extra], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()


OWN_ECHO_DOCKERFILE = """\
# A user's own service folder: the echo service beside a copy of the protocol adapter, and the SDK's wheel.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
COPY .cosim/wheels/ /wheels/
RUN python3 -m venv /opt/venv \\
    && /opt/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels cosim-service \\
    && /opt/venv/bin/python -c "import cosim_service" && rm -rf /wheels
COPY service.py protocol_adapter.py /app/
ENV PATH=/opt/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1
ENTRYPOINT ["python3", "-u", "/app/service.py"]
"""


def own_echo_service(folder: Path) -> Path:
    """A self-contained service folder at ``folder`` (its name is the image's): containers/echo's service with a copy
    of protocol_adapter.py, as a user who copies the adapter has it. Returns ``folder``."""
    folder.mkdir(parents=True)
    (folder / "service.py").write_bytes((CONTAINERS / "echo" / "service.py").read_bytes())
    (folder / "protocol_adapter.py").write_bytes((CONTAINERS / "protocol_adapter.py").read_bytes())
    (folder / "Dockerfile").write_text(OWN_ECHO_DOCKERFILE, encoding="utf-8")
    return folder
