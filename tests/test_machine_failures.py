"""The machine fails a run, for real: a read-only or full file system under the trace or the checkpoints (a small
tmpfs, mounted here: root only), each ending with one `cosim: error:` line naming the path and the errno, no
traceback, every complete trace line kept (no partial last line), no half metrics file, nothing left running; and a
container killed by the kernel for memory under its `resources.memory` limit, named with the limit."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from cosim.errors import CheckpointError, EngineLost, NodeFailure
from cosim.run import run
from cosim.runtimes import memory_cgroup
from cosim.runtimes.docker import runtime as docker_runtime
from cosim.runtimes.docker.base_image import resolve_base_image
from cosim.runtimes.swarm import cluster as clusters
from cosim.service_sources import image_name, service_image
from cosim.trace import read

from .conftest import ROOT, cosim_resources, wait_until
from .test_interrupts import local_scenario, processes_with

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
# test_interrupts' local scenario (sensor -> echo service -> sink for 600 s virtual, its service carrying a marker
# on its command line): its trace grows by some 100 KB per virtual second.


@contextlib.contextmanager
def tmpfs(directory: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs of ``size`` at ``directory`` (read-only once mounted, if asked), unmounted at the end."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)], check=True)
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(directory)], check=True)
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=True)


def up(scenario: Path, trace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", "up", str(scenario), "--runtime", "local", "--trace",
                           str(trace), "-q"], cwd=ROOT, capture_output=True, text=True, timeout=300)


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    assert result.returncode == 1, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("cosim: error:")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@needs_root
def test_a_read_only_trace_directory_stops_the_run_before_anything_starts(tmp_path: Path) -> None:
    marker = f"cosim-test-{secrets.token_hex(6)}"
    with tmpfs(tmp_path / "ro", "64k", read_only=True) as mounted:
        trace = mounted / "trace.jsonl"
        result = up(local_scenario(tmp_path, marker), trace)
        line = one_error_line(result)
        assert line == f"cosim: error: cannot write the trace {trace}: Read-only file system (errno 30)"
        assert list(mounted.iterdir()) == []
    assert processes_with(marker) == []


@needs_root
def test_a_trace_that_outgrows_its_disk_keeps_every_complete_line_and_stops_the_run(tmp_path: Path) -> None:
    marker = f"cosim-test-{secrets.token_hex(6)}"
    with tmpfs(tmp_path / "small", "64k") as mounted:
        trace = mounted / "trace.jsonl"
        result = up(local_scenario(tmp_path, marker), trace)
        line = one_error_line(result)
        assert line == f"cosim: error: cannot write the trace {trace}: No space left on device (errno 28)"
        content = trace.read_bytes()
        assert len(content) > 32 << 10 and content.endswith(b"\n")  # it ran, and only complete lines are kept
        records = [json.loads(text) for text in content.decode("utf-8").splitlines()]
        assert records[0]["record"] == "header" and {r["record"] for r in records[1:]} <= {"sent", "delivered"}
        read(trace)  # a valid trace so far (no footer: the disk was full)
        metrics = mounted / "trace.metrics.json"
        if metrics.exists():  # written whole (space freed by cutting the partial line) or not at all
            json.loads(metrics.read_text(encoding="utf-8"))
        assert not (mounted / "trace.metrics.json.partial").exists()
    assert processes_with(marker) == []


@needs_root
def test_a_checkpoint_that_outgrows_its_disk_ends_the_run_with_one_message(tmp_path: Path) -> None:
    """The directory is writable when the run starts (checked), the checkpoint (the trace so far inside) does not
    fit: the run stops at the checkpoint's time, its trace ends with the failure, no partial checkpoint is left."""
    marker = f"cosim-test-{secrets.token_hex(6)}"
    with tmpfs(tmp_path / "checkpoints", "64k") as mounted:
        with pytest.raises(CheckpointError) as raised:
            run(local_scenario(tmp_path, marker), runtime="local", trace_path=tmp_path / "t.jsonl",
                checkpoint_at="2000000", checkpoint_dir=mounted)
        path = mounted / "ctrl-c-local-2000000us.checkpoint.json"
        assert str(raised.value) == f"cannot write the checkpoint {path}: No space left on device (errno 28)"
        assert list(mounted.iterdir()) == []
    error = read(tmp_path / "t.jsonl").error
    assert error is not None and (error.error, error.time_us) == ("checkpoint_failed", 2000000)
    assert processes_with(marker) == []


