"""Image builder and engine check: builds only when inputs change, clear errors, no leftovers.

Docker tests build from a temporary copy of containers/ (never the real tree) under unique cosim-test/ tags
and remove every tag they create.
"""

from __future__ import annotations

import shutil
import subprocess
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest
from python_on_whales import docker
from python_on_whales.exceptions import DockerException

from cosim.runtimes.docker import base_image, service_images as images
from cosim.runtimes.docker.engine import check_engine
from cosim.errors import EngineUnavailable, ImageBuildError
from cosim.runtimes.docker.service_images import ImageSpec, ensure_images, ensure_wheelhouse

ROOT = Path(__file__).resolve().parent.parent


class Log(list[str]):
    """Collects ensure_images' progress lines."""

    def __call__(self, line: str) -> None:
        self.append(line)

    def statuses(self, tag: str) -> list[str]:
        return [line.split(": ", 1)[1] for line in self if line.startswith(f"image {tag}: ")]


@pytest.fixture
def containers_copy(tmp_path: Path) -> Path:
    """A throwaway containers/ with the protocol adapter and the echo service."""
    copy = tmp_path / "containers"
    copy.mkdir()
    shutil.copy2(ROOT / "containers" / "protocol_adapter.py", copy / "protocol_adapter.py")
    shutil.copytree(ROOT / "containers" / "echo", copy / "echo", ignore=shutil.ignore_patterns("__pycache__"))
    return copy


@pytest.fixture
def test_tag() -> Iterator[Callable[[str], str]]:
    """Hands out unique cosim-test/ tags and removes them (and their dangling layers) afterwards."""
    created: list[str] = []

    def make(name: str) -> str:
        tag = f"cosim-test/{name}:{uuid.uuid4().hex[:12]}"
        created.append(tag)
        return tag

    yield make
    for tag in created:
        try:
            docker.image.remove(tag, force=True, prune=True)
        except DockerException:
            pass  # never built (e.g. the build failed)


def _status(log: Log, tag: str) -> str:
    return log.statuses(tag)[-1].split(" in ")[0]  # "built in 3.1 s" -> "built"


@pytest.mark.docker
def test_builds_once_then_up_to_date(containers_copy: Path, test_tag: Callable[[str], str]) -> None:
    spec = ImageSpec(tag=test_tag("echo"), service_dir=containers_copy / "echo")
    log = Log()
    first = ensure_images([spec], log=log)
    assert _status(log, spec.tag) == "built"
    labels = docker.image.inspect(spec.tag).config.labels or {}
    assert labels.get(images.PROJECT_LABEL) == "cosim" and labels.get(images.BUILD_HASH_LABEL)

    # A second call does not build; a __pycache__ (made when the service runs locally) changes nothing.
    (containers_copy / "echo" / "__pycache__").mkdir()
    (containers_copy / "echo" / "__pycache__" / "service.cpython-311.pyc").write_bytes(b"stale")
    log.clear()
    second = ensure_images([spec], log=log)
    assert log.statuses(spec.tag) == ["up to date"]
    assert second == first == {spec.tag: docker.image.inspect(spec.tag).id}

    # The image speaks the protocol as a non-root user on a read-only root fs.
    replies = _run_echo(spec.tag)
    assert '"type":"READY"' in replies and '"type":"DONE"' in replies


