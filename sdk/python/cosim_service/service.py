"""The base class of a service: subclass it, override the hooks you need, call ``run()``."""

from __future__ import annotations

import logging
import sys
from collections.abc import Collection, Iterable, Mapping
from typing import IO, Any, ClassVar, NoReturn

from cosim_service.session import Event, Session, serve_lines

__all__ = ["Service", "run"]


class Service:
    """A service in virtual time, driven by cosim's coordinator over stdin/stdout (docs/protocol.md).

    Like a mosaik ``Simulator``: the coordinator calls the hooks, the service never sleeps and never reads the
    wall clock to decide what to emit or when. Override what you need:

    ``init(node_id, seed, config)``
        once, at INIT: set up (seed your random generator from ``seed``, connect to ``self.endpoints``). May return
        a mapping of facts for the run's manifest (library versions, a model's hash): READY's ``info``.
    ``advance(until_us, events) -> outputs``
        the world moved from ``self.now_us`` to ``until_us``: compute everything that happened in the window
        (now_us, until_us], given its input ``events`` (in time order). Return the output events (dicts with a
        string ``type``; ``time_us`` after ``now_us``, default ``until_us``). An output stamped after ``until_us``
        (a modelled processing delay) is held and delivered in the window that contains its time.
    ``wakeup(after_us) -> int | None``
        the next time after ``after_us`` at which the service emits something on its own (a timer), or None.
        Overriding it (or setting ``next_event = True`` for a service that only reacts to input) declares
        next-event advance: the coordinator skips the windows in which the service has nothing to do. Held outputs
        are promised automatically. Behaviour must not depend on how often ``advance`` is called.
    ``configure(changes)``
        the schedule's reconfigure: ``changes`` holds the config keys to change. Check everything before changing
        anything and raise (ValueError) to refuse: the run fails naming the node and your message. The default
        accepts the keys named in ``reconfigurable`` and refuses any other. Accepted keys are merged into
        ``self.config`` after the hook returns.
    ``endpoints_changed(endpoints)``
        an infrastructure node went away (its endpoint None) or came back ({"host", "port"}).
    ``snapshot() -> JSON-able`` / ``restore(state)``
        a checkpoint: the service's state at a window boundary, and the same state given back in a fresh process
        (after ``init``). Overriding both declares the capability ``snapshot``. Outputs held for later windows,
        ``config`` and ``endpoints`` are carried by the SDK.
    ``barrier_group() -> str | None``
        the barrier group this service joins (docs/protocol.md §12), e.g. its MQTT broker's node id; with
        ``barrier_publishes`` ("always" or "on_input"). ``self.peers`` and ``self.members`` are then set in
        ``advance``.
    ``shutdown()``
        SHUTDOWN (or end of input): flush what you owe the outside world. Outputs still held are discarded.

    Class attributes: ``capabilities`` (free-form names for READY, e.g. ``("echo",)``), ``next_event``,
    ``reconfigurable``, ``barrier_publishes``. While it runs, the SDK's view of the session is on read-only
    properties: ``node_id``, ``seed``, ``restart`` (None, or the restarts so far), ``config``, ``endpoints``,
    ``now_us``, ``peers``, ``members`` (and ``protocol_session``, the session itself): don't assign these names.

    ``run()`` serves stdin/stdout and exits with the session's code. stdout carries protocol messages only, so
    ``run()`` points ``sys.stdout`` at stderr: a stray ``print()`` in the service (or a library) goes to the
    node's log (``<trace stem>.logs/<node>.log``) instead of corrupting the protocol stream. Log with ``logging``
    (configured to stderr) or ``print(..., file=sys.stderr)``.
    """

    capabilities: ClassVar[Collection[str]] = ()
    next_event: ClassVar[bool] = False
    reconfigurable: ClassVar[Collection[str]] = ()
    barrier_publishes: ClassVar[str] = "always"

    _cosim_session: Session | None = None  # see protocol_session

    # -- hooks ------------------------------------------------------------------------------------

    def init(self, node_id: str, seed: int, config: dict[str, Any]) -> Mapping[str, Any] | None:
        return None

    def advance(self, until_us: int, events: list[Event]) -> Iterable[Event] | None:
        return []

    def wakeup(self, after_us: int) -> int | None:
        return None

    def configure(self, changes: dict[str, Any]) -> None:
        unknown = sorted(set(changes) - set(self.reconfigurable))
        if unknown:
            allowed = ", ".join(sorted(self.reconfigurable)) or "none"
            raise ValueError(f"unknown config keys {unknown}; reconfigurable: {allowed}")

    def endpoints_changed(self, endpoints: dict[str, Any]) -> None:
        pass

    def snapshot(self) -> Any:
        raise NotImplementedError

    def restore(self, state: Any) -> None:
        raise NotImplementedError

    def barrier_group(self) -> str | None:
        return None

    def shutdown(self) -> None:
        pass

    # -- what READY declares ----------------------------------------------------------------------

    def _overrides(self, name: str) -> bool:
        return getattr(type(self), name) is not getattr(Service, name)

    def declared_features(self) -> set[str]:
        """The protocol features this service takes part in, from what it overrides."""
        features = set()
        if self.reconfigurable or self._overrides("configure") or self._overrides("endpoints_changed"):
            features.add("configure")
        if self._overrides("snapshot") and self._overrides("restore"):
            features.add("snapshot")
        if self.next_event or self._overrides("wakeup"):
            features.add("next_event")
        return features

    def declared_capabilities(self) -> list[str]:
        """READY's capabilities: the class's own names and the negotiated ones, sorted, unique."""
        return sorted({*self.capabilities, *(self.declared_features() & {"configure", "snapshot"})})

    # -- the session, read-only -------------------------------------------------------------------

    @property
    def protocol_session(self) -> Session:
        """The sans-IO protocol session driving this service (made on first use)."""
        if self._cosim_session is None:
            self._cosim_session = Session(self)
        return self._cosim_session

    @property
    def node_id(self) -> str:
        return self.protocol_session.node_id or ""

    @property
    def seed(self) -> int:
        return self.protocol_session.seed or 0

    @property
    def restart(self) -> int | None:
        return self.protocol_session.restart

    @property
    def config(self) -> Mapping[str, Any]:
        return (self._cosim_session or self.protocol_session).config  # (read in every window: no second property)

    @property
    def endpoints(self) -> Mapping[str, Any]:
        return self.protocol_session.endpoints

    @property
    def now_us(self) -> int:
        return (self._cosim_session or self.protocol_session).current_time_us

    @property
    def peers(self) -> list[str] | None:
        return self.protocol_session.peers

    @property
    def members(self) -> list[str]:
        return self.protocol_session.members

    # -- serving ----------------------------------------------------------------------------------

    def serve(self, stdin: IO[Any], stdout: IO[Any]) -> int:
        """Serve the protocol on the given streams until SHUTDOWN, a fatal error or end of input; the exit code."""
        return serve_lines(self.protocol_session, stdin, stdout)

    def run(self) -> NoReturn:
        """The process's main loop: log to stderr, serve stdin/stdout, exit with the session's code."""
        logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
        # Binary lines, decoded as strict UTF-8 per line whatever the locale.
        stdin = open(sys.stdin.fileno(), "rb", closefd=False)
        stdout = open(sys.stdout.fileno(), "wb", closefd=False)
        sys.stdout = sys.stderr  # a stray print() must not corrupt the protocol stream
        sys.exit(self.serve(stdin, stdout))


def run(service_class: type[Service]) -> NoReturn:
    """``cosim_service.run(MyService)``: make one and serve stdin/stdout (``MyService().run()``)."""
    service_class().run()
