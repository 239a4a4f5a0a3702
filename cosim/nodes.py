"""Node proxies: what the coordinator drives. One interface, three kinds behind it.

- ``ServiceNode`` speaks the JSON-lines protocol to a service through a Transport (a local subprocess or a
  container's attached stdio; it cannot tell which).
- ``SensorModel`` and ``SinkModel`` are in-process models of the device tier.

A step is split in two (``begin_advance`` sends, ``end_advance`` collects) so the coordinator can send
ADVANCE to every node before waiting for any DONE: services compute concurrently.
"""

from __future__ import annotations

import random
import time
from dataclasses import replace
from typing import Any, Mapping, Protocol

from cosim import plugins, protocol
from cosim.errors import NodeFailure
from cosim.model import SensorSpec
from cosim.transport import Transport, TransportClosed, TransportTimeout

Event = dict[str, Any]


class SimNode(Protocol):
    """What the coordinator drives: a service behind a transport or an in-process model."""

    id: str

    @property
    def info(self) -> Mapping[str, Any]:
        """What the node said about itself in READY (versions), for the trace header; empty for in-process models."""
        ...

    @property
    def barrier_group(self) -> str | None:
        """READY's ``barrier_group`` (services only): its ADVANCEs then name the peers advanced with it."""
        ...

    @property
    def publishes_on_input_only(self) -> bool:
        """READY's ``barrier_publishes == "on_input"``."""
        ...

    @property
    def round_trips_s(self) -> list[float] | None:
        """Wall-clock ADVANCE->DONE per step, for the metrics only; None for a node with nothing to measure."""
        ...

    @property
    def next_event(self) -> bool:
        """The node says when it next needs time (READY's ``next_event``; the in-process models always do): it
        is then advanced only in windows with input for it or its promised wake-up. False: every quantum."""
        ...

    @property
    def next_us(self) -> int | None:
        """After ``end_advance``: the node's promise, the earliest time after the window at which it will emit
        something on its own (a timer, a held output, a sensor's next sample); None: only in response to input."""
        ...

    def init(self, seed: int, config: Mapping[str, Any], endpoints: Mapping[str, Any]) -> None: ...

    def join_barrier_group(self, members: list[str]) -> None:
        """The whole group (sorted) of the ``barrier_group`` the node declared; called once, after every INIT."""
        ...

    def begin_advance(self, target_us: int, events: list[Event], peers: list[str] | None = None) -> None:
        """Start advancing to ``target_us``; ``peers``: the members of the node's barrier group advanced too."""
        ...

    def end_advance(self) -> list[Event]:
        """The events produced in the window just advanced, each with ``type``, ``time_us`` and ``data``."""
        ...

    def configure(self, time_us: int, config: Mapping[str, Any] | None = None,
                  endpoints: Mapping[str, Any] | None = None) -> None:
        """The schedule's reconfigure (keys to change), or endpoints that went away (None) or came back."""
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