@needs_root
def test_a_full_log_disk_stops_the_run_before_anything_starts(tmp_path: Path) -> None:
    """An empty file still fits on a full disk: the check writes a byte."""
    marker = f"cosim-test-{secrets.token_hex(6)}"
    trace = tmp_path / "t.jsonl"
    with tmpfs(tmp_path / "t.logs", "64k") as logs:
        subprocess.run(["dd", "if=/dev/zero", f"of={logs / 'filler'}", "bs=4k"], capture_output=True)  # until full
        result = up(local_scenario(tmp_path, marker), trace)
        line = one_error_line(result)
        assert line == f"cosim: error: cannot write the service log directory {logs}: No space left on device (errno 28)"
        assert [path.name for path in logs.iterdir()] == ["filler"]
    assert processes_with(marker) == []


@needs_root
def test_a_read_only_checkpoint_directory_stops_the_run_before_anything_starts(tmp_path: Path) -> None:
    marker = f"cosim-test-{secrets.token_hex(6)}"
    with tmpfs(tmp_path / "checkpoints", "64k", read_only=True):  # where `cosim up` run here writes them
        result = subprocess.run([sys.executable, "-m", "cosim", "up", str(local_scenario(tmp_path, marker)),
                                 "--runtime", "local", "--trace", "t.jsonl", "--checkpoint-at", "2000000", "-q"],
                                cwd=tmp_path, capture_output=True, text=True, timeout=300)
        line = one_error_line(result)
        assert line == "cosim: error: cannot write the checkpoint directory checkpoints: Read-only file system (errno 30)"
        assert not (tmp_path / "t.jsonl").exists()  # checked before anything else
    assert processes_with(marker) == []


HOG = ROOT / "tests" / "services" / "memory-hog"


@pytest.fixture
def hog_image_removed() -> Iterator[None]:
    yield
    if shutil.which("docker"):
        subprocess.run(["docker", "rmi", "-f", image_name(HOG)], capture_output=True)


@needs_root
@pytest.mark.docker
def test_a_service_log_that_outgrows_its_disk_stops_the_run(tmp_path: Path, hog_image_removed: None) -> None:
    """The Docker runtime writes each service's log itself (from the attach stream): a write the disk refuses
    stops the run with one line naming the log and the errno; the trace (on another disk) ends in a
    `write_failed` record; nothing is left on the engine."""
    scenario = tmp_path / "loud.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "loud-log", "seed": 1, "duration_us": 200_000, "quantum_us": 1000,
        "nodes": [{"id": "sensor", "kind": "sensor", "period_us": 1000},
                  {"id": "loud", "kind": "service", "build": str(HOG), "config": {"log_bytes": 1024}},
                  {"id": "sink", "kind": "sink"}],  # 1 KB of log per window: 200 KB in all
        "routes": [{"from": "sensor", "to": ["loud"]}, {"from": "loud", "to": ["sink"]}]}), encoding="utf-8")
    trace = tmp_path / "t.jsonl"
    try:
        with tmpfs(tmp_path / "t.logs", "16k") as logs:
            result = subprocess.run([sys.executable, "-m", "invoke", "up", str(scenario), "--trace", str(trace), "-q"],
                                    cwd=ROOT, capture_output=True, text=True, timeout=600)
            line = one_error_line(result)
            assert line == (f"cosim: error: cannot write the log of node 'loud' {logs / 'loud.log'}: No space left "
                            f"on device (errno 28)")
            error = read(trace).error
            assert error is not None and error.error == "write_failed" and error.time_us > 0
            assert error.detail == line.removeprefix("cosim: error: ")
    finally:
        assert cosim_resources("cosim.scenario=loud-log") == ([], [])


# -- out of memory ------------------------------------------------------------------------------------------------


