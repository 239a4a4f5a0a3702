"""A tiny, reproducible wheel writer: a pure-Python package directory -> ``<name>-<version>-py3-none-any.whl``.

cosim builds the ``cosim_service`` wheel it puts into every service's build context itself, offline and without a
build backend, so that the same SDK sources give the same wheel on every machine. The wheel holds the package's
files (sorted; caches skipped), ``METADATA`` (name, version, summary, Requires-Python, Requires-Dist and
Provides-Extra from the package's ``pyproject.toml`` ``[project]`` table), ``WHEEL`` and ``RECORD``. Members are
stored uncompressed with a fixed timestamp and fixed permissions: no clock, no zlib version, no umask in the bytes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest time a zip file can hold
_SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".mypy_cache"}
_GENERATOR = "cosim.wheel 1"


@dataclass(frozen=True)
class Project:
    """What a wheel's METADATA says (the ``[project]`` table of a pyproject.toml)."""

    name: str
    version: str
    summary: str = ""
    requires_python: str = ""
    dependencies: tuple[str, ...] = ()
    extras: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def from_pyproject(cls, path: Path) -> Project:
        import tomllib  # (here: a local run builds no wheel, and imports neither)

        table = tomllib.loads(path.read_text(encoding="utf-8")).get("project", {})
        return cls(name=table["name"], version=str(table["version"]), summary=table.get("description", ""),
                   requires_python=table.get("requires-python", ""),
                   dependencies=tuple(table.get("dependencies", ())),
                   extras={extra: tuple(requires) for extra, requires in
                           sorted(table.get("optional-dependencies", {}).items())})

    @property
    def wheel_name(self) -> str:
        """The distribution name as a wheel file spells it (``cosim-service`` -> ``cosim_service``)."""
        return re.sub(r"[-_.]+", "_", self.name).lower()

    @property
    def filename(self) -> str:
        return f"{self.wheel_name}-{self.version}-py3-none-any.whl"

    def metadata(self) -> str:
        lines = ["Metadata-Version: 2.1", f"Name: {self.name}", f"Version: {self.version}"]
        if self.summary:
            lines.append(f"Summary: {self.summary}")
        if self.requires_python:
            lines.append(f"Requires-Python: {self.requires_python}")
        lines += [f"Requires-Dist: {requirement}" for requirement in self.dependencies]
        for extra, requires in self.extras.items():
            lines.append(f"Provides-Extra: {extra}")
            lines += [f"Requires-Dist: {_with_extra(requirement, extra)}" for requirement in requires]
        return "\n".join(lines) + "\n"


def _with_extra(requirement: str, extra: str) -> str:
    requirement, _, marker = requirement.partition(";")
    condition = f'extra == "{extra}"'
    return f"{requirement.strip()}; ({marker.strip()}) and {condition}" if marker.strip() else \
        f"{requirement.strip()}; {condition}"


def package_members(package_dir: Path) -> list[tuple[str, bytes]]:
    """(archive name, content) of every file of the package, sorted; caches and bytecode left out."""
    members = []
    for path in sorted(package_dir.rglob("*")):
        relative = path.relative_to(package_dir)
        if not path.is_file() or _SKIPPED_DIRS & set(relative.parts[:-1]) or path.suffix in (".pyc", ".pyo"):
            continue
        members.append((f"{package_dir.name}/{relative.as_posix()}", path.read_bytes()))
    return members


def wheel_members(package_dir: Path, project: Project) -> list[tuple[str, bytes]]:
    """Every member of the wheel in archive order, RECORD last."""
    dist_info = f"{project.wheel_name}-{project.version}.dist-info"
    members = package_members(package_dir)
    members.append((f"{dist_info}/METADATA", project.metadata().encode()))
    members.append((f"{dist_info}/WHEEL", (f"Wheel-Version: 1.0\nGenerator: {_GENERATOR}\nRoot-Is-Purelib: true\n"
                                            "Tag: py3-none-any\n").encode()))
    record = "".join(f"{name},sha256={_urlsafe_digest(data)},{len(data)}\n" for name, data in members)
    members.append((f"{dist_info}/RECORD", (record + f"{dist_info}/RECORD,,\n").encode()))
    return members


def build(package_dir: Path, project: Project) -> tuple[str, bytes]:
    """(file name, bytes) of the wheel of ``package_dir``: the same inputs give the same bytes."""
    import zipfile

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in wheel_members(package_dir, project):
            info = zipfile.ZipInfo(name, date_time=EPOCH)
            info.external_attr = 0o100644 << 16  # a regular file, rw-r--r--
            info.create_system = 3  # Unix, whatever the host
            archive.writestr(info, data)
    return project.filename, buffer.getvalue()


def _urlsafe_digest(data: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