class ServiceNode:
    """Proxy for a service that speaks the protocol over ``transport``."""

    def __init__(self, node_id: str, transport: Transport, *, watchdog_s: float, shutdown_grace_s: float = 10.0) -> None:
        self.id = node_id
        self.transport = transport
        self.watchdog_s = watchdog_s
        self.shutdown_grace_s = shutdown_grace_s
        self.current_us = 0
        self._in_flight: str | None = None
        self._target_us = 0
        self._sent_at = 0.0
        self.round_trips_s: list[float] = []  # wall-clock ADVANCE->DONE, for metrics only
        self.info: dict[str, Any] = {}  # what READY said about the service (versions), for the manifest
        self.barrier_group: str | None = None  # READY's barrier_group: its ADVANCEs then name the peers
        self.publishes_on_input_only = False  # READY's barrier_publishes == "on_input"
        self.members: list[str] | None = None  # the whole group, sent once, in the first ADVANCE
        self.capabilities: frozenset[str] = frozenset()  # READY's capabilities (e.g. "configure")
        self.next_event = False  # READY's next_event: its DONEs carry next_us, a promise the coordinator checks
        self.next_us: int | None = None  # the promise of the latest DONE

    # -- protocol ---------------------------------------------------------------------------------

    def init(self, seed: int, config: Mapping[str, Any], endpoints: Mapping[str, Any], *, time_us: int = 0,
             restart: int | None = None) -> None:
        self._send(protocol.init_message(self.id, seed, config, endpoints, time_us=time_us, restart=restart),
                   "INIT" if restart is None else f"INIT (restart {restart} at {time_us} us)")
        reply = self._receive(expect="READY")
        capabilities = reply.get("capabilities", [])
        if not isinstance(capabilities, list) or not all(isinstance(c, str) for c in capabilities):
            raise self._failure(f"answered READY with capabilities {capabilities!r}; expected a list of strings")
        self.capabilities = frozenset(capabilities)
        info = reply.get("info")
        self.info = info if isinstance(info, dict) else {}
        group = reply.get("barrier_group")
        if group is not None and not isinstance(group, str):
            raise self._failure(f"answered READY with barrier_group {group!r}; expected a string")
        publishes = reply.get("barrier_publishes", "always")
        if publishes not in ("always", "on_input"):
            raise self._failure(f"answered READY with barrier_publishes {publishes!r}; expected 'always' or 'on_input'")
        next_event = reply.get("next_event", False)
        if not isinstance(next_event, bool):
            raise self._failure(f"answered READY with next_event {next_event!r}; expected true or false")
        self.barrier_group = group
        self.publishes_on_input_only = publishes == "on_input"
        self.next_event = next_event
        if next_event:  # its first promise: nothing before then, unless an input comes
            self.next_us = reply.get("next_us")
            problem = protocol.check_promise(self.next_us, time_us, "READY")
            if problem:
                raise self._failure(problem)
        if reply.get("protocol") != protocol.VERSION:
            raise self._failure(f"answered READY for protocol {reply.get('protocol')!r}; cosim speaks {protocol.VERSION}")

    def join_barrier_group(self, members: list[str]) -> None:
        self.members = members

    def begin_advance(self, target_us: int, events: list[Event], peers: list[str] | None = None) -> None:
        self._target_us = target_us
        self._sent_at = time.monotonic()
        if self.barrier_group is None:
            line = protocol.encode_advance(target_us, events)
        else:
            line = protocol.encode_advance(target_us, events, peers or [], self.members)
            self.members = None
        self._send_line(line, f"ADVANCE to {target_us} us")

    def end_advance(self) -> list[Event]:
        raw = self._receive_line()
        self.round_trips_s.append(time.monotonic() - self._sent_at)
        if raw == protocol.empty_done(self._target_us):
            reply: dict[str, Any] = {"time_us": self._target_us, "events": []}  # most windows: nothing to parse
        elif self.next_event and (promise := protocol.empty_done_promise(raw, self._target_us)) is not None:
            reply = {"time_us": self._target_us, "events": [], "next_us": promise}  # nothing but a promise
        else:
            reply = self._parse(raw, expect="DONE")
        if reply.get("time_us") != self._target_us:
            raise self._failure(f"answered DONE for {reply.get('time_us')!r} us, expected {self._target_us} us")
        problem = protocol.check_outputs(reply.get("events"), self.current_us, self._target_us)
        if problem:
            raise self._failure(problem)
        if self.next_event:
            self.next_us = reply.get("next_us")
            problem = protocol.check_promise(self.next_us, self._target_us)
            if problem:
                raise self._failure(problem)
        self.current_us = self._target_us
        self._in_flight = None
        return reply["events"]

    def configure(self, time_us: int, config: Mapping[str, Any] | None = None,
                  endpoints: Mapping[str, Any] | None = None) -> None:
        """CONFIGURE at the start of a window (the service is at ``time_us``); it answers CONFIGURED."""
        self._send(protocol.configure_message(time_us, config, endpoints), f"CONFIGURE at {time_us} us")
        reply = self._receive(expect="CONFIGURED")
        if reply.get("time_us") != time_us:
            raise self._failure(f"answered CONFIGURED for {reply.get('time_us')!r} us, expected {time_us} us")
        self.current_us = time_us  # it had nothing to do before then; the change applies from this window on
        if self.next_event:  # the change may move its promise (e.g. a new timer period)
            self.next_us = reply.get("next_us")
            problem = protocol.check_promise(self.next_us, time_us, "CONFIGURED")
            if problem:
                raise self._failure(problem)
        self._in_flight = None

    def snapshot(self) -> dict[str, Any]:
        """A checkpoint at a window boundary: SNAPSHOT, answered by SNAPSHOT_STATE with the service's state."""
        self._send(protocol.snapshot_message(self.current_us), f"SNAPSHOT at {self.current_us} us")
        reply = self._receive(expect="SNAPSHOT_STATE")
        state = reply.get("state")
        if reply.get("time_us") != self.current_us or not isinstance(state, dict):
            raise self._failure(f"answered SNAPSHOT_STATE for {reply.get('time_us')!r} us with {type(state).__name__}; "
                                f"expected {self.current_us} us and a state object")
        self._in_flight = None
        return {"current_us": self.current_us, "next_us": self.next_us, "service": state}

    def restore(self, saved: Mapping[str, Any]) -> None:
        """Resume from a checkpoint (right after INIT): RESTORE, answered by RESTORED; the clock is then there."""
        time_us = int(saved["current_us"])
        self._send(protocol.restore_message(time_us, saved["service"]), f"RESTORE at {time_us} us")
        reply = self._receive(expect="RESTORED")
        if reply.get("time_us") != time_us:
            raise self._failure(f"answered RESTORED for {reply.get('time_us')!r} us, expected {time_us} us")
        self.current_us = time_us
        self.next_us = saved.get("next_us")  # the promise it had made (next-event); the coordinator holds it to it
        self._in_flight = None

    def crashed(self) -> None:
        """The schedule killed the service (the runtime closed its transport): nothing more is sent to it."""
        self._in_flight = None

    def restarted(self, transport: Transport, time_us: int, seed: int, config: Mapping[str, Any],
                  endpoints: Mapping[str, Any], restart: int) -> None:
        """A fresh process for the node: INIT again (same seed), resuming at ``time_us``."""
        self.transport = transport
        self.current_us = time_us
        self.init(seed, config, endpoints, time_us=time_us, restart=restart)
        self._in_flight = None

    def shutdown(self) -> None:
        """Ask the service to flush and exit (``wait_closed`` then checks that it did)."""
        self._send(protocol.SHUTDOWN, "SHUTDOWN")

    def wait_closed(self) -> None:
        """A service that does not exit 0 within the grace period after SHUTDOWN is a failure."""
        code = self.transport.wait_exit(time.monotonic() + self.shutdown_grace_s)
        if code is None:
            raise self._failure(f"did not exit within {self.shutdown_grace_s:g} s of SHUTDOWN")
        if code != 0:
            raise self._failure(f"exited with code {code} after SHUTDOWN", exit_code=code)
        self._in_flight = None

    def close(self) -> None:
        self.transport.close(grace_s=0.5)

    # -- plumbing ---------------------------------------------------------------------------------

    def _send(self, message: Mapping[str, Any], what: str) -> None:
        self._send_line(protocol.encode(message), what)

    def _send_line(self, line: bytes, what: str) -> None:
        self._in_flight = what
        try:
            self.transport.send(line)
        except TransportClosed:
            raise self._failure("is gone (its stdin is closed)", ending=True) from None

    def _receive(self, *, expect: str) -> dict[str, Any]:
        return self._parse(self._receive_line(), expect=expect)

    def _receive_line(self) -> bytes:
        deadline = time.monotonic() + self.watchdog_s
        try:
            return self.transport.receive(deadline)
        except TransportTimeout:
            raise self._failure(f"did not answer within the {self.watchdog_s:g} s watchdog (hung?)") from None
        except TransportClosed as exc:
            raise self._failure(f"ended without answering ({exc})", ending=True) from None

    def _parse(self, raw: bytes, *, expect: str) -> dict[str, Any]:
        try:
            reply = protocol.decode(raw)
        except ValueError:
            raise self._failure(f"wrote a line on stdout that is not protocol JSON: {_preview(raw)}") from None
        if not isinstance(reply, dict):
            raise self._failure(f"wrote a JSON value that is not a message object: {_preview(raw)}")
        kind = reply.get("type")
        if kind == "ERROR":
            fatal = " (fatal)" if reply.get("fatal") else ""
            raise self._failure(f"reported ERROR{fatal} {reply.get('error')}: {reply.get('detail')}",
                                ending=bool(reply.get("fatal")))
        if kind != expect:
            raise self._failure(f"answered {kind!r} out of protocol, expected {expect}: {_preview(raw)}")
        return reply

    def _failure(self, problem: str, *, exit_code: int | None = None, ending: bool = False) -> NodeFailure:
        if exit_code is None:
            # A service that closed its stdout or sent a fatal ERROR is about to exit: give its code a moment
            # to appear. One that hangs or babbles is still running: don't wait for it.
            exit_code = self.transport.wait_exit(time.monotonic() + (1.0 if ending else 0.0))
        return NodeFailure(self.id, problem, in_flight=self._in_flight, exit_code=exit_code,
                           log_tail=self.transport.log_tail())