def hog_scenario(tmp_path: Path, memory: str = "32m", hog_mb: int = 256) -> Path:
    """The memory hog from 3000 us on, taking ``hog_mb`` MB more in each window, under a ``memory`` limit."""
    scenario = tmp_path / "hog.yaml"
    scenario.write_text(yaml.safe_dump({
        "name": "memory-hog", "seed": 1, "duration_us": 10_000, "quantum_us": 1000,
        "nodes": [{"id": "hog", "kind": "service", "build": str(HOG), "resources": {"memory": memory},
                   "config": {"hog_at_us": 3000, "hog_mb": hog_mb}},
                  {"id": "sink", "kind": "sink"}],
        "routes": [{"from": "hog", "to": ["sink"]}]}), encoding="utf-8")
    return scenario


@pytest.mark.parametrize("runtime", [
    pytest.param("docker", marks=pytest.mark.docker),
    # The local runtime enforces `resources.memory` with a memory cgroup of the process's own, as Docker does.
    pytest.param("local", marks=pytest.mark.skipif(memory_cgroup.available() is not None,
                                                   reason=f"{memory_cgroup.available()}")),
])
def test_a_process_killed_for_memory_is_named_with_its_limit(tmp_path: Path, hog_image_removed: None,
                                                             runtime: str) -> None:
    """Far beyond its 32m limit in the window to 3000 us: the kernel kills it there, and the failure says so, in the
    same words on both runtimes."""
    trace = tmp_path / "trace.jsonl"
    try:
        with pytest.raises(NodeFailure) as failure:
            run(hog_scenario(tmp_path), runtime=runtime, trace_path=trace)
        message = str(failure.value)
        assert failure.value.node == "hog"
        assert message.startswith("node 'hog': killed by the kernel: out of memory at its memory limit of 32m; "), message
        assert failure.value.process_exit_code == 137
        error = read(trace).error
        assert error is not None and (error.node, error.error, error.time_us) == ("hog", "node_failure", 2000)
        assert "out of memory at its memory limit of 32m" in error.detail
    finally:
        if runtime == "docker":
            assert cosim_resources("cosim.scenario=memory-hog") == ([], [])
        else:  # its memory cgroup removed
            group = memory_cgroup.own_group()
            assert group is not None and not [path for path in group[0].iterdir()
                                              if path.name.startswith(f"cosim-{os.getpid()}-")]


def test_a_local_process_within_its_memory_limit_runs_as_without_one(tmp_path: Path) -> None:
    """The limit changes nothing for a process that stays under it (here 256m for 8 x 16 MB): the run ends."""
    limited = run(hog_scenario(tmp_path, "256m", hog_mb=16), runtime="local", trace_path=tmp_path / "limited.jsonl")
    assert limited.result.end_us == 10_000 and read(limited.trace_path).error is None


# -- the Docker engine restarted mid-run --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def own_engine(service_images: dict[str, str]) -> Iterator[clusters.Engine]:
    """A second dockerd in a network namespace of its own (cosim's extra-engine code), holding the base and echo
    images (docker save | docker load: it has none and no registry); removed afterwards, with everything on it."""
    assert os.geteuid() == 0, "this test needs root (a network namespace, a second dockerd)"
    base = Path(tempfile.mkdtemp(prefix="cosim-restart-engine-", dir="/var/tmp"))
    base.rmdir()  # start_engine creates it (and removes it again)
    with clusters.engine("cosim-restart", base, extra_args=("--bridge", "none", "--iptables=false")) as engine:
        saved = subprocess.Popen(["docker", "save", resolve_base_image(), service_image("echo")], stdout=subprocess.PIPE)
        loaded = subprocess.run(["docker", "-H", engine.host, "load", "-q"], stdin=saved.stdout, capture_output=True,
                                text=True)
        assert saved.wait() == 0 and loaded.returncode == 0, loaded.stderr
        yield engine
    assert not base.exists()


def echo_on_docker(tmp_path: Path) -> Path:
    """sensor -> echo (a container) -> sink for 600 s virtual: running for as long as the test needs."""
    path = tmp_path / "engine-restart.yaml"
    path.write_text(yaml.safe_dump({
        "name": "engine-restart", "seed": 3, "duration_us": 600_000_000, "quantum_us": 1000,
        "nodes": [{"id": "sensor", "kind": "sensor", "period_us": 5000},
                  {"id": "echo", "kind": "service", "build": str(ROOT / "containers" / "echo")},
                  {"id": "sink", "kind": "sink"}],
        "routes": [{"from": "sensor", "to": ["echo"]}, {"from": "echo", "to": ["sink"]}]}), encoding="utf-8")
    return path


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


