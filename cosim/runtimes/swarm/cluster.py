"""Extra Docker engines on this machine, each in network and UTS namespaces of its own: the local test cluster
(`invoke cluster up --nodes N`: one Swarm manager, the others workers) and the bare-machine test's empty engine.

An engine is a second ``dockerd`` with its own data root, exec root, pid file, socket and configuration, started
with ``nsenter --net=<netns>`` (not ``ip netns exec``: that remounts /sys, and dockerd then fails with "Devices
cgroup isn't mounted") and ``unshare --uts``, so its Swarm node has a hostname of its own. A veth pair joins its
namespace to the host, which routes between the engines (so Swarm's gossip and overlay traffic flow) and, when
asked, NATs it to the outside (the bare-machine test builds images there).

Everything an engine is made of is written down in ``state.json`` in its directory as soon as it exists, so that
``stop_engine`` (in this process or in a later ``invoke cluster down``) undoes exactly that: the daemon, the
mounts under its directory, the iptables rules, the veth pair, the namespace, the directory. Root only.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from cosim.errors import ClusterError
from cosim.runtimes.docker.engine import run_bounded

CLUSTERS_DIR = Path("/var/tmp/cosim-clusters")
ENGINE_START_DEADLINE_S = 90.0
ENGINE_STOP_DEADLINE_S = 60.0
SUBNET_PREFIX = "10.231"  # each engine gets 10.231.<k>.0/30: .1 the host end, .2 the engine's end
SITE_LABEL = "site"
CLUSTER_NAME = re.compile(r"[a-z][a-z0-9-]{0,19}")


def sh(*command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise ClusterError(f"`{' '.join(command)}` failed: {(done.stderr or done.stdout).strip()}")
    return done


@dataclass
class Engine:
    """One extra dockerd: where it lives and what must be undone to remove it (``undo``, in reverse order)."""

    name: str  # its hostname (the Swarm node's name) and Docker context
    base: str  # its directory: data, exec root, socket, log, state.json
    address: str  # its IP address, as the other engines reach it
    pid: int | None = None
    undo: list[list[str]] = field(default_factory=list)
    command: list[str] = field(default_factory=list)  # how the daemon is started (again, by ``restart_engine``)
    environment: dict[str, str] = field(default_factory=dict)  # what it adds to the environment

    @property
    def host(self) -> str:
        """DOCKER_HOST of this engine."""
        return f"unix://{self.base}/docker.sock"

    @property
    def log(self) -> Path:
        return Path(self.base) / "dockerd.log"

    def docker(self, *args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
        """A docker command against this engine, by its socket; one that cannot run or does not answer within
        ``timeout_s`` fails like a command that timed out (exit code 124, the reason on stderr)."""
        done = run_bounded(list(args), timeout_s, host=self.host)
        if done is None:
            return subprocess.CompletedProcess(["docker", *args], 124, "", f"no answer within {timeout_s:g} s")
        return done

    def save(self) -> None:
        (Path(self.base) / "state.json").write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, base: Path) -> Engine:
        return cls(**json.loads((base / "state.json").read_text()))


def _used_subnets() -> set[int]:
    used = set()
    for match in re.finditer(rf"inet {re.escape(SUBNET_PREFIX)}\.(\d+)\.", sh("ip", "-4", "-o", "addr").stdout):
        used.add(int(match.group(1)))
    return used


def _free_subnet() -> int:
    free = sorted(set(range(16, 250)) - _used_subnets())
    if not free:
        raise ClusterError(f"no free {SUBNET_PREFIX}.x.0/30 subnet left for another engine")
    return free[os.getpid() % min(len(free), 50)]  # spread concurrent callers over the free ones


def start_engine(name: str, base: Path, *, nat: bool = False, mtu: int = 1500,
                 extra_args: tuple[str, ...] = (), environment: dict[str, str] | None = None) -> Engine:
    """Start a dockerd named ``name`` in ``base`` (created; must not exist). On failure everything is undone."""
    if os.geteuid() != 0:
        raise ClusterError("extra Docker engines need root (network namespaces, veth pairs, dockerd)")
    for tool in ("dockerd", "nsenter", "unshare", "ip", "iptables"):
        if shutil.which(tool) is None:
            raise ClusterError(f"extra Docker engines need `{tool}`, which is not installed")
    base.mkdir(parents=True)
    k = _free_subnet()
    host_ip, inner_ip = f"{SUBNET_PREFIX}.{k}.1", f"{SUBNET_PREFIX}.{k}.2"
    engine = Engine(name=name, base=str(base), address=inner_ip,
                    undo=[["rm", "-rf", str(base)]])
    namespace, host_end, inner_end = f"cosim-{k}-{os.getpid()}", f"cosim{k}h", f"cosim{k}n"

    def step(command: list[str], undo: list[str] | None = None) -> None:
        sh(*command)
        if undo is not None:
            engine.undo.append(undo)
            engine.save()

    try:
        engine.save()
        step(["ip", "netns", "add", namespace], ["ip", "netns", "del", namespace])
        step(["ip", "link", "add", host_end, "mtu", str(mtu), "type", "veth", "peer", "name", inner_end, "mtu",
              str(mtu)], ["ip", "link", "del", host_end])
        step(["ip", "link", "set", inner_end, "netns", namespace])
        step(["ip", "addr", "add", f"{host_ip}/30", "dev", host_end])
        step(["ip", "link", "set", host_end, "up"])
        for command in (["ip", "addr", "add", f"{inner_ip}/30", "dev", inner_end], ["ip", "link", "set", inner_end, "up"],
                        ["ip", "link", "set", "lo", "up"], ["ip", "route", "add", "default", "via", host_ip]):
            step(["ip", "netns", "exec", namespace, *command])
        # The host routes between the engines' namespaces (and, with nat, to the outside).
        for rule in (("FORWARD", "-i", host_end, "-j", "ACCEPT"), ("FORWARD", "-o", host_end, "-j", "ACCEPT")):
            step(["iptables", "-I", *rule], ["iptables", "-D", *rule])
        if nat:
            masquerade = ("POSTROUTING", "-s", f"{inner_ip}/32", "!", "-d", f"{SUBNET_PREFIX}.0.0/16", "-j", "MASQUERADE")
            step(["iptables", "-t", "nat", "-I", *masquerade], ["iptables", "-t", "nat", "-D", *masquerade])
        step(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
        config = base / "daemon.json"
        config.write_text("{}\n")
        driver = sh("docker", "info", "--format", "{{.Driver}}", check=False).stdout.strip() or "overlay2"
        # nsenter, not `ip netns exec` (see the module docstring); unshare --uts: a hostname of its own.
        engine.command = ["nsenter", f"--net=/var/run/netns/{namespace}", "unshare", "--uts", "sh", "-c",
                          'hostname "$0" && exec "$@"', name,
                          "dockerd", "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
                          "--pidfile", str(base / "dockerd.pid"), "-H", engine.host, "--config-file", str(config),
                          "--storage-driver", driver, "--mtu", str(mtu), *extra_args]
        engine.environment = dict(environment or {})
        _launch(engine)
        return engine
    except BaseException:
        stop_engine(engine)
        raise


def _launch(engine: Engine) -> None:
    """Start the engine's daemon (its log appended to) and return once it answers."""
    with engine.log.open("ab") as log:
        daemon = subprocess.Popen(engine.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  start_new_session=True, env={**os.environ, **engine.environment})
    engine.pid = daemon.pid  # sh execs dockerd: the same process
    engine.save()
    deadline = time.monotonic() + ENGINE_START_DEADLINE_S
    while engine.docker("version", "--format", "{{.Server.Version}}", timeout_s=10).returncode != 0:
        if daemon.poll() is not None:
            raise ClusterError(f"dockerd {engine.name} exited at start:\n{_tail(engine.log)}")
        if time.monotonic() > deadline:
            raise ClusterError(f"dockerd {engine.name} did not answer within {ENGINE_START_DEADLINE_S:g} s:\n"
                               f"{_tail(engine.log)}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(timeout=0.2)  # paces the polling; returns at once if it died


def stop_daemon(engine: Engine) -> None:
    """Stop the engine's daemon as `systemctl stop docker` does (SIGTERM: it stops its containers, then exits),
    SIGKILL after ENGINE_STOP_DEADLINE_S; its namespace, mounts and data stay."""
    pid = engine.pid
    if pid is not None and alive(pid) and _is_dockerd(pid, engine.base):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + ENGINE_STOP_DEADLINE_S
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)  # a watchdog on another process's exit (no simulation path)
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
            while alive(pid):
                time.sleep(0.1)


