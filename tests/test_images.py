"""Image builder and engine check: services from any folder, named by content, built only when inputs change,
clear errors, no leftovers.

Docker tests build from temporary service folders (never the real tree) and remove every image they create (the
bundled echo image and the Node base image, shared with the rest of the suite, stay).
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import uuid
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from python_on_whales import docker
from python_on_whales.exceptions import DockerException

from cosim import service_sources, wheel
from cosim.errors import EngineUnavailable, ImageBuildError
from cosim.runtimes.docker import base_image
from cosim.runtimes.docker import service_images as images
from cosim.runtimes.docker.engine import check_engine
from cosim.runtimes.docker.service_images import (
    ImageSpec,
    build_images,
    ensure_images,
    ensure_wheelhouse,
    service_spec,
    stage_context,
)
from cosim.service_sources import image_name

from .conftest import own_echo_service

ROOT = Path(__file__).resolve().parent.parent


class Log(list[str]):
    """Collects ensure_images' progress lines."""

    def __call__(self, line: str) -> None:
        self.append(line)

    def statuses(self, tag: str) -> list[str]:
        return [line.split(": ", 1)[1] for line in self if line.startswith(f"image {tag}: ")]


@pytest.fixture(autouse=True)
def _own_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Staged contexts and wheelhouses of these tests go to a temporary cache, removed with it (which knows the
    base image pulls that failed recently, as the real one does: no pull attempt per test)."""
    memo = service_sources.cache_dir() / "base-image-pulls.json"
    (tmp_path / "cache").mkdir()
    if memo.is_file():
        shutil.copyfile(memo, tmp_path / "cache" / memo.name)
    monkeypatch.setenv(service_sources.CACHE_ENV, str(tmp_path / "cache"))


@pytest.fixture
def echo_folder(tmp_path: Path) -> Path:
    """A user's own service folder named like a bundled one: echo."""
    return own_echo_service(tmp_path / "elsewhere" / "echo")


@pytest.fixture
def test_tag() -> Iterator[Callable[[str], str]]:
    """Hands out unique cosim-test/ tags (or registers a given tag) and removes them afterwards."""
    created: list[str] = []

    def make(name: str) -> str:
        tag = name if ":" in name else f"cosim-test/{name}:{uuid.uuid4().hex[:12]}"
        created.append(tag)
        return tag

    yield make
    for tag in created:
        try:
            docker.image.remove(tag, force=True, prune=True)
        except DockerException:
            pass  # never built (e.g. the build failed)


@pytest.fixture
def fake_pip(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[list[str]]:
    """`pip download` replaced by one that writes pkg-<n>-py3-none-any.whl."""
    calls: list[list[str]] = []
    real_run = subprocess.run

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        if command[1:4] != ["-m", "pip", "download"]:
            return real_run(command, **kwargs)
        calls.append(command)
        target = Path(command[command.index("-d") + 1])
        (target / f"pkg-{len(calls)}-py3-none-any.whl").write_bytes(b"wheel")
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(images.subprocess, "run", run)
    return calls


def _status(log: Log, tag: str) -> str:
    return log.statuses(tag)[-1].split(" in ")[0]  # "built in 3.1 s" -> "built"


@pytest.mark.docker
def test_builds_once_then_up_to_date(echo_folder: Path, test_tag: Callable[[str], str]) -> None:
    spec = ImageSpec(tag=test_tag("echo"), service_dir=echo_folder)
    log = Log()
    first = ensure_images([spec], log=log)
    assert _status(log, spec.tag) == "built"
    labels = docker.image.inspect(spec.tag).config.labels or {}
    assert labels.get(images.PROJECT_LABEL) == "cosim" and labels.get(images.BUILD_HASH_LABEL)

    # A second call does not build; a __pycache__ (made when the service runs locally) changes nothing.
    (echo_folder / "__pycache__").mkdir()
    (echo_folder / "__pycache__" / "service.cpython-311.pyc").write_bytes(b"stale")
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
def test_change_in_service_dir_rebuilds(echo_folder: Path, test_tag: Callable[[str], str]) -> None:
    spec = ImageSpec(tag=test_tag("echo"), service_dir=echo_folder)
    log = Log()
    first = ensure_images([spec], log=log)[spec.tag]
    service = echo_folder / "service.py"
    service.write_text(service.read_text() + "\n# changed\n")
    log.clear()
    second = ensure_images([spec], log=log)[spec.tag]
    assert _status(log, spec.tag) == "built"
    assert second != first
    log.clear()
    ensure_images([spec], log=log)
    assert log.statuses(spec.tag) == ["up to date"]


@pytest.mark.docker
def test_broken_dockerfile_names_the_image(echo_folder: Path, test_tag: Callable[[str], str]) -> None:
    marker = f"cosim-test-broken-{uuid.uuid4().hex[:8]}"
    dockerfile = echo_folder / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + f"RUN echo {marker} && exit 7\n")
    spec = ImageSpec(tag=test_tag("broken"), service_dir=echo_folder)
    with pytest.raises(ImageBuildError) as caught:
        ensure_images([spec], log=Log())
    message = str(caught.value)
    assert spec.tag in message and marker in message  # names the image, shows the failing step's output
    leftovers = docker.container.list(all=True)
    assert not [c for c in leftovers if marker in " ".join(c.config.cmd or [])], "failed build left a container"


