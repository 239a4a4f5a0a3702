"""The Swarm runtime on local test clusters: real dockerd instances in namespaces of their own (cosim's
cluster tool), never the host engine in Swarm mode.

- one node: the default scenario on Swarm gives the compose runtime's trace records; a schedule's crashes and
  restarts (scenarios/chaos.yaml: the gateway; tests/scenarios_schedule/broker-crash.yaml: the broker) give the
  local runtime's; the failures (placement no node satisfies, a task that cannot start or restart, a node engine
  that does not answer, no manager) are one clear error each, within a deadline, and leave nothing behind;
- three nodes: scenarios/distributed.yaml across them, the same records again and the header naming the node of
  each service; then a worker whose engine stops mid-run.

Each cluster is removed at the end of its module, and the test checks that nothing of it is left: no dockerd,
network namespace, veth, mount, data directory or Docker context. Needs root.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cosim.errors import NodeFailure, NodeStartError, SwarmError, SwarmNodeUnreachable
from cosim.run import run
from cosim.runtimes.swarm import cluster as clusters
from cosim.runtimes.swarm import down_stacks
from cosim.runtimes.swarm.nodes import CONTEXT_ENV
from tests.conftest import ROOT, assert_same_simulation, invoke_up_session, wait_until
from tests.test_schedule import BROKER_CRASH, check_broker_crash, records

pytestmark = [pytest.mark.docker, pytest.mark.swarm]

DEFAULT_NETWORKS = ["docker_gwbridge", "host", "ingress", "none"]


def assert_gone(cluster: clusters.Cluster) -> None:
    """Nothing of the cluster is left on this machine."""
    for engine in cluster.engines:
        assert engine.pid is not None and not clusters.alive(engine.pid), f"dockerd {engine.name} still runs"
        assert not Path(engine.base).exists()
    assert not clusters.cluster_dir(cluster.name).exists()
    assert not clusters.mounts_under(clusters.cluster_dir(cluster.name))
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    contexts = subprocess.run(["docker", "context", "ls", "--format", "{{.Name}}"], capture_output=True, text=True).stdout
    for engine in cluster.engines:
        assert engine.name not in contexts.split()
        for command in engine.undo:
            if command[:3] == ["ip", "netns", "del"]:
                assert command[3] not in namespaces
            if command[:3] == ["ip", "link", "del"]:
                assert f" {command[3]}@" not in links and f" {command[3]}:" not in links


def _module_cluster(nodes: int, suffix: str) -> Iterator[clusters.Cluster]:
    """A local test Swarm of ``nodes`` engines for one test module, checked gone afterwards."""
    assert os.geteuid() == 0, "the Swarm tests need root (extra dockerd instances in network namespaces)"
    cluster = clusters.cluster_up(nodes, f"t{os.getpid() % 100000}{suffix}")
    try:
        yield cluster
    finally:
        clusters.cluster_down(cluster.name)
    assert_gone(cluster)


@pytest.fixture(scope="module")
def one_node(service_images: dict[str, str]) -> Iterator[clusters.Cluster]:
    yield from _module_cluster(1, "")


@pytest.fixture
def on_swarm(one_node: clusters.Cluster, monkeypatch: pytest.MonkeyPatch) -> clusters.Cluster:
    monkeypatch.setenv(CONTEXT_ENV, one_node.manager.name)
    return one_node


def assert_nothing_left(cluster: clusters.Cluster) -> None:
    for engine in cluster.engines:
        if engine.docker("version", timeout_s=10).returncode != 0:
            continue  # stopped by the test
        assert engine.docker("ps", "-aq").stdout.split() == [], f"containers left on {engine.name}"
        networks = engine.docker("network", "ls", "--format", "{{.Name}}").stdout.split()
        assert set(networks) <= set(DEFAULT_NETWORKS), f"networks left on {engine.name}"  # (ingress: in the Swarm)
    assert cluster.manager.docker("service", "ls", "-q").stdout.split() == []


def variant(tmp_path: Path, source: str, name: str, change: dict[str, dict]) -> Path:
    """A copy of a bundled scenario with some container nodes' fields changed."""
    doc = yaml.safe_load((ROOT / source).read_text())
    doc["name"] = name
    for node in doc["nodes"]:
        node.update(change.get(node["id"], {}))
        if "build" in node:
            node["build"] = str((ROOT / "scenarios" / node["build"]).resolve())
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def environment(trace: Path) -> dict:
    return json.loads(trace.read_bytes().split(b"\n", 1)[0])["environment"]


