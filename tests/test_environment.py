"""The pinned host environment: requirements.lock covers every dependency, with hashes, and is what is installed."""

from __future__ import annotations

import importlib.metadata
import re
import shutil
import tomllib
from pathlib import Path

from cosim.environment import LOCK_FILE, NS3_LOCK_FILE, SEPARATE_EXTRAS, dependency_versions, update_lock

ROOT = Path(__file__).resolve().parent.parent
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s\\]+)")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(lock: Path) -> dict[str, str]:
    return {canonical(m.group(1)): m.group(2) for line in lock.read_text().splitlines() if (m := PIN.match(line))}


def declared(*, extras: bool = True, only: str | None = None) -> set[str]:
    """The distributions pyproject.toml names: its runtime dependencies, and with ``extras`` every extra's but
    those with a lock of their own (ns3); with ``only``, that one extra's alone."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    optional = project["optional-dependencies"]
    if only is not None:
        requirements = optional[only]
    else:
        requirements = project["dependencies"] + (
            [r for name, extra in optional.items() if name not in SEPARATE_EXTRAS for r in extra] if extras else [])
    return {canonical(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in requirements}


def assert_hashed(lock: Path) -> None:
    entries = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text())
    for entry in entries:
        if PIN.match(entry):
            assert "--hash=sha256:" in entry, f"no hash for {entry.splitlines()[0]}"


def test_lock_pins_every_dependency_with_hashes() -> None:
    pinned = pins(LOCK_FILE)
    assert declared() <= set(pinned)
    assert "setuptools" in pinned  # the build backend too: cosim itself is installed without an isolated build
    assert_hashed(LOCK_FILE)


def test_ns3_has_its_own_lock_with_hashes() -> None:
    """ns-3 (GPL-2.0-only, built for minutes) stays out of requirements.lock: ./inv installs it only when needed."""
    assert declared(only="ns3") <= set(pins(NS3_LOCK_FILE))
    assert {"cppyy", "cpycppyy", "cppyy-backend", "cppyy-cling"} <= set(pins(NS3_LOCK_FILE))
    assert not set(pins(NS3_LOCK_FILE)) & set(pins(LOCK_FILE))
    assert_hashed(NS3_LOCK_FILE)


def test_the_environment_is_the_lock() -> None:
    """./inv installed exactly the pinned versions into .venv."""
    installed = {name: importlib.metadata.version(name) for name in pins(LOCK_FILE)}
    assert installed == pins(LOCK_FILE)


def test_header_names_cosims_dependency_versions() -> None:
    versions = dependency_versions()
    assert set(map(canonical, versions)) == declared(extras=False)  # the runtime ones: no extra
    assert versions == {name: pins(LOCK_FILE)[canonical(name)] for name in versions}


def test_lock_is_up_to_date_with_pyproject(tmp_path: Path) -> None:
    """Re-resolving with the current pins kept (what `./inv lock` does) changes no pin: nothing was forgotten."""
    copy = tmp_path / "requirements.lock"
    shutil.copy(LOCK_FILE, copy)
    update_lock(output=copy)
    assert pins(copy) == pins(LOCK_FILE)