@pytest.mark.docker
def test_unusable_base_image_override_is_reported(monkeypatch: pytest.MonkeyPatch, echo_folder: Path) -> None:
    monkeypatch.setenv(base_image.BASE_IMAGE_ENV, "cosim-test/no-such-base:none")
    spec = ImageSpec(tag="cosim-test/never:built", service_dir=echo_folder)
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


def test_no_wheelhouse_without_requirements(echo_folder: Path, fake_pip: list[list[str]]) -> None:
    spec = ImageSpec(tag="cosim-test/echo:unused", service_dir=echo_folder)
    assert ensure_wheelhouse(spec, log=Log()) is None
    assert fake_pip == []


def test_wheelhouse_downloads_once_per_requirements_content(echo_folder: Path, tmp_path: Path,
                                                           fake_pip: list[list[str]]) -> None:
    requirements = echo_folder / "requirements.txt"
    requirements.write_text("pkg==1\n")
    spec = ImageSpec(tag="cosim-test/echo:unused", service_dir=echo_folder)

    wheelhouse = ensure_wheelhouse(spec, log=Log())
    assert wheelhouse is not None and len(fake_pip) == 1
    assert wheelhouse.is_relative_to(tmp_path / "cache")
    assert "--only-binary=:all:" in fake_pip[0] and "manylinux2014_x86_64" in fake_pip[0]
    assert ensure_wheelhouse(spec, log=Log()) == wheelhouse
    # Another folder with the same requirements shares the download.
    other = own_echo_service(tmp_path / "other" / "svc")
    (other / "requirements.txt").write_text("pkg==1\n")
    assert ensure_wheelhouse(ImageSpec(tag="cosim-test/svc:unused", service_dir=other), log=Log()) == wheelhouse
    assert len(fake_pip) == 1

    requirements.write_text("pkg==2\n")
    again = ensure_wheelhouse(spec, log=Log())
    assert len(fake_pip) == 2 and again != wheelhouse
    assert sorted(p.name for p in again.iterdir()) == ["pkg-2-py3-none-any.whl"]


def test_staged_context_is_the_folder_and_cosims_additions(tmp_path: Path, fake_pip: list[list[str]]) -> None:
    folder = own_echo_service(tmp_path / "services" / "echo")
    (folder / "requirements.txt").write_text("pkg==1\n")
    (folder / "data").mkdir()
    (folder / "data" / "table.csv").write_text("a,b\n")
    for leftover in ("__pycache__", ".git", ".pytest_cache", ".cosim"):
        (folder / leftover).mkdir()
        (folder / leftover / "junk").write_text("not in the image")
    sibling = own_echo_service(tmp_path / "services" / "big")
    (sibling / "blob.bin").write_bytes(b"\0" * 1024)
    before = sorted(path.relative_to(folder) for path in folder.rglob("*"))

    context, digest = stage_context(ImageSpec(tag="cosim-test/echo:unused", service_dir=folder), log=Log())
    assert context == tmp_path / "cache" / "contexts" / f"echo-{digest[:12]}"
    staged = sorted(path.relative_to(context).as_posix() for path in context.rglob("*") if path.is_file())
    sdk = sorted(service_sources.sdk_content().files)
    assert staged == sorted(["Dockerfile", "data/table.csv", "protocol_adapter.py", "requirements.txt", "service.py",
                             ".cosim/wheels/pkg-1-py3-none-any.whl", *sdk])
    assert ".cosim/wheels/cosim_service-0.1.0-py3-none-any.whl" in sdk
    assert (context / ".cosim" / "node_modules").is_dir()
    assert sorted(path.relative_to(folder) for path in folder.rglob("*")) == before  # nothing written into it
    assert image_name(folder) == f"cosim/echo:{digest[:12]}"
    # Staged once per content: a second call copies nothing.
    (context / "marker").write_text("kept")
    assert stage_context(ImageSpec(tag="cosim-test/echo:unused", service_dir=folder), log=Log())[0] == context
    assert (context / "marker").is_file()


def test_image_names_come_from_content_not_paths(tmp_path: Path) -> None:
    one = own_echo_service(tmp_path / "a" / "echo")
    two = own_echo_service(tmp_path / "b" / "c" / "echo")
    assert image_name(one) == image_name(two) != service_sources.service_image("echo")
    assert image_name(one).startswith("cosim/echo:") and len(image_name(one).split(":")[1]) == 12
    (two / "service.py").write_text((two / "service.py").read_text() + "\n# changed\n")
    assert image_name(one) != image_name(two)
    (one / "__pycache__").mkdir()
    (one / "__pycache__" / "x.pyc").write_bytes(b"x")
    assert image_name(one) == image_name(own_echo_service(tmp_path / "d" / "echo"))
    assert image_name(own_echo_service(tmp_path / "My Service_2")).startswith("cosim/my-service-2:")


