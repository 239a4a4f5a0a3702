"""Build the service images, only when something that goes into them changed.

Every service lives in ``containers/<name>/`` with its ``Dockerfile``; the build context is ``containers/`` so
each Dockerfile can ``COPY protocol_adapter.py``. Python dependencies are pinned in
``containers/<name>/requirements.txt`` and downloaded on the host into ``containers/.wheelhouse/<name>/``
(builds cannot reach PyPI on every machine); the Dockerfile copies that directory and installs from it offline.

An image carries the label ``cosim.build-hash``: a hash of everything that goes into it (service directory,
protocol adapter, the shared modules its Dockerfile names, wheel files, base image id). ``ensure_images``
compares it with what is on disk and does not even start ``docker build`` when nothing changed. The base image
comes from cosim.runtimes.docker.base_image.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from python_on_whales import docker
from python_on_whales.exceptions import DockerException

from cosim.errors import ImageBuildError
from cosim.paths import service_image
from cosim.resources import data_path
from cosim.runtimes.docker.base_image import (PROJECT, PROJECT_LABEL, Log, build_lock, image_id, image_label,
                                              resolve_base_image, stderr_log)
from cosim.runtimes.docker.engine import docker_errors, run_cli
from cosim.tails import build_output_tail

CONTAINERS = data_path("containers")
BUILD_HASH_LABEL = "cosim.build-hash"
# Changing how images are built (hash inputs, build flags) must invalidate existing images: bump this.
_HASH_SCHEME = "cosim-image-v1"
_PIP_PLATFORM_ARGS = (
    "--only-binary=:all:",
    "--python-version", "3.11",
    "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux_2_28_x86_64",
)  # fmt: skip
_IGNORED_NAMES = {"__pycache__", ".pytest_cache", ".mypy_cache"}


@dataclass(frozen=True)
class ImageSpec:
    """One service image: ``tag`` built from ``service_dir/Dockerfile`` with ``service_dir.parent`` as context.

    What goes into it (and so into its build hash): the service directory, protocol_adapter.py and the shared
    ``containers/*.py`` modules its Dockerfile names.
    """

    tag: str
    service_dir: Path

    @property
    def name(self) -> str:
        return self.service_dir.name

    @property
    def context(self) -> Path:
        return self.service_dir.parent

    @property
    def dockerfile(self) -> Path:
        return self.service_dir / "Dockerfile"

    @property
    def requirements(self) -> Path | None:
        path = self.service_dir / "requirements.txt"
        return path if path.is_file() else None

    @property
    def wheelhouse(self) -> Path:
        return self.context / ".wheelhouse" / self.name


def service_spec(name: str, tag: str | None = None, *, containers: Path = CONTAINERS) -> ImageSpec:
    """The spec of ``containers/<name>``, tagged as :func:`cosim.paths.service_image` says unless told otherwise."""
    return ImageSpec(tag=tag or service_image(name), service_dir=containers / name)


# -- small helpers


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files_under(path: Path) -> list[Path]:
    """Every file under ``path`` (or ``path`` itself), sorted, skipping caches that do not go into images."""
    if path.is_file():
        return [path]
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(d for d in dirnames if d not in _IGNORED_NAMES)
        found.extend(Path(dirpath) / f for f in filenames if not f.endswith((".pyc", ".pyo")))
    return sorted(found)


# -- wheelhouse -------------------------------------------------------------------------------------------------


def _wheelhouse_stamp(spec: ImageSpec) -> Path:
    # Kept next to (not inside) the wheelhouse, which the Dockerfile copies into the image.
    return spec.wheelhouse.parent / f".{spec.name}.stamp.json"


def ensure_wheelhouse(spec: ImageSpec, *, log: Log = stderr_log) -> Path | None:
    """Make ``containers/.wheelhouse/<name>/`` hold the wheels of requirements.txt (for Python 3.11, x86_64).

    The directory is created even without requirements (Dockerfiles COPY it unconditionally); returns it, or
    None when the service has no requirements.txt. Skipped when requirements.txt is unchanged since the last
    download and the wheels are still there.
    """
    spec.wheelhouse.mkdir(parents=True, exist_ok=True)
    requirements = spec.requirements
    if requirements is None:
        return None
    key = hashlib.sha256(requirements.read_bytes() + "\0".join(_PIP_PLATFORM_ARGS).encode()).hexdigest()
    stamp = _wheelhouse_stamp(spec)
    try:
        recorded = json.loads(stamp.read_text())
        if recorded.get("key") == key and all((spec.wheelhouse / name).is_file() for name in recorded["files"]):
            return spec.wheelhouse
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    log(f"wheelhouse {spec.name}: downloading the wheels of {requirements.name} (pip download)")
    staging = spec.wheelhouse.with_name(spec.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", *_PIP_PLATFORM_ARGS,
         "-d", str(staging), "-r", str(requirements)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        shutil.rmtree(staging, ignore_errors=True)
        raise ImageBuildError(
            f"Cannot prepare the wheels for image {spec.tag}: `pip download` failed for {requirements}; "
            f"last lines:\n{build_output_tail(done.stdout + done.stderr)}"
        )
    shutil.rmtree(spec.wheelhouse)  # old versions must not linger next to the new ones
    staging.rename(spec.wheelhouse)
    files = sorted(p.name for p in spec.wheelhouse.iterdir() if p.is_file())
    stamp.write_text(json.dumps({"key": key, "files": files}, indent=1) + "\n")
    return spec.wheelhouse


# -- images -----------------------------------------------------------------------------------------------------


def build_hash(spec: ImageSpec, base_image_id: str) -> str:
    """sha256 over everything that goes into the image: files (relative paths + contents), wheels, base id."""
    digest = hashlib.sha256()
    digest.update(f"{_HASH_SCHEME}\0base={base_image_id}\0".encode())
    # Shared modules next to the services count for the images whose Dockerfile copies them (cosim_mqtt.py).
    dockerfile = spec.dockerfile.read_text(encoding="utf-8") if spec.dockerfile.is_file() else ""
    shared = [path for path in sorted(spec.context.glob("*.py")) if path.name in dockerfile]
    inputs = [spec.service_dir, spec.context / "protocol_adapter.py", *shared, spec.wheelhouse]
    for path in sorted({f for p in inputs if p.exists() for f in _files_under(p)}):
        digest.update(f"{path.relative_to(spec.context).as_posix()}\0{_sha256_file(path)}\0".encode())
    return digest.hexdigest()


_buildx: bool | None = None


def _has_buildx() -> bool:
    global _buildx
    if _buildx is None:
        try:
            run_cli(["buildx", "version"])
            _buildx = True
        except DockerException:
            _buildx = False
    return _buildx


def _build(spec: ImageSpec, base_image: str, digest: str, *, no_cache: bool) -> str:
    """``docker build`` one image; returns its id. Works with and without the buildx plugin."""
    # `docker build` is buildx when the plugin is installed and the classic builder otherwise; python-on-whales'
    # build() needs buildx and its legacy_build() cannot --force-rm (a failed step would leave a container).
    command = ["build", "--quiet", "--force-rm", "--file", str(spec.dockerfile), "--tag", spec.tag,
               "--build-arg", f"BASE_IMAGE={base_image}",
               "--label", f"{BUILD_HASH_LABEL}={digest}", "--label", f"{PROJECT_LABEL}={PROJECT}",
               *(["--no-cache"] if no_cache else []), str(spec.context)]
    # Without buildx, DOCKER_BUILDKIT=1 in the user's environment would make `docker build` refuse to run.
    env = {} if _has_buildx() else {"DOCKER_BUILDKIT": "0"}
    try:
        output = run_cli(command, env=env)
    except DockerException as exc:
        raise ImageBuildError(
            f"Cannot build image {spec.tag} from {spec.dockerfile}: docker build failed (exit {exc.return_code}); "
            f"last lines:\n{build_output_tail((exc.stdout or '') + (exc.stderr or ''))}"
        ) from None
    built = output.strip().splitlines()[-1].strip() if output.strip() else image_id(spec.tag)
    if not built:
        raise ImageBuildError(f"Cannot build image {spec.tag}: docker build reported success but no image id.")
    return built


def ensure_image(
    spec: ImageSpec, base_image: str, base_image_id: str, *, force: bool = False, log: Log = stderr_log
) -> tuple[str, bool]:
    """Build ``spec`` unless an image with the same build hash exists; (image id, whether it was built)."""
    if not spec.dockerfile.is_file():
        raise ImageBuildError(f"Cannot build image {spec.tag}: {spec.dockerfile} does not exist.")
    ensure_wheelhouse(spec, log=log)
    digest = build_hash(spec, base_image_id)
    old_id, old_digest = image_label(spec.tag, BUILD_HASH_LABEL)
    if old_id is not None and old_digest == digest and not force:
        log(f"image {spec.tag}: up to date")
        return old_id, False
    started = time.monotonic()
    new_id = _build(spec, base_image, digest, no_cache=force)
    log(f"image {spec.tag}: built in {time.monotonic() - started:.1f} s")
    if old_id is not None and old_id != new_id:
        _drop_if_untagged(old_id)
    return new_id, True


def _drop_if_untagged(image_id: str) -> None:
    """Remove the image a rebuild replaced, if nothing else names or uses it (keeps `docker images` tidy)."""
    try:
        if not docker.image.inspect(image_id).repo_tags:
            docker.image.remove(image_id, prune=True)
    except DockerException:
        pass  # still used by a container or another image: leave it


@docker_errors()
def ensure_images(
    specs: Iterable[ImageSpec], *, force: bool = False, log: Log = stderr_log
) -> dict[str, str]:
    """Make every image in ``specs`` exist and match its sources; returns {tag: image id}.

    Idempotent and cheap when nothing changed (no ``docker build`` at all). ``force`` rebuilds without the
    layer cache. Raises ImageBuildError naming the image when one cannot be built.
    """
    specs = list(specs)
    result: dict[str, str] = {}
    if not specs:
        return result
    with build_lock():
        base_image = resolve_base_image(log=log)
        base_image_id = image_id(base_image)
        if base_image_id is None:
            raise ImageBuildError(f"The base image {base_image} disappeared while building; run the command again.")
        for spec in specs:
            result[spec.tag], _ = ensure_image(spec, base_image, base_image_id, force=force, log=log)
    return result
