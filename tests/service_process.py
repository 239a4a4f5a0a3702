"""A service run as a local subprocess and spoken to over the real JSON-lines protocol (for tests)."""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYTHONPATH = os.pathsep.join([str(ROOT / "containers"), str(ROOT / "sdk" / "python")])


class ServiceProcess:
    """Start ``command`` (default: ``python -u SERVICE``) with containers/ (protocol_adapter) and sdk/python
    (cosim_service; TEMPORARY until cosim installs it) on PYTHONPATH; send and receive lines."""

    def __init__(self, service: str | Path | None = None, *, command: Sequence[str] | None = None,
                 env: Mapping[str, str] | None = None, timeout_s: float = 20.0) -> None:
        if command is None:
            command = [sys.executable, "-u", str(service)]
        full_env = {**os.environ, "PYTHONPATH": PYTHONPATH, **(env or {})}
        self.timeout_s = timeout_s
        self.proc = subprocess.Popen(list(command), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, env=full_env)
        self._buffer = b""

    def send(self, message: Mapping[str, Any] | str) -> None:
        line = message if isinstance(message, str) else json.dumps(message)
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def receive(self) -> dict[str, Any]:
        """The next line from stdout as JSON; fails the test at the deadline or on EOF."""
        assert self.proc.stdout is not None
        deadline = time.monotonic() + self.timeout_s
        fd = self.proc.stdout.fileno()
        with selectors.DefaultSelector() as selector:
            selector.register(fd, selectors.EVENT_READ)
            while b"\n" not in self._buffer:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no reply within {self.timeout_s}s; stderr so far unread")
                if selector.select(remaining):
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        raise AssertionError(f"service closed stdout; stderr: {self.stderr()[-2000:]}")
                    self._buffer += chunk
        line, self._buffer = self._buffer.split(b"\n", 1)
        return json.loads(line)

    def request(self, message: Mapping[str, Any] | str) -> dict[str, Any]:
        self.send(message)
        return self.receive()

    def init(self, config: Mapping[str, Any] | None = None, *, node_id: str = "svc", seed: int = 1,
             endpoints: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return self.request({"type": "INIT", "protocol": 1, "time_us": 0, "node_id": node_id, "seed": seed,
                             "config": dict(config or {}), "endpoints": dict(endpoints or {})})

    def advance(self, time_us: int, events: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
        return self.request(advance(time_us, events, **fields))

    def shutdown(self) -> int:
        """SHUTDOWN, then the exit code (waits with a deadline)."""
        self.send({"type": "SHUTDOWN"})
        return self.proc.wait(timeout=self.timeout_s)

    def stderr(self) -> str:
        if self.proc.poll() is None:
            return ""
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=self.timeout_s)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def advance(time_us: int, events: list[dict[str, Any]] | None = None, **fields: Any) -> dict[str, Any]:
    """An ADVANCE message; ``fields`` adds optional ones (peers, members)."""
    return {"type": "ADVANCE", "time_us": time_us, "events": events or [], **fields}


def converse(service: str | Path, messages: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Run ``service`` with ``messages`` on its stdin (a minimal environment: PYTHONPATH and PATH only); it must exit
    0. Its replies (every stdout line must be protocol JSON) and its stderr."""
    done = subprocess.run([sys.executable, "-u", str(service)], capture_output=True, text=True, timeout=20,
                          input="".join(json.dumps(m) + "\n" for m in messages),
                          env={"PYTHONPATH": PYTHONPATH, "PATH": "/usr/bin:/bin"})
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()], done.stderr
