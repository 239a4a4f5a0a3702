"""Node proxies: what the coordinator drives. One narrow interface (``SimNode``), three kinds behind it.

- ``ServiceNode`` speaks the JSON-lines protocol to a service through a Transport (a local subprocess or a
  container's attached stdio; it cannot tell which): it moves the lines that its ``ServiceSession`` (the protocol
  without I/O) makes and checks.
- ``SensorModel`` and ``SinkModel`` are in-process models of the device tier (``InProcessModel`` holds what they
  share).

What a node can do is one value, ``Capabilities``: READY's declarations, parsed and checked once (a service), or
fixed (an in-process model). The coordinator asks it, never the node's class.

A step is split in two (``begin_advance`` sends, ``end_advance`` collects) so the coordinator can send
ADVANCE to every node before waiting for any DONE: services compute concurrently.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Protocol

from cosim import plugins, protocol
from cosim.core.contracts import Event, Input
from cosim.errors import NodeFailure
from cosim.model import SensorSpec
from cosim.protocol import EMPTY_DONE, PLAIN_ADVANCE
from cosim.transport import Transport, TransportClosed, TransportTimeout

monotonic = time.monotonic  # (wall clock for the watchdog and the metrics only)
_ADVANCING = "ADVANCE"  # ServiceSession._in_flight while an ADVANCE's reply is awaited

__all__ = ["Capabilities", "Event", "Input", "InProcessModel", "ProtocolViolation", "SensorModel", "ServiceNode",
           "ServiceSession", "SimNode", "SinkModel"]


@dataclass(frozen=True)
class Capabilities:
    """What a node can do, fixed once it is READY: a service's READY declarations, checked (``from_ready``), or an
    in-process model's (``MODEL``)."""

    declared: frozenset[str] = frozenset()  # READY's ``capabilities`` as given (e.g. "configure", "snapshot")
    configure: bool = False  # takes CONFIGURE during a run (the schedule's reconfigure, a fork's config)
    snapshot: bool = False  # can be checkpointed (SNAPSHOT) and restored (RESTORE)
    next_event: bool = False  # says when it next needs time (DONE's ``next_us``): advanced only when needed
    barrier_group: str | None = None  # its ADVANCEs then name the peers advanced with it
    publishes_on_input_only: bool = False  # READY's ``barrier_publishes == "on_input"``
    process: bool = False  # a process of its own (a service): it computes while cosim works, and may run ahead

    @classmethod
    def from_ready(cls, reply: Mapping[str, Any]) -> Capabilities | str:
        """READY's declarations as a value, or what is wrong with them (the checks, in the order they are made)."""
        capabilities = reply.get("capabilities", [])
        if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
            return f"answered READY with capabilities {capabilities!r}; expected a list of strings"
        group = reply.get("barrier_group")
        if group is not None and not isinstance(group, str):
            return f"answered READY with barrier_group {group!r}; expected a string"
        publishes = reply.get("barrier_publishes", "always")
        if publishes not in ("always", "on_input"):
            return f"answered READY with barrier_publishes {publishes!r}; expected 'always' or 'on_input'"
        next_event = reply.get("next_event", False)
        if not isinstance(next_event, bool):
            return f"answered READY with next_event {next_event!r}; expected true or false"
        declared = frozenset(capabilities)
        return cls(declared, "configure" in declared, "snapshot" in declared, next_event, group,
                   publishes == "on_input", process=True)


# In-process models: checkpointed and reconfigured directly, always exact about their next output, in no group.
MODEL_CAPABILITIES = Capabilities(configure=True, snapshot=True, next_event=True)