def restart_engine(engine: Engine) -> None:
    """Restart the engine's daemon as `systemctl restart docker` does: stopped (its containers with it), started
    again on the same data; returns once it answers."""
    stop_daemon(engine)
    _launch(engine)


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie waiting for its parent, init, to reap it, does not)."""
    try:
        if os.waitpid(pid, os.WNOHANG) != (0, 0):
            return False  # our child, and now reaped
    except ChildProcessError:
        pass  # not our child (started by an earlier `invoke cluster up`)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    try:
        return status.read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


def _is_dockerd(pid: int, base: str) -> bool:
    """Guard against a recycled pid: only a dockerd of ``base`` is ever signalled."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(part.endswith(b"dockerd") for part in command) and base.encode() + b"/data" in command


def stop_engine(engine: Engine) -> None:
    """Stop the daemon (it stops its containers), unmount what is left under its directory and undo the rest."""
    stop_daemon(engine)
    _kill_namespace_processes(engine)
    for mount in sorted(mounts_under(Path(engine.base)), key=len, reverse=True):
        sh("umount", "-l", mount, check=False)
    for command in reversed(engine.undo):
        sh(*command, check=False)


def _kill_namespace_processes(engine: Engine) -> None:
    """What a dockerd that was killed outright leaves in its namespace (its containerd, container shims)."""
    for command in engine.undo:
        if command[:3] == ["ip", "netns", "del"]:
            for pid in sh("ip", "netns", "pids", command[3], check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)