# -- the SDK wheel ------------------------------------------------------------------------------------------


def _package(directory: Path) -> Path:
    package = directory / "demo_pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text('__version__ = "1.2"\nVALUE = 42\n')
    (package / "sub" / "__init__.py").write_text("")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "x.cpython-311.pyc").write_bytes(b"x")
    (directory / "pyproject.toml").write_text('[project]\nname = "demo-pkg"\nversion = "1.2"\n'
                                              'description = "A demo"\nrequires-python = ">=3.11"\n'
                                              'dependencies = []\n[project.optional-dependencies]\n'
                                              'mqtt = ["paho-mqtt>=2.0"]\n')
    return package


def test_the_wheel_is_reproducible_and_installable(tmp_path: Path) -> None:
    package = _package(tmp_path / "src")
    project = wheel.Project.from_pyproject(tmp_path / "src" / "pyproject.toml")
    name, data = wheel.build(package, project)
    assert name == "demo_pkg-1.2-py3-none-any.whl"
    (package / "__init__.py").touch()  # a new mtime changes nothing
    shutil.copytree(tmp_path / "src", tmp_path / "copy")
    assert wheel.build(tmp_path / "copy" / "demo_pkg", project) == (name, data)
    members = zipfile.ZipFile(io.BytesIO(data)).namelist()
    assert members == ["demo_pkg/__init__.py", "demo_pkg/sub/__init__.py", "demo_pkg-1.2.dist-info/METADATA",
                       "demo_pkg-1.2.dist-info/WHEEL", "demo_pkg-1.2.dist-info/RECORD"]
    metadata = zipfile.ZipFile(io.BytesIO(data)).read("demo_pkg-1.2.dist-info/METADATA").decode()
    assert 'Provides-Extra: mqtt\nRequires-Dist: paho-mqtt>=2.0; extra == "mqtt"' in metadata

    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / name).write_bytes(data)
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           "--no-index", "--find-links", str(tmp_path / "wheels"), "--target", str(tmp_path / "site"),
                           "demo-pkg"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    imported = subprocess.run([sys.executable, "-c", "import demo_pkg; print(demo_pkg.VALUE)"],
                              cwd=tmp_path / "site", capture_output=True, text=True, timeout=60)
    assert imported.stdout.strip() == "42", imported.stderr


# -- the real engine: names that cannot clash, the Node base ------------------------------------------------------


@pytest.mark.docker
def test_a_folder_named_echo_never_touches_the_bundled_echo(echo_folder: Path,
                                                             test_tag: Callable[[str], str]) -> None:
    bundled = service_spec("echo")
    bundled_id = ensure_images([bundled], log=Log())[bundled.tag]
    own = ImageSpec(tag=test_tag(image_name(echo_folder)), service_dir=echo_folder)
    assert own.tag.startswith("cosim/echo:") and own.tag != bundled.tag
    own_id = ensure_images([own], log=Log())[own.tag]
    assert own_id != bundled_id
    assert docker.image.inspect(bundled.tag).id == bundled_id
    replies = _run_echo(own.tag)
    assert '"type":"READY"' in replies and '"type":"DONE"' in replies


@pytest.mark.docker
def test_the_node_base_image_is_built_on_demand(tmp_path: Path, test_tag: Callable[[str], str]) -> None:
    folder = tmp_path / "hello-node"
    folder.mkdir()
    (folder / "index.js").write_text('console.log("node " + process.version);\n')
    (folder / "Dockerfile").write_text("ARG NODE_BASE_IMAGE=cosim/node-base:bookworm\nFROM ${NODE_BASE_IMAGE}\n"
                                       "COPY .cosim/node_modules/ /app/node_modules/\nCOPY index.js /app/\n"
                                       'ENTRYPOINT ["node", "/app/index.js"]\n')
    spec = ImageSpec(tag=test_tag(image_name(folder)), service_dir=folder)
    built = build_images([spec], log=Log())
    assert images.NODE_BASE_IMAGE in built.bases
    labels = docker.image.inspect(images.NODE_BASE_IMAGE).config.labels or {}
    assert labels.get(images.BUILD_HASH_LABEL) and labels.get(images.PROJECT_LABEL) == "cosim"
    done = subprocess.run(["docker", "run", "--rm", "--user", "10001:10001", "--read-only", spec.tag],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("node v"), done.stdout + done.stderr
    log = Log()
    assert build_images([spec], log=log).images == built.images
    assert log.statuses(images.NODE_BASE_IMAGE) == ["up to date"] and log.statuses(spec.tag) == ["up to date"]
    # A Python-only scenario does not need it.
    assert images.NODE_BASE_IMAGE not in build_images([service_spec("echo")], log=Log()).bases
