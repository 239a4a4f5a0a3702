"""cosim's own host environment: the pinned lock file and the versions of cosim's dependencies.

``requirements.lock`` pins every host dependency (runtime and every extra: edge, report, analysis, dev) with hashes, for
Python 3.11 on Linux x86_64; ``./inv`` installs from it with ``--require-hashes``. ``update_lock`` (``./inv
lock``) regenerates it from pyproject.toml with pip-tools.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import subprocess
import sys
from pathlib import Path

from cosim.errors import ToolError
from cosim.paths import REPO_ROOT
from cosim.tails import last_lines

LOCK_FILE = REPO_ROOT / "requirements.lock"
LOCK_COMMAND = "./inv lock"


def dependency_versions(distribution: str = "cosim") -> dict[str, str]:
    """{name: installed version} of the distribution's runtime requirements (not its extras), for the trace
    header's environment block. A requirement that is not installed is reported as "missing"."""
    try:
        requirements = importlib.metadata.requires(distribution) or []
    except importlib.metadata.PackageNotFoundError:
        return {}
    versions: dict[str, str] = {}
    for requirement in requirements:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "missing"
    return dict(sorted(versions.items()))


def lock_command(*, upgrade: bool = False, output: Path = LOCK_FILE) -> list[str]:
    command = [sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--allow-unsafe",
               "--all-build-deps", "--strip-extras", "--no-emit-find-links", "--all-extras",
               "--output-file", str(output), str(REPO_ROOT / "pyproject.toml")]
    return command + (["--upgrade"] if upgrade else [])


def update_lock(*, upgrade: bool = False, output: Path = LOCK_FILE) -> Path:
    """Re-resolve pyproject.toml into the lock file: keeps existing pins unless ``upgrade``."""
    environment = {**os.environ, "CUSTOM_COMPILE_COMMAND": LOCK_COMMAND + (" --upgrade" if upgrade else "")}
    environment.pop("PIP_FIND_LINKS", None)  # a machine's local wheel directory is no source for a lock
    done = subprocess.run(lock_command(upgrade=upgrade, output=output), cwd=REPO_ROOT, env=environment,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = last_lines(done.stderr or done.stdout, 8)
        raise ToolError(f"pip-compile could not resolve pyproject.toml into {output.name}:\n{tail}")
    return output