def mounts_under(directory: Path) -> list[str]:
    prefix = str(directory.resolve()) + "/"
    return [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()
            if line.split()[4].startswith(prefix)]


@contextlib.contextmanager
def engine(name: str, base: Path, **options: object) -> Iterator[Engine]:
    """``start_engine`` ... ``stop_engine`` around a block."""
    started = start_engine(name, base, **options)  # type: ignore[arg-type]  # the caller passes start_engine's keywords
    try:
        yield started
    finally:
        stop_engine(started)


# -- the local test cluster ---------------------------------------------------------------------------------


@dataclass
class Cluster:
    """A local Swarm of extra engines: ``engines[0]`` is the manager; each engine is named by a Docker context of
    the same name as its Swarm node (``<cluster>-1`` ...), and node i carries the label ``site=site-<i>``."""

    name: str
    engines: list[Engine]

    @property
    def manager(self) -> Engine:
        return self.engines[0]

    @property
    def contexts(self) -> list[str]:
        return [engine.name for engine in self.engines]


def cluster_dir(name: str) -> Path:
    return CLUSTERS_DIR / name


def cluster_up(nodes: int, name: str = "cosim") -> Cluster:
    """Start ``nodes`` engines, make the first a Swarm manager and join the others as workers; one Docker context
    per engine. The host engine is never touched. On failure everything is removed again."""
    if not CLUSTER_NAME.fullmatch(name):
        raise ClusterError(f"cluster name {name!r}: expected lowercase letters, digits and '-', at most 20")
    if nodes < 1:
        raise ClusterError(f"--nodes {nodes}: expected at least 1")
    directory = cluster_dir(name)
    if directory.exists():
        raise ClusterError(f"a cluster named {name!r} is already up ({directory}): `invoke cluster down` first")
    directory.mkdir(parents=True)
    cluster = Cluster(name, [])
    try:
        for index in range(1, nodes + 1):
            # no-new-privileges for every container: what `docker stack deploy` drops from the compose file.
            cluster.engines.append(start_engine(f"{name}-{index}", directory / f"node-{index}",
                                                extra_args=("--bridge", "none", "--iptables=false",
                                                            "--no-new-privileges"),
                                                # Run a task from the image the node has (copied there by cosim)
                                                # instead of asking a registry first: the cluster has none.
                                                environment={"DOCKER_SERVICE_PREFER_OFFLINE_IMAGE": "1"}))
            _create_context(cluster.engines[-1])
        manager = cluster.manager
        _check(manager.docker("swarm", "init", "--advertise-addr", manager.address), "swarm init", manager)
        token = manager.docker("swarm", "join-token", "-q", "worker").stdout.strip()
        for worker in cluster.engines[1:]:
            _check(worker.docker("swarm", "join", "--token", token, "--advertise-addr", worker.address,
                                 f"{manager.address}:2377"), "swarm join", worker)
        _wait_ready(cluster)
        for index, engine in enumerate(cluster.engines, start=1):
            # Where placement constraints can point: node.labels.site == site-<i> (see scenarios/distributed.yaml).
            _check(manager.docker("node", "update", "--label-add", f"{SITE_LABEL}=site-{index}", engine.name),
                   "node update", manager)
        return cluster
    except BaseException:
        cluster_down(name)
        raise


