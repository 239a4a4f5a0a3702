"""The README's promise on a bare machine: a fresh clone, no debootstrap, no Compose plugin, no images, no
registry, and `./inv up` still succeeds with no other step.

The clone runs against an empty Docker engine of its own (a second dockerd in its own network namespace, with
its own data directory), so the images on the shared engine stay untouched while this one has none at all.
Needs root (apt-get, network namespaces, dockerd). Takes a few minutes: the base image and every service image
are built from nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cosim.runtimes.swarm import cluster as clusters
from cosim.service_sources import service_image

ROOT = Path(__file__).resolve().parent.parent
UP_TIMEOUT_S = 30 * 60
MTU = 1400

pytestmark = [pytest.mark.bare, pytest.mark.docker]


def sh(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=check)


@contextlib.contextmanager
def empty_engine(tmp_path: Path) -> Iterator[clusters.Engine]:
    """A second dockerd in a network namespace of its own (NAT to the outside, for the builds' apt-get), with
    its own data root, exec root, socket and an empty configuration: cosim's own extra-engine code (the local
    Swarm test cluster is made of the same). Everything is removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="cosim-bare-engine-", dir="/var/tmp"))
    base.rmdir()  # start_engine creates it (and removes it again)
    with clusters.engine("cosim-bare", base, nat=True, mtu=MTU) as engine:
        yield engine
    assert not base.exists() and not clusters.mounts_under(base.parent / base.name)


def have_debootstrap() -> bool:
    return shutil.which("debootstrap") is not None or Path("/usr/sbin/debootstrap").exists()


@pytest.fixture
def without_debootstrap() -> Iterator[None]:
    """debootstrap removed from the host; put back afterwards if the run under test did not reinstall it."""
    if have_debootstrap():
        removed = sh("apt-get", "remove", "-y", "-qq", "debootstrap", check=False)
        assert removed.returncode == 0, removed.stderr
    assert not have_debootstrap()
    try:
        yield
    finally:
        if not have_debootstrap():
            sh("apt-get", "install", "-y", "-qq", "--no-install-recommends", "debootstrap", check=False)


def test_fresh_clone_up_on_a_bare_machine(tmp_path: Path, without_debootstrap: None) -> None:
    assert os.geteuid() == 0, "this test needs root (apt-get, a network namespace, a second dockerd): run ./inv test as root"
    clone = tmp_path / "cosim"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
    docker_config = tmp_path / "docker-config"  # no Compose plugin there: ./inv installs it
    docker_config.mkdir()
    with empty_engine(tmp_path) as engine:
        assert engine.docker("images", "-q").stdout.strip() == "", "the second engine is not empty"
        environment = {key: value for key, value in os.environ.items()
                       if not key.startswith(("COSIM_", "PYTEST", "VIRTUAL_ENV", "INV_"))}
        environment.update(DOCKER_HOST=engine.host, DOCKER_CONFIG=str(docker_config), CI="true")
        environment["PATH"] = os.pathsep.join(p for p in environment.get("PATH", "").split(os.pathsep)
                                              if not p.startswith(str(ROOT)))  # not this checkout's .venv
        done = subprocess.run(["./inv", "up"], cwd=clone, env=environment, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=UP_TIMEOUT_S)
        output = done.stdout + done.stderr
        assert done.returncode == 0, f"./inv up failed on the bare machine:\n{output[-5000:]}"
        # What was missing, ./inv and cosim set up, one line each:
        assert "inv: creating .venv" in output
        assert "inv: installing the pinned Python dependencies" in output
        assert "inv: installing Debian packages: debootstrap" in output
        assert "inv: installing the Docker Compose v2 plugin" in output
        assert "image cosim/base:bookworm: building a Debian bookworm base with debootstrap" in output
        assert have_debootstrap()
        # ... and the run itself:
        assert "cosim: scenario 'default' ran on the docker runtime" in done.stdout
        report = clone / "traces" / "default.report.html"
        assert done.stdout.rstrip().splitlines()[-1] == "  report:  traces/default.report.html" and report.is_file()
        last = json.loads((clone / "traces" / "default.jsonl").read_bytes().rstrip(b"\n").rsplit(b"\n", 1)[-1])
        assert last["record"] == "footer" and last["status"] == "ok"
        assert (docker_config / "cli-plugins" / "docker-compose").is_file()
        built = set(engine.docker("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split())
        assert "cosim/base:bookworm" in built
        # Named by content (cosim.service_sources): the clone's services are this checkout's.
        assert {service_image(name) for name in ("mqtt-broker", "mqtt-gateway", "ml-inference")} <= built
        # The run left nothing behind on its engine (which is ours alone, so everything on it counts).
        assert engine.docker("ps", "-aq").stdout.strip() == ""
        networks = engine.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        assert sorted(networks) == ["bridge", "host", "none"]


def test_without_root_inv_names_the_command_to_run() -> None:
    """Not root, packages missing: ./inv stops at once with the exact apt-get command (and sets up nothing)."""
    assert os.geteuid() == 0, "this test needs root (to run ./inv as another user)"
    base = Path(tempfile.mkdtemp(prefix="cosim-nonroot-", dir="/var/tmp"))  # pytest's tmp is closed to others
    try:
        base.chmod(0o755)
        clone = base / "cosim"
        subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True)
        # A PATH on which jq and chromium are missing; everything else is where it is.
        bin_dir = base / "bin"
        bin_dir.mkdir(mode=0o755)
        for directory in ("/usr/local/bin", "/usr/bin", "/bin"):
            for program in Path(directory).iterdir() if Path(directory).is_dir() else ():
                if program.name not in ("jq", "chromium") and not (bin_dir / program.name).exists():
                    (bin_dir / program.name).symlink_to(program)
        nobody = 65534
        subprocess.run(["chown", "-R", f"{nobody}:{nobody}", str(clone)], check=True)
        done = subprocess.run(
            ["setpriv", f"--reuid={nobody}", f"--regid={nobody}", "--clear-groups", "env", "-i", f"HOME={clone}",
             f"PATH={bin_dir}", "./inv", "test", "--help"],
            cwd=clone, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=120)
        assert done.returncode != 0
        assert done.stderr.splitlines() == [
            "inv: error: ./inv test needs Debian packages that are missing: run `sudo apt-get install -y jq chromium` "
            "(or run ./inv as root), then ./inv test again."]
        assert not (clone / ".venv").exists()  # it stopped before spending time on anything else
    finally:
        shutil.rmtree(base, ignore_errors=True)
