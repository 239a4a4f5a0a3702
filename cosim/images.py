"""Build the service images, only when something that goes into them changed.

Every service lives in ``containers/<name>/`` with its ``Dockerfile``; the build context is ``containers/`` so
each Dockerfile can ``COPY protocol_adapter.py``. Python dependencies are pinned in
``containers/<name>/requirements.txt`` and downloaded on the host into ``containers/.wheelhouse/<name>/``
(builds cannot reach PyPI on every machine); the Dockerfile copies that directory and installs from it offline.

An image carries the label ``cosim.build-hash``: a hash of everything that goes into it (service directory,
protocol adapter, wheel files, base image id). ``ensure_images`` compares it with what is on disk and does not
even start ``docker build`` when nothing changed.

Base image: ``$COSIM_BASE_IMAGE`` if set; else ``python:3.11-slim-bookworm`` (present, or pulled); else, for
engines without a registry, ``cosim/base:bookworm`` built locally with debootstrap (root only).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from python_on_whales import docker
from python_on_whales.exceptions import DockerException, NoSuchImage

from cosim.engine import docker_command, docker_errors, pull, run_cli
from cosim.errors import ImageBuildError
from cosim.tails import last_lines

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS = ROOT / "containers"
CACHE_DIR = ROOT / ".cache"

DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
LOCAL_BASE_IMAGE = "cosim/base:bookworm"
BASE_IMAGE_ENV = "COSIM_BASE_IMAGE"
BUILD_HASH_LABEL = "cosim.build-hash"
PROJECT_LABEL = "cosim.project"
PROJECT = "cosim"

# Changing how images are built (hash inputs, build flags) must invalidate existing images: bump this.
_HASH_SCHEME = "cosim-image-v1"
# A pull that fails is not retried for this long (an engine without a registry would pay for it every run).
PULL_RETRY_AFTER_S = 24 * 3600
PULL_TIMEOUT_S = float(os.environ.get("COSIM_PULL_TIMEOUT", "120"))
DEBIAN_MIRROR = "http://deb.debian.org/debian"
_PIP_PLATFORM_ARGS = (
    "--only-binary=:all:",
    "--python-version", "3.11",
    "--platform", "manylinux2014_x86_64",
    "--platform", "manylinux_2_28_x86_64",
)  # fmt: skip
_IGNORED_NAMES = {"__pycache__", ".pytest_cache", ".mypy_cache"}

Log = Callable[[str], None]


def _stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


@dataclass(frozen=True)
class ImageSpec:
    """One service image: ``tag`` built from ``service_dir/Dockerfile`` with ``service_dir.parent`` as context.

    ``extra_inputs`` lists further paths (relative to the context) the Dockerfile copies, so that changing
    them triggers a rebuild; the service directory, protocol_adapter.py and the shared ``containers/*.py``
    modules its Dockerfile names are always included.
    """

    tag: str
    service_dir: Path
    extra_inputs: tuple[str, ...] = field(default=())

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
    """The spec of ``containers/<name>``, tagged ``cosim/<name>:dev`` unless told otherwise."""
    return ImageSpec(tag=tag or f"cosim/{name}:dev", service_dir=containers / name)


# -- small helpers --------------------------------------------------------------------------------------------


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


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BUILD_NOISE = (" ---> ", "Removing intermediate container", "Sending build context", "Successfully ")


def _tail(text: str, lines: int = 15) -> str:
    """The last meaningful lines of docker's output: no colours, deprecation banner or layer bookkeeping."""
    kept = []
    skipping = False
    for line in _ANSI.sub("", text).splitlines():
        if line.startswith("DEPRECATED: The legacy builder"):
            skipping = True
            continue
        if skipping and (line.startswith(" ") or not line.strip()):
            continue
        skipping = False
        if line.strip() and not line.startswith(_BUILD_NOISE):
            kept.append(line.rstrip())
    return "\n".join("    " + line for line in last_lines("\n".join(kept), lines).splitlines())


def _image_id(tag: str) -> str | None:
    try:
        return str(docker.image.inspect(tag).id)
    except NoSuchImage:
        return None


def _image_label(tag: str, label: str) -> tuple[str | None, str | None]:
    """(image id, label value) of ``tag``; (None, None) when there is no such image."""
    try:
        image = docker.image.inspect(tag)
    except NoSuchImage:
        return None, None
    labels = (image.config.labels if image.config else None) or {}
    return str(image.id), labels.get(label)


_lock_depth = 0


@contextlib.contextmanager
def _build_lock(cache_dir: Path = CACHE_DIR) -> Iterator[None]:
    """Serialise builds between cosim processes on this checkout (re-entrant within one process)."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / "images.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- base image -------------------------------------------------------------------------------------------------


def _pull_memo(cache_dir: Path) -> Path:
    return cache_dir / "base-image-pulls.json"


def _pull_recently_failed(image: str, cache_dir: Path) -> bool:
    try:
        failed_at = json.loads(_pull_memo(cache_dir).read_text()).get(image)
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(failed_at, (int, float)) and time.time() - failed_at < PULL_RETRY_AFTER_S


def _remember_pull(image: str, ok: bool, cache_dir: Path) -> None:
    memo = _pull_memo(cache_dir)
    try:
        data = json.loads(memo.read_text())
        data = data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        data = {}
    if ok:
        data.pop(image, None)
    else:
        data[image] = time.time()
    cache_dir.mkdir(parents=True, exist_ok=True)
    memo.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def try_pull(image: str, *, timeout_s: float = PULL_TIMEOUT_S, log: Log = _stderr_log) -> tuple[bool, str]:
    """Pull ``image`` within ``timeout_s``; (succeeded, docker's last words)."""
    log(f"image {image}: pulling (up to {timeout_s:.0f} s)")
    return pull(image, timeout_s)


def resolve_base_image(
    *,
    cache_dir: Path = CACHE_DIR,
    local_tag: str = LOCAL_BASE_IMAGE,
    pull_timeout_s: float = PULL_TIMEOUT_S,
    log: Log = _stderr_log,
) -> str:
    """The base image to build on (see the module docstring for the order); it exists locally on return."""
    chosen = os.environ.get(BASE_IMAGE_ENV, "").strip()
    if chosen:
        if _image_id(chosen) is None:
            ok, why = try_pull(chosen, timeout_s=pull_timeout_s, log=log)
            if not ok:
                raise ImageBuildError(
                    f"{BASE_IMAGE_ENV}={chosen} is neither present locally nor pullable ({why}): "
                    f"build or load it first, or unset {BASE_IMAGE_ENV}."
                )
        return chosen
    if _image_id(DEFAULT_BASE_IMAGE) is not None:
        return DEFAULT_BASE_IMAGE
    if not _pull_recently_failed(DEFAULT_BASE_IMAGE, cache_dir):
        ok, why = try_pull(DEFAULT_BASE_IMAGE, timeout_s=pull_timeout_s, log=log)
        _remember_pull(DEFAULT_BASE_IMAGE, ok, cache_dir)
        if ok:
            return DEFAULT_BASE_IMAGE
        log(
            f"image {DEFAULT_BASE_IMAGE}: cannot pull ({last_lines(why, 1) or 'no reason given'}); "
            f"using {local_tag} (not retrying the pull for {PULL_RETRY_AFTER_S // 3600} h)"
        )
    return build_local_base_image(local_tag, log=log)


def build_local_base_image(
    tag: str = LOCAL_BASE_IMAGE,
    *,
    suite: str = "bookworm",
    mirror: str = DEBIAN_MIRROR,
    force: bool = False,
    log: Log = _stderr_log,
) -> str:
    """Build a minimal Debian + python3 image with debootstrap and ``docker import`` it as ``tag``.

    For engines that cannot pull: Debian's mirror is reachable where Docker Hub is not. Skipped when ``tag``
    exists (unless ``force``). Needs root and debootstrap on the host.
    """
    with _build_lock():
        if not force and _image_id(tag) is not None:
            return tag
        debootstrap = shutil.which("debootstrap") or ("/usr/sbin/debootstrap" if os.path.exists("/usr/sbin/debootstrap") else None)
        if debootstrap is None:
            raise ImageBuildError(
                f"Cannot build the base image {tag}: {DEFAULT_BASE_IMAGE} cannot be pulled and debootstrap is "
                f"missing; install it (`sudo apt-get install debootstrap`) or set {BASE_IMAGE_ENV} to a local image."
            )
        if os.geteuid() != 0:
            raise ImageBuildError(
                f"Cannot build the base image {tag}: {DEFAULT_BASE_IMAGE} cannot be pulled and debootstrap needs "
                f"root; run ./inv once as root (e.g. `sudo ./inv up`), or set {BASE_IMAGE_ENV} to a local image."
            )
        log(f"image {tag}: building a Debian {suite} base with debootstrap (about a minute)")
        started = time.monotonic()
        workdir = Path(tempfile.mkdtemp(prefix="cosim-base-", dir="/var/tmp" if os.path.isdir("/var/tmp") else None))
        rootfs = workdir / "rootfs"
        try:
            done = subprocess.run(
                [debootstrap, "--variant=minbase", "--include=python3,python3-venv,ca-certificates", suite,
                 str(rootfs), mirror],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if done.returncode != 0:
                raise ImageBuildError(
                    f"Cannot build the base image {tag}: debootstrap failed (exit {done.returncode}); "
                    f"last lines:\n{_tail(done.stdout + done.stderr)}"
                )
            _import_rootfs(rootfs, tag)
        finally:
            _remove_rootfs(workdir)
        log(f"image {tag}: built in {time.monotonic() - started:.1f} s")
        return tag


def _import_rootfs(rootfs: Path, tag: str) -> None:
    # Streamed: python-on-whales' import_ takes a file, and the tarball would be a few hundred MB.
    command = docker_command("import", "--change", f"LABEL {PROJECT_LABEL}={PROJECT}", "-", tag)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    assert tar.stdout is not None
    try:
        imported = subprocess.run(command, stdin=tar.stdout, capture_output=True, text=True, check=False)
    finally:
        tar.stdout.close()
        tar_code = tar.wait()
    if tar_code != 0 or imported.returncode != 0:
        raise ImageBuildError(
            f"Cannot build the base image {tag}: `tar | docker import` failed; {imported.stderr.strip() or 'tar failed'}"
        )


def _remove_rootfs(workdir: Path) -> None:
    """Delete debootstrap's tree, but never through a mount it may have left behind (e.g. a bind of /dev)."""
    prefix = str(workdir.resolve()) + "/"
    try:
        mounts = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        mounts = []
    for mount in sorted((m for m in mounts if m.startswith(prefix)), key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    try:
        still = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    except OSError:
        still = []
    if any(m.startswith(prefix) for m in still):
        print(f"cosim: left {workdir} in place: something is still mounted inside it", file=sys.stderr)
        return
    shutil.rmtree(workdir, ignore_errors=True)


# -- wheelhouse -------------------------------------------------------------------------------------------------


def _wheelhouse_stamp(spec: ImageSpec) -> Path:
    # Kept next to (not inside) the wheelhouse, which the Dockerfile copies into the image.
    return spec.wheelhouse.parent / f".{spec.name}.stamp.json"


def ensure_wheelhouse(spec: ImageSpec, *, log: Log = _stderr_log) -> Path | None:
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
            f"last lines:\n{_tail(done.stdout + done.stderr)}"
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
    inputs += [spec.context / extra for extra in spec.extra_inputs]
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
            f"last lines:\n{_tail((exc.stdout or '') + (exc.stderr or ''))}"
        ) from None
    image_id = output.strip().splitlines()[-1].strip() if output.strip() else _image_id(spec.tag)
    if not image_id:
        raise ImageBuildError(f"Cannot build image {spec.tag}: docker build reported success but no image id.")
    return image_id


def ensure_image(
    spec: ImageSpec, base_image: str, base_image_id: str, *, force: bool = False, log: Log = _stderr_log
) -> tuple[str, bool]:
    """Build ``spec`` unless an image with the same build hash exists; (image id, whether it was built)."""
    if not spec.dockerfile.is_file():
        raise ImageBuildError(f"Cannot build image {spec.tag}: {spec.dockerfile} does not exist.")
    ensure_wheelhouse(spec, log=log)
    digest = build_hash(spec, base_image_id)
    old_id, old_digest = _image_label(spec.tag, BUILD_HASH_LABEL)
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
    specs: Iterable[ImageSpec], *, force: bool = False, log: Log = _stderr_log
) -> dict[str, str]:
    """Make every image in ``specs`` exist and match its sources; returns {tag: image id}.

    Idempotent and cheap when nothing changed (no ``docker build`` at all). ``force`` rebuilds without the
    layer cache. Raises ImageBuildError naming the image when one cannot be built.
    """
    specs = list(specs)
    result: dict[str, str] = {}
    if not specs:
        return result
    with _build_lock():
        base_image = resolve_base_image(log=log)
        base_image_id = _image_id(base_image)
        if base_image_id is None:
            raise ImageBuildError(f"The base image {base_image} disappeared while building; run the command again.")
        for spec in specs:
            result[spec.tag], _ = ensure_image(spec, base_image, base_image_id, force=force, log=log)
    return result


def image_ids(tags: Sequence[str] | Mapping[str, object]) -> dict[str, str]:
    """{tag: image id} of images that exist (for the reproducibility manifest); raises for a missing one."""
    ids: dict[str, str] = {}
    for tag in tags:
        image_id = _image_id(tag)
        if image_id is None:
            raise ImageBuildError(f"Image {tag} does not exist: build it first (./inv images).")
        ids[tag] = image_id
    return ids