def _check(done: subprocess.CompletedProcess[str], what: str, engine: Engine) -> None:
    if done.returncode != 0:
        raise ClusterError(f"{what} on {engine.name} failed: {(done.stderr or done.stdout).strip()}")


def _create_context(engine: Engine) -> None:
    sh("docker", "context", "rm", "-f", engine.name, check=False)  # a stale one from a killed cluster
    sh("docker", "context", "create", engine.name, "--description", "cosim local test cluster",
       "--docker", f"host={engine.host}")
    engine.undo.insert(1, ["docker", "context", "rm", "-f", engine.name])  # after the daemon, before the rm -rf
    engine.save()


def _wait_ready(cluster: Cluster, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        listed = cluster.manager.docker("node", "ls", "--format", "{{.Hostname}} {{.Status}}").stdout.split("\n")
        ready = {line.split()[0] for line in listed if line.endswith(" Ready")}
        if ready >= set(cluster.contexts):
            return
        if time.monotonic() > deadline:
            raise ClusterError(f"Swarm nodes not ready after {timeout_s:g} s: {sorted(set(cluster.contexts) - ready)}")
        time.sleep(0.2)  # a watchdog poll on the cluster's own engines (no simulation path)


def cluster_down(name: str = "cosim") -> int:
    """Remove the cluster ``name``: every engine, context, namespace, veth, rule, mount and directory. Returns how
    many engines were removed (0: there was no such cluster)."""
    directory = cluster_dir(name)
    if not directory.is_dir():
        return 0
    engines = [Engine.load(path.parent) for path in sorted(directory.glob("node-*/state.json"))]
    for engine in reversed(engines):  # workers first, the manager last
        stop_engine(engine)
    for leftover in sorted(mounts_under(directory), key=len, reverse=True):
        sh("umount", "-l", leftover, check=False)
    shutil.rmtree(directory, ignore_errors=True)
    with contextlib.suppress(OSError):
        CLUSTERS_DIR.rmdir()  # only when no other cluster is up
    return len(engines)


def load_cluster(name: str = "cosim") -> Cluster | None:
    directory = cluster_dir(name)
    if not directory.is_dir():
        return None
    return Cluster(name, [Engine.load(path.parent) for path in sorted(directory.glob("node-*/state.json"))])