class SimNode(Protocol):
    """What the coordinator drives: a service behind a transport or an in-process model."""

    id: str

    @property
    def capabilities(self) -> Capabilities:
        """What the node can do (a service's: from its READY, so read it after ``init``)."""
        ...

    @property
    def info(self) -> Mapping[str, Any]:
        """What the node said about itself in READY (versions), for the trace header; empty for in-process models."""
        ...

    @property
    def round_trips_s(self) -> list[float] | None:
        """Wall-clock ADVANCE->DONE per step, for the metrics only; None for a node with nothing to measure."""
        ...

    @property
    def next_us(self) -> int | None:
        """After ``end_advance``: the node's promise, the earliest time after the window at which it will emit
        something on its own (a timer, a held output, a sensor's next sample); None: only in response to input."""
        ...

    def begin_init(self, seed: int, config: Mapping[str, Any], endpoints: Mapping[str, Any]) -> None:
        """Start the node's INIT (a service is sent INIT; an in-process model is set up at once)."""
        ...

    def end_init(self) -> None:
        """Its READY (a service's: awaited and checked). Every INIT is begun before any READY is awaited, so the
        services take their INIT at the same time."""
        ...

    def join_barrier_group(self, members: list[str]) -> None:
        """The whole group (sorted) of the ``barrier_group`` the node declared; called once, after every INIT."""
        ...

    def begin_advance(self, target_us: int, events: list[Input], peers: list[str] | None = None) -> None:
        """Start advancing to ``target_us``; ``peers``: the members of the node's barrier group advanced too."""
        ...

    def end_advance(self) -> list[Event]:
        """The events produced in the window just advanced, each with ``type``, ``time_us`` and ``data``."""
        ...

    def configure(self, time_us: int, config: Mapping[str, Any] | None = None,
                  endpoints: Mapping[str, Any] | None = None) -> None:
        """The schedule's reconfigure (keys to change), or endpoints that went away (None) or came back."""
        ...

    def crashed(self) -> None:
        """The schedule killed the node's process (the runtime closed its transport): nothing more is sent to it."""
        ...

    def restarted(self, transport: Transport, time_us: int, seed: int, config: Mapping[str, Any],
                  endpoints: Mapping[str, Any], restart: int) -> None:
        """A fresh process for the node: INIT again (same seed), resuming at ``time_us``."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """The node's state at a window boundary (a checkpoint), JSON-able."""
        ...

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Put ``snapshot``'s state back, right after INIT."""
        ...

    def shutdown(self) -> None:
        """Tell the node the run is over (all nodes are told before any is waited for)."""
        ...

    def wait_closed(self) -> None:
        """Wait until the node has finished after ``shutdown``."""
        ...

    def close(self) -> None: ...


class ProtocolViolation(Exception):
    """A reply that breaks the protocol, as ``ServiceSession`` finds it; ``ending``: the service is about to exit
    (a fatal ERROR). The proxy turns it into a NodeFailure with the process's facts."""

    def __init__(self, problem: str, *, ending: bool = False) -> None:
        super().__init__(problem)
        self.problem, self.ending = problem, ending


