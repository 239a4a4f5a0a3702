"""What a service image is made of, and its name: computed from files alone (no Docker, no network).

A service is a folder with a ``Dockerfile`` (a scenario's ``build:``), anywhere on disk. Its image is built from
a **staged build context**: a copy of the folder's own files in cosim's cache,
``$COSIM_CACHE_DIR`` (default ``${XDG_CACHE_HOME:-~/.cache}/cosim``) ``/contexts/<name>-<hash12>/``, plus
``.cosim/``, which cosim adds:

- ``.cosim/wheels/``: the wheels of the folder's ``requirements.txt`` (downloaded on the host) and
  ``cosim_service-<version>-py3-none-any.whl``, the Python SDK, built by cosim itself (cosim.wheel);
- ``.cosim/node_modules/cosim-service/``: the Node SDK.

Nothing is ever written into the service folder. Left out of the copy (and of the hash): ``__pycache__``,
``.git``, ``.pytest_cache``, ``.mypy_cache``, ``.cosim`` directories and ``*.pyc``/``*.pyo`` files.

**The image name rule**: ``cosim/<folder name>:<first 12 hex digits of the source hash>``, where the source hash
is sha256 over a hash-scheme version, every file of the folder (its path relative to the folder, POSIX style,
and its content; ``requirements.txt`` and the ``Dockerfile`` included) and the SDK content the context gets
(the members of the SDK wheel, the Node SDK's files). Never a path, the base image or the machine: the same
folder gives the same name in any directory, on any machine, and two folders with the same name but other
content (a user's ``echo`` and the bundled one) give two images that never replace each other. The folder name
is lower-cased and every run of characters other than ``a-z0-9`` becomes ``-`` (Docker's rule for names).
Whether an existing image is still current is a separate question, answered by its ``cosim.build-hash`` label
(cosim.runtimes.docker.service_images), which adds the base images' ids and the downloaded wheels.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cosim import wheel
from cosim.resources import data_path

# Changing what goes into the source hash (or how) must change every name: bump this.
HASH_SCHEME = "cosim-source-v1"
CACHE_ENV = "COSIM_CACHE_DIR"
IGNORED_DIRS = frozenset({"__pycache__", ".git", ".pytest_cache", ".mypy_cache", ".cosim"})
IGNORED_SUFFIXES = (".pyc", ".pyo")
STAGED = ".cosim"  # what cosim adds to a staged context
WHEELS = f"{STAGED}/wheels"
NODE_MODULES = f"{STAGED}/node_modules"
NODE_PACKAGE = "cosim-service"
PYTHON_SDK_PACKAGE = "cosim_service"


# -- where things are ----------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """cosim's cache: ``$COSIM_CACHE_DIR``, else ``${XDG_CACHE_HOME:-~/.cache}/cosim``."""
    chosen = os.environ.get(CACHE_ENV, "").strip()
    if chosen:
        return Path(chosen).expanduser().absolute()
    xdg = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(xdg) if xdg else Path.home() / ".cache").absolute() / "cosim"


def sdk_dir() -> Path:
    """The SDKs' directory (``sdk/`` of a checkout, or cosim's package data)."""
    return data_path("sdk")


def python_sdk_package() -> Path | None:
    """The ``cosim_service`` package directory, or None when this cosim has none."""
    package = sdk_dir() / "python" / PYTHON_SDK_PACKAGE
    return package if (package / "__init__.py").is_file() else None


def node_sdk_dir() -> Path | None:
    node = sdk_dir() / "node"
    return node if (node / "package.json").is_file() else None


def containers_dir() -> Path:
    """The bundled services (``containers/``)."""
    return data_path("containers")


# -- the files -----------------------------------------------------------------------------------------------


def folder_files(folder: Path) -> list[tuple[str, Path]]:
    """(relative POSIX path, file) of every file of ``folder`` that goes into its image, sorted by path."""
    found: list[tuple[str, Path]] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
        for name in filenames:
            path = Path(dirpath) / name
            if not name.endswith(IGNORED_SUFFIXES) and path.is_file():
                found.append((path.relative_to(folder).as_posix(), path))
    return sorted(found)


def _python_sdk_project(package: Path) -> wheel.Project:
    pyproject = package.parent / "pyproject.toml"
    if pyproject.is_file():
        return wheel.Project.from_pyproject(pyproject)
    version = re.search(r"""^__version__\s*=\s*["']([^"']+)["']""", (package / "__init__.py").read_text("utf-8"),
                        re.MULTILINE)
    return wheel.Project(name="cosim-service", version=version.group(1) if version else "0.0.0")


@dataclass(frozen=True)
class SdkContent:
    """What every staged context gets from cosim: {path in the context: bytes}, and what of it is hashed."""

    files: dict[str, bytes]
    hashed: tuple[tuple[str, bytes], ...]  # the wheel's members rather than its zip bytes