def _preview(raw: bytes, limit: int = 120) -> str:
    text = raw.decode("utf-8", errors="replace")
    return repr(text if len(text) <= limit else text[:limit] + "...")


class SensorModel:
    """In-process sensor: a reading every period from its seeded generator, anomalies at set times. What a reading
    carries is its model's (``node.model``, a plug-in: cosim.plugins); the times and the ground truth are cosim's."""

    def __init__(self, node: SensorSpec) -> None:
        self.id = node.id
        self.node = node
        self.info: Mapping[str, Any] = {}
        self.barrier_group: str | None = None
        self.publishes_on_input_only = False
        self.round_trips_s: list[float] | None = None
        self.reading = plugins.sensor_model(node.model).reading
        self.next_event = True
        self.rng = random.Random(0)
        self._outputs: list[Event] = []
        self._window = 0  # index of the next reading

    def init(self, seed: int, config: Mapping[str, Any], endpoints: Mapping[str, Any]) -> None:
        self.rng = random.Random(seed)

    def join_barrier_group(self, members: list[str]) -> None:
        pass  # in-process models declare no group

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

    def begin_advance(self, target_us: int, events: list[Event], peers: list[str] | None = None) -> None:
        outputs = []
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

    def shutdown(self) -> None:
        pass

    def wait_closed(self) -> None:
        pass

    def close(self) -> None:
        pass


