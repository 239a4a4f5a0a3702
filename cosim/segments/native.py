"""The worker's C++ compiled once by g++ and kept in a cache, so that a worker starts in about a second.

cling (cppyy's interpreter) needs seconds of CPU to parse ns-3's headers and compile the worker's C++ in every
process. The same sources compiled by g++ into shared libraries, one per part, are reused by every later worker:
cling then only reads a few declarations. Without g++, or when it fails, the worker compiles through cling as
before (ns3_sources says which part needs which). Imported only by the worker.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CACHE_ENV = "COSIM_NS3_CACHE"  # where the libraries go; default: $XDG_CACHE_HOME/cosim/ns3-worker
FLAGS = ["-std=c++20", "-O1", "-fPIC", "-shared", "-w"]


def cache_dir() -> Path:
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cosim" / "ns3-worker"


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++")


def compiler_version(cxx: str) -> str | None:
    try:
        done = subprocess.run([cxx, "-dumpfullversion", "-dumpversion"], capture_output=True, text=True,
                              check=False, timeout=60)
    except OSError:
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def build(part: str, source: str, *, include: Path, lib_dir: Path, ns3_libraries: list[Path],
          parts: list[Path]) -> Path | None:
    """The cached library of one part (compiled now when missing); None when g++ is missing or fails.

    Its name holds a digest of everything it is built from, so a changed source, ns-3 or compiler builds anew."""
    cxx = compiler()
    version = compiler_version(cxx) if cxx else None
    if cxx is None or version is None:
        return None
    key = hashlib.sha256("\0".join([source, version, str(include), *map(str, ns3_libraries), *map(str, parts),
                                    *FLAGS]).encode()).hexdigest()[:20]
    name = f"libcosimns-{part}-{key}.so"
    directory = cache_dir()
    target = directory / name
    if target.exists():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"ns-3 worker: no cache for compiled C++ at {directory} ({error}); compiling through cling", file=sys.stderr)
        return None
    print(f"ns-3 worker: compiling its C++ ({part}) with {cxx} into {target} (once)", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(dir=directory) as scratch:
        source_file = Path(scratch) / f"{part}.cc"
        source_file.write_text(source)
        built = Path(scratch) / name
        links = [f"-Wl,-rpath,{lib_dir}", f"-L{lib_dir}", *[f"-l:{lib.name}" for lib in ns3_libraries],
                 f"-Wl,-rpath,{directory}", f"-L{directory}", *[f"-l:{p.name}" for p in parts]]
        command = [cxx, *FLAGS, f"-I{include}", "-o", str(built), str(source_file), f"-Wl,-soname,{name}", *links]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            tail = "\n".join((done.stderr or done.stdout).splitlines()[-15:])
            print(f"ns-3 worker: {cxx} failed on {part} (compiling through cling instead):\n{tail}", file=sys.stderr)
            return None
        os.replace(built, target)  # atomic: a worker compiling the same part at once finds either file whole
    return target