@pytest.mark.docker
@pytest.mark.slow
def test_an_engine_restarted_mid_run_ends_it_in_one_line_and_leaves_it_clean(own_engine: clusters.Engine,
                                                                             tmp_path: Path) -> None:
    """`invoke up` on the test's engine; once the trace has 200 records the engine is restarted (stopped: its
    containers with it, and started again). The run ends with one line naming the engine and the virtual time, its
    trace so far ends in an `engine_lost` record, and the engine, back, has nothing of the run."""
    trace = tmp_path / "trace.jsonl"
    environment = {key: value for key, value in os.environ.items() if key != "DOCKER_CONTEXT"}
    environment["DOCKER_HOST"] = own_engine.host
    process = subprocess.Popen([sys.executable, "-m", "invoke", "up", str(echo_on_docker(tmp_path)), "--trace",
                                str(trace), "-q"], cwd=ROOT, env=environment, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_until(lambda: lines(trace) > 200, process, "the run wrote 200 trace records", timeout_s=300)
        clusters.restart_engine(own_engine)
        out, err = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    result = subprocess.CompletedProcess(process.args, process.returncode, out, err)
    assert "Traceback" not in out + err, err
    assert result.returncode == 3, out + err
    errors = [line for line in err.splitlines() if line.startswith("cosim: error:")]
    assert len(errors) == 1 and [line for line in err.splitlines() if not line.startswith("image ")] == errors, err
    assert errors[0].startswith("cosim: error: the Docker engine stopped (or restarted) during the run at virtual "
                                "time "), errors[0]
    assert f"the engine at {own_engine.host} " in errors[0] and errors[0].endswith("; the trace so far is kept")
    content = trace.read_bytes()
    assert content.endswith(b"\n")
    error = read(trace).error
    assert error is not None and (error.error, error.node) == ("engine_lost", None)
    assert error.time_us > 0 and f"at virtual time {error.time_us} us" in errors[0]
    assert error.detail in errors[0]
    # The engine is back, without the run: no container, no network but its own.
    assert own_engine.docker("ps", "-aq").stdout.split() == []
    assert sorted(own_engine.docker("network", "ls", "--format", "{{.Name}}").stdout.split()) == ["host", "none"]


@pytest.mark.docker
@pytest.mark.slow
def test_an_engine_that_stays_away_is_cleaned_once_it_is_back(own_engine: clusters.Engine, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine is stopped mid-run and not started again within the teardown's wait: the run ends all the same
    (EngineLost), keeping its lock file; once the engine is back, the next run's start removes what was left."""
    monkeypatch.setenv("DOCKER_HOST", own_engine.host)
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setattr(docker_runtime, "ENGINE_RETURN_S", 1.0)
    monkeypatch.setattr(docker_runtime, "RUNS_DIR", tmp_path / "runs")  # this run's lock file alone
    stopped: list[int] = []

    def stop_engine_once(now_us: int, duration_us: int) -> None:
        if now_us >= 200_000 and not stopped:
            stopped.append(now_us)
            clusters.stop_daemon(own_engine)  # (returns once dockerd has exited: its containers stopped)

    with pytest.raises(EngineLost) as lost:
        run(echo_on_docker(tmp_path), runtime="docker", trace_path=tmp_path / "t.jsonl", progress=stop_engine_once)
    assert "does not answer" in str(lost.value)
    (lock,) = (tmp_path / "runs").iterdir()  # kept, free: the run is over
    clusters.restart_engine(own_engine)  # back
    assert own_engine.docker("ps", "-aq").stdout.split() != []  # the run's stopped container is still there
    assert docker_runtime.reap_orphans() == {lock.stem: (1, 1)}  # what the next run does first
    assert own_engine.docker("ps", "-aq").stdout.split() == []
    assert sorted(own_engine.docker("network", "ls", "--format", "{{.Name}}").stdout.split()) == ["host", "none"]