class SinkModel:
    """In-process sink: keeps every event that reaches it (the trace records them as delivered too)."""

    def __init__(self, node_id: str) -> None:
        self.id = node_id
        self.received: list[Event] = []
        self.info: Mapping[str, Any] = {}
        self.barrier_group: str | None = None
        self.publishes_on_input_only = False
        self.round_trips_s: list[float] | None = None
        self.next_event = True
        self.next_us: int | None = None  # a sink never emits

    def init(self, seed: int, config: Mapping[str, Any], endpoints: Mapping[str, Any]) -> None:
        pass

    def join_barrier_group(self, members: list[str]) -> None:
        pass  # in-process models declare no group

    def configure(self, time_us: int, config: Mapping[str, Any] | None = None,
                  endpoints: Mapping[str, Any] | None = None) -> None:
        pass  # a sink takes no config (the loader refuses any key)

    def snapshot(self) -> dict[str, Any]:
        return {"received": self.received}

    def restore(self, saved: Mapping[str, Any]) -> None:
        self.received = list(saved["received"])

    def begin_advance(self, target_us: int, events: list[Event], peers: list[str] | None = None) -> None:
        self.received.extend(events)

    def end_advance(self) -> list[Event]:
        return []

    def shutdown(self) -> None:
        pass

    def wait_closed(self) -> None:
        pass

    def close(self) -> None:
        pass
