"""The base image every service image is built on, present locally on return from ``resolve_base_image``.

In order: ``$COSIM_BASE_IMAGE`` if set (present, or pulled); else ``python:3.11-slim-bookworm`` (present, or
pulled; a failed pull is remembered for a day in cosim's cache directory, cosim.service_sources.cache_dir());
else, for engines without a registry, ``cosim/base:bookworm`` built locally with debootstrap (root only) and
``docker import``-ed. Builds are serialised between cosim processes by a lock file in that directory too.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from cosim.errors import ImageBuildError
from cosim.runtimes.docker.api import default_engine
from cosim.runtimes.docker.engine import docker_command, pull
from cosim.service_sources import cache_dir as default_cache_dir
from cosim.tails import build_output_tail, last_lines

DEFAULT_BASE_IMAGE = "python:3.11-slim-bookworm"
LOCAL_BASE_IMAGE = "cosim/base:bookworm"
BASE_IMAGE_ENV = "COSIM_BASE_IMAGE"
PROJECT_LABEL = "cosim.project"
PROJECT = "cosim"
# A pull that fails is not retried for this long (an engine without a registry would pay for it every run).
PULL_RETRY_AFTER_S = 24 * 3600
PULL_TIMEOUT_S = float(os.environ.get("COSIM_PULL_TIMEOUT", "120"))
DEBIAN_MIRROR = "http://deb.debian.org/debian"

Log = Callable[[str], None]


def stderr_log(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def image_id(tag: str) -> str | None:
    image = default_engine().image(tag)  # a request on the engine's socket: every run checks its images
    return str(image["Id"]) if image is not None else None


def image_label(tag: str, label: str) -> tuple[str | None, str | None]:
    """(image id, label value) of ``tag``; (None, None) when there is no such image."""
    image = default_engine().image(tag)
    if image is None:
        return None, None
    labels = (image.get("Config") or {}).get("Labels") or {}
    return str(image["Id"]), labels.get(label)


_lock_depth = 0


@contextlib.contextmanager
def build_lock(cache_dir: Path | None = None) -> Iterator[None]:
    """Serialise builds between cosim processes sharing a cache directory (re-entrant within one process)."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    cache_dir = cache_dir or default_cache_dir()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with (cache_dir / "images.lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


# -- the pull memory and the local base image ---------------------------------------------------------------


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


def try_pull(image: str, *, timeout_s: float = PULL_TIMEOUT_S, log: Log = stderr_log) -> tuple[bool, str]:
    """Pull ``image`` within ``timeout_s``; (succeeded, docker's last words)."""
    log(f"image {image}: pulling (up to {timeout_s:.0f} s)")
    return pull(image, timeout_s)


def resolve_base_image(
    *,
    cache_dir: Path | None = None,
    local_tag: str = LOCAL_BASE_IMAGE,
    pull_timeout_s: float = PULL_TIMEOUT_S,
    log: Log = stderr_log,
) -> str:
    """The base image to build on (see the module docstring for the order); it exists locally on return."""
    cache_dir = cache_dir or default_cache_dir()
    chosen = os.environ.get(BASE_IMAGE_ENV, "").strip()
    if chosen:
        if image_id(chosen) is None:
            ok, why = try_pull(chosen, timeout_s=pull_timeout_s, log=log)
            if not ok:
                raise ImageBuildError(
                    f"{BASE_IMAGE_ENV}={chosen} is neither present locally nor pullable ({why}): "
                    f"build or load it first, or unset {BASE_IMAGE_ENV}."
                )
        return chosen
    if image_id(DEFAULT_BASE_IMAGE) is not None:
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
    log: Log = stderr_log,
) -> str:
    """Build a minimal Debian + python3 image with debootstrap and ``docker import`` it as ``tag``.

    For engines that cannot pull: Debian's mirror is reachable where Docker Hub is not. Skipped when ``tag``
    exists (unless ``force``). Needs root and debootstrap on the host.
    """
    with build_lock():
        if not force and image_id(tag) is not None:
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
                    f"last lines:\n{build_output_tail(done.stdout + done.stderr)}"
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
