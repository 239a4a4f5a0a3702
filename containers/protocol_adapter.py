"""cosim protocol adapter: run a service in virtual time over JSON lines on stdin/stdout.

One stdlib-only file that any image can copy next to its service. The service supplies a callback
``callback(current_time, target_time, events) -> events``; the adapter owns the protocol:

    coordinator -> service              service -> coordinator
    INIT{protocol, time_us: 0, node_id,  READY{protocol, time_us: 0, capabilities}
         seed, config, endpoints}
    ADVANCE{time_us, events}             DONE{time_us, events}
    CONFIGURE{time_us, config?,          CONFIGURED{time_us}   (only to a service with on_configure)
              endpoints?}
    SNAPSHOT{time_us}                    SNAPSHOT_STATE{time_us, state}  (only to a service with on_snapshot)
    RESTORE{time_us, state}              RESTORED{time_us}     (after INIT; a checkpoint's resume)
    SHUTDOWN                             (flushes, exits 0; no reply)
                                         ERROR{error, detail, fatal}   on anything wrong

Input events lie in the window (current_time, target_time] and reach the callback in time order.
Output events are stamped after current_time (an event without ``time_us`` gets ``target_time``); one
stamped beyond target_time (a modelled processing delay) is held by the adapter and sent in the DONE
of the window that contains its time, so every DONE carries only events inside its window.
stdout carries protocol messages only; logging goes to stderr.

Errors the service survives (fatal: false; state unchanged): a malformed or non-UTF-8 line, a message
that is not an object or lacks ``type``, an unknown type, an INIT without ``protocol`` or with fields of
the wrong type, ADVANCE before INIT, a second INIT, a target time that goes backwards, a malformed input
event, an input event outside its window. Errors that end it (fatal: true, exit code 1): a protocol
version it does not speak, an exception raised by the callback or the init hook, and output events that
are malformed, contain NaN/Infinity, or are stamped at or before current_time.

``on_init(message)`` may return a mapping; READY carries it as ``info`` (library versions and the like,
recorded in the run's manifest, never in the simulation). ``barrier_group()`` (called after ``on_init``) may
name a barrier group (e.g. the MQTT broker's node id); READY then declares it (with ``barrier_publishes``:
"always", or "on_input" for a service that publishes to its group only in windows with input events), every
ADVANCE carries ``peers`` (the members that may publish in that window), the first one also ``members`` (the
whole group), and the callback gets both as keywords (``members``: the latest list received).
``on_configure(message)`` (optional; READY then declares the capability "configure") takes CONFIGURE, sent at the
start of a window (its ``time_us``, the window's start, is not before the service's current time): ``config`` holds the keys to change (the
adapter merges them into ``self.config``: top-level keys replace, others stay), ``endpoints`` the endpoints that
changed (null: that infrastructure node is gone until it comes back). The hook should check before it changes
anything: an exception is answered with a non-fatal ERROR (``configure_failed``), which fails the run.
A node restarted by the schedule gets INIT again (same seed) with ``time_us`` the time it resumes at and
``restart`` (1, 2, ...): the adapter starts its clock there.
``on_snapshot() -> JSON-able`` and ``on_restore(state)`` (both given: READY declares the capability "snapshot")
serve checkpoints: SNAPSHOT{time_us} at a window boundary is answered by SNAPSHOT_STATE{time_us, state} (the
adapter's own state, its held outputs, config and clock, around the service's), and RESTORE{time_us, state}
right after INIT (of a fresh process) puts it back and sets the clock to ``time_us``: answered by RESTORED.

Next-event time advance (negotiated): a service created with ``next_event=True`` or a ``wakeup`` hook declares
``next_event`` in READY, and every DONE then carries ``next_us``, the earliest virtual time after the window at
which the service will emit something on its own. The adapter computes it: the earliest of its held outputs and
of ``wakeup(target_time)`` (the service's own timers; None: none). The coordinator may then skip the windows in
between: the next ADVANCE may jump straight to the window of the next input or of that time. Without a promise
the service answers only to input. The promise is checked: an output before it that no input explains fails
the run. See docs/protocol.md for the full specification.
"""

