"""What a run asks the engine many times, asked cheaply: container state, image ids, a project's containers.

Each `docker inspect` is a CLI process that costs 20 to 100 ms to start (measured on a 2-core machine: the
default scenario made 20 of them, 2.2 s of its bring-up under load); a request on the engine's unix socket costs
under a millisecond. So on a local socket every inspection is one HTTP request (``GET /containers/{id}/json``,
``GET /images/{name}/json``), and the containers of a run are listed in one request
(``GET /containers/json?filters=...``). Engines reached over TCP or SSH (or with ``COSIM_ATTACH=cli``) get one
``docker inspect`` of all the ids at once instead.

The answers are the engine's own JSON (the same documents `docker inspect` prints); ``State`` holds ``Running``,
``ExitCode``, ``OOMKilled`` and ``Status`` (created, running, restarting, exited, ...).
"""

from __future__ import annotations

import json
import os
import socket
import threading
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from cosim.errors import DockerCommandFailed
from cosim.runtimes.docker.engine import run_bounded

REQUEST_TIMEOUT_S = 30.0
CLI_TIMEOUT_S = 60.0
PARALLEL_REQUESTS = 32  # at most this many containers stopped and removed at once (the engine works in parallel)


def _exchange(socket_path: str, method: str, path: str, timeout_s: float) -> tuple[int, bytes]:
    """One HTTP/1.0 request on the engine's unix socket: (status, body). HTTP/1.0, so that the engine answers
    without chunks and closes the connection after its answer: the body is all that follows the header (and
    http.client, with the email parser and ssl it imports, costs 17 to 24 ms a run). OSError (a timeout included)
    when the engine does not answer; ValueError for an answer that is not HTTP."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(socket_path)
        sock.sendall(f"{method} {path} HTTP/1.0\r\nHost: docker\r\nContent-Length: 0\r\n\r\n".encode("ascii"))
        chunks = []
        while chunk := sock.recv(1 << 16):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].split()
    if len(status_line) < 2 or not status_line[0].startswith(b"HTTP/") or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP answer: {head[:80]!r}")
    return int(status_line[1]), body


class Engine:
    """The engine a run uses: its unix socket when there is one (``socket_path``), else the docker CLI."""

    def __init__(self, socket_path: str | None) -> None:
        self.socket_path = socket_path

    def request(self, method: str, path: str) -> tuple[int, bytes]:
        """One request on the socket: (HTTP status, body). DockerCommandFailed when the engine does not answer."""
        assert self.socket_path is not None
        try:
            return _exchange(self.socket_path, method, path, REQUEST_TIMEOUT_S)
        except (OSError, ValueError) as exc:
            raise DockerCommandFailed(f"the Docker Engine did not answer {method} {path} on {self.socket_path} "
                                      f"({exc.__class__.__name__}: {exc})") from None

    def get(self, path: str) -> Any:
        """The engine's JSON answer to ``GET path``; None for 404 (no such object). DockerCommandFailed when the
        engine does not answer or refuses."""
        status, body = self.request("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise DockerCommandFailed(f"the Docker Engine answered GET {path} with {status}: "
                                      f"{body[:300].decode('utf-8', 'replace').strip()}")
        return json.loads(body)

    def delete(self, path: str) -> bool:
        """``DELETE path``: True when done, False when there was nothing (404) or the engine refused (e.g. a
        network still in use); DockerCommandFailed when the engine does not answer."""
        return self.request("DELETE", path)[0] in (200, 204)

    def wait(self, container_id: str, timeout_s: float) -> int | None:
        """The container's exit code once it has stopped, waiting up to ``timeout_s`` (``POST /containers/{id}/wait``:
        the engine answers when the exit is recorded); None while it still runs, or when there is no such container.
        Without a socket: a bounded `docker wait`."""
        if self.socket_path is None:
            from cosim.runtimes.docker.engine import wait_exit

            return wait_exit(container_id, timeout_s)
        try:
            status, body = _exchange(self.socket_path, "POST",
                                     f"/containers/{urllib.parse.quote(container_id)}/wait?condition=not-running",
                                     timeout_s)
        except (OSError, ValueError):  # (a timeout included: still running)
            return None
        if status != 200:
            return None
        code = json.loads(body).get("StatusCode")
        return code if isinstance(code, int) else None

    def remove_containers(self, ids: Sequence[str], stop_timeout_s: int,
                          meanwhile: Callable[[], object] | None = None) -> bool:
        """Stop each container still running (SIGTERM, SIGKILL after ``stop_timeout_s``) and remove it with its
        anonymous volumes, all in parallel, as `docker compose down` does (``meanwhile`` is called while the engine
        works); True when every one is gone. Socket only; DockerCommandFailed is a False."""
        def remove(container_id: str) -> bool:
            quoted = urllib.parse.quote(container_id)
            try:
                self.request("POST", f"/containers/{quoted}/stop?t={stop_timeout_s}")  # (304: already stopped)
                return self.request("DELETE", f"/containers/{quoted}?v=1&force=1")[0] in (200, 204, 404)
            except DockerCommandFailed:
                return False

        pending, lock, removed = iter(ids), threading.Lock(), []

        def worker() -> None:
            while True:
                with lock:
                    container_id = next(pending, None)
                if container_id is None:
                    return
                removed.append(remove(container_id))  # (list.append is atomic)

        workers = [threading.Thread(target=worker, name="cosim-remove", daemon=True)
                   for _ in range(min(len(ids), PARALLEL_REQUESTS))]
        for thread in workers:
            thread.start()
        try:
            if meanwhile is not None:
                meanwhile()
        finally:
            for thread in workers:
                thread.join()
        return len(removed) == len(ids) and all(removed)

    def ping(self) -> bool:
        """True when the daemon answers ``GET /_ping`` (a millisecond; no CLI process)."""
        try:
            return self.socket_path is not None and self.request("GET", "/_ping")[0] == 200
        except DockerCommandFailed:
            return False

    def networks(self, label: str) -> list[dict[str, Any]]:
        """Every network carrying ``label`` (key=value), in one request (``Id``, ``Labels``); socket only."""
        query = urllib.parse.urlencode({"filters": json.dumps({"label": [label]})})
        return list(self.get(f"/networks?{query}") or [])

    def container(self, container_id: str) -> dict[str, Any] | None:
        """One container's inspection document; None when there is no such container."""
        return self.containers([container_id]).get(container_id)

    def containers(self, ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """{id: inspection document} of the given containers (those that exist), in one CLI call without a socket."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return {}
        if self.socket_path is not None:
            found = {container_id: self.get(f"/containers/{urllib.parse.quote(container_id)}/json")
                     for container_id in ids}
            return {key: value for key, value in found.items() if value is not None}
        return _by_given_id(ids, self._cli_inspect("container", ids))

    def image(self, reference: str) -> dict[str, Any] | None:
        """An image's inspection document (``Id``, ``RepoTags``, ``Config.Labels``); None when there is none."""
        if self.socket_path is not None:
            found = self.get(f"/images/{urllib.parse.quote(reference, safe='')}/json")
            return found if isinstance(found, dict) else None
        documents = self._cli_inspect("image", [reference])
        return documents[0] if documents else None

    def listed(self, label: str) -> list[dict[str, Any]]:
        """Every container (running or not) carrying ``label`` (key=value), in one request: the engine's summary
        (``Id``, ``Labels``, ``State``) without a socket too (one `docker ps` and one `docker inspect`)."""
        if self.socket_path is not None:
            query = urllib.parse.urlencode({"all": "1", "filters": json.dumps({"label": [label]})})
            found = self.get(f"/containers/json?{query}")
            return list(found or [])
        done = run_bounded(["container", "ls", "--all", "--quiet", "--no-trunc", "--filter", f"label={label}"],
                           CLI_TIMEOUT_S)
        if done is None or done.returncode != 0:
            raise DockerCommandFailed(f"docker container ls --filter label={label} failed: "
                                      f"{(done.stderr if done else 'no answer').strip()}")
        ids = done.stdout.split()
        return [{"Id": doc["Id"], "Labels": (doc.get("Config") or {}).get("Labels") or {},
                 "State": (doc.get("State") or {}).get("Status", "")}
                for doc in self._cli_inspect("container", ids)]

    @staticmethod
    def _cli_inspect(kind: str, ids: list[str]) -> list[dict[str, Any]]:
        """`docker inspect --type KIND ids...`: the documents of those that exist (it prints them even when some
        are missing, and fails only for those)."""
        if not ids:
            return []
        done = run_bounded(["inspect", "--type", kind, *ids], CLI_TIMEOUT_S)
        if done is None:
            raise DockerCommandFailed(f"docker inspect of {len(ids)} {kind}(s) did not answer within {CLI_TIMEOUT_S:.0f} s")
        try:
            documents = json.loads(done.stdout or "[]")
        except ValueError:
            documents = []
        if done.returncode != 0 and not documents and "no such" not in done.stderr.lower():
            raise DockerCommandFailed(f"docker inspect failed: {done.stderr.strip()}")
        return [doc for doc in documents if isinstance(doc, dict)]


def _by_given_id(ids: list[str], documents: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Key the documents by the id each was asked for (a short id or a name matches the document's full Id or
    Name)."""
    found: dict[str, dict[str, Any]] = {}
    for given in ids:
        for doc in documents:
            if doc.get("Id", "").startswith(given) or doc.get("Name", "").lstrip("/") == given:
                found[given] = doc
                break
    return found


def state(document: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The ``State`` block of an inspection document ({} for none)."""
    return (document or {}).get("State") or {}


def labels(document: Mapping[str, Any]) -> Mapping[str, str]:
    """A container's labels, from an inspection document or a listing's summary."""
    return document.get("Labels") or (document.get("Config") or {}).get("Labels") or {}


_engines: dict[tuple[str | None, ...], Engine] = {}


def default_engine() -> Engine:
    """The engine the docker CLI talks to (DOCKER_HOST or the current context), through its unix socket when it
    is on one and COSIM_ATTACH is not ``cli``; cached per endpoint like the engine check."""
    from cosim.runtimes.docker.attach import engine_socket
    from cosim.runtimes.docker.engine import endpoint

    key = (*endpoint(), os.environ.get("COSIM_ATTACH"))
    if key not in _engines:
        _engines[key] = Engine(engine_socket() if os.environ.get("COSIM_ATTACH", "api") != "cli" else None)
    return _engines[key]