def _run_echo(tag: str) -> str:
    # python-on-whales cannot feed stdin to `docker run`; the CLI can.
    lines = (
        '{"type":"INIT","protocol":1,"time_us":0,"node_id":"e","seed":1,"config":{"tick_us":300}}\n'
        '{"type":"ADVANCE","time_us":1000,"events":[]}\n{"type":"SHUTDOWN"}\n'
    )
    done = subprocess.run(
        ["docker", "run", "--rm", "-i", "--user", "10001:10001", "--read-only", "--cap-drop", "ALL",
         "--security-opt", "no-new-privileges:true", tag],
        input=lines, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.docker
def test_change_in_service_dir_rebuilds(containers_copy: Path, test_tag: Callable[[str], str]) -> None:
    spec = ImageSpec(tag=test_tag("echo"), service_dir=containers_copy / "echo")
    log = Log()
    first = ensure_images([spec], log=log)[spec.tag]
    service = containers_copy / "echo" / "service.py"
    service.write_text(service.read_text() + "\n# changed\n")
    log.clear()
    second = ensure_images([spec], log=log)[spec.tag]
    assert _status(log, spec.tag) == "built"
    assert second != first
    log.clear()
    ensure_images([spec], log=log)
    assert log.statuses(spec.tag) == ["up to date"]


@pytest.mark.docker
def test_broken_dockerfile_names_the_image(containers_copy: Path, test_tag: Callable[[str], str]) -> None:
    marker = f"cosim-test-broken-{uuid.uuid4().hex[:8]}"
    dockerfile = containers_copy / "echo" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + f"RUN echo {marker} && exit 7\n")
    spec = ImageSpec(tag=test_tag("broken"), service_dir=containers_copy / "echo")
    with pytest.raises(ImageBuildError) as caught:
        ensure_images([spec], log=Log())
    message = str(caught.value)
    assert spec.tag in message and marker in message  # names the image, shows the failing step's output
    leftovers = docker.container.list(all=True)
    assert not [c for c in leftovers if marker in " ".join(c.config.cmd or [])], "failed build left a container"


@pytest.mark.docker
def test_unusable_base_image_override_is_reported(monkeypatch: pytest.MonkeyPatch, containers_copy: Path) -> None:
    monkeypatch.setenv(base_image.BASE_IMAGE_ENV, "cosim-test/no-such-base:none")
    spec = ImageSpec(tag="cosim-test/never:built", service_dir=containers_copy / "echo")
    with pytest.raises(ImageBuildError, match="COSIM_BASE_IMAGE=cosim-test/no-such-base:none is neither present"):
        ensure_images([spec], log=Log())


@pytest.mark.docker
def test_check_engine_passes_here() -> None:
    check_engine()


@pytest.mark.docker
def test_check_engine_reports_unreachable_daemon(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-such-docker.sock")
    with pytest.raises(EngineUnavailable, match=r"Docker Engine is not running or not reachable.*start it"):
        check_engine()


def test_wheelhouse_directory_exists_without_requirements(containers_copy: Path) -> None:
    spec = ImageSpec(tag="cosim-test/echo:unused", service_dir=containers_copy / "echo")
    assert ensure_wheelhouse(spec, log=Log()) is None
    assert (containers_copy / ".wheelhouse" / "echo").is_dir()


def test_wheelhouse_downloads_only_when_requirements_change(
    containers_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[list[str]] = []
    real_run = subprocess.run

    def fake_pip(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if command[1:4] != ["-m", "pip", "download"]:
            return real_run(command, **kwargs)
        calls.append(command)
        target = Path(command[command.index("-d") + 1])
        (target / f"pkg-{len(calls)}-py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(images.subprocess, "run", fake_pip)
    requirements = containers_copy / "echo" / "requirements.txt"
    requirements.write_text("pkg==1\n")
    spec = ImageSpec(tag="cosim-test/echo:unused", service_dir=containers_copy / "echo")

    wheelhouse = ensure_wheelhouse(spec, log=Log())
    assert wheelhouse is not None and len(calls) == 1
    assert "--only-binary=:all:" in calls[0] and "manylinux2014_x86_64" in calls[0]
    ensure_wheelhouse(spec, log=Log())
    assert len(calls) == 1  # unchanged requirements: no download

    requirements.write_text("pkg==2\n")
    ensure_wheelhouse(spec, log=Log())
    assert len(calls) == 2
    assert sorted(p.name for p in wheelhouse.iterdir()) == ["pkg-2-py3-none-any.whl"]  # old wheels are gone

    (wheelhouse / "pkg-2-py3-none-any.whl").unlink()  # a wiped wheelhouse is refilled
    ensure_wheelhouse(spec, log=Log())
    assert len(calls) == 3
