"""The attach path: the engine's framed stream (demultiplexed here) and the `docker attach` fallback."""

from __future__ import annotations

import json
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from cosim.run import run
from cosim.runtimes.docker.attach import EngineAttachTransport, FrameReader, engine_socket, open_attach
from cosim.tracediff import trace_hash

from .conftest import ROOT, cosim_resources

PIPELINE = ROOT / "tests" / "scenarios_docker" / "docker-pipeline.yaml"


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_frames_split_anywhere_are_demultiplexed_in_order() -> None:
    stderr: list[bytes] = []
    data = frame(1, b'{"type":"READY"}\n') + frame(2, b"log line\n") + frame(1, b'{"type":') + frame(1, b'"DONE"}\n')
    data += frame(2, b"") + frame(1, b"x" * 70_000)
    for cut in (1, 3, 7, 8, 9, 20, len(data) - 1):
        reader = FrameReader(stderr.append)
        reader.feed(data[:cut])
        reader.feed(data[cut:])
        assert bytes(reader.stdout) == b'{"type":"READY"}\n{"type":"DONE"}\n' + b"x" * 70_000
        assert b"".join(stderr) == b"log line\n"
        assert not reader.frames
        stderr.clear()


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    reader = FrameReader(lambda payload: None)
    reader.feed(frame(1, b"hello\n")[:10])
    assert bytes(reader.stdout) == b"" and len(reader.frames) == 10
    reader.feed(frame(1, b"hello\n")[10:])
    assert bytes(reader.stdout) == b"hello\n"


def stream(big: int) -> tuple[bytes, bytes]:
    """A multiplexed stream with a frame split across two frames and one of ``big`` bytes; its stdout."""
    data = (frame(1, b'{"type":"READY"}\n') + frame(2, b"first log line\n") + frame(1, b'{"type":"DO')
            + frame(1, b'NE"}\n') + frame(1, b"y" * big + b"\n") + frame(2, b"last log line\n"))
    return data, b'{"type":"READY"}\n{"type":"DONE"}\n' + b"y" * big + b"\n"


def test_frames_fed_one_byte_at_a_time() -> None:
    stderr: list[bytes] = []
    reader = FrameReader(stderr.append)
    data, stdout = stream(3000)
    for index in range(len(data)):
        reader.feed(data[index:index + 1])
    assert bytes(reader.stdout) == stdout
    assert b"".join(stderr) == b"first log line\nlast log line\n"
    assert not reader.frames


@pytest.mark.parametrize("read_size", [5, 8, 9, 4096, 65536])
def test_a_frame_spread_over_many_reads(read_size: int) -> None:
    stderr: list[bytes] = []
    reader = FrameReader(stderr.append)
    data, stdout = stream(300_000)  # the big frame takes many reads of any size
    for start in range(0, len(data), read_size):
        reader.feed(data[start:start + read_size])
    assert bytes(reader.stdout) == stdout
    assert b"".join(stderr) == b"first log line\nlast log line\n"
    assert not reader.frames


def test_unknown_stream_ids_never_reach_stdout_and_are_kept_in_the_log() -> None:
    """Stream 0 (stdin) and 3 (the engine's own error stream) are not the protocol: they go to the log."""
    stderr: list[bytes] = []
    reader = FrameReader(stderr.append)
    reader.feed(frame(1, b'{"a":') + frame(3, b"engine: something failed\n") + frame(0, b"odd\n")
                + frame(7, b"?") + frame(1, b"1}\n"))
    assert bytes(reader.stdout) == b'{"a":1}\n'
    assert b"".join(stderr) == b"engine: something failed\nodd\n?"


class FakeEngine:
    """A unix socket answering one attach request with ``response`` (in chunks of ``chunk`` bytes), then silent;
    and the transport's `wait` request (for the container to stop) with its headers, then silent (it runs)."""

    def __init__(self, path: Path, response: bytes, chunk: int) -> None:
        self.path = path
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(2)
        self.request = b""
        self.received = b""
        self.waits: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, args=(response, chunk), daemon=True)
        self._thread.start()

    def _serve(self, response: bytes, chunk: int) -> None:
        connection, _ = self.server.accept()
        with connection:
            while b"\r\n\r\n" not in self.request:
                self.request += connection.recv(4096)
            for start in range(0, len(response), chunk):
                connection.sendall(response[start:start + chunk])
            if not response.startswith(UPGRADED):
                return  # refused
            waiting, _ = self.server.accept()
            with waiting:
                request = b""
                while b"\r\n\r\n" not in request:
                    request += waiting.recv(4096)
                self.waits.append(request)
                waiting.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                b"Transfer-Encoding: chunked\r\n\r\n")
                while data := connection.recv(4096):  # what the coordinator writes on the container's stdin
                    self.received += data

    def close(self) -> None:
        self.server.close()
        self._thread.join(timeout=10)


