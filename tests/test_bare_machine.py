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
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parent.parent
ENGINE_START_DEADLINE_S = 90.0
UP_TIMEOUT_S = 30 * 60
MTU = 1400

pytestmark = [pytest.mark.bare, pytest.mark.docker]


def sh(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, capture_output=True, text=True, check=check)


@dataclass
class Engine:
    host: str  # DOCKER_HOST for the empty engine
    log: Path

    def docker(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["docker", *args], capture_output=True, text=True, env={**os.environ, "DOCKER_HOST": self.host})


def _mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + "/"
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)]


@contextlib.contextmanager
def empty_engine() -> Iterator[Engine]:
    """A second dockerd in a network namespace of its own (NAT to the outside, for the builds' apt-get), with
    its own data root, exec root, socket and an empty configuration. Everything is removed afterwards."""
    tag = f"{os.getpid() % 100000}"
    namespace, host_end, inner_end = f"cosim-bare-{tag}", f"cbh{tag}", f"cbn{tag}"
    subnet_byte = 16 + os.getpid() % 200
    host_ip, inner_ip, subnet = f"10.231.{subnet_byte}.1", f"10.231.{subnet_byte}.2", f"10.231.{subnet_byte}.0/30"
    base = Path(tempfile.mkdtemp(prefix="cosim-bare-engine-", dir="/var/tmp"))
    socket = base / "docker.sock"
    config = base / "daemon.json"
    config.write_text("{}\n")
    driver = sh("docker", "info", "--format", "{{.Driver}}").stdout.strip() or "overlay2"  # what works on this host
    rules = [("FORWARD", "-i", host_end, "-j", "ACCEPT"), ("FORWARD", "-o", host_end, "-j", "ACCEPT")]
    nat_rule = ("POSTROUTING", "-s", subnet, "-j", "MASQUERADE")
    undo: list[list[str]] = []
    daemon: subprocess.Popen[bytes] | None = None
    try:
        sh("ip", "netns", "add", namespace)
        undo.append(["ip", "netns", "del", namespace])
        sh("ip", "link", "add", host_end, "mtu", str(MTU), "type", "veth", "peer", "name", inner_end, "mtu", str(MTU))
        undo.append(["ip", "link", "del", host_end])
        sh("ip", "link", "set", inner_end, "netns", namespace)
        sh("ip", "addr", "add", f"{host_ip}/30", "dev", host_end)
        sh("ip", "link", "set", host_end, "up")
        for command in (["ip", "addr", "add", f"{inner_ip}/30", "dev", inner_end], ["ip", "link", "set", inner_end, "up"],
                        ["ip", "link", "set", "lo", "up"], ["ip", "route", "add", "default", "via", host_ip]):
            sh("ip", "netns", "exec", namespace, *command)
        for rule in rules:
            sh("iptables", "-I", *rule)
            undo.append(["iptables", "-D", *rule])
        sh("iptables", "-t", "nat", "-I", *nat_rule)
        undo.append(["iptables", "-t", "nat", "-D", *nat_rule])
        sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        log = base / "dockerd.log"
        with log.open("wb") as log_handle:
            # nsenter, not `ip netns exec`: that one also remounts /sys, which dockerd must see as the host's.
            daemon = subprocess.Popen(
                ["nsenter", f"--net=/var/run/netns/{namespace}", "dockerd", "--data-root", str(base / "data"),
                 "--exec-root", str(base / "exec"), "--pidfile", str(base / "dockerd.pid"), "-H", f"unix://{socket}",
                 "--config-file", str(config), "--storage-driver", driver, "--mtu", str(MTU)],
                stdout=log_handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        engine = Engine(f"unix://{socket}", log)
        deadline = time.monotonic() + ENGINE_START_DEADLINE_S
        while engine.docker("version", "--format", "{{.Server.Version}}").returncode != 0:
            assert daemon.poll() is None, f"the second dockerd exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"the second dockerd did not answer: {log.read_text()[-2000:]}"
            time.sleep(0.2)
        yield engine
    finally:
        if daemon is not None and daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)  # dockerd stops its containers and its containerd
            try:
                daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(daemon.pid, signal.SIGKILL)
                daemon.wait()
        for mount in sorted(_mounts_under(base), key=len, reverse=True):
            sh("umount", "-l", mount, check=False)
        for command in reversed(undo):
            sh(*command, check=False)
        shutil.rmtree(base, ignore_errors=True)


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
    with empty_engine() as engine:
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
        assert {"cosim/base:bookworm", "cosim/mqtt-broker:dev", "cosim/mqtt-gateway:dev",
                "cosim/ml-inference:dev"} <= built
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
