"""Transports: how the coordinator's node proxies reach a service's stdin/stdout.

The coordinator only knows the small ``Transport`` interface. ``LineStream`` is what every transport shares;
``PipeTransport`` speaks to a child process: the local runtime's service itself, or the Docker runtime's
``docker attach`` process (engines not on a local socket); the Docker runtime's usual path, the engine's attach
endpoint, is ``cosim.runtimes.docker.attach.EngineAttachTransport``. Reads use poll() with a wall-clock deadline
(the watchdog), so a hung service is noticed without threads; stderr goes to a log file so a chatty service can
never block on a full pipe, and its last lines are at hand when something goes wrong.
"""

from __future__ import annotations

import math
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Protocol

from cosim.errors import OutputWriteError
from cosim.tails import file_tail

MAX_LINE_BYTES = 64 << 20
monotonic = time.monotonic  # (the watchdog's wall clock)


class TransportClosed(Exception):
    """The other end closed its stdout (the process ended)."""


class TransportTimeout(Exception):
    """No complete line arrived before the deadline."""


class Transport(Protocol):
    name: str

    def send(self, line: bytes) -> None: ...

    def receive(self, deadline: float) -> bytes:
        """One line without its newline; ``deadline`` is a time.monotonic() value."""
        ...

    def exit_code(self) -> int | None: ...

    def wait_exit(self, deadline: float) -> int | None:
        """The exit code once the process has ended, or None if it is still running at the deadline."""
        ...

    def log_tail(self, lines: int = 15) -> str: ...

    def close_stdin(self) -> None:
        """Send end-of-file on the service's stdin without waiting for anything."""
        ...

    def close(self, grace_s: float) -> None: ...


def read_line(buffer: bytearray, fill: Callable[[float], None], deadline: float) -> bytes:
    """Pop one line (without its newline) from ``buffer``; ``fill(timeout_s)`` adds bytes until one is complete,
    raising TransportTimeout when nothing came in time and TransportClosed at end of stream."""
    while True:
        newline = buffer.find(10)  # (10: b"\n")
        if newline >= 0:
            if newline == len(buffer) - 1:  # the whole buffer is one line (a reply per request: the usual case)
                line = bytes(buffer[:newline])
                buffer.clear()
                return line
            line = bytes(buffer[:newline])
            del buffer[: newline + 1]
            return line
        if len(buffer) > MAX_LINE_BYTES:
            raise TransportClosed(f"a line longer than {MAX_LINE_BYTES} bytes")
        remaining = deadline - monotonic()
        if remaining <= 0:
            raise TransportTimeout()
        fill(remaining)


def poll_ms(seconds: float) -> int:
    """A poll() timeout in whole milliseconds, never 0 for a positive wait (0 would not wait at all)."""
    milliseconds = math.ceil(seconds * 1000)
    return milliseconds if milliseconds > 0 else 1



class LineStream:
    """What every transport shares: a line buffer filled by ``_fill`` (poll + read, with the watchdog's timeout),
    the service's stderr kept in ``log_path``, and optional callbacks for the exit code and the log's tail."""

    def __init__(self, name: str, log_path: Path, exit_code: Callable[[], int | None] | None,
                 log_tail: Callable[[int], str] | None) -> None:
        self.name = name
        self.log_path = log_path
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = log_path.open("ab", buffering=0)  # unbuffered: a failed write leaves nothing to retry
        except OSError as exc:
            raise OutputWriteError(f"the log of node {name!r}", log_path, exc) from None
        self._exit_code = exit_code
        self._log_tail = log_tail
        self._buffer = bytearray()
        self._poller = select.poll()  # poll() rather than selectors: this is the per-step hot path

    def receive(self, deadline: float) -> bytes:
        buffer = self._buffer
        if not buffer:  # (the usual case: nothing left over; wait for the reply before looking for its end)
            self._fill(deadline - monotonic())  # (which may add nothing: the attach transport's exit watch)
            if buffer and buffer.find(10) == len(buffer) - 1:  # (10: b"\n") one whole reply, as services write
                line = bytes(buffer[:-1])
                buffer.clear()
                return line
        return read_line(buffer, self._fill, deadline)

    def _fill(self, timeout_s: float) -> None:
        raise NotImplementedError

    def log_tail(self, lines: int = 15) -> str:
        if not self._log.closed:
            self._log.flush()
        if self._log_tail is not None:
            return self._log_tail(lines)
        return file_tail(self.log_path, lines)


