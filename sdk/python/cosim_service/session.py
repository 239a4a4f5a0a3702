"""The protocol session, sans-IO: one message (or line) in, one reply out (docs/protocol.md).

A :class:`Session` owns everything the protocol decides: the order of messages (INIT first, time never going back),
the service's clock, the outputs held for a later window, config and endpoints as CONFIGURE changes them, the
barrier group's members, the READY capabilities, and an ERROR reply for anything wrong. It calls the hooks of a
:class:`cosim_service.Service` and does no I/O: :meth:`Session.receive` takes a line and gives the line to write
(:meth:`Session.receive_bytes`: as bytes); :func:`serve_lines` is the loop that reads and writes them.

ERRORs the service survives (``fatal: false``, state unchanged): a malformed or non-UTF-8 line (NaN and Infinity
are not JSON), a message that is not an object or lacks ``type``, an unknown type, INIT without ``protocol`` or with
fields of the wrong type, a second INIT, any other request before INIT, a target time that goes backwards, a
malformed input event or one outside its window, a refused CONFIGURE (``configure_failed``) or SNAPSHOT
(``snapshot_failed``), a request for a capability the service did not declare (``unsupported``). ERRORs that end it
(``fatal: true``, exit code 1): a protocol version it does not speak, a hook that raises in INIT (``init_failed``),
ADVANCE (``callback_failed``) or RESTORE (``restore_failed``), output events that are malformed, contain
NaN/Infinity or are stamped at or before the window's start (``bad_output``), and a wake-up at or before the
window's end (``bad_wakeup``).
"""

from __future__ import annotations

import logging
import traceback
from typing import IO, TYPE_CHECKING, Any, TypeGuard

from cosim_service import PROTOCOL_VERSION
from cosim_service.wire import DecodeError, encode, parse_line

if TYPE_CHECKING:
    from cosim_service.service import Service

Event = dict[str, Any]

log = logging.getLogger("cosim.service")

REQUESTS = ("INIT", "ADVANCE", "CONFIGURE", "SNAPSHOT", "RESTORE", "SHUTDOWN")

# Most windows produce nothing: their DONE is formatted directly (the same canonical bytes, cheaper). The byte
# templates answer a plain ADVANCE (``_plain_advance``), the text ones any other request's DONE (``_reply``).
_EMPTY_DONE_LINE = b'{"events":[],"time_us":%d,"type":"DONE"}\n'
_PROMISE_DONE_LINE = b'{"events":[],"next_us":%d,"time_us":%d,"type":"DONE"}\n'
_EMPTY_DONE = _EMPTY_DONE_LINE.decode()
_PROMISE_DONE = _PROMISE_DONE_LINE.decode()

# Most ADVANCEs carry no events and no barrier group: the coordinator writes them in exactly this canonical form,
# which is read here without a JSON parse (the per-window hot path of every service).
_PLAIN_ADVANCE = b'{"events":[],"time_us":'
_PLAIN_ADVANCE_END = b',"type":"ADVANCE"}\n'
_PLAIN_DIGITS = slice(len(_PLAIN_ADVANCE), -len(_PLAIN_ADVANCE_END))


class ProtocolError(Exception):
    """A request the session answers with ERROR ``error`` (a code), ``detail`` (one line), ``fatal``."""

    def __init__(self, error: str, detail: str, fatal: bool = False) -> None:
        super().__init__(f"{error}: {detail}")
        self.error = error
        self.detail = detail
        self.fatal = fatal


def _is_int(value: Any) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _event_time(event: Event) -> int:
    time_us: int = event["time_us"]
    return time_us