def test_default_scenario_on_one_node_swarm_gives_the_compose_records(on_swarm: clusters.Cluster,
                                                                      tmp_path: Path) -> None:
    """Also what a task's container gets, looked at mid-run: read-only root, no capabilities, non-root user, init,
    and no-new-privileges (dropped by stack deploy, set daemon-wide by the cluster's engines)."""
    seen: dict[str, str] = {}

    def look(now_us: int, duration_us: int) -> None:
        if seen:
            return
        engine = on_swarm.manager
        (container,) = engine.docker("ps", "-q", "--filter", "label=cosim.node=gateway").stdout.split()
        seen["inspect"] = engine.docker("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}} {{.HostConfig.CapDrop}} "
                                        "{{.Config.User}} {{.HostConfig.Init}}", container).stdout.strip()
        seen["status"] = engine.docker("exec", container, "cat", "/proc/1/status").stdout

    swarm = run(ROOT / "scenarios/default.yaml", runtime="swarm", trace_path=tmp_path / "swarm.jsonl", progress=look)
    assert_nothing_left(on_swarm)
    assert seen["inspect"] == "true [ALL] 10001:10001 true"
    assert "NoNewPrivs:\t1" in seen["status"] and "CapEff:\t0000000000000000" in seen["status"]
    docker = run(ROOT / "scenarios/default.yaml", runtime="docker", trace_path=tmp_path / "docker.jsonl")
    assert_same_simulation(docker.trace_path, swarm.trace_path)
    header = environment(swarm.trace_path)
    node = on_swarm.manager.name
    assert header["runtime"] == "swarm"
    assert header["nodes"] == {"gateway": node, "inference": node, "mqtt-broker": node}
    facts = json.loads(swarm.metrics_path.read_text())["environment"]
    assert facts["attach"] == {"gateway": "engine-api", "inference": "engine-api"}
    assert sorted(facts["images_copied"][node]) == sorted(header["images"])
    # A second run copies nothing: the node has every image id already.
    again = run(ROOT / "scenarios/default.yaml", runtime="swarm", trace_path=tmp_path / "again.jsonl")
    assert json.loads(again.metrics_path.read_text())["environment"]["images_copied"] == {}
    assert again.trace_path.read_bytes() == swarm.trace_path.read_bytes()
    assert_nothing_left(on_swarm)


def containers_of(engine: clusters.Engine, node_id: str) -> list[tuple[str, str]]:
    """(container id, status) of each container of a cosim node on a Swarm node's engine, running or not."""
    listed = engine.docker("ps", "-a", "--no-trunc", "--filter", f"label=cosim.node={node_id}",
                           "--format", "{{.ID}} {{.Status}}").stdout
    return [(line.split(" ", 1)[0], line.split(" ", 1)[1]) for line in listed.splitlines() if line]


def test_chaos_on_one_node_swarm_kills_and_replaces_the_gateway_task_like_the_local_run(
        on_swarm: clusters.Cluster, tmp_path: Path) -> None:
    """scenarios/chaos.yaml (a gateway crash at 6 s and its restart at 6.5 s among link, partition and reconfigure
    actions): while down, the gateway's task container is there, killed (exit 137); after the restart a new one runs;
    the records are the local run's, and the killed container is gone with the rest at the end."""
    engine = on_swarm.manager
    seen: dict[str, list[tuple[str, str]]] = {}

    def look(now_us: int, duration_us: int) -> None:
        if "down" not in seen and 6_000_000 < now_us < 6_500_000:
            seen["down"] = containers_of(engine, "gateway")
        elif "back" not in seen and now_us > 6_500_000:
            seen["back"] = containers_of(engine, "gateway")

    swarm = run(ROOT / "scenarios/chaos.yaml", runtime="swarm", trace_path=tmp_path / "swarm.jsonl", progress=look,
                watchdog_s=60.0)
    assert_nothing_left(on_swarm)
    ((killed, status),) = seen["down"]
    assert status.startswith("Exited (137)")
    assert [status.split()[0] for container, status in seen["back"] if container != killed] == ["Up"]
    local = run(ROOT / "scenarios/chaos.yaml", runtime="local", trace_path=tmp_path / "local.jsonl", watchdog_s=60.0)
    assert_same_simulation(local.trace_path, swarm.trace_path)
    trace = records(swarm.trace_path)
    restart = next(r for r in trace if r["record"] == "action" and r["action"] == "restart")
    assert restart["node"] == "gateway" and restart["restart"] == 1 and restart["lost"] > 0
    log = (tmp_path / "swarm.logs" / "gateway.log").read_text(encoding="utf-8")
    assert log.count("connected to MQTT broker") == 2  # two task containers, each connected once
    facts = json.loads(swarm.metrics_path.read_text())["environment"]
    assert facts["restarted_on"] == {"gateway": [engine.name]}  # where each restart's task ran (metrics only)