def sdk_content() -> SdkContent:
    """The SDK content every staged context gets, built once per process for each state of the SDK's files (their
    paths, sizes and modification times: a wheel built on every call cost ~10 ms, several times per `cosim up`)."""
    return _sdk_content(_sdk_fingerprint())


def _sdk_fingerprint() -> tuple[tuple[str, int, int], ...]:
    found: list[Path] = []
    package = python_sdk_package()
    if package is not None:
        found += [path for _, path in folder_files(package)] + [package.parent / "pyproject.toml"]
    node = node_sdk_dir()
    if node is not None:
        found += [path for relative, path in folder_files(node) if relative.split("/", 1)[0] != "node_modules"]
    stats = ((path, path.stat()) for path in found if path.is_file())
    return tuple((str(path), stat.st_size, stat.st_mtime_ns) for path, stat in stats)


@functools.lru_cache(maxsize=4)
def _sdk_content(fingerprint: tuple[tuple[str, int, int], ...]) -> SdkContent:
    files: dict[str, bytes] = {}
    hashed: list[tuple[str, bytes]] = []
    package = python_sdk_package()
    if package is not None:
        project = _python_sdk_project(package)
        name, data = wheel.build(package, project)
        files[f"{WHEELS}/{name}"] = data
        hashed += [(f"{WHEELS}/{name}!{member}", content) for member, content in wheel.wheel_members(package, project)]
    node = node_sdk_dir()
    if node is not None:
        for relative, path in folder_files(node):
            if relative.split("/", 1)[0] != "node_modules":  # the SDK has no dependencies; a dev's install stays out
                name = f"{NODE_MODULES}/{NODE_PACKAGE}/{relative}"
                files[name] = path.read_bytes()
                hashed.append((name, files[name]))
    return SdkContent(files=files, hashed=tuple(hashed))


def file_digest(path: Path) -> str:
    """The SHA-256 of a file's content, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def source_hash(folder: Path, sdk: SdkContent | None = None) -> str:
    """The content hash of a service folder (see the module docstring): its files and the SDK content."""
    sdk = sdk if sdk is not None else sdk_content()
    digest = hashlib.sha256(f"{HASH_SCHEME}\0".encode())
    for relative, path in folder_files(folder):
        digest.update(f"file\0{relative}\0{file_digest(path)}\0".encode())
    for name, data in sdk.hashed:
        digest.update(f"sdk\0{name}\0{hashlib.sha256(data).hexdigest()}\0".encode())
    return digest.hexdigest()


# -- names ---------------------------------------------------------------------------------------------------


def repository_name(folder_name: str) -> str:
    """A folder name as a Docker repository name component: lower case, other characters runs of ``-``."""
    return re.sub(r"[^a-z0-9]+", "-", folder_name.lower()).strip("-") or "service"


def image_name(folder: Path, digest: str | None = None) -> str:
    """``cosim/<folder name>:<hash12>``: the image cosim builds from ``folder``."""
    return f"cosim/{repository_name(folder.name)}:{(digest or source_hash(folder))[:12]}"


def service_image(name: str) -> str:
    """The image of the bundled service ``containers/<name>``."""
    return image_name(containers_dir() / name)


def context_dir(folder: Path, digest: str, cache: Path | None = None) -> Path:
    """Where the staged build context of ``folder`` (with source hash ``digest``) lives, under ``cache`` (default:
    :func:`cache_dir`)."""
    return (cache or cache_dir()) / "contexts" / f"{repository_name(folder.name)}-{digest[:12]}"


# -- the Node SDK for the local runtime ------------------------------------------------------------------------


def node_path() -> Path | None:
    """A directory holding ``cosim-service/`` (the Node SDK), for NODE_PATH; staged in the cache once per SDK
    content. None when this cosim has no Node SDK."""
    sdk = sdk_content()
    files = {name[len(NODE_MODULES) + 1:]: data for name, data in sdk.files.items() if name.startswith(NODE_MODULES + "/")}
    if not files:
        return None
    digest = hashlib.sha256(b"".join(f"{name}\0{hashlib.sha256(data).hexdigest()}\0".encode()
                                     for name, data in sorted(files.items()))).hexdigest()
    target = cache_dir() / "node" / digest[:12] / "node_modules"
    if target.is_dir():
        return target
    write_tree(target, files)
    return target


def write_tree(target: Path, files: Mapping[str, bytes | Path], directories: tuple[str, ...] = ()) -> None:
    """Create the directory ``target`` holding ``files`` ({relative path: bytes, or a file in cosim's cache to
    hard-link, e.g. a downloaded wheel}) and the (maybe empty) ``directories``, atomically: another process sees
    either nothing or all of it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        for directory in directories:
            (staging / directory).mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            path = staging / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(data, Path):
                try:
                    os.link(data, path)
                except OSError:  # another file system
                    shutil.copyfile(data, path)
            else:
                path.write_bytes(data)
        os.chmod(staging, 0o755)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise  # not "another process was first"
    finally:
        shutil.rmtree(staging, ignore_errors=True)