def describe_exception(exc: BaseException) -> str:
    """``Type: message (at file:line)`` of the innermost frame: one line for an ERROR's detail."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


class Session:
    """The protocol state of one service process, driving ``service``'s hooks."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.capabilities: list[str] = service.declared_capabilities()
        self.next_event = "next_event" in service.declared_features()
        self.initialized = False
        self.current_time_us = 0  # the end of the last window (during ADVANCE: the window's start)
        self.node_id: str | None = None
        self.seed: int | None = None
        self.restart: int | None = None
        self.config: dict[str, Any] = {}
        self.endpoints: dict[str, Any] = {}
        self.barrier_group: str | None = None
        self.members: list[str] = []  # the whole barrier group (from the first ADVANCE on)
        self.peers: list[str] | None = None  # the members that may publish in the window being advanced
        self.held: list[Event] = []  # outputs stamped beyond the window they were produced in
        self.exit_code: int | None = None  # set when the service must stop

    # -- lines ------------------------------------------------------------------------------------

    def receive(self, raw: bytes | str) -> str | None:
        """One received line in, the reply line to write out (None: nothing to write)."""
        plain = self._plain_advance(raw)
        if plain is not None:
            return plain.decode("utf-8")
        return self._reply(raw)

    def receive_bytes(self, raw: bytes | str) -> bytes | None:
        """``receive`` for a binary stream (``serve_lines``): the reply as the bytes to write. A plain ADVANCE (most
        windows) is answered without a JSON parse and without a str in between."""
        plain = self._plain_advance(raw)
        if plain is not None:
            return plain
        reply = self._reply(raw)
        return None if reply is None else reply.encode("utf-8")

    def _reply(self, raw: bytes | str) -> str | None:
        """Any line, parsed and handled: the reply line, or None."""
        reply: dict[str, Any] | None
        try:
            message = parse_line(raw)
        except DecodeError as exc:
            reply = self._error(ProtocolError("bad_json", str(exc)))
        else:
            reply = self.handle(message)
        if reply is None:
            return None
        try:
            if reply["type"] != "DONE" or reply["events"]:
                return encode(reply)
            if "next_us" in reply:
                return _PROMISE_DONE % (reply["next_us"], reply["time_us"])
            return _EMPTY_DONE % int(reply["time_us"])
        except (ValueError, RecursionError):  # NaN or Infinity (or a cycle) in the service's outputs: not JSON
            return encode(self._error(ProtocolError(
                "bad_output", "output events contain NaN or Infinity, which JSON cannot carry", fatal=True)))

    # -- messages ---------------------------------------------------------------------------------

    def handle(self, message: Any) -> dict[str, Any] | None:
        """One decoded message in, its reply out (None for SHUTDOWN)."""
        try:
            if not isinstance(message, dict):
                raise ProtocolError("bad_message", f"expected a JSON object, got {type(message).__name__}")
            kind = message.get("type")
            if kind == "INIT":
                return self._init(message)
            if kind == "SHUTDOWN":
                self.shutdown()
                return None
            if kind is None:
                raise ProtocolError("bad_message", "message has no 'type' field")
            if kind not in REQUESTS:
                raise ProtocolError("unknown_type", f"unknown message type {kind!r}; expected INIT, ADVANCE, "
                                                    f"CONFIGURE, SNAPSHOT, RESTORE or SHUTDOWN")
            if not self.initialized:
                raise ProtocolError("not_initialized", f"{kind} received before INIT")
            if kind == "ADVANCE":
                return self._advance(message)
            if kind == "CONFIGURE":
                return self._configure(message)
            if kind == "SNAPSHOT":
                return self._snapshot(message)
            return self._restore(message)
        except ProtocolError as exc:
            return self._error(exc)

    def _hook(self, error: str, call: Any, *args: Any, fatal: bool = True) -> Any:
        """Call a service hook; an exception becomes ERROR ``error`` naming it."""
        try:
            return call(*args)
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(error, describe_exception(exc), fatal=fatal) from exc

    def _init(self, message: dict[str, Any]) -> dict[str, Any]:
        if self.initialized:
            raise ProtocolError("already_initialized", "INIT received twice")
        if "protocol" not in message:
            raise ProtocolError("bad_message", "INIT has no 'protocol' field")
        version = message["protocol"]
        if version != PROTOCOL_VERSION:
            raise ProtocolError("protocol_version", f"coordinator speaks protocol {version!r}, this service speaks "
                                                    f"{PROTOCOL_VERSION}", fatal=True)
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
        self.node_id, self.seed, self.restart = message.get("node_id"), message.get("seed"), restart
        self.config = dict(config)  # copies: CONFIGURE merges into them
        self.endpoints = dict(message.get("endpoints", {}))
        self.current_time_us = time_us  # 0, or where a restarted node resumes (the hooks may read it)
        info = self._hook("init_failed", self.service.init, self.node_id, self.seed, dict(config))
        self.barrier_group = self._hook("init_failed", self.service.barrier_group)
        self.initialized = True
        ready: dict[str, Any] = {"type": "READY", "time_us": 0, "protocol": PROTOCOL_VERSION,
                                 "capabilities": self.capabilities}
        if self.barrier_group is not None:
            ready["barrier_group"] = self.barrier_group
            ready["barrier_publishes"] = self.service.barrier_publishes
        if self.next_event:
            promise = self._promise(time_us)  # the first time it acts on its own (e.g. its first timer)
            if promise is not None:
                ready["next_us"] = promise
            ready["next_event"] = True
        if info:
            ready["info"] = dict(info)  # e.g. library versions, for the run's manifest (never in the trace)
        return ready

    def _advance(self, message: dict[str, Any]) -> dict[str, Any]:
        target = message.get("time_us")
        if not _is_int(target):
            raise ProtocolError("bad_message", f"ADVANCE time_us must be an integer, got {target!r}")
        if target < self.current_time_us:
            raise ProtocolError("time_backwards",
                                f"ADVANCE to {target} us but the service is already at {self.current_time_us} us")
        events = message.get("events", [])
        if not isinstance(events, list):
            raise ProtocolError("bad_message", f"ADVANCE events must be a list, got {type(events).__name__}")
        for index, event in enumerate(events):
            if not isinstance(event, dict) or not _is_int(event.get("time_us")):
                raise ProtocolError("bad_event", f"events[{index}] must be an object with an integer time_us")
            if not self.current_time_us < event["time_us"] <= target:
                raise ProtocolError("event_outside_window", f"events[{index}] at {event['time_us']} us lies outside "
                                                            f"the window ({self.current_time_us}, {target}]")
        peers, members = message.get("peers"), message.get("members", self.members)
        for name, ids in (("peers", peers), ("members", members)):
            if ids is not None and (not isinstance(ids, list) or not all(isinstance(i, str) for i in ids)):
                raise ProtocolError("bad_message", f"ADVANCE {name} must be a list of node ids, got {ids!r}")
        ordered = sorted(events, key=_event_time) if events else events  # stable: keeps same-time order
        if self.barrier_group is not None:
            self.members, self.peers = members, peers
        outputs, promise = self._window(target, ordered)
        done: dict[str, Any] = {"type": "DONE", "time_us": target, "events": outputs}
        if promise is not None:
            done["next_us"] = promise
        return done

    def _plain_advance(self, raw: bytes | str) -> bytes | None:
        """The reply to a canonical ADVANCE line without events (newline included), read without a JSON parse and
        checked as far as its canonical form leaves anything to check: the same window as ``_advance``, its DONE
        formatted directly. None when ``raw`` is not exactly such a line, or not one to take that way (before INIT,
        in a barrier group, a target in the past): it is then parsed and handled as any other."""
        if not (raw.__class__ is bytes and raw.startswith(_PLAIN_ADVANCE) and raw.endswith(_PLAIN_ADVANCE_END)
                and self.initialized and self.barrier_group is None):
            return None
        digits = raw[_PLAIN_DIGITS]  # (bytes: checked above)
        if not digits.isdigit() or (digits[0] == 48 and len(digits) > 1):  # (48: "0"; JSON has no leading zeros)
            return None
        target = int(digits)
        if target < self.current_time_us:
            return None  # (``_advance`` names the error)
        try:
            outputs, promise = self._window(target, [])
        except ProtocolError as exc:
            return encode(self._error(exc)).encode("utf-8")
        if not outputs:
            return _EMPTY_DONE_LINE % target if promise is None else _PROMISE_DONE_LINE % (promise, target)
        done: dict[str, Any] = {"type": "DONE", "time_us": target, "events": outputs}
        if promise is not None:
            done["next_us"] = promise
        try:
            return encode(done).encode("utf-8")
        except (ValueError, RecursionError):  # as in ``_reply``
            error = self._error(ProtocolError(
                "bad_output", "output events contain NaN or Infinity, which JSON cannot carry", fatal=True))
            return encode(error).encode("utf-8")

    def _window(self, target: int, ordered: list[Event]) -> tuple[list[Event], int | None]:
        """Advance the service through (current, target] with its inputs ``ordered``: its outputs due in the window
        (held ones included) and its promise (None: none, or not a next-event service)."""
        try:  # (the hook called inline, not through ``_hook``: this is the per-window hot path)
            produced = self.service.advance(target, ordered)
            produced = list(produced) if produced else []
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError("callback_failed", describe_exception(exc), fatal=True) from exc
        if produced:
            stamped, beyond = self._stamp(produced, target)
        else:
            stamped, beyond = produced, False
        if self.held or beyond:
            stamped = self.held + stamped
            outputs = [event for event in stamped if event["time_us"] <= target]
            self.held = [event for event in stamped if event["time_us"] > target]
        else:  # nothing held, nothing to hold (most windows)
            outputs = stamped
        self.current_time_us = target
        return outputs, self._promise(target) if self.next_event else None

    def _stamp(self, produced: list[Any], target: int) -> tuple[list[Event], bool]:
        """The outputs, copied (the service may reuse its objects), each checked and stamped (default: the window's
        end); and whether any is stamped after the window (to be held)."""
        current, stamped, beyond = self.current_time_us, [], False
        for index, event in enumerate(produced):
            if not isinstance(event, dict) or not isinstance(event.get("type"), str):
                raise ProtocolError("bad_output", f"output events[{index}] must be an object with a string 'type'",
                                    fatal=True)
            event = dict(event)
            time_us = event.setdefault("time_us", target)
            if not _is_int(time_us) or time_us <= current:
                raise ProtocolError("bad_output", f"output events[{index}] stamped at {time_us!r} us, not after the "
                                                  f"window start {current} us", fatal=True)
            beyond = beyond or time_us > target
            stamped.append(event)
        return stamped, beyond

    def _promise(self, target: int) -> int | None:
        """The earliest time after ``target`` at which the service emits on its own: a held output or a wake-up."""
        try:  # (inline, as in ``_window``)
            wake = self.service.wakeup(target)
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError("callback_failed", describe_exception(exc), fatal=True) from exc
        if wake is not None and not ((wake.__class__ is int or _is_int(wake)) and wake > target):
            raise ProtocolError("bad_wakeup", f"wake-up time {wake!r} is not an integer after the window end "
                                              f"{target} us", fatal=True)
        if not self.held:
            return wake
        times = [event["time_us"] for event in self.held]
        if wake is not None:
            times.append(wake)
        return min(times)

    def _configure(self, message: dict[str, Any]) -> dict[str, Any]:
        if "configure" not in self.capabilities:
            raise ProtocolError("unsupported", "this service takes no CONFIGURE (it did not declare 'configure')")
        time_us = message.get("time_us")
        if not _is_int(time_us) or time_us < self.current_time_us:
            raise ProtocolError("bad_message", f"CONFIGURE time_us must be an integer not before the service's "
                                               f"current time {self.current_time_us} us, got {time_us!r}")
        for name in ("config", "endpoints"):
            if not isinstance(message.get(name, {}), dict):
                raise ProtocolError("bad_message", f"CONFIGURE {name} must be an object, got {message[name]!r}")
        changes, endpoints = message.get("config", {}), message.get("endpoints", {})
        # The service had nothing to do between its clock and time_us (else it would have been advanced), so its
        # clock moves there: the change applies from that window on, as in a run that steps it every quantum.
        previous, self.current_time_us = self.current_time_us, time_us
        try:  # e.g. an unknown or invalid key: the run fails with the service's words, the state is unchanged
            if changes:
                self._hook("configure_failed", self.service.configure, dict(changes), fatal=False)
            if endpoints:
                self._hook("configure_failed", self.service.endpoints_changed, dict(endpoints), fatal=False)
        except ProtocolError:
            self.current_time_us = previous
            raise
        self.config.update(changes)
        self.endpoints.update(endpoints)
        configured: dict[str, Any] = {"type": "CONFIGURED", "time_us": time_us}
        if self.next_event:  # the change may move its next own output (e.g. a new timer period)
            promise = self._promise(time_us)
            if promise is not None:
                configured["next_us"] = promise
        return configured

    def _snapshot(self, message: dict[str, Any]) -> dict[str, Any]:
        if "snapshot" not in self.capabilities:
            raise ProtocolError("unsupported", "this service takes no SNAPSHOT (it did not declare 'snapshot')")
        time_us = message.get("time_us")
        if time_us != self.current_time_us:
            raise ProtocolError("bad_message", f"SNAPSHOT time_us must be the service's current time "
                                               f"{self.current_time_us} us, got {time_us!r}")
        service = self._hook("snapshot_failed", self.service.snapshot, fatal=False)
        # The session's own state around the service's (the checkpoint format of containers/protocol_adapter.py).
        state = {"held": self.held, "members": self.members, "config": self.config, "endpoints": self.endpoints,
                 "service": service}
        self._hook("snapshot_failed", encode, state, fatal=False)  # JSON-able, without NaN: the failure names it
        return {"type": "SNAPSHOT_STATE", "time_us": time_us, "state": state}

    def _restore(self, message: dict[str, Any]) -> dict[str, Any]:
        if "snapshot" not in self.capabilities:
            raise ProtocolError("unsupported", "this service takes no RESTORE (it did not declare 'snapshot')")
        time_us, state = message.get("time_us"), message.get("state")
        if not _is_int(time_us) or time_us < 0 or not isinstance(state, dict):
            raise ProtocolError("bad_message", f"RESTORE needs an integer time_us >= 0 and a state object, "
                                               f"got time_us {time_us!r}")
        self._hook("restore_failed", self.service.restore, state.get("service"))
        self.held = list(state.get("held") or [])
        self.members = list(state.get("members") or [])
        self.config = dict(state.get("config") or self.config)
        self.endpoints = dict(state.get("endpoints") or self.endpoints)
        self.current_time_us = time_us
        return {"type": "RESTORED", "time_us": time_us}

    def shutdown(self) -> None:
        """SHUTDOWN, or the end of input: the service's shutdown hook, then exit code 0."""
        if self.held:
            log.info("%d output event(s) stamped after the last window were not delivered", len(self.held))
        self.service.shutdown()
        self.exit_code = 0

    def _error(self, exc: ProtocolError) -> dict[str, Any]:
        log.error("%s: %s", exc.error, exc.detail)
        if exc.fatal:
            self.exit_code = 1
        return {"type": "ERROR", "error": exc.error, "detail": exc.detail, "fatal": exc.fatal}


def serve_lines(session: Session, stdin: IO[Any], stdout: IO[Any]) -> int:
    """Serve ``session`` until SHUTDOWN, a fatal error or the end of input; return the exit code.

    ``stdin``/``stdout`` may be text or binary streams (binary lines are decoded as strict UTF-8); every reply is
    flushed at once."""
    # A binary stdout takes the reply bytes as they are made (``receive_bytes``), a text one the reply text.
    receive = session.receive_bytes if "b" in getattr(stdout, "mode", "") else session.receive
    readline, write, flush = stdin.readline, stdout.write, stdout.flush
    while session.exit_code is None:
        raw = readline()
        if not raw:
            log.warning("stdin closed without SHUTDOWN; exiting")
            session.shutdown()
            break
        if raw.isspace():  # a blank line (isspace, unlike strip, copies nothing)
            continue
        reply = receive(raw)
        if reply is not None:
            write(reply)
            flush()
    return session.exit_code if session.exit_code is not None else 0
