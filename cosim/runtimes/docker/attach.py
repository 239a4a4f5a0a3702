"""Attach to a container's main process through the Engine API, with no `docker attach` process in between.

`POST /containers/{id}/attach` on the engine's unix socket, upgraded to a raw stream (the same endpoint the
docker CLI uses). Without a TTY the engine multiplexes the container's output into frames: an 8-byte header
(stream: 1 stdout, 2 stderr; then the payload size, big-endian) and the payload. stdin is written raw.

Skipping the CLI relay saves a process hop in each direction of every step, which matters most when many
containers advance at once on few cores. Engines reached over TCP or SSH use `docker attach` instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import socket
import time
from collections.abc import Callable
from pathlib import Path

from cosim.errors import OutputWriteError
from cosim.runtimes.docker.engine import context_host
from cosim.transport import LineStream, TransportClosed, TransportTimeout, poll_ms

DEFAULT_SOCKET = "/var/run/docker.sock"
HANDSHAKE_TIMEOUT_S = 10.0
EXIT_DRAIN_S = 1.0  # how long a stopped container's stream may take to deliver its last bytes and end
STDOUT = 1  # stream ids: 0 stdin, 1 stdout, 2 stderr (and 3, the engine's own errors, in exec streams)


def engine_socket() -> str | None:
    """The unix socket of the engine the docker CLI talks to (DOCKER_HOST or the current context); None when
    the engine is not on a local unix socket."""
    host = os.environ.get("DOCKER_HOST", "")
    if not host:
        # The default context is the default socket: no `docker context inspect` process (15 to 70 ms) to learn it.
        host = (context_host() if _current_context() not in ("", "default") else "") or f"unix://{DEFAULT_SOCKET}"
    if not host.startswith("unix://"):
        return None
    path = host[len("unix://"):]
    return path if Path(path).exists() else None


def _current_context() -> str:
    """The docker context the CLI uses: $DOCKER_CONTEXT, else the config file's ``currentContext`` ("" for none)."""
    if os.environ.get("DOCKER_CONTEXT"):
        return os.environ["DOCKER_CONTEXT"]
    config = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "config.json"
    try:
        current = json.loads(config.read_text(encoding="utf-8")).get("currentContext", "")
    except (OSError, ValueError, AttributeError):
        return ""
    return current if isinstance(current, str) else ""


def open_attach(socket_path: str, container_id: str) -> tuple[socket.socket, bytes]:
    """A hijacked attach stream to the container's stdin/stdout/stderr, and any bytes read past the HTTP
    response. Raises OSError when the engine refuses."""
    return engine_request(socket_path,
                          f"POST /containers/{container_id}/attach?stream=1&stdin=1&stdout=1&stderr=1 HTTP/1.1\r\n"
                          "Host: docker\r\nConnection: Upgrade\r\nUpgrade: tcp\r\nContent-Length: 0\r\n\r\n", "attach")


def open_exit_watch(socket_path: str, container_id: str) -> tuple[socket.socket, bytes]:
    """A `wait` request for the container to be not running: the engine answers its headers at once and its body
    when the container has stopped (at once, if it has already). The socket becomes readable then, or when the
    engine goes away. Raises OSError when the engine refuses."""
    return engine_request(socket_path, f"POST /containers/{container_id}/wait?condition=not-running HTTP/1.1\r\n"
                                       "Host: docker\r\nContent-Length: 0\r\n\r\n", "wait")


