"""The floors: a bare Python echo (read a line, write it back; no cosim code) over a local pipe, and as the main
process of containers reached through the engine's attach endpoint (cosim's path) or a `docker attach` process.

The attach endpoint is used below cosim's Transport (cosim.runtimes.docker.attach's socket and frame reader, not its
AttachTransport): a floor measures the path, not cosim's code on it."""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence

BARE_ECHO = "import sys\nfor line in sys.stdin:\n    sys.stdout.write(line)\n    sys.stdout.flush()\n"
PROBE_LINE = (json.dumps({"type": "ADVANCE", "time_us": 123456000, "events": []}, separators=(",", ":")) + "\n").encode()


class _Echo:
    """One bare echo reached over a byte stream: a pipe to a process, or an engine attach socket (framed)."""

    def __init__(self, write: Callable[[bytes], object], read: Callable[[], bytes]) -> None:
        self.write, self.read = write, read


def _pipe_echo(process: subprocess.Popen[bytes]) -> _Echo:
    assert process.stdin is not None and process.stdout is not None
    stdin_fd, stdout_fd = process.stdin.fileno(), process.stdout.fileno()
    return _Echo(lambda data: os.write(stdin_fd, data), lambda: os.read(stdout_fd, 65536))


def _api_echo(container_id: str, socket_path: str) -> tuple[_Echo, Callable[[], None]]:
    from cosim.runtimes.docker.attach import FrameReader, open_attach

    sock, rest = open_attach(socket_path, container_id)
    reader = FrameReader(lambda payload: None)
    reader.feed(rest)

    def read() -> bytes:
        while not reader.stdout:
            chunk = sock.recv(65536)
            if not chunk:
                return b""
            reader.feed(chunk)
        data = bytes(reader.stdout)
        reader.stdout.clear()
        return data

    return _Echo(sock.sendall, read), sock.close


def _round_trips(echoes: Sequence[_Echo], count: int) -> float:
    """Median time (us) of ``count`` rounds: one probe line to every echo, then every echo read back (they work
    concurrently, as nodes do in a step), after a warm-up of count // 10 rounds."""
    samples = []
    for index in range(count + count // 10):
        started = time.perf_counter()
        for echo in echoes:
            echo.write(PROBE_LINE)
        for echo in echoes:
            received = b""
            while not received.endswith(b"\n"):
                chunk = echo.read()
                if not chunk:
                    raise RuntimeError("echo closed its stdout")
                received += chunk
        if index >= count // 10:
            samples.append(time.perf_counter() - started)
    return statistics.median(samples) * 1e6


def pipe_floor(count: int) -> float:
    process = subprocess.Popen([sys.executable, "-u", "-c", BARE_ECHO], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        return _round_trips([_pipe_echo(process)], count)
    finally:
        process.kill()
        process.wait()


def container_floor(count: int, image: str, containers: int = 1, *, attach: str = "api") -> float:
    """The same bare echo as the main process of ``containers`` containers, all probed concurrently, reached
    through the engine's attach endpoint (``api``, the path cosim uses) or a `docker attach` process (``cli``)."""
    from python_on_whales import DockerException, docker

    from cosim.runtimes.docker.attach import engine_socket
    from cosim.runtimes.docker.engine import docker_command

    socket_path = engine_socket() if attach == "api" else None
    ids: list[str] = []
    cleanups: list[Callable[[], object]] = []
    echoes: list[_Echo] = []
    try:
        for _ in range(containers):
            ids.append(docker.run(image, ["-u", "-c", BARE_ECHO], detach=True, interactive=True, init=True, remove=True,
                                  labels={"cosim.project": "cosim", "cosim.run": "bench"}, networks=["none"],
                                  entrypoint="python3").id)
            if socket_path is not None:
                echo, close = _api_echo(ids[-1], socket_path)
                echoes.append(echo)
                cleanups.append(close)
            else:
                process = subprocess.Popen(docker_command("attach", "--sig-proxy=false", ids[-1]),
                                           stdin=subprocess.PIPE, stdout=subprocess.PIPE)
                echoes.append(_pipe_echo(process))
                cleanups += [process.kill, process.wait]
        return _round_trips(echoes, count)
    finally:
        for cleanup in cleanups:
            cleanup()
        if ids:
            with contextlib.suppress(DockerException):  # already gone (--rm): nothing to remove
                docker.container.remove(ids, force=True)