class PipeTransport(LineStream):
    """A child process spoken to over its stdin/stdout; stderr appended to ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        exit_code: Callable[[], int | None] | None = None,
        log_tail: Callable[[int], str] | None = None,
    ) -> None:
        super().__init__(name, log_path, exit_code, log_tail)
        self.process = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            bufsize=0,
            start_new_session=True,  # Ctrl-C in the terminal goes to cosim, which shuts the service down in order
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self._stdin = self.process.stdin
        self._stdout_fd = self.process.stdout.fileno()
        self._poller.register(self._stdout_fd, select.POLLIN)
        self._poll = self._poller.poll
        self._closed = False

    def send(self, line: bytes) -> None:
        try:
            self._stdin.write(line)
        except (BrokenPipeError, ValueError) as exc:
            raise TransportClosed(f"stdin closed ({exc.__class__.__name__})") from exc

    def receive(self, deadline: float) -> bytes:
        # The usual case first (the per-window hot path): nothing left over, one poll, and one read that brings
        # exactly one whole reply (a service writes a reply per request): that read is the line, with no buffer
        # in between. Anything else (a reply in pieces, several lines) goes through the line buffer.
        if self._buffer:
            return read_line(self._buffer, self._fill, deadline)
        if not self._poll(poll_ms(deadline - monotonic())):
            raise TransportTimeout()
        chunk = os.read(self._stdout_fd, 65536)
        if not chunk:
            raise TransportClosed("stdout closed")
        if chunk.find(10) == len(chunk) - 1:  # (10: b"\n") one line, and only one
            return chunk[:-1]
        self._buffer += chunk
        return read_line(self._buffer, self._fill, deadline)

    def _fill(self, timeout_s: float) -> None:
        if not self._poll(poll_ms(timeout_s)):
            raise TransportTimeout()
        chunk = os.read(self._stdout_fd, 65536)
        if not chunk:
            raise TransportClosed("stdout closed")
        self._buffer += chunk

    def exit_code(self) -> int | None:
        if self._exit_code is not None:
            return self._exit_code()
        return self.process.poll()

    def wait_exit(self, deadline: float) -> int | None:
        """Wait (with a deadline) for the process to end; its exit code, or None if it is still running."""
        remaining = max(0.0, deadline - time.monotonic())
        if not _exited_in_time(self.process, remaining):
            return None
        try:
            self.process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            return None
        return self.exit_code()

    def close_stdin(self) -> None:
        """Send end-of-file (a local service exits on it); the process is not waited for."""
        try:
            self._stdin.close()
        except OSError:
            pass

    def close(self, grace_s: float = 2.0) -> None:
        """Close stdin, give the process ``grace_s`` to end, then kill its process group. Idempotent."""
        if self._closed:
            return
        self.close_stdin()
        # Waits for our child process only: the ``exit_code`` callback may itself block (e.g. `docker wait`).
        try:
            self.process.wait(timeout=max(0.0, grace_s))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        self._closed = True
        self._poller.unregister(self._stdout_fd)
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


def _exited_in_time(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Whether ``process`` ends within ``timeout_s``, woken by the kernel the moment it does (a pidfd, Linux):
    Popen.wait with a timeout polls with sleeps that double up to 50 ms, and a service's exit after SHUTDOWN is on
    every run's path. True also where there is no pidfd (Popen.wait then waits as it always did)."""
    if process.returncode is not None or not hasattr(os, "pidfd_open"):
        return True
    try:
        pidfd = os.pidfd_open(process.pid)
    except OSError:  # (already reaped, or a kernel without pidfds)
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        return bool(poller.poll(poll_ms(timeout_s) if timeout_s > 0 else 0))
    finally:
        os.close(pidfd)