def test_broker_crash_on_one_node_swarm_new_task_reachable_at_its_service_name(on_swarm: clusters.Cluster,
                                                                                tmp_path: Path) -> None:
    """Infrastructure too: the broker's task is killed, a new task (a new address) answers at the service name
    mqtt-broker (dnsrr), the gateway reconnects to it, and the records are the local run's."""
    swarm = run(BROKER_CRASH, runtime="swarm", trace_path=tmp_path / "swarm.jsonl", watchdog_s=60.0)
    assert_nothing_left(on_swarm)
    check_broker_crash(records(swarm.trace_path))
    local = run(BROKER_CRASH, runtime="local", trace_path=tmp_path / "local.jsonl", watchdog_s=60.0)
    assert_same_simulation(local.trace_path, swarm.trace_path)
    log = (tmp_path / "swarm.logs" / "gateway.log").read_text(encoding="utf-8")
    assert log.count("connected to MQTT broker mqtt-broker:1883") == 2  # at INIT, and to the new task


def test_restart_whose_new_task_cannot_start_names_node_and_swarms_error(on_swarm: clusters.Cluster,
                                                                         tmp_path: Path) -> None:
    """The broker's image is untagged on the node while the broker is down: its new task is rejected, and the run
    fails at the restart with one message naming the node and Swarm's words, leaving nothing behind."""
    engine = on_swarm.manager
    untagged: dict[str, str] = {}

    def untag(now_us: int, duration_us: int) -> None:
        if not untagged and 500_000 < now_us < 1_000_000:
            ((killed, _),) = containers_of(engine, "mqtt-broker")
            reference = engine.docker("inspect", "--format", "{{.Config.Image}} {{.Image}}", killed).stdout.split()
            untagged.update(tag=reference[0], id=reference[1])
            assert engine.docker("rmi", "--force", untagged["tag"]).returncode == 0  # the id stays: the killed uses it

    try:
        with pytest.raises(NodeFailure) as failure:
            run(BROKER_CRASH, runtime="swarm", trace_path=tmp_path / "t.jsonl", progress=untag, watchdog_s=60.0)
    finally:
        if untagged:  # the image back under its tag, so that no later test copies it again
            engine.docker("tag", untagged["id"], untagged["tag"])
    message = str(failure.value)
    assert message.startswith(f"node 'mqtt-broker': restart failed: did not start: its task on Swarm node "
                              f"'{engine.name}' rejected (Swarm says: "), message
    assert "No such image" in message
    last = records(tmp_path / "t.jsonl")[-1]
    assert (last["record"], last["node"], last["error"], last["time_us"]) == ("error", "mqtt-broker", "node_failure",
                                                                             1_000_000)
    assert_nothing_left(on_swarm)


def test_placement_no_node_satisfies_names_node_and_constraint(on_swarm: clusters.Cluster, tmp_path: Path) -> None:
    path = variant(tmp_path, "scenarios/default.yaml", "unplaceable",
                   {"inference": {"placement": ["node.labels.site == nowhere"]}})
    with pytest.raises(NodeStartError) as failure:
        run(path, runtime="swarm", trace_path=tmp_path / "t.jsonl")
    message = str(failure.value)
    assert message.startswith("node 'inference' cannot be placed: no Swarm node satisfies its placement "
                              "`node.labels.site == nowhere`")
    assert "no suitable node" in message  # Swarm's own words
    last = json.loads((tmp_path / "t.jsonl").read_bytes().rstrip().rsplit(b"\n", 1)[-1])
    assert last["record"] == "error" and last["node"] == "inference"
    assert_nothing_left(on_swarm)


@pytest.mark.parametrize("command, code, log", [
    (["/no/such/program"], 127, "/no/such/program"),
    # Runs a moment, then fails: seen running and attached first, or not, as the machine's speed decides.
    (["python3", "-c", "import sys, time; time.sleep(1.5); sys.exit('gave up')"], 1, "gave up"),
], ids=["exec-fails", "exits-soon"])
def test_task_that_cannot_start_names_node_and_swarms_error(on_swarm: clusters.Cluster, tmp_path: Path,
                                                            command: list[str], code: int, log: str) -> None:
    """Whether Swarm is seen failing the task while the run starts, or the task is seen running (its stream
    attached) a moment before its program fails, the error names the node, the Swarm node and Swarm's words, with
    the log's last lines, at once (not at the watchdog: an attach stream registered just after the container's
    process exited would never end by itself)."""
    path = variant(tmp_path, "scenarios/default.yaml", "nostart", {"gateway": {"command": command}})
    with pytest.raises((NodeStartError, NodeFailure)) as failure:
        run(path, runtime="swarm", trace_path=tmp_path / "t.jsonl", watchdog_s=300)
    message = str(failure.value)
    assert failure.value.node == "gateway"
    assert f"its task on Swarm node '{on_swarm.manager.name}' failed (Swarm says: task: non-zero exit ({code}))" \
        in message, message
    assert log in message  # from the container's log
    assert "watchdog" not in message  # (300 s: a hung attach stream would have ended there, unexplained)
    assert_nothing_left(on_swarm)