UPGRADED = (b"HTTP/1.1 101 UPGRADED\r\nContent-Type: application/vnd.docker.raw-stream\r\n"
            b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\n")


@pytest.mark.parametrize("chunk", [1, 7, 1 << 16], ids=["byte-at-a-time", "small-chunks", "one-packet"])
def test_bytes_after_the_handshake_are_not_lost(tmp_path: Path, chunk: int) -> None:
    """The engine may send the first frames in the same read as its HTTP response: they are the stream's start."""
    engine = FakeEngine(tmp_path / "engine.sock", UPGRADED + frame(2, b"early log\n") + frame(1, b'{"type":"READY"}\n'),
                        chunk)
    transport = EngineAttachTransport("svc", "abc123", str(engine.path), log_path=tmp_path / "svc.log",
                                      exit_code=lambda: None, log_tail=lambda lines: "")
    try:
        assert transport.receive(time.monotonic() + 10) == b'{"type":"READY"}'
        transport.send(b'{"type":"SHUTDOWN"}\n')
        transport.close_stdin()
    finally:
        transport.close()
        engine.close()
    assert engine.request.startswith(b"POST /containers/abc123/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\n")
    assert engine.received == b'{"type":"SHUTDOWN"}\n'
    assert [wait.split(b"\r\n", 1)[0] for wait in engine.waits] == [
        b"POST /containers/abc123/wait?condition=not-running HTTP/1.1"]
    assert (tmp_path / "svc.log").read_bytes() == b"early log\n"


def test_a_refused_attach_is_an_error_naming_the_status(tmp_path: Path) -> None:
    engine = FakeEngine(tmp_path / "engine.sock", b"HTTP/1.1 404 Not Found\r\nContent-Length: 28\r\n\r\n"
                        b'{"message":"No such container"}', 1 << 16)
    try:
        with pytest.raises(OSError, match="the engine refused to attach: HTTP/1.1 404 Not Found"):
            open_attach(str(engine.path), "nope")
    finally:
        engine.close()


def test_engines_not_on_a_unix_socket_use_docker_attach(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert engine_socket() is None
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert engine_socket() is None


@pytest.mark.docker
def test_both_attach_paths_give_the_same_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               service_images: dict[str, str]) -> None:
    api = run(PIPELINE, runtime="docker", trace_path=tmp_path / "api.jsonl")
    monkeypatch.setenv("COSIM_ATTACH", "cli")
    cli = run(PIPELINE, runtime="docker", trace_path=tmp_path / "cli.jsonl")
    assert api.trace_path.read_bytes() == cli.trace_path.read_bytes()
    assert trace_hash(api.trace_path) == trace_hash(cli.trace_path)
    facts = [json.loads(summary.metrics_path.read_text())["environment"]["attach"] for summary in (api, cli)]
    assert facts == ["engine-api", "docker-cli"]
    assert cosim_resources("cosim.scenario=docker-pipeline") == ([], [])


@pytest.mark.docker
def test_a_stream_attached_after_its_container_exited_ends(tmp_path: Path, service_images: dict[str, str]) -> None:
    """The engine never ends an attach stream registered after the container's process exited (what a Swarm task
    seen running just before tini's exec fails gives): the transport's `wait` on the container ends it, promptly
    rather than at the watchdog."""
    from cosim.runtimes.docker.base_image import resolve_base_image
    from cosim.transport import TransportClosed

    socket_path = engine_socket()
    assert socket_path is not None
    started = subprocess.run(["docker", "run", "-d", "-i", "--init", "--label", "cosim.test=late-attach",
                              resolve_base_image(), "/no/such/program"], capture_output=True, text=True, check=True)
    container = started.stdout.strip()
    try:
        assert subprocess.run(["docker", "wait", container], capture_output=True, text=True).stdout.strip() == "127"
        transport = EngineAttachTransport("late", container, socket_path, log_path=tmp_path / "late.log",
                                          exit_code=lambda: 127, log_tail=lambda lines: "")
        try:
            with pytest.raises(TransportClosed):
                transport.receive(time.monotonic() + 60)  # (the watchdog's place: never reached)
        finally:
            transport.close()
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True)
