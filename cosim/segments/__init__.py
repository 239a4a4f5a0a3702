"""The client of the ns-3 segment worker: the process that owns ns-3 (``python -m cosim.segments.worker``), spoken to
in JSON lines on its stdin/stdout (docs/segments.md). ns-3 is GPL-2.0-only: cosim's own process never imports it;
only the worker does. This module only starts the worker, speaks the protocol and reports its failures.

``COSIM_SEGMENT_WORKER`` (a command line) replaces the worker, e.g. with a fake one in the tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from cosim.errors import MissingExtra, SegmentWorkerFailed
from cosim.model import Scenario

WORKER_ENV = "COSIM_SEGMENT_WORKER"
INSTALL_HINT = "pip install 'cosim[ns3]' (or run it through ./inv, which installs it)"
# ns-3's state is not checkpointed (docs/segments.md#checkpoints).
NO_CHECKPOINTS = ("{option}: scenario {name!r} has network segments, and runs with segments cannot be checkpointed, "
                  "resumed or forked (ns-3's state is not saved); run it whole")
# Wall clock, start-up only: loading ns-3's libraries and compiling the worker's C++ takes seconds of CPU (about
# 7 s alone on a small machine, much more when it is busy): far longer than a window's answer may take.
READY_TIMEOUT_S = 600.0
CLOSE_WAIT_S = 5.0  # wall clock, teardown only: how long the worker may take to exit after shutdown

# One send: [pid, time_us, segment_id, source, destination, size_bytes]
Send = tuple[int, int, str, str, str, int]


def worker_command() -> list[str]:
    override = os.environ.get(WORKER_ENV)
    if override:
        return shlex.split(override)
    return [sys.executable, "-m", "cosim.segments.worker"]


def check_available(scenario: Scenario) -> None:
    """Before anything starts: a scenario with segments needs ns-3 (the ns3 extra), unless the worker is replaced."""
    if not scenario.segments or os.environ.get(WORKER_ENV):
        return
    if importlib.util.find_spec("ns") is None:  # finds the package without importing it
        raise MissingExtra(f"scenario {scenario.name!r} has network segments, which need ns-3: {INSTALL_HINT}")


class SegmentWorker:
    """One worker process for one run: ``start`` (the process, and its init sent at once, so that ns-3 loads while
    the runtime starts the services), ``ready``, ``run`` per window, ``close`` (shutdown, or kill, and reap).
    Any failure is a SegmentWorkerFailed naming its exit code and last stderr line."""

    def __init__(self, scenario: Scenario, log_path: Path, timeout_s: float) -> None:
        self.scenario = scenario
        self.log_path = log_path  # the worker's stderr
        self.timeout_s = timeout_s  # wall clock, like a node's watchdog: a reply that never comes is a hang
        self.process: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self.info: dict[str, Any] = {}  # its ready message (ns-3 version, modules)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> None:
        command = worker_command()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            try:
                # Its own session: Ctrl-C reaches cosim, whose teardown stops the worker (not a second, racing death).
                self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log,
                                                start_new_session=True, close_fds=True)
            except OSError as exc:
                raise SegmentWorkerFailed(f"could not be started ({shlex.join(command)}: {exc.strerror})") from None
        self._send({"op": "init", "seed": self.scenario.seed,
                    "segments": [segment.wire() for segment in self.scenario.segments]})

    def ready(self) -> dict[str, Any]:
        """Wait for the answer to init."""
        reply = self._receive("ready", "init", max(self.timeout_s, READY_TIMEOUT_S))
        self.info = {key: reply[key] for key in ("ns3", "modules") if key in reply}
        return reply

    def run(self, until_us: int, sends: Sequence[Send]) -> dict[str, Any]:
        """Run ns-3 to ``until_us`` (inclusive) with ``sends``: its ``ran`` reply (arrivals, drops, next_us)."""
        self._send({"op": "run", "until_us": until_us, "sends": [list(send) for send in sends]})
        return self._receive("ran", f"run until {until_us} us")

    def close(self, *, graceful: bool = True) -> None:
        """Stop the worker and reap it, never left running: after a completed run told to shut down (killed if it
        does not within CLOSE_WAIT_S), after a failed or interrupted one killed at once (it may be mid-request)."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            try:
                if not graceful:
                    raise subprocess.TimeoutExpired(process.args, 0)
                self._send({"op": "shutdown"})
                process.wait(CLOSE_WAIT_S)
            except (SegmentWorkerFailed, subprocess.TimeoutExpired):
                process.kill()
                process.wait()
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                stream.close()

    # -- the pipe --------------------------------------------------------------------------------------

    def _send(self, message: dict[str, Any]) -> None:
        stdin = self._stdin()
        try:
            stdin.write(json.dumps(message, separators=(",", ":")).encode() + b"\n")
            stdin.flush()
        except (BrokenPipeError, ConnectionResetError):
            raise self._failure("exited") from None

    def _receive(self, expected: str, waiting_for: str, timeout_s: float | None = None) -> dict[str, Any]:
        line = self._read_line(waiting_for, self.timeout_s if timeout_s is None else timeout_s)
        try:
            reply = json.loads(line)
        except ValueError:
            reply = None
        if not isinstance(reply, dict):
            raise self._failure(f"broke its protocol: not a JSON object in reply to {waiting_for}: {line[:200]!r}",
                                kill=True)
        if reply.get("op") == "error":  # (it exits on its own after an error: its exit code is part of the story)
            raise self._failure(f"failed: {reply.get('message')}")
        if reply.get("op") != expected:
            raise self._failure(f"broke its protocol: {reply.get('op')!r} in reply to {waiting_for}, expected "
                                f"{expected!r}", kill=True)
        return reply

    def _read_line(self, waiting_for: str, timeout_s: float) -> str:
        process = self.process
        assert process is not None and process.stdout is not None
        fd = process.stdout.fileno()
        while b"\n" not in self._buffer:
            readable, _, _ = select.select([fd], [], [], timeout_s)
            if not readable:
                raise self._failure(f"did not answer {waiting_for} within {timeout_s:g} s", kill=True)
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise self._failure(f"exited while cosim waited for its reply to {waiting_for}")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode("utf-8", errors="replace")

    def _stdin(self) -> IO[bytes]:
        assert self.process is not None and self.process.stdin is not None
        return self.process.stdin

    def _failure(self, problem: str, *, kill: bool = False) -> SegmentWorkerFailed:
        """The error for the worker's failure, once it has exited (killed first when it still runs)."""
        process = self.process
        assert process is not None
        if kill and process.poll() is None:
            process.kill()
        try:
            code = process.wait(CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            code = process.wait()
        if code < 0:  # killed by a signal: as shells and Docker write it (128 + the signal's number)
            code = 128 - code
        return SegmentWorkerFailed(problem, exit_code=code, last_stderr=self._last_stderr_line())

    def _last_stderr_line(self) -> str:
        try:
            with open(self.log_path, "rb") as log:
                log.seek(max(0, log.seek(0, os.SEEK_END) - 4096))
                lines = [line.strip() for line in log.read().decode("utf-8", errors="replace").splitlines()]
        except OSError:
            return ""
        lines = [line for line in lines if line]
        return lines[-1][:300] if lines else ""