from __future__ import annotations

import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping
from typing import IO, Any

PROTOCOL_VERSION = 1

Event = dict[str, Any]
Callback = Callable[[int, int, list[Event]], Iterable[Event]]
InitHook = Callable[[Mapping[str, Any]], "Mapping[str, Any] | None"]  # may return READY's `info`
ShutdownHook = Callable[[], None]
GroupHook = Callable[[], "str | None"]  # the barrier group this service joins, if any
ConfigureHook = Callable[[Mapping[str, Any]], None]  # takes CONFIGURE (new config keys, changed endpoints)
WakeupHook = Callable[[int], "int | None"]  # after a window ending at target: the next own output time, or None
SnapshotHook = Callable[[], Any]  # the service's state at a window boundary, JSON-able
RestoreHook = Callable[[Any], None]  # takes what on_snapshot returned (in a fresh process, after INIT)

log = logging.getLogger("cosim.adapter")


class ProtocolError(Exception):
    """A message the adapter answers with ERROR."""

    def __init__(self, error: str, detail: str, fatal: bool = False) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail
        self.fatal = fatal


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


_EMPTY_DONE = '{"events":[],"time_us":%d,"type":"DONE"}\n'
_PROMISE_DONE = '{"events":[],"next_us":%d,"time_us":%d,"type":"DONE"}\n'


# The C encoder behind _ENCODER, built once: JSONEncoder.encode builds a new one on every call, which costs as much
# as encoding a DONE of a few events. Same options, same bytes; no circular-reference markers (a cycle is a
# RecursionError, reported like NaN).
_C_ENCODE = (json.encoder.c_make_encoder(None, _ENCODER.default, json.encoder.encode_basestring, None, ":", ",",
                                         True, False, False)
             if json.encoder.c_make_encoder is not None else None)


def encode(message: Mapping[str, Any]) -> str:
    """One canonical JSON line (sorted keys, no spaces), newline-terminated. NaN/Infinity are refused."""
    if _C_ENCODE is None:
        return _ENCODER.encode(message) + "\n"
    return "".join(_C_ENCODE(message, 0)) + "\n"


