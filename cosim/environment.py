"""cosim's own host environment: the pinned lock file and the versions of cosim's dependencies.

``requirements.lock`` pins every host dependency (runtime and every extra: edge, report, analysis, dev) with hashes, for
Python 3.11 on Linux x86_64; ``./inv`` installs from it with ``--require-hashes``. ``update_lock`` (``./inv
lock``) regenerates it from pyproject.toml with pip-tools. The ns3 extra has its own lock, requirements-ns3.lock
(``update_separate_lock``), which ./inv installs only when a task needs ns-3.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from cosim.errors import ToolError
from cosim.paths import REPO_ROOT
from cosim.tails import last_lines

LOCK_FILE = REPO_ROOT / "requirements.lock"
LOCK_COMMAND = "./inv lock"
# ns-3 (the ns3 extra: GPL-2.0-only, parts built from source in minutes) is pinned apart, in its own lock that
# ./inv installs only for the tests and for scenarios with network segments.
NS3_LOCK_FILE = REPO_ROOT / "requirements-ns3.lock"
SEPARATE_EXTRAS = {"ns3": NS3_LOCK_FILE}


def dependency_versions(distribution: str = "cosim") -> dict[str, str]:
    """{name: installed version} of the distribution's runtime requirements (not its extras), for the trace
    header's environment block. A requirement that is not installed is reported as "missing".

    Read from the installed distributions' metadata files directly (``_installed``), as importlib.metadata finds
    them: every run writes a header, and importing importlib.metadata cost a tenth of a short local run."""
    installed = _installed()
    own = installed.get(_normalized(distribution))
    if own is None:
        return {}
    versions: dict[str, str] = {}
    for requirement in _metadata(own).get("Requires-Dist", []):
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
        found = installed.get(_normalized(name))
        versions[name] = (_metadata(found).get("Version") or ["missing"])[0] if found is not None else "missing"
    return dict(sorted(versions.items()))


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def _installed() -> dict[str, Path]:
    """Normalized distribution name -> its metadata file (``*.dist-info/METADATA``, ``*.egg-info/PKG-INFO``), the
    first on sys.path, as importlib.metadata would find it."""
    found: dict[str, Path] = {}
    for entry in sys.path:
        try:
            names = sorted(os.listdir(entry or "."))
        except OSError:  # (a zip file, a directory that does not exist)
            continue
        for name in names:
            stem, dot, kind = name.rpartition(".")
            if kind not in ("dist-info", "egg-info") or not dot:
                continue
            metadata = Path(entry or ".", name, "METADATA" if kind == "dist-info" else "PKG-INFO")
            found.setdefault(_normalized(stem.partition("-")[0]), metadata)
    return found


def _metadata(path: Path) -> dict[str, list[str]]:
    """The header fields of a metadata file (the lines before the first empty one), each name's values in order."""
    fields: dict[str, list[str]] = {}
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return fields
    for line in text.split("\n\n", 1)[0].splitlines():
        name, colon, value = line.partition(":")
        if colon and not line[:1].isspace():
            fields.setdefault(name.strip(), []).append(value.strip())
    return fields


def optional_dependencies() -> dict[str, list[str]]:
    import tomllib  # (here: every run imports this module, for its header)

    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    return dict(project.get("optional-dependencies", {}))


def lock_command(*, upgrade: bool = False, output: Path = LOCK_FILE) -> list[str]:
    extras = [arg for extra in sorted(set(optional_dependencies()) - set(SEPARATE_EXTRAS)) for arg in ("--extra", extra)]
    command = [sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--allow-unsafe",
               "--all-build-deps", "--strip-extras", "--no-emit-find-links", *extras,
               "--output-file", str(output), str(REPO_ROOT / "pyproject.toml")]
    return command + (["--upgrade"] if upgrade else [])


def separate_lock_command(requirements: Path, *, upgrade: bool = False, output: Path) -> list[str]:
    """A separate extra's own lock: its requirements alone (cosim's are in the main lock), with hashes."""
    command = [sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--allow-unsafe",
               "--no-emit-find-links", "--output-file", str(output), str(requirements)]
    return command + (["--upgrade"] if upgrade else [])


def _compile(command: list[str], output: Path, *, upgrade: bool) -> None:
    environment = {**os.environ, "CUSTOM_COMPILE_COMMAND": LOCK_COMMAND + (" --upgrade" if upgrade else "")}
    environment.pop("PIP_FIND_LINKS", None)  # a machine's local wheel directory is no source for a lock
    done = subprocess.run(command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = last_lines(done.stderr or done.stdout, 8)
        raise ToolError(f"pip-compile could not resolve pyproject.toml into {output.name}:\n{tail}")


def update_lock(*, upgrade: bool = False, output: Path = LOCK_FILE) -> Path:
    """Re-resolve pyproject.toml into the lock file: keeps existing pins unless ``upgrade``."""
    _compile(lock_command(upgrade=upgrade, output=output), output, upgrade=upgrade)
    return output


def update_separate_lock(extra: str, *, upgrade: bool = False, output: Path | None = None) -> Path:
    """Re-resolve one separate extra (ns3) into its own lock file: keeps existing pins unless ``upgrade``."""
    output = output or SEPARATE_EXTRAS[extra]
    with tempfile.TemporaryDirectory() as scratch:
        requirements = Path(scratch) / f"{extra}.in"
        requirements.write_text("".join(f"{r}\n" for r in optional_dependencies()[extra]))
        _compile(separate_lock_command(requirements, upgrade=upgrade, output=output), output, upgrade=upgrade)
    # pip-compile names its input file in the comments; the lock names the extra instead (no temporary path).
    output.write_text(output.read_text().replace(str(requirements), f"pyproject.toml extra {extra}"))
    return output