def engine_request(socket_path: str, request: str, what: str, *,
                   timeout_s: float = HANDSHAKE_TIMEOUT_S) -> tuple[socket.socket, bytes]:
    """A connection to the engine after ``request``'s response headers (a 101 or 200), and any bytes read past
    them; OSError when the engine refuses, closes or is not there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout_s)
        sock.connect(socket_path)
        sock.sendall(request.encode("ascii"))
        response = b""
        while b"\r\n\r\n" not in response:
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError(f"the engine closed the {what} connection during the handshake")
            response += chunk
        head, rest = response.split(b"\r\n\r\n", 1)
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if status.split(" ")[1:2] not in (["101"], ["200"]):
            raise OSError(f"the engine refused to {what}: {status} {rest[:200].decode('utf-8', 'replace')}")
        sock.settimeout(None)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        return sock, rest
    except BaseException:
        sock.close()
        raise


class FrameReader:
    """Demultiplexes the engine's frames: stdout bytes accumulate; stderr, and frames of any other stream id,
    go to ``on_stderr`` (kept in the log, so nothing the engine says is lost and nothing reaches the protocol)."""

    def __init__(self, on_stderr: Callable[[bytes], None]) -> None:
        self.frames = bytearray()
        self.stdout = bytearray()
        self.on_stderr = on_stderr

    def feed(self, data: bytes) -> None:
        self.frames += data
        while len(self.frames) >= 8:
            size = int.from_bytes(self.frames[4:8], "big")
            if len(self.frames) < 8 + size:
                return
            stream, payload = self.frames[0], bytes(self.frames[8:8 + size])
            del self.frames[:8 + size]
            if stream == STDOUT:
                self.stdout += payload
            else:  # stderr, and any other stream id (the engine's own errors): the log, never the protocol
                self.on_stderr(payload)


class EngineAttachTransport(LineStream):
    """The Transport of a container's main process over the Engine API attach stream.

    Beside the stream, a `wait` request tells when the container stops: the engine does not end an attach stream
    that it registered just after the container's process exited (e.g. a Swarm task seen running a moment before
    tini's exec failed): such a stream stays open and silent for good. When the container has stopped and its
    stream has nothing more within EXIT_DRAIN_S, the stream is taken as ended."""

    def __init__(self, name: str, container_id: str, socket_path: str, *, log_path: Path,
                 exit_code: Callable[[], int | None], log_tail: Callable[[int], str]) -> None:
        super().__init__(name, log_path, exit_code, log_tail)
        self._sock, rest = open_attach(socket_path, container_id)
        self._fd = self._sock.fileno()
        self._reader = FrameReader(self._write_log)
        self._buffer = self._reader.stdout  # the line buffer is the demultiplexed stdout
        self._reader.feed(rest)
        self._poller.register(self._fd, select.POLLIN)
        self._exit_watch: socket.socket | None = None
        try:
            self._exit_watch, answer = open_exit_watch(socket_path, container_id)
        except BaseException:
            self._sock.close()
            self._log.close()
            raise
        if answer:
            self._stopped()
        else:
            self._poller.register(self._exit_watch.fileno(), select.POLLIN)
        self._eof = False
        self._closed = False

    def _write_log(self, payload: bytes) -> None:
        try:
            view = memoryview(payload)
            while view:
                view = view[self._log.write(view):]
        except OSError as exc:  # e.g. the disk is full: the run stops, naming the file
            raise OutputWriteError(f"the log of node {self.name!r}", self.log_path, exc) from None

    def send(self, line: bytes) -> None:
        try:
            self._sock.sendall(line)
        except OSError as exc:
            raise TransportClosed(f"attach stream closed ({exc.__class__.__name__})") from exc

    def _fill(self, timeout_s: float) -> None:
        if self._eof:
            raise TransportClosed("stdout closed")
        ready = self._poller.poll(poll_ms(timeout_s))
        if not ready:
            raise TransportTimeout()
        if ready[0][0] != self._fd and len(ready) == 1:  # only the exit watch: the container has stopped
            self._stopped()
            return  # the caller fills again: the stream's last bytes, or its end
        try:
            chunk = self._sock.recv(1 << 16)
        except OSError:  # reset: the engine went away
            chunk = b""
        if not chunk:
            self._eof = True
            raise TransportClosed("stdout closed")
        self._reader.feed(chunk)

    def _stopped(self) -> None:
        """The container has stopped: what its stream still holds arrives within EXIT_DRAIN_S, or it never ends
        (registered too late, see the class docstring), and is taken as ended."""
        if self._exit_watch is not None:
            with contextlib.suppress(KeyError):
                self._poller.unregister(self._exit_watch.fileno())
            self._exit_watch.close()
            self._exit_watch = None
        if not select.select([self._sock], [], [], EXIT_DRAIN_S)[0]:
            self._sock.shutdown(socket.SHUT_RD)  # recv now sees the end

    def exit_code(self) -> int | None:
        return self._exit_code() if self._exit_code is not None else None

    def wait_exit(self, deadline: float) -> int | None:
        """The container's exit code once its stream has ended (read to the end, keeping its stderr), or None
        if it is still running at the deadline."""
        while not self._eof:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            try:
                self._fill(remaining)
            except TransportTimeout:
                return None
            except TransportClosed:
                break
        return self.exit_code()

    def close_stdin(self) -> None:
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self, grace_s: float = 2.0) -> None:
        """Close the stream (the container is stopped by the runtime, not by us). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._poller.unregister(self._fd)
        self._sock.close()
        if self._exit_watch is not None:
            self._exit_watch.close()
        self._log.close()