class CoordinatorProtocolAdapter:
    """Drives ``callback`` in virtual time on behalf of the coordinator."""

    def __init__(
        self,
        callback: Callback,
        *,
        on_init: InitHook | None = None,
        on_shutdown: ShutdownHook | None = None,
        capabilities: Iterable[str] = (),
        barrier_group: GroupHook | None = None,
        barrier_publishes: str = "always",
        on_configure: ConfigureHook | None = None,
        next_event: bool = False,
        wakeup: WakeupHook | None = None,
        on_snapshot: SnapshotHook | None = None,
        on_restore: RestoreHook | None = None,
    ) -> None:
        self.callback = callback
        self.on_configure = on_configure
        if on_configure is not None:
            capabilities = [*capabilities, "configure"]
        self.next_event = next_event or wakeup is not None  # DONE carries next_us (READY says so)
        self.wakeup = wakeup
        self.on_snapshot = on_snapshot
        self.on_restore = on_restore
        if on_snapshot is not None and on_restore is not None:
            capabilities = [*capabilities, "snapshot"]
        self.barrier_publishes = barrier_publishes
        self.barrier_group_hook = barrier_group
        self.barrier_group: str | None = None
        self.members: list[str] = []  # the whole barrier group, from the first ADVANCE
        self.on_init = on_init
        self.on_shutdown = on_shutdown
        self.capabilities = sorted(set(capabilities))
        self.current_time_us = 0
        self.initialized = False
        self.node_id: str | None = None
        self.seed: int | None = None
        self.config: dict[str, Any] = {}
        self.endpoints: dict[str, Any] = {}
        self.exit_code: int | None = None  # set when the adapter must stop
        self._held: list[Event] = []  # outputs stamped beyond the window they were produced in

    # -- message handling (pure: one message in, one reply or None out) ---------------------------

    def handle_line(self, line: str) -> dict[str, Any] | None:
        """Parse one input line and handle it; malformed input becomes an ERROR reply."""
        try:
            message = json.loads(line)
        except ValueError as exc:
            return self._error(ProtocolError("bad_json", f"line is not JSON ({exc.msg} at column {exc.colno})"))
        return self.handle(message)

    def handle(self, message: Any) -> dict[str, Any] | None:
        """Handle one decoded message; return the reply (None for SHUTDOWN)."""
        try:
            if not isinstance(message, dict):
                raise ProtocolError("bad_message", f"expected a JSON object, got {type(message).__name__}")
            kind = message.get("type")
            if kind == "INIT":
                return self._handle_init(message)
            if kind == "ADVANCE":
                return self._handle_advance(message)
            if kind == "CONFIGURE":
                return self._handle_configure(message)
            if kind == "SNAPSHOT":
                return self._handle_snapshot(message)
            if kind == "RESTORE":
                return self._handle_restore(message)
            if kind == "SHUTDOWN":
                self._handle_shutdown()
                return None
            if kind is None:
                raise ProtocolError("bad_message", "message has no 'type' field")
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}; expected INIT, ADVANCE, CONFIGURE, "
                                                 f"SNAPSHOT, RESTORE or SHUTDOWN")
        except ProtocolError as exc:
            return self._error(exc)

    def _handle_init(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.initialized:
            raise ProtocolError("already_initialized", "INIT received twice")
        if "protocol" not in message:
            raise ProtocolError("bad_message", "INIT has no 'protocol' field")
        version = message["protocol"]
        if version != PROTOCOL_VERSION:
            raise ProtocolError(
                "protocol_version", f"coordinator speaks protocol {version!r}, this adapter speaks {PROTOCOL_VERSION}",
                fatal=True,
            )
        time_us = message.get("time_us", 0)
        restart = message.get("restart")
        if restart is None and time_us != 0:
            raise ProtocolError("bad_message", f"INIT time_us must be 0, got {time_us!r}")
        if restart is not None and not (_is_int(restart) and restart >= 1 and _is_int(time_us) and time_us >= 0):
            raise ProtocolError("bad_message", f"INIT of a restart needs restart >= 1 and time_us >= 0 (integers), "
                                               f"got restart {restart!r}, time_us {time_us!r}")
        config = message.get("config", {})
        if not isinstance(config, dict):
            raise ProtocolError("bad_message", f"INIT config must be an object, got {type(config).__name__}")
        for name, kind, expected in (("node_id", str, "a string"), ("seed", int, "an integer"),
                                     ("endpoints", dict, "an object")):
            if name in message and (not isinstance(message[name], kind) or isinstance(message[name], bool)):
                raise ProtocolError("bad_message", f"INIT {name} must be {expected}, got {message[name]!r}")
        self.node_id = message.get("node_id")
        self.seed = message.get("seed")
        self.config = dict(config)  # copies: CONFIGURE merges into them
        self.endpoints = dict(message.get("endpoints", {}))
        info: Mapping[str, Any] | None = None
        if self.on_init is not None:
            try:
                info = self.on_init(message)
            except Exception as exc:  # the service could not start: report it, then end
                raise ProtocolError("init_failed", _describe_exception(exc), fatal=True) from exc
        if self.barrier_group_hook is not None:
            try:
                self.barrier_group = self.barrier_group_hook()
            except Exception as exc:
                raise ProtocolError("init_failed", _describe_exception(exc), fatal=True) from exc
        self.initialized = True
        self.current_time_us = time_us  # 0, or where a restarted node resumes
        ready = {"type": "READY", "time_us": 0, "protocol": PROTOCOL_VERSION, "capabilities": self.capabilities}
        if self.barrier_group is not None:
            ready["barrier_group"] = self.barrier_group
            ready["barrier_publishes"] = self.barrier_publishes
        if self.next_event:
            ready["next_event"] = True
            promise = self._promise(time_us)  # the first time it acts on its own (e.g. its first timer)
            if promise is not None:
                ready["next_us"] = promise
        if info:
            ready["info"] = dict(info)  # e.g. library versions, for the run's manifest (never in the trace)
        return ready

    def _handle_advance(self, message: dict[str, Any]) -> dict[str, Any]:
        if not self.initialized:
            raise ProtocolError("not_initialized", "ADVANCE received before INIT")
        target = message.get("time_us")
        if not _is_int(target):
            raise ProtocolError("bad_message", f"ADVANCE time_us must be an integer, got {target!r}")
        if target < self.current_time_us:
            raise ProtocolError(
                "time_backwards", f"ADVANCE to {target} us but the service is already at {self.current_time_us} us"
            )
        events = message.get("events", [])
        if not isinstance(events, list):
            raise ProtocolError("bad_message", f"ADVANCE events must be a list, got {type(events).__name__}")
        for index, event in enumerate(events):
            if not isinstance(event, dict) or not _is_int(event.get("time_us")):
                raise ProtocolError("bad_event", f"events[{index}] must be an object with an integer time_us")
            if not self.current_time_us < event["time_us"] <= target:
                raise ProtocolError(
                    "event_outside_window",
                    f"events[{index}] at {event['time_us']} us lies outside the window "
                    f"({self.current_time_us}, {target}]",
                )
        peers, members = message.get("peers"), message.get("members", self.members)
        for name, ids in (("peers", peers), ("members", members)):
            if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
                raise ProtocolError("bad_message", f"ADVANCE {name} must be a list of node ids, got {ids!r}")
        ordered = sorted(events, key=_event_time) if events else events  # stable: keeps same-time order
        try:
            if self.barrier_group is not None:
                self.members = members
                produced = list(self.callback(self.current_time_us, target, ordered,  # type: ignore[call-arg]
                                              peers=peers, members=members) or [])
            else:
                produced = list(self.callback(self.current_time_us, target, ordered) or [])
        except Exception as exc:
            raise ProtocolError("callback_failed", _describe_exception(exc), fatal=True) from exc
        stamped, beyond = self._stamp(produced, target)
        if self._held or beyond:
            stamped = self._held + stamped
            outputs = [event for event in stamped if event["time_us"] <= target]
            self._held = [event for event in stamped if event["time_us"] > target]
        else:  # nothing held, nothing to hold (most windows)
            outputs = stamped
        self.current_time_us = target
        done = {"type": "DONE", "time_us": target, "events": outputs}
        if self.next_event:
            promise = self._promise(target)
            if promise is not None:
                done["next_us"] = promise
        return done

    def _promise(self, target: int) -> int | None:
        """The earliest time after ``target`` at which this service emits on its own: a held output or a wake-up."""
        times = [event["time_us"] for event in self._held]
        if self.wakeup is not None:
            try:
                wake = self.wakeup(target)
            except Exception as exc:
                raise ProtocolError("callback_failed", _describe_exception(exc), fatal=True) from exc
            if wake is not None:
                if not _is_int(wake) or wake <= target:
                    raise ProtocolError("bad_wakeup", f"wake-up time {wake!r} is not an integer after the window "
                                                      f"end {target} us", fatal=True)
                times.append(wake)
        return min(times) if times else None

    def _handle_configure(self, message: dict[str, Any]) -> dict[str, Any]:
        if not self.initialized:
            raise ProtocolError("not_initialized", "CONFIGURE received before INIT")
        if self.on_configure is None:
            raise ProtocolError("unsupported", "this service takes no CONFIGURE (it did not declare 'configure')")
        time_us = message.get("time_us")
        if not _is_int(time_us) or time_us < self.current_time_us:
            raise ProtocolError("bad_message", f"CONFIGURE time_us must be an integer not before the service's "
                                               f"current time {self.current_time_us} us, got {time_us!r}")
        for name in ("config", "endpoints"):
            if not isinstance(message.get(name, {}), dict):
                raise ProtocolError("bad_message", f"CONFIGURE {name} must be an object, got {message[name]!r}")
        try:
            self.on_configure(message)
        except Exception as exc:  # e.g. an unknown or invalid key: the run fails with the service's words
            raise ProtocolError("configure_failed", _describe_exception(exc)) from exc
        self.config.update(message.get("config", {}))
        self.endpoints.update(message.get("endpoints", {}))
        # The service had nothing to do between its clock and time_us (else it would have been advanced), so its
        # clock moves there: the change applies from that window on, as in a run that steps it every quantum.
        self.current_time_us = time_us
        configured = {"type": "CONFIGURED", "time_us": time_us}
        if self.next_event:  # the change may move its next own output (e.g. a new timer period)
            promise = self._promise(time_us)
            if promise is not None:
                configured["next_us"] = promise
        return configured

    def _snapshot_hooks(self, kind: str) -> None:
        if not self.initialized:
            raise ProtocolError("not_initialized", f"{kind} received before INIT")
        if self.on_snapshot is None or self.on_restore is None:
            raise ProtocolError("unsupported", f"this service takes no {kind} (it did not declare 'snapshot')")

    def _handle_snapshot(self, message: dict[str, Any]) -> dict[str, Any]:
        self._snapshot_hooks("SNAPSHOT")
        time_us = message.get("time_us")
        if time_us != self.current_time_us:
            raise ProtocolError("bad_message", f"SNAPSHOT time_us must be the service's current time "
                                               f"{self.current_time_us} us, got {time_us!r}")
        try:
            service = self.on_snapshot()  # type: ignore[misc]
            state = {"held": self._held, "members": self.members, "config": self.config,
                     "endpoints": self.endpoints, "service": service}
            encode(state)  # JSON-able, without NaN: checked here, so the failure names the hook
        except Exception as exc:
            raise ProtocolError("snapshot_failed", _describe_exception(exc)) from exc
        return {"type": "SNAPSHOT_STATE", "time_us": time_us, "state": state}

    def _handle_restore(self, message: dict[str, Any]) -> dict[str, Any]:
        self._snapshot_hooks("RESTORE")
        time_us, state = message.get("time_us"), message.get("state")
        if not _is_int(time_us) or time_us < 0 or not isinstance(state, dict):
            raise ProtocolError("bad_message", f"RESTORE needs an integer time_us >= 0 and a state object, "
                                               f"got time_us {time_us!r}")
        try:
            self.on_restore(state.get("service"))  # type: ignore[misc]
        except Exception as exc:
            raise ProtocolError("restore_failed", _describe_exception(exc), fatal=True) from exc
        self._held = list(state.get("held") or [])
        self.members = list(state.get("members") or [])
        self.config = dict(state.get("config") or self.config)
        self.endpoints = dict(state.get("endpoints") or self.endpoints)
        self.current_time_us = time_us
        return {"type": "RESTORED", "time_us": time_us}

    def _stamp(self, produced: list[Any], target: int) -> tuple[list[Event], bool]:
        """The callback's outputs, copied (the callback may reuse its objects), each checked and stamped (default: the
        window end); and whether any is stamped after the window (to be held)."""
        current, stamped, beyond = self.current_time_us, [], False
        for index, event in enumerate(produced):
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise ProtocolError("bad_output", f"output events[{index}] must be an object with a string 'type'",
                                    fatal=True)
            event = dict(event)
            time_us = event.setdefault("time_us", target)
            if not _is_int(time_us) or time_us <= current:
                raise ProtocolError(
                    "bad_output",
                    f"output events[{index}] stamped at {time_us!r} us, not after the window start {current} us",
                    fatal=True,
                )
            beyond = beyond or time_us > target
            stamped.append(event)
        return stamped, beyond

    def _handle_shutdown(self) -> None:
        if self._held:
            log.info("%d output event(s) stamped after the last window were not delivered", len(self._held))
        if self.on_shutdown is not None:
            self.on_shutdown()
        self.exit_code = 0

    def _error(self, exc: ProtocolError) -> dict[str, Any]:
        log.error("%s: %s", exc.error, exc.detail)
        if exc.fatal:
            self.exit_code = 1
        return {"type": "ERROR", "error": exc.error, "detail": exc.detail, "fatal": exc.fatal}

    # -- the loop ---------------------------------------------------------------------------------

    def run(self, stdin: IO[Any] | None = None, stdout: IO[Any] | None = None) -> int:
        """Serve until SHUTDOWN, a fatal error or end of input; return the exit code.

        ``stdin``/``stdout`` may be text or binary streams; binary lines are decoded as strict UTF-8.
        """
        stdin = stdin if stdin is not None else sys.stdin
        stdout = stdout if stdout is not None else sys.stdout
        binary_out = "b" in getattr(stdout, "mode", "")
        while self.exit_code is None:
            raw = stdin.readline()
            if not raw:
                log.warning("stdin closed without SHUTDOWN; exiting")
                self._handle_shutdown()
                break
            if not raw.strip():
                continue
            reply = self._reply_to(raw)
            if reply is not None:
                try:
                    # Most windows produce nothing: their DONE is formatted directly (canonical, and cheaper).
                    text = (encode(reply) if reply["type"] != "DONE" or reply["events"]
                            else _EMPTY_DONE % reply["time_us"] if "next_us" not in reply
                            else _PROMISE_DONE % (reply["next_us"], reply["time_us"]))
                except (ValueError, RecursionError):  # NaN or Infinity (or a cycle) in the callback's events: not JSON
                    text = encode(self._error(ProtocolError(
                        "bad_output", "output events contain NaN or Infinity, which JSON cannot carry", fatal=True)))
                stdout.write(text.encode("utf-8") if binary_out else text)
                stdout.flush()
        return self.exit_code if self.exit_code is not None else 0

    def _reply_to(self, raw: str | bytes) -> dict[str, Any] | None:
        if isinstance(raw, bytes):
            try:
                raw = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                return self._error(ProtocolError("bad_json", f"line is not UTF-8 (byte {exc.start})"))
        return self.handle_line(raw)


def _event_time(event: Event) -> int:
    return event["time_us"]


def _describe_exception(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def serve(
    callback: Callback,
    *,
    on_init: InitHook | None = None,
    on_shutdown: ShutdownHook | None = None,
    capabilities: Iterable[str] = (),
    barrier_group: GroupHook | None = None,
    barrier_publishes: str = "always",
    on_configure: ConfigureHook | None = None,
    next_event: bool = False,
    wakeup: WakeupHook | None = None,
    on_snapshot: SnapshotHook | None = None,
    on_restore: RestoreHook | None = None,
) -> None:
    """Entry point for a service's ``__main__``: log to stderr, serve stdin/stdout, exit with the code.

    ``next_event=True``: the service emits only in response to input (and its held outputs); ``wakeup``: it also
    emits on its own, at the times this hook returns (see the module docstring)."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    # Binary lines, decoded as strict UTF-8 per line whatever the container's locale.
    stdin = open(sys.stdin.fileno(), "rb", closefd=False)
    stdout = open(sys.stdout.fileno(), "wb", closefd=False)
    sys.stdout = sys.stderr  # a stray print() in service code must not corrupt the protocol stream
    adapter = CoordinatorProtocolAdapter(callback, on_init=on_init, on_shutdown=on_shutdown, capabilities=capabilities,
                                         barrier_group=barrier_group, barrier_publishes=barrier_publishes,
                                         on_configure=on_configure, next_event=next_event, wakeup=wakeup,
                                         on_snapshot=on_snapshot, on_restore=on_restore)
    sys.exit(adapter.run(stdin, stdout))