class ServiceSession:
    """The coordinator's side of one service's conversation, without I/O (sans-IO, as the service side's adapter
    ``handle()``): each request's line, and the check of its reply, which updates what the coordinator knows of
    the service (its clock, its promise, its capabilities) or raises ProtocolViolation. ``in_flight`` names the
    request whose reply is awaited (or being checked), for a failure's message."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self._in_flight: str | None = None  # (``_ADVANCING``: the ADVANCE to ``target_us``, named when asked)
        self.current_us = 0  # the service's clock: the end of the last window it advanced through
        self.target_us = 0  # the window being advanced
        self.info: dict[str, Any] = {}  # what READY said about the service (versions), for the manifest
        self.capabilities = Capabilities(process=True)  # READY's, once INIT has been answered
        self.members: list[str] | None = None  # the whole barrier group, sent once, in the first ADVANCE
        self.next_us: int | None = None  # the latest promise (a next-event service's)
        self._empty_done = b""  # the canonical DONE without outputs of the window being advanced

    @property
    def in_flight(self) -> str | None:
        """The request whose reply is awaited (or being checked), named for a failure's message."""
        if self._in_flight is _ADVANCING:
            return f"ADVANCE to {self.target_us} us"
        return self._in_flight

    @in_flight.setter
    def in_flight(self, request: str | None) -> None:
        self._in_flight = request

    # -- requests and their replies, in protocol order --------------------------------------------

    def init(self, seed: int, config: Mapping[str, Any], endpoints: Mapping[str, Any], time_us: int,
             restart: int | None) -> bytes:
        self.in_flight = "INIT" if restart is None else f"INIT (restart {restart} at {time_us} us)"
        if restart is not None:
            self.current_us = time_us
        return protocol.encode(protocol.init_message(self.node_id, seed, config, endpoints, time_us=time_us,
                                                     restart=restart))

    def ready(self, raw: bytes, time_us: int) -> None:
        reply = self.parse(raw, "READY")
        info = reply.get("info")
        self.info = info if isinstance(info, dict) else {}
        capabilities = Capabilities.from_ready(reply)
        if isinstance(capabilities, str):
            raise ProtocolViolation(capabilities)
        self.capabilities = capabilities
        if capabilities.next_event:  # its first promise: nothing before then, unless an input comes
            self._promise(reply, time_us, "READY")
        if reply.get("protocol") != protocol.VERSION:
            raise ProtocolViolation(f"answered READY for protocol {reply.get('protocol')!r}; "
                                    f"cosim speaks {protocol.VERSION}")
        self.in_flight = None

    def advance(self, target_us: int, events: list[Input], peers: list[str] | None) -> bytes:
        self.target_us = target_us
        self._in_flight = _ADVANCING  # (named only when a failure asks: formatting it costs every window)
        self._empty_done = EMPTY_DONE % target_us
        if self.capabilities.barrier_group is None:
            return protocol.encode_advance(target_us, events) if events else PLAIN_ADVANCE % target_us
        members, self.members = self.members, None
        return protocol.encode_advance(target_us, events, peers or [], members)

    def done(self, raw: bytes) -> list[Event]:
        target_us = self.target_us
        if raw == self._empty_done:  # most windows: nothing to parse, nothing to check, no promise
            if self.capabilities.next_event:
                self.next_us = None
            self.current_us = target_us
            self._in_flight = None
            return []
        next_event = self.capabilities.next_event
        if next_event and (promise := protocol.empty_done_promise(raw, target_us)) is not None:
            reply: dict[str, Any] = {"time_us": target_us, "events": [], "next_us": promise}  # only a promise
        else:
            reply = self.parse(raw, "DONE")
        if reply.get("time_us") != target_us:
            raise ProtocolViolation(f"answered DONE for {reply.get('time_us')!r} us, expected {target_us} us")
        problem = protocol.check_outputs(reply.get("events"), self.current_us, target_us)
        if problem:
            raise ProtocolViolation(problem)
        if next_event:
            self._promise(reply, target_us, "DONE")
        self.current_us = target_us
        self.in_flight = None
        return reply["events"]  # (checked by check_outputs: a list of events)

    def configure(self, time_us: int, config: Mapping[str, Any] | None, endpoints: Mapping[str, Any] | None) -> bytes:
        self.in_flight = f"CONFIGURE at {time_us} us"
        return protocol.encode(protocol.configure_message(time_us, config, endpoints))

    def configured(self, raw: bytes, time_us: int) -> None:
        reply = self._reply_at(raw, "CONFIGURED", time_us)
        self.current_us = time_us  # it had nothing to do before then; the change applies from this window on
        if self.capabilities.next_event:  # the change may move its promise (e.g. a new timer period)
            self._promise(reply, time_us, "CONFIGURED")
        self.in_flight = None

    def snapshot(self) -> bytes:
        self.in_flight = f"SNAPSHOT at {self.current_us} us"
        return protocol.encode(protocol.snapshot_message(self.current_us))

    def snapshot_state(self, raw: bytes) -> dict[str, Any]:
        reply = self.parse(raw, "SNAPSHOT_STATE")
        state = reply.get("state")
        if reply.get("time_us") != self.current_us or not isinstance(state, dict):
            raise ProtocolViolation(f"answered SNAPSHOT_STATE for {reply.get('time_us')!r} us with "
                                    f"{type(state).__name__}; expected {self.current_us} us and a state object")
        self.in_flight = None
        return {"current_us": self.current_us, "next_us": self.next_us, "service": state}

    def restore(self, saved: Mapping[str, Any]) -> bytes:
        time_us = int(saved["current_us"])
        self.in_flight = f"RESTORE at {time_us} us"
        return protocol.encode(protocol.restore_message(time_us, saved["service"]))

    def restored(self, raw: bytes, saved: Mapping[str, Any]) -> None:
        time_us = int(saved["current_us"])
        self._reply_at(raw, "RESTORED", time_us)
        self.current_us = time_us
        self.next_us = saved.get("next_us")  # the promise it had made (next-event); the coordinator holds it to it
        self.in_flight = None

    def shutdown(self) -> bytes:
        self.in_flight = "SHUTDOWN"
        return protocol.encode(protocol.SHUTDOWN)

    # -- checks -------------------------------------------------------------------------------------

    def parse(self, raw: bytes, expect: str) -> dict[str, Any]:
        """A reply line as a message of type ``expect`` (an ERROR, or anything else, breaks the protocol)."""
        try:
            reply = protocol.decode(raw)
        except ValueError:
            raise ProtocolViolation(f"wrote a line on stdout that is not protocol JSON: {_preview(raw)}") from None
        if not isinstance(reply, dict):
            raise ProtocolViolation(f"wrote a JSON value that is not a message object: {_preview(raw)}")
        kind = reply.get("type")
        if kind == "ERROR":
            fatal = " (fatal)" if reply.get("fatal") else ""
            raise ProtocolViolation(f"reported ERROR{fatal} {reply.get('error')}: {reply.get('detail')}",
                                    ending=bool(reply.get("fatal")))
        if kind != expect:
            raise ProtocolViolation(f"answered {kind!r} out of protocol, expected {expect}: {_preview(raw)}")
        return reply

    def _reply_at(self, raw: bytes, expect: str, time_us: int) -> dict[str, Any]:
        reply = self.parse(raw, expect)
        if reply.get("time_us") != time_us:
            raise ProtocolViolation(f"answered {expect} for {reply.get('time_us')!r} us, expected {time_us} us")
        return reply

    def _promise(self, reply: Mapping[str, Any], time_us: int, kind: str) -> None:
        """Take the reply's ``next_us`` as the service's promise, checked."""
        self.next_us = reply.get("next_us")
        problem = protocol.check_promise(self.next_us, time_us, kind)
        if problem:
            raise ProtocolViolation(problem)


