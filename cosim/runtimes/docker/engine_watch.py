"""Whether the Docker engine itself went away under a run, told apart from a container that ended.

When the engine stops it stops its containers, and their streams end as if each service had died; when it is
restarted it may even answer again by the time cosim looks. So a run keeps two facts at hand:

- an open ``GET /events`` connection (engines on a unix socket): nothing but the engine's own end closes it, so a
  closed one means the engine stopped or restarted, even if it answers again;
- a ping, on a fresh connection: an engine that is stopping has closed its listener already (dockerd closes its
  API listener first, then stops the containers), one that is gone does not answer.

``check`` runs where a node's container is found to have ended (its exit code is asked for), before anything
else asks the engine: it raises EngineLost when the engine is to blame. The teardown then waits for the engine to
come back (``wait_back``), so that a restarted engine is left without the run's containers and networks.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import urllib.parse

from cosim.errors import EngineLost
from cosim.runtimes.docker.attach import engine_request
from cosim.runtimes.docker.engine import context_host, run_bounded

PING_TIMEOUT_S = 5.0
RETURN_POLL_S = 0.25


def engine_host(socket_path: str | None) -> str:
    """The engine as the error names it: ``unix:///var/run/docker.sock``, ``tcp://...``."""
    if socket_path is not None:
        return f"unix://{socket_path}"
    return os.environ.get("DOCKER_HOST") or context_host() or "of the docker CLI"


class EngineWatch:
    """The engine a run's containers live on: at ``socket_path`` (its unix socket), or reached through the docker
    CLI (None: TCP, SSH)."""

    def __init__(self, socket_path: str | None, host: str) -> None:
        self.socket_path = socket_path
        self.host = host
        self.lost = False
        self._events: socket.socket | None = None
        if socket_path is not None:
            query = urllib.parse.quote(json.dumps({"type": ["daemon"]}))  # (nothing flows but the engine's end)
            with contextlib.suppress(OSError):  # without it, the ping alone tells a stopped engine
                self._events, _ = engine_request(
                    socket_path, f"GET /events?filters={query} HTTP/1.1\r\nHost: docker\r\n\r\n", "send events")
                self._events.setblocking(False)

    def check(self, node_id: str) -> None:
        """Raise EngineLost if the engine stopped or restarted since the run started (``node_id``: whose container
        was found ended); return if it is the same engine, answering."""
        if self.lost:
            raise EngineLost(f"node {node_id!r} lost its container's stream, and the engine at {self.host} is gone")
        cut, answers = self._events_cut(), self.answers()
        if answers and not cut:
            return
        self.lost = True
        if answers:
            raise EngineLost(f"node {node_id!r} lost its container's stream, and the engine at {self.host} "
                             f"restarted (it answers again, but its event stream was cut)")
        raise EngineLost(f"node {node_id!r} lost its container's stream, and the engine at {self.host} does not "
                         f"answer")

    def _events_cut(self) -> bool:
        if self._events is None:
            return False
        try:
            while self._events.recv(1 << 16):
                pass  # an event (none are asked for): read on to the end or to what is not there yet
            return True  # the end of the stream
        except BlockingIOError:
            return False
        except OSError:
            return True

    def answers(self) -> bool:
        """Whether the engine answers a ping now."""
        if self.socket_path is not None:
            try:
                connection, _ = engine_request(self.socket_path, "GET /_ping HTTP/1.1\r\nHost: docker\r\n\r\n",
                                               "ping", timeout_s=PING_TIMEOUT_S)
            except OSError:
                return False
            connection.close()
            return True
        done = run_bounded(["version", "--format", "{{.Server.Version}}"], PING_TIMEOUT_S)
        return done is not None and done.returncode == 0

    def wait_back(self, timeout_s: float) -> bool:
        """After a loss: whether the engine answers again within ``timeout_s`` (a restart), so that the run's
        containers and networks can be removed from it."""
        deadline = time.monotonic() + timeout_s
        while not self.answers():
            if time.monotonic() > deadline:
                return False
            time.sleep(RETURN_POLL_S)  # a watchdog poll on the engine (teardown, not the simulation path)
        return True

    def close(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None