def test_node_engine_that_does_not_answer(on_swarm: clusters.Cluster, tmp_path: Path) -> None:
    manager = on_swarm.manager
    context = f"{on_swarm.name}-nowhere"
    subprocess.run(["docker", "context", "create", context, "--docker", f"host=unix://{tmp_path}/none.sock"],
                   check=True, capture_output=True)
    try:
        assert manager.docker("node", "update", "--label-add", f"cosim.context={context}", manager.name).returncode == 0
        with pytest.raises(SwarmNodeUnreachable) as failure:
            run(ROOT / "scenarios/default.yaml", runtime="swarm", trace_path=tmp_path / "t.jsonl")
        assert str(failure.value).startswith(f"the engine of Swarm node '{manager.name}' (context '{context}') "
                                             f"does not answer")
    finally:
        manager.docker("node", "update", "--label-rm", "cosim.context", manager.name)
        subprocess.run(["docker", "context", "rm", "-f", context], capture_output=True)
    assert_nothing_left(on_swarm)


def test_an_engine_that_is_no_swarm_manager(one_node: clusters.Cluster, monkeypatch: pytest.MonkeyPatch,
                                            tmp_path: Path) -> None:
    # The host engine is not in Swarm mode (and is never put in it): a clear sentence, nothing started.
    monkeypatch.delenv(CONTEXT_ENV, raising=False)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    info = subprocess.run(["docker", "info", "--format", "{{.Swarm.LocalNodeState}}"], capture_output=True, text=True)
    assert info.stdout.strip() == "inactive"
    with pytest.raises(SwarmError, match=r"--runtime swarm needs a Swarm manager, and the default Docker engine"):
        run(ROOT / "scenarios/default.yaml", runtime="swarm", trace_path=tmp_path / "t.jsonl")


def trace_grew(trace: Path) -> bool:
    return trace.is_file() and trace.read_bytes().count(b"\n") > 50