class ServiceNode:
    """Proxy for a service that speaks the protocol over ``transport``: moves the lines of its ``session`` (which
    makes and checks them), with the watchdog, and reports what goes wrong as a NodeFailure that names the
    request in flight, the exit code and the log's tail."""

    def __init__(self, node_id: str, transport: Transport, *, watchdog_s: float,
                 shutdown_grace_s: float = 10.0) -> None:
        self.id = node_id
        self.transport = transport
        self.watchdog_s = watchdog_s
        self.shutdown_grace_s = shutdown_grace_s
        self.session = ServiceSession(node_id)
        self._sent_at = 0.0
        self._init_us = 0  # the virtual time of the INIT in flight (0, or a restart's)
        self.round_trips_s: list[float] = []  # wall-clock ADVANCE->DONE, for metrics only

    @property
    def capabilities(self) -> Capabilities:
        return self.session.capabilities

    @property
    def info(self) -> Mapping[str, Any]:
        return self.session.info

    @property
    def next_us(self) -> int | None:
        return self.session.next_us

    @property
    def current_us(self) -> int:
        return self.session.current_us

    # -- protocol ---------------------------------------------------------------------------------

    def init(self, seed: int, config: Mapping[str, Any], endpoints: Mapping[str, Any], *, time_us: int = 0,
             restart: int | None = None) -> None:
        self.begin_init(seed, config, endpoints, time_us=time_us, restart=restart)
        self.end_init()

    def begin_init(self, seed: int, config: Mapping[str, Any], endpoints: Mapping[str, Any], *, time_us: int = 0,
                   restart: int | None = None) -> None:
        self._init_us = time_us
        self._send_line(self.session.init(seed, config, endpoints, time_us, restart))

    def end_init(self) -> None:
        self._check(self.session.ready, self._receive_line(), self._init_us)

    def join_barrier_group(self, members: list[str]) -> None:
        self.session.members = members

    # begin_advance and end_advance are the per-window hot path: _send_line and _receive_line inlined.

    def begin_advance(self, target_us: int, events: list[Input], peers: list[str] | None = None) -> None:
        line = self.session.advance(target_us, events, peers)
        self._sent_at = monotonic()
        try:
            self.transport.send(line)
        except TransportClosed:
            raise self._failure("is gone (its stdin is closed)", ending=True) from None

    def end_advance(self) -> list[Event]:
        try:
            raw = self.transport.receive(monotonic() + self.watchdog_s)
        except TransportTimeout:
            raise self._failure(f"did not answer within the {self.watchdog_s:g} s watchdog (hung?)") from None
        except TransportClosed as exc:
            raise self._failure(f"ended without answering ({exc})", ending=True) from None
        self.round_trips_s.append(monotonic() - self._sent_at)
        try:
            return self.session.done(raw)
        except ProtocolViolation as violation:
            raise self._failure(violation.problem, ending=violation.ending) from None

    def configure(self, time_us: int, config: Mapping[str, Any] | None = None,
                  endpoints: Mapping[str, Any] | None = None) -> None:
        """CONFIGURE at the start of a window (the service is at ``time_us``); it answers CONFIGURED."""
        self._send_line(self.session.configure(time_us, config, endpoints))
        self._check(self.session.configured, self._receive_line(), time_us)

    def snapshot(self) -> dict[str, Any]:
        """A checkpoint at a window boundary: SNAPSHOT, answered by SNAPSHOT_STATE with the service's state."""
        self._send_line(self.session.snapshot())
        state: dict[str, Any] = self._check(self.session.snapshot_state, self._receive_line())
        return state

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Resume from a checkpoint (right after INIT): RESTORE, answered by RESTORED; the clock is then there."""
        self._send_line(self.session.restore(saved))
        self._check(self.session.restored, self._receive_line(), saved)

    def crashed(self) -> None:
        """The schedule killed the service (the runtime closed its transport): nothing more is sent to it."""
        self.session.in_flight = None

    def restarted(self, transport: Transport, time_us: int, seed: int, config: Mapping[str, Any],
                  endpoints: Mapping[str, Any], restart: int) -> None:
        """A fresh process for the node: INIT again (same seed), resuming at ``time_us``."""
        self.transport = transport
        self.init(seed, config, endpoints, time_us=time_us, restart=restart)

    def shutdown(self) -> None:
        """Ask the service to flush and exit (``wait_closed`` then checks that it did)."""
        self._send_line(self.session.shutdown())

    def wait_closed(self) -> None:
        """A service that does not exit 0 within the grace period after SHUTDOWN is a failure."""
        code = self.transport.wait_exit(time.monotonic() + self.shutdown_grace_s)
        if code is None:
            raise self._failure(f"did not exit within {self.shutdown_grace_s:g} s of SHUTDOWN")
        if code != 0:
            raise self._failure(f"exited with code {code} after SHUTDOWN", exit_code=code)
        self.session.in_flight = None

    def close(self) -> None:
        self.transport.close(grace_s=0.5)

    # -- plumbing ---------------------------------------------------------------------------------

    def _check(self, check: Callable[..., Any], *args: Any) -> Any:
        """The session's check of a reply; a violation is the node's failure."""
        try:
            return check(*args)
        except ProtocolViolation as violation:
            raise self._failure(violation.problem, ending=violation.ending) from None

    def _send_line(self, line: bytes) -> None:
        try:
            self.transport.send(line)
        except TransportClosed:
            raise self._failure("is gone (its stdin is closed)", ending=True) from None

    def _receive_line(self) -> bytes:
        deadline = time.monotonic() + self.watchdog_s
        try:
            return self.transport.receive(deadline)
        except TransportTimeout:
            raise self._failure(f"did not answer within the {self.watchdog_s:g} s watchdog (hung?)") from None
        except TransportClosed as exc:
            raise self._failure(f"ended without answering ({exc})", ending=True) from None

    def _failure(self, problem: str, *, exit_code: int | None = None, ending: bool = False) -> NodeFailure:
        if exit_code is None:
            # A service that closed its stdout or sent a fatal ERROR is about to exit: give its code a moment
            # to appear. One that hangs or babbles is still running: don't wait for it.
            exit_code = self.transport.wait_exit(time.monotonic() + (1.0 if ending else 0.0))
        return NodeFailure(self.id, problem, in_flight=self.session.in_flight, exit_code=exit_code,
                           log_tail=self.transport.log_tail())


def _preview(raw: bytes, limit: int = 120) -> str:
    text = raw.decode("utf-8", errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


class InProcessModel:
    """What the in-process models share: no READY (their capabilities are fixed), no process (nothing to crash,
    shut down or measure), no barrier group. A model overrides ``begin_advance``/``end_advance`` and its state."""

    capabilities = MODEL_CAPABILITIES
    info: Mapping[str, Any] = {}
    round_trips_s: list[float] | None = None

    def __init__(self, node_id: str) -> None:
        self.id = node_id

    def begin_init(self, seed: int, config: Mapping[str, Any], endpoints: Mapping[str, Any]) -> None:
        pass

    def end_init(self) -> None:
        pass  # nothing to wait for

    def join_barrier_group(self, members: list[str]) -> None:
        pass  # in-process models declare no group

    def configure(self, time_us: int, config: Mapping[str, Any] | None = None,
                  endpoints: Mapping[str, Any] | None = None) -> None:
        pass  # takes no config (the loader refuses any key)

    @property
    def next_us(self) -> int | None:
        return None  # emits nothing on its own, unless the model says otherwise

    def crashed(self) -> None:
        raise NotImplementedError(f"{self.id}: an in-process model has no process to crash (the loader refuses it)")

    def restarted(self, transport: Transport, time_us: int, seed: int, config: Mapping[str, Any],
                  endpoints: Mapping[str, Any], restart: int) -> None:
        raise NotImplementedError(f"{self.id}: an in-process model has no process to restart (the loader refuses it)")

    def begin_advance(self, target_us: int, events: list[Input], peers: list[str] | None = None) -> None:
        raise NotImplementedError

    def end_advance(self) -> list[Event]:
        raise NotImplementedError

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def restore(self, saved: Mapping[str, Any]) -> None:
        raise NotImplementedError

    def shutdown(self) -> None:
        pass

    def wait_closed(self) -> None:
        pass

    def close(self) -> None:
        pass


class SensorModel(InProcessModel):
    """In-process sensor: a reading every period from its seeded generator, anomalies at set times. What a reading
    carries is its model's (``node.model``, a plug-in: cosim.plugins); the times and the ground truth are cosim's."""

    def __init__(self, node: SensorSpec) -> None:
        super().__init__(node.id)
        self.node = node
        self.reading = plugins.sensor_model(node.model).reading
        self.rng = random.Random(0)
        self._outputs: list[Event] = []
        self._window = 0  # index of the next reading

    def begin_init(self, seed: int, config: Mapping[str, Any], endpoints: Mapping[str, Any]) -> None:
        self.rng = random.Random(seed)

    def configure(self, time_us: int, config: Mapping[str, Any] | None = None,
                  endpoints: Mapping[str, Any] | None = None) -> None:
        """The schedule's keys for a sensor (checked by the loader): ``period_us`` spaces the readings from the
        next one on; ``event_type`` names what it emits."""
        config = config or {}
        if "period_us" in config:
            next_at = self.node.offset_us + self._window * self.node.period_us
            # Keep the window count: from the next reading on, readings are period_us apart.
            self.node = replace(self.node, period_us=config["period_us"],
                                offset_us=next_at - self._window * config["period_us"])
        if "event_type" in config:
            self.node = replace(self.node, event_type=config["event_type"])

    def snapshot(self) -> dict[str, Any]:
        """A checkpoint: the generator, the next reading's index, and what a reconfigure changed."""
        version, internal, gauss = self.rng.getstate()
        return {"rng": [version, list(internal), gauss], "window": self._window, "period_us": self.node.period_us,
                "offset_us": self.node.offset_us, "event_type": self.node.event_type}

    def restore(self, saved: Mapping[str, Any]) -> None:
        version, internal, gauss = saved["rng"]
        self.rng.setstate((version, tuple(internal), gauss))
        self._window = int(saved["window"])
        self.node = replace(self.node, period_us=int(saved["period_us"]), offset_us=int(saved["offset_us"]),
                            event_type=str(saved["event_type"]))

    def severity_at(self, time_us: int) -> float:
        anomaly = self.node.anomaly_at(time_us)
        return anomaly.severity if anomaly is not None else 0.0

    def begin_advance(self, target_us: int, events: list[Input], peers: list[str] | None = None) -> None:
        outputs: list[Event] = []
        while (at := self.node.offset_us + self._window * self.node.period_us) <= target_us:
            severity = self.severity_at(at)
            outputs.append({
                "type": self.node.event_type,
                "time_us": at,
                "data": {
                    "sensor": self.id,
                    "window": self._window,
                    "sampled_us": at,
                    **self.reading(self.rng, severity),
                    "truth": "anomaly" if severity > 0 else "normal",
                },
            })
            self._window += 1
        self._outputs = outputs

    @property
    def next_us(self) -> int:
        """The time of the next reading: exact, so the sensor is advanced only in windows where it samples."""
        return self.node.offset_us + self._window * self.node.period_us

    def end_advance(self) -> list[Event]:
        return self._outputs


class SinkModel(InProcessModel):
    """In-process sink: keeps every event that reaches it (the trace records them as delivered too)."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.received: list[Input] = []

    def snapshot(self) -> dict[str, Any]:
        return {"received": self.received}

    def restore(self, saved: Mapping[str, Any]) -> None:
        self.received = list(saved["received"])

    def begin_advance(self, target_us: int, events: list[Input], peers: list[str] | None = None) -> None:
        self.received.extend(events)

    def end_advance(self) -> list[Event]:
        return []
