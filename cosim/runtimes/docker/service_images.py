"""Build the service images, only when something that goes into them changed.

A service is a folder with a ``Dockerfile``, anywhere. Its build context is the folder itself, staged by cosim
into its cache with the SDKs and the wheels of the folder's ``requirements.txt`` (see cosim.service_sources for
the layout and for the image name rule, ``cosim/<folder name>:<hash12>`` from content only). Python packages never
come from the network inside a build: ``requirements.txt`` is downloaded on the host with ``pip download`` (for
Python 3.11 on x86_64) into ``<cache>/wheelhouses/<hash of the requirements>/``, once per distinct content, and
its wheels go into the context's ``.cosim/wheels/`` beside the ``cosim_service`` wheel; a Dockerfile installs from
there with ``pip install --no-index --find-links``.

Build args: ``BASE_IMAGE`` (the Python base, cosim.runtimes.docker.base_image) and, for a Dockerfile that names
it, ``NODE_BASE_IMAGE``: ``cosim/node-base:bookworm``, the Python base plus Debian's ``nodejs`` (apt inside the
build), built on demand the first time a Dockerfile uses it.

Every image carries the label ``cosim.build-hash``: a hash of the source hash, the staged wheels and the ids of
the base images it is built on. ``ensure_images`` compares it with what is on disk and does not even start
``docker build`` when nothing changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cosim.errors import ImageBuildError
from cosim.runtimes.docker.base_image import (
    PROJECT,
    PROJECT_LABEL,
    Log,
    build_lock,
    image_id,
    image_label,
    resolve_base_image,
    stderr_log,
)
from cosim.runtimes.docker.engine import docker_errors, run_cli
from cosim.service_sources import (
    NODE_MODULES,
    WHEELS,
    cache_dir,
    containers_dir,
    context_dir,
    file_digest,
    folder_files,
    sdk_content,
    service_image,
    source_hash,
    write_tree,
)
from cosim.tails import build_output_tail

BUILD_HASH_LABEL = "cosim.build-hash"
NODE_BASE_IMAGE = "cosim/node-base:bookworm"
NODE_BASE_ARG = "NODE_BASE_IMAGE"
# Changing how images are built (hash inputs, build flags) must invalidate existing images: bump this.
_HASH_SCHEME = "cosim-image-v2"
_PIP_PLATFORM_ARGS = (
    "--only-binary=:all:",
    "--python-version", "3.11",
    "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux_2_28_x86_64",
)  # fmt: skip
_NODE_BASE_DOCKERFILE = """\
# cosim/node-base: the Python base image plus Debian's Node.js, for services written in JavaScript.
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}
RUN apt-get update \\
    && apt-get install -y --no-install-recommends nodejs \\
    && rm -rf /var/lib/apt/lists/*
"""


@dataclass(frozen=True)
class ImageSpec:
    """One service image: ``tag`` built from the folder ``service_dir`` (its ``Dockerfile``), staged."""

    tag: str
    service_dir: Path

    @property
    def name(self) -> str:
        return self.service_dir.name

    @property
    def dockerfile(self) -> Path:
        return self.service_dir / "Dockerfile"

    @property
    def requirements(self) -> Path | None:
        path = self.service_dir / "requirements.txt"
        return path if path.is_file() else None

    @property
    def uses_node_base(self) -> bool:
        return self.dockerfile.is_file() and NODE_BASE_ARG in self.dockerfile.read_text(encoding="utf-8")


def service_spec(name: str, tag: str | None = None) -> ImageSpec:
    """The spec of the bundled service ``containers/<name>``, named by the rule unless told otherwise."""
    return ImageSpec(tag=tag or service_image(name), service_dir=containers_dir() / name)


# -- wheelhouse and staged context ------------------------------------------------------------------------------


def wheelhouse_dir(requirements: Path) -> Path:
    """Where the wheels of ``requirements`` go: keyed by its content (and the target platform), so each distinct
    requirements file is downloaded once, whichever folder it sits in."""
    key = hashlib.sha256(requirements.read_bytes() + "\0".join(_PIP_PLATFORM_ARGS).encode()).hexdigest()
    return cache_dir() / "wheelhouses" / key[:16]


def ensure_wheelhouse(spec: ImageSpec, *, log: Log = stderr_log) -> Path | None:
    """The directory holding the wheels of the service's requirements.txt (for Python 3.11, x86_64), downloaded
    with ``pip download`` unless an earlier download of the same content is there; None without requirements."""
    requirements = spec.requirements
    if requirements is None:
        return None
    wheelhouse = wheelhouse_dir(requirements)
    if wheelhouse.is_dir():
        return wheelhouse
    log(f"wheelhouse {spec.name}: downloading the wheels of {requirements.name} (pip download)")
    wheelhouse.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{wheelhouse.name}.", dir=wheelhouse.parent))
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", *_PIP_PLATFORM_ARGS,
             "-d", str(staging), "-r", str(requirements)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise ImageBuildError(
                f"Cannot prepare the wheels for image {spec.tag}: `pip download` failed for {requirements}; "
                f"last lines:\n{build_output_tail(done.stdout + done.stderr)}"
            )
        os.chmod(staging, 0o755)
        try:
            staging.rename(wheelhouse)  # complete or absent: never half a download
        except OSError:
            if not wheelhouse.is_dir():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return wheelhouse


def stage_context(spec: ImageSpec, *, log: Log = stderr_log) -> tuple[Path, str]:
    """The staged build context of ``spec`` and its source hash: the folder's files, ``.cosim/wheels/`` (the
    requirements' wheels and the cosim_service wheel) and ``.cosim/node_modules/`` (the Node SDK). Made once per
    source hash, atomically; nothing is written into the service folder."""
    sdk = sdk_content()
    digest = source_hash(spec.service_dir, sdk)
    target = context_dir(spec.service_dir, digest)
    if target.is_dir():
        return target, digest
    files: dict[str, bytes | Path] = {relative: path.read_bytes() for relative, path in folder_files(spec.service_dir)}
    wheelhouse = ensure_wheelhouse(spec, log=log)
    if wheelhouse is not None:  # hard links into the wheelhouse: nothing there is ever modified in place
        files.update({f"{WHEELS}/{path.name}": path for path in sorted(wheelhouse.glob("*.whl"))})
    files.update(sdk.files)
    if source_hash(spec.service_dir, sdk) != digest:
        raise ImageBuildError(f"Cannot build image {spec.tag}: the files of {spec.service_dir} changed while cosim "
                              f"was copying them; run the command again.")
    write_tree(target, files, directories=(WHEELS, NODE_MODULES))  # Dockerfiles COPY them unconditionally
    return target, digest


# -- images -----------------------------------------------------------------------------------------------------


def build_hash(context: Path, digest: str, base_ids: Iterable[str]) -> str:
    """sha256 over the source hash, the staged wheels (names + contents) and the ids of the base images."""
    hashed = hashlib.sha256(f"{_HASH_SCHEME}\0source={digest}\0".encode())
    for base_id in base_ids:
        hashed.update(f"base={base_id}\0".encode())
    for name, digest_of_file in _wheel_digests(context):
        hashed.update(f"{name}\0{digest_of_file}\0".encode())
    return hashed.hexdigest()


def _wheel_digests(context: Path) -> list[tuple[str, str]]:
    """(name, SHA-256) of each staged wheel, remembered beside the context (``<context>.wheels.json``) by size,
    mtime and inode: a staged context never changes in place, and hashing its wheels again on every run cost
    0.2 to 0.4 s (ONNX Runtime's wheel alone is tens of MB). Anything that does not match is hashed again."""
    memo_path = context.with_name(context.name + ".wheels.json")
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    found: list[tuple[str, str]] = []
    fresh: dict[str, list[object]] = {}
    for path in sorted((context / WHEELS).glob("*")):
        stat = path.stat()
        key = [stat.st_size, stat.st_mtime_ns, stat.st_ino]
        entry = memo.get(path.name) if isinstance(memo, dict) else None
        digest = entry[3] if isinstance(entry, list) and len(entry) == 4 and entry[:3] == key else file_digest(path)
        fresh[path.name] = [*key, digest]
        found.append((path.name, digest))
    if fresh != memo:
        try:
            handle, temporary = tempfile.mkstemp(prefix=f".{memo_path.name}.", dir=memo_path.parent)
            with os.fdopen(handle, "w", encoding="utf-8") as out:
                json.dump(fresh, out)
            os.replace(temporary, memo_path)
        except OSError:
            pass  # a memo only: the next run hashes again
    return found


_buildx: bool | None = None


def _has_buildx() -> bool:
    global _buildx
    if _buildx is None:
        from python_on_whales.exceptions import DockerException

        try:
            run_cli(["buildx", "version"])
            _buildx = True
        except DockerException:
            _buildx = False
    return _buildx


def _build(tag: str, context: Path, args: dict[str, str], digest: str, *, no_cache: bool, source: Path) -> str:
    """``docker build`` one image from ``context``/Dockerfile; returns its id. Works with and without buildx."""
    # `docker build` is buildx when the plugin is installed and the classic builder otherwise; python-on-whales'
    # build() needs buildx and its legacy_build() cannot --force-rm (a failed step would leave a container).
    command = ["build", "--quiet", "--force-rm", "--file", str(context / "Dockerfile"), "--tag", tag,
               *[part for name, value in args.items() for part in ("--build-arg", f"{name}={value}")],
               "--label", f"{BUILD_HASH_LABEL}={digest}", "--label", f"{PROJECT_LABEL}={PROJECT}",
               *(["--no-cache"] if no_cache else []), str(context)]
    # Without buildx, DOCKER_BUILDKIT=1 in the user's environment would make `docker build` refuse to run.
    env = {} if _has_buildx() else {"DOCKER_BUILDKIT": "0"}
    from python_on_whales.exceptions import DockerException

    try:
        output = run_cli(command, env=env)
    except DockerException as exc:
        raise ImageBuildError(
            f"Cannot build image {tag} from {source}: docker build failed (exit {exc.return_code}); "
            f"last lines:\n{build_output_tail((exc.stdout or '') + (exc.stderr or ''))}"
        ) from None
    built = output.strip().splitlines()[-1].strip() if output.strip() else image_id(tag)
    if not built:
        raise ImageBuildError(f"Cannot build image {tag}: docker build reported success but no image id.")
    return built


def _ensure_built(tag: str, context: Path, args: dict[str, str], digest: str, *, force: bool, log: Log,
                  source: Path) -> str:
    """Build ``tag`` unless an image with the build hash ``digest`` exists; returns its id."""
    old_id, old_digest = image_label(tag, BUILD_HASH_LABEL)
    if old_id is not None and old_digest == digest and not force:
        log(f"image {tag}: up to date")
        return old_id
    started = time.monotonic()
    new_id = _build(tag, context, args, digest, no_cache=force, source=source)
    log(f"image {tag}: built in {time.monotonic() - started:.1f} s")
    if old_id is not None and old_id != new_id:
        _drop_if_untagged(old_id)
    return new_id


def ensure_node_base(base_image: str, base_image_id: str, *, force: bool = False, log: Log = stderr_log) -> str:
    """``cosim/node-base:bookworm`` on ``base_image`` (Debian's nodejs through apt in the build); returns its id."""
    digest = hashlib.sha256(f"{_HASH_SCHEME}\0node-base\0{_NODE_BASE_DOCKERFILE}\0base={base_image_id}\0"
                            .encode()).hexdigest()
    context = cache_dir() / "node-base" / digest[:12]
    if not context.is_dir():
        write_tree(context, {"Dockerfile": _NODE_BASE_DOCKERFILE.encode()})
    return _ensure_built(NODE_BASE_IMAGE, context, {"BASE_IMAGE": base_image}, digest, force=force, log=log,
                         source=context / "Dockerfile")


def ensure_image(spec: ImageSpec, args: dict[str, str], base_ids: list[str], *, force: bool = False,
                 log: Log = stderr_log) -> str:
    """Build ``spec`` (staged) with the build ``args`` (its base images, whose ids are ``base_ids``) unless an
    image with the same build hash exists; returns its id."""
    if not spec.dockerfile.is_file():
        raise ImageBuildError(f"Cannot build image {spec.tag}: {spec.dockerfile} does not exist.")
    context, source = stage_context(spec, log=log)
    return _ensure_built(spec.tag, context, args, build_hash(context, source, base_ids), force=force, log=log,
                         source=spec.dockerfile)


def _drop_if_untagged(image_id: str) -> None:
    """Remove the image a rebuild replaced, if nothing else names or uses it (keeps `docker images` tidy)."""
    from python_on_whales import DockerException, docker

    try:
        if not docker.image.inspect(image_id).repo_tags:
            docker.image.remove(image_id, prune=True)
    except DockerException:
        pass  # still used by a container or another image: leave it


@dataclass(frozen=True)
class Built:
    """What ``build_images`` made sure of: {tag: image id} of the service images, and of the base images used."""

    images: dict[str, str]
    bases: dict[str, str]


@docker_errors()
def build_images(specs: Iterable[ImageSpec], *, force: bool = False, log: Log = stderr_log) -> Built:
    """Make every image in ``specs`` exist and match its sources, and the base images they need.

    Idempotent and cheap when nothing changed (no ``docker build`` at all). ``force`` rebuilds without the
    layer cache (the Node base too, when used). Raises ImageBuildError naming the image when one cannot be built.
    """
    specs = list(specs)
    if not specs:
        return Built({}, {})
    images: dict[str, str] = {}
    with build_lock():
        base_image = resolve_base_image(log=log)
        base_image_id = image_id(base_image)
        if base_image_id is None:
            raise ImageBuildError(f"The base image {base_image} disappeared while building; run the command again.")
        bases = {base_image: base_image_id}
        if any(spec.uses_node_base for spec in specs):
            bases[NODE_BASE_IMAGE] = ensure_node_base(base_image, base_image_id, force=force, log=log)
        for spec in specs:
            args = {"BASE_IMAGE": base_image, **({NODE_BASE_ARG: NODE_BASE_IMAGE} if spec.uses_node_base else {})}
            images[spec.tag] = ensure_image(spec, args, [bases[image] for image in args.values()], force=force,
                                            log=log)
    return Built(images, bases)


def ensure_images(specs: Iterable[ImageSpec], *, force: bool = False, log: Log = stderr_log) -> dict[str, str]:
    """:func:`build_images`' service images: {tag: image id}."""
    return build_images(specs, force=force, log=log).images