def test_ctrl_c_mid_run_leaves_nothing_on_the_node(on_swarm: clusters.Cluster, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    with invoke_up_session(ROOT / "scenarios/default.yaml", trace, "--runtime", "swarm") as process:
        wait_until(lambda: trace_grew(trace), process, "the run reached its step loop")
        os.killpg(process.pid, signal.SIGINT)
        _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "interrupted at virtual time" in err
    assert_nothing_left(on_swarm)


def test_down_removes_the_stack_of_a_killed_run(on_swarm: clusters.Cluster, tmp_path: Path) -> None:
    trace = tmp_path / "t.jsonl"
    with invoke_up_session(ROOT / "scenarios/default.yaml", trace, "--runtime", "swarm") as process:
        wait_until(lambda: trace_grew(trace), process, "the run reached its step loop")
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
    manager = on_swarm.manager
    (stack,) = set(manager.docker("stack", "ls", "--format", "{{.Name}}").stdout.split())
    assert down_stacks() == [stack]
    deadline = time.monotonic() + 60
    # `docker stack rm` returns at once; each check is a docker call, which paces the loop.
    while manager.docker("ps", "-aq").stdout.strip() or len(manager.docker("network", "ls", "-q").stdout.split()) > 4:
        assert time.monotonic() < deadline, "the stack's containers and network are still there after 60 s"
    assert_nothing_left(on_swarm)


# -- three nodes ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def three_nodes(service_images: dict[str, str]) -> Iterator[clusters.Cluster]:
    yield from _module_cluster(3, "x")


def test_distributed_scenario_on_three_nodes(three_nodes: clusters.Cluster, monkeypatch: pytest.MonkeyPatch,
                                             tmp_path: Path) -> None:
    monkeypatch.setenv(CONTEXT_ENV, three_nodes.manager.name)
    swarm = run(ROOT / "scenarios/distributed.yaml", runtime="swarm", trace_path=tmp_path / "swarm.jsonl")
    assert_nothing_left(three_nodes)
    docker = run(ROOT / "scenarios/distributed.yaml", runtime="docker", trace_path=tmp_path / "docker.jsonl")
    assert_same_simulation(docker.trace_path, swarm.trace_path)
    names = three_nodes.contexts
    assert environment(swarm.trace_path)["nodes"] == {"mqtt-broker": names[0], "gateway": names[1],
                                                      "inference": names[2]}


def test_worker_whose_engine_stops_mid_run(three_nodes: clusters.Cluster, monkeypatch: pytest.MonkeyPatch,
                                           tmp_path: Path) -> None:
    """The worker running inference goes away mid-run: the run fails naming the node and the Swarm node, the rest
    is removed from the nodes still there. (Last in the module: that worker stays down.)"""
    monkeypatch.setenv(CONTEXT_ENV, three_nodes.manager.name)
    worker = three_nodes.engines[2]
    stopped = threading.Event()

    def stop_worker(now_us: int, duration_us: int) -> None:
        if now_us >= 1_000_000 and not stopped.is_set():
            stopped.set()
            assert worker.pid is not None
            os.kill(worker.pid, 15)  # dockerd stops its containers and exits

    with pytest.raises(NodeFailure) as failure:
        run(ROOT / "scenarios/distributed.yaml", runtime="swarm", trace_path=tmp_path / "t.jsonl",
            progress=stop_worker, watchdog_s=20)
    assert stopped.is_set()
    message = str(failure.value)
    assert message.startswith("node 'inference': ended without answering")
    assert f"its Swarm node '{worker.name}' does not answer (context '{worker.name}')" in message
    assert_nothing_left(three_nodes)


def test_worker_that_leaves_the_swarm_mid_run(three_nodes: clusters.Cluster, monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    """`docker swarm leave` on the worker running the gateway, mid-run: the failure says the node left. (After
    the test above: its stopped worker is drained, and inference runs on the manager's node.)"""
    monkeypatch.setenv(CONTEXT_ENV, three_nodes.manager.name)
    manager, worker, stopped = three_nodes.engines
    assert manager.docker("node", "update", "--availability", "drain", stopped.name).returncode == 0
    path = variant(tmp_path, "scenarios/distributed.yaml", "leaving",
                   {"inference": {"placement": ["node.labels.site == site-1"]}})
    left = threading.Event()

    def leave(now_us: int, duration_us: int) -> None:
        if now_us >= 1_000_000 and not left.is_set():
            left.set()
            done = worker.docker("swarm", "leave", "--force")
            assert done.returncode == 0, done.stderr

    with pytest.raises(NodeFailure) as failure:
        run(path, runtime="swarm", trace_path=tmp_path / "t.jsonl", progress=leave, watchdog_s=20)
    assert left.is_set()
    message = str(failure.value)
    assert message.startswith("node 'gateway': ended without answering")
    assert f"its Swarm node '{worker.name}' left the Swarm (its engine reports Swarm state 'inactive')" in message
    assert_nothing_left(three_nodes)


def test_invoke_cluster_up_and_down(tmp_path: Path) -> None:
    """The tool as a person uses it: up prints how to run on it; a second up with the same name, or an unknown
    action, is one clear line; down removes everything."""
    name = f"t{os.getpid() % 100000}c"

    def invoke(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "invoke", "cluster", *args], cwd=ROOT, capture_output=True,
                              text=True, timeout=300)

    up = invoke("up", "--nodes", "2", "--name", name)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.startswith(f"cosim: cluster '{name}' is up: 2 Docker engine(s)")
        assert f"COSIM_SWARM_CONTEXT={name}-1 ./inv up scenarios/distributed.yaml --runtime swarm" in up.stdout
        made = clusters.load_cluster(name)
        assert made is not None and made.contexts == [f"{name}-1", f"{name}-2"]
        nodes = made.manager.docker("node", "ls", "--format", "{{.Hostname}} {{.ManagerStatus}}").stdout.split("\n")
        assert sorted(line.strip() for line in nodes if line) == [f"{name}-1 Leader", f"{name}-2"]
        again = invoke("up", "--nodes", "1", "--name", name)
        assert again.returncode != 0 and again.stderr.strip().startswith(
            f"cosim: error: a cluster named '{name}' is already up")
        wrong = invoke("sideways")
        assert wrong.returncode != 0 and "usage: invoke cluster up [--nodes N]" in wrong.stderr
    finally:
        down = invoke("down", "--name", name)
    assert down.returncode == 0 and down.stdout == f"cosim: cluster '{name}': removed 2 engine(s)\n"
    assert_gone(made)
    assert invoke("down", "--name", name).stdout == f"cosim: no cluster named '{name}' is up\n"
