"""`cosim conformance`: check any service against the protocol (docs/protocol.md), case by case, and print a table.

A target is a command (``cosim conformance -- node service.js``, run as a subprocess in the current directory) or
an image (``cosim conformance IMAGE``, run with ``docker run -i --rm --network none`` under a name and cosim's
labels, and removed at the end of each case). A command finds cosim's Node SDK with ``require("cosim-service")``
(NODE_PATH), as a service in an image does. Each case starts a fresh process and drives it over the real
protocol, every reply under a wall-clock watchdog (no sleeps); the process is killed at the end of the case.

A service that needs infrastructure gets it for the whole check: ``--broker`` provides an MQTT broker (a local
Mosquitto for a command; the bundled broker image on a private internal network, which the service's containers
join, for an image; cosim.conformance_infra) and names it in INIT's ``endpoints``; ``--init`` sets INIT's node_id,
seed and further endpoints. A service whose READY declares a barrier group is the only member of its group, given
``members`` and ``peers`` as the coordinator gives them (§12).

Cases: the READY's shape and capabilities; ADVANCE/DONE times and windows; nothing but protocol on stdout; ERROR
replies (non-fatal, the service carrying on) to malformed JSON, an unknown message type, ADVANCE before INIT and
time going backwards; a 1 MiB line; promises kept (a next-event service driven window by window and with skipping
gives the same outputs); SNAPSHOT -> RESTORE into a fresh process gives the same outputs as without; CONFIGURE of
an unknown key refused; SHUTDOWN exits 0. A case for a capability the service did not declare (next_event,
"snapshot", "configure") is skipped, not failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from jsonschema import Draft202012Validator
from referencing import Registry, Resource

from cosim import protocol
from cosim.conformance_infra import BROKER_PORT, docker_broker, label_options, local_broker
from cosim.errors import Interrupted, UsageError
from cosim.resources import data_path
from cosim.run import interrupts_once
from cosim.transport import PipeTransport, TransportClosed, TransportTimeout

WATCHDOG_S = 10.0  # wall clock a reply may take
START_WATCHDOG_S = 60.0  # the first reply of a process (a container's start counts)
SHUTDOWN_S = 10.0  # docs/protocol.md §4.1: exit within 10 s of SHUTDOWN
QUANTUM_US = 1000
HORIZON_US = 600_000  # the promise and snapshot cases: 600 windows (two heartbeats of 250 ms, many ticks)
SNAPSHOT_AT_US = 300_000
LONG_LINE_BYTES = 1 << 20
NODE_ID, SEED = "conformance", 1234567  # INIT's, unless --init says otherwise
INIT_FIELDS = ("node_id", "seed", "endpoints")  # what --init may set (the rest of INIT belongs to the cases)

PASS, FAIL, SKIP = "pass", "FAIL", "skipped (not declared)"


@dataclass(frozen=True)
class CaseResult:
    """One case's outcome: ``status`` is "pass", "FAIL" or "skipped (not declared)"; ``detail`` one line."""

    case: str
    status: str
    detail: str = ""

    @property
    def failed(self) -> bool:
        return self.status == FAIL


class CaseFailed(Exception):
    """The service broke the protocol in this case (one line saying how)."""


SERVICE_TYPES = ("READY", "DONE", "CONFIGURED", "SNAPSHOT_STATE", "RESTORED", "ERROR")


class Validator:
    """schemas/protocol.schema.json for what a service writes: a message of a known type is checked against its
    own definition (the error then names the field), anything else against them all."""

    def __init__(self) -> None:
        schema = json.loads(data_path("schemas", "protocol.schema.json").read_text(encoding="utf-8"))
        registry = Registry().with_resource(schema["$id"], Resource.from_contents(schema))
        self._by_type = {name: Draft202012Validator({"$ref": f"{schema['$id']}#/$defs/{name}"}, registry=registry)
                         for name in (*SERVICE_TYPES, "service_message", "INIT")}

    def problem(self, message: Any) -> str | None:
        kind = message.get("type") if isinstance(message, dict) else None
        return self._problem(kind if kind in SERVICE_TYPES else "service_message", message)

    def init_problem(self, message: dict[str, Any]) -> str | None:
        """What is wrong with an INIT the check would send (built with --init), or None."""
        return self._problem("INIT", message)

    def _problem(self, definition: str, message: Any) -> str | None:
        errors = sorted(self._by_type[definition].iter_errors(message), key=lambda error: list(error.absolute_path))
        if not errors:
            return None
        where = "/".join(str(part) for part in errors[0].absolute_path) or "the message"
        return f"at {where}: {errors[0].message[:120]}"


def _short(value: Any, limit: int = 100) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else (
        value if isinstance(value, str) else protocol.canonical(value))
    return repr(text if len(text) <= limit else text[:limit] + "...")


# -- the target and one process of it --------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """What is checked: ``command`` (argv, run in the current directory) or ``image`` (run under Docker, on
    ``network``: none, or the private network of the check's infrastructure)."""

    command: tuple[str, ...] = ()
    image: str | None = None
    network: str = "none"

    @property
    def label(self) -> str:
        return f"image {self.image}" if self.image else " ".join(self.command)

    def argv(self, name: str) -> list[str]:
        if self.image is None:
            return list(self.command)
        from cosim.runtimes.docker.engine import docker_command

        return docker_command("run", "-i", "--rm", "--network", self.network, "--pull", "never", "--name", name,
                              *label_options(), self.image)

    def remove(self, name: str) -> None:
        if self.image is not None:
            from cosim.runtimes.docker.engine import run_bounded

            run_bounded(["rm", "-f", name], 30)


def node_environment(workdir: Path) -> dict[str, str]:
    """The environment of a command: this one, with cosim's Node SDK on NODE_PATH (``require("cosim-service")``
    finds it as in an image, whose Dockerfile copies it to /app/node_modules/), staged once under ``workdir``."""
    modules = workdir / "node_modules"
    if not (modules / "cosim-service").is_dir():
        shutil.copytree(data_path("sdk", "node"), modules / "cosim-service")
    paths = [str(modules), *filter(None, os.environ.get("NODE_PATH", "").split(os.pathsep))]
    return {**os.environ, "NODE_PATH": os.pathsep.join(paths)}


class ServiceSession:
    """One fresh process of the target, spoken to over the protocol: every reply strict JSON, valid against the
    schema, and under the watchdog. Tracks the service's time and its promise (``next_us``).

    ``init_fields``: INIT's node_id, seed and endpoints. A service whose READY declares a ``barrier_group``
    (docs/protocol.md §12) is its group's only member, driven as the coordinator drives one: its first ADVANCE
    carries ``members`` (itself), every ADVANCE ``peers`` (itself when it may publish in the window: with
    ``barrier_publishes`` "always", or "on_input" and input events in the window; else none)."""

    def __init__(self, target: Target, workdir: Path, index: int, *, watchdog_s: float = WATCHDOG_S,
                 validator: Validator | None = None, init_fields: dict[str, Any] | None = None) -> None:
        self.target = target
        self.init_fields = init_fields or {"node_id": NODE_ID, "seed": SEED, "endpoints": {}}
        self.watchdog_s = watchdog_s
        self.validator = validator or Validator()
        self.name = f"cosim-conformance-{os.getpid()}-{index}-{os.urandom(3).hex()}"
        self.log_path = workdir / f"{index}.log"
        self.transport = PipeTransport(self.name, target.argv(self.name), log_path=self.log_path,
                                       env=None if target.image else node_environment(workdir))
        self.started = False  # the first reply may take longer (a container starting)
        self.now = 0
        self.next_event = False
        self.promise: int | None = None
        self.capabilities: list[str] = []
        self.barrier_group: str | None = None  # READY's: the ADVANCEs then carry peers (and first members)
        self.publishes_always = True  # READY's barrier_publishes is "always" (the default)
        self.members: list[str] | None = None  # the group, sent with the next ADVANCE (the first)

    # -- lines

    def send(self, message: dict[str, Any] | bytes) -> None:
        line = message if isinstance(message, bytes) else protocol.encode(message)
        try:
            self.transport.send(line)
        except TransportClosed:
            raise CaseFailed(f"ended before it was sent {self._what(line)} (stdin closed; "
                             f"{self._exit()}){self._log()}") from None

    def receive(self, what: str) -> dict[str, Any]:
        wait = self.watchdog_s if self.started else max(self.watchdog_s, START_WATCHDOG_S)
        try:
            line = self.transport.receive(_deadline(wait))
        except TransportTimeout:
            raise CaseFailed(f"did not answer {what} within the {wait:g} s watchdog (hung?){self._log()}") from None
        except TransportClosed:
            raise CaseFailed(f"ended without answering {what} (stdout closed; {self._exit()}){self._log()}") from None
        self.started = True
        try:
            message = protocol.decode(line)
        except ValueError:
            raise CaseFailed(f"wrote a line on stdout that is not protocol JSON: {_short(line)} "
                             f"(while waiting for the reply to {what})") from None
        problem = self.validator.problem(message)
        if problem:
            raise CaseFailed(f"answered {what} with {_short(line)}, which breaks the protocol schema {problem}")
        return message

    def request(self, message: dict[str, Any] | bytes, expected: str) -> dict[str, Any]:
        """Send ``message``; its reply, which must be of type ``expected`` (an ERROR is named with its words)."""
        self.send(message)
        what = self._what(message)
        reply = self.receive(what)
        if reply["type"] != expected:
            if reply["type"] == "ERROR":
                raise CaseFailed(f"answered {what} with ERROR {reply['error']}: {reply['detail']}")
            raise CaseFailed(f"answered {what} with {reply['type']}, expected {expected}")
        return reply

    def expect_error(self, message: dict[str, Any] | bytes, code: str) -> dict[str, Any]:
        """Send a request the service must refuse: a non-fatal ERROR ``code``, the process still running."""
        self.send(message)
        what = self._what(message)
        reply = self.receive(what)
        if reply["type"] != "ERROR":
            raise CaseFailed(f"answered {what} with {reply['type']}, expected ERROR {code} (fatal: false)")
        if reply["error"] != code or reply["fatal"] is not False:
            raise CaseFailed(f"answered {what} with ERROR {reply['error']} (fatal: {json.dumps(reply['fatal'])}), "
                             f"expected ERROR {code} (fatal: false)")
        return reply

    @staticmethod
    def _what(message: dict[str, Any] | bytes) -> str:
        """How a request is named in a failure: "ADVANCE 1000 us", or the line itself when it is not a message."""
        if isinstance(message, bytes):
            line = message
            try:
                message = json.loads(line)
            except ValueError:
                return f"the line {_short(line.rstrip(), 40)}"
        if not isinstance(message, dict):
            return f"the line {_short(message, 40)}"
        kind = message.get("type")
        return f"{kind} {message['time_us']} us" if isinstance(message.get("time_us"), int) else str(kind)

    # -- the protocol's requests

    def init(self, config: dict[str, Any] | None = None) -> dict[str, Any]:
        fields = self.init_fields
        try:
            ready = self.request(protocol.init_message(fields["node_id"], fields["seed"], config or {},
                                                       fields["endpoints"]), "READY")
        except CaseFailed as failure:
            if fields["endpoints"] or "with ERROR init_failed" not in str(failure):
                raise
            raise CaseFailed(f"{failure} (INIT had no endpoints: a service that needs an MQTT broker gets one with "
                             f"--broker, other infrastructure with --init)") from None
        self.next_event = ready.get("next_event") is True
        self.capabilities = list(ready["capabilities"])
        self.promise = self._checked_promise(ready, 0)
        self.barrier_group = ready.get("barrier_group")
        self.publishes_always = ready.get("barrier_publishes", "always") == "always"
        self.members = [fields["node_id"]] if self.barrier_group is not None else None
        return ready

    def advance_line(self, target: int, events: list[dict[str, Any]]) -> bytes:
        """The ADVANCE to ``target``, as the coordinator writes it for this service (§12: peers and members for a
        barrier-group member, alone in its group)."""
        if self.barrier_group is None:
            return protocol.encode_advance(target, events)
        peers = [self.init_fields["node_id"]] if self.publishes_always or events else []
        members, self.members = self.members, None
        return protocol.encode_advance(target, events, peers, members)

    def advance(self, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """ADVANCE to ``target`` with ``events``; the DONE's outputs, checked against the window and the promise."""
        done = self.request(self.advance_line(target, events), "DONE")
        if done["time_us"] != target:
            raise CaseFailed(f"answered DONE for {done['time_us']} us, expected {target} us")
        problem = protocol.check_outputs(done["events"], self.now, target)
        if problem:
            raise CaseFailed(f"{problem} (ADVANCE {target} us)")
        for output in done["events"]:
            explained = self.promise is not None and output["time_us"] >= self.promise
            if self.next_event and not explained and not any(e["time_us"] <= output["time_us"] for e in events):
                promised = f"nothing of its own before {self.promise} us" if self.promise is not None else \
                    "to emit only in response to input"
                raise CaseFailed(f"broke its next-event promise: it promised {promised}, but emitted "
                                 f"{output['type']!r} at {output['time_us']} us in the window ending {target} us with "
                                 f"no input at or before that time")
        self.promise = self._checked_promise(done, target)
        self.now = target
        return done["events"]

    def _checked_promise(self, reply: dict[str, Any], after: int) -> int | None:
        if "next_us" in reply and not self.next_event:
            raise CaseFailed(f"answered {reply['type']} with next_us but its READY did not declare next_event")
        problem = protocol.check_promise(reply.get("next_us"), after, reply["type"])
        if problem:
            raise CaseFailed(problem)
        return reply.get("next_us")

    def shutdown(self) -> int:
        """SHUTDOWN: nothing more on stdout, exit 0 within 10 s. Returns the exit code (checked by the caller)."""
        self.send(protocol.encode(protocol.SHUTDOWN))
        code = self.transport.wait_exit(_deadline(SHUTDOWN_S))
        if code is None:
            raise CaseFailed(f"did not exit within {SHUTDOWN_S:g} s of SHUTDOWN{self._log()}")
        try:
            line = self.transport.receive(_deadline(self.watchdog_s))
        except (TransportClosed, TransportTimeout):
            return code
        raise CaseFailed(f"wrote {_short(line)} on stdout after SHUTDOWN (SHUTDOWN has no reply)")

    # -- the end

    def _exit(self) -> str:
        code = self.transport.wait_exit(_deadline(1.0))
        return "still running" if code is None else f"exit code {code}"

    def _log(self) -> str:
        tail = " / ".join(line.strip() for line in self.transport.log_tail(3).splitlines() if line.strip())
        return f"; its stderr ends: {tail[-200:]}" if tail else ""

    def close(self) -> None:
        self.transport.close(grace_s=1.0)
        self.target.remove(self.name)


def _deadline(seconds: float) -> float:
    return time.monotonic() + seconds


# -- the inputs and the drivers ---------------------------------------------------------------------------------

_SCRIPT = ((1500, "conformance-a", 0.2), (2200, "conformance-a", 5.0), (2200, "conformance-b", 50.0),
           (9000, "conformance-b", 0.5), (250_000, "conformance-a", 2.0), (250_001, "conformance-a", -1.0),
           (377_777, "conformance-b", 1000.0), (499_999, "conformance-a", 0.75), (500_000, "conformance-b", 3.5))


def script_events() -> list[dict[str, Any]]:
    """The inputs the multi-window cases deliver: `reading` events with a numeric `value`, from two sources."""
    seqs: dict[str, int] = {}
    events = []
    for time_us, source, value in _SCRIPT:
        seq = seqs[source] = seqs.get(source, -1) + 1
        events.append({"type": "reading", "time_us": time_us, "source": source, "seq": seq,
                       "sent_us": time_us - QUANTUM_US, "data": {"value": value}})
    return events


def _in_window(events: list[dict[str, Any]], current: int, target: int) -> list[dict[str, Any]]:
    return [event for event in events if current < event["time_us"] <= target]


def _window_end(time_us: int) -> int:
    return -(-time_us // QUANTUM_US) * QUANTUM_US


def drive(session: ServiceSession, events: list[dict[str, Any]], until: int, *, skip: bool) -> list[dict[str, Any]]:
    """Advance from the session's time to ``until``: every quantum, or (``skip``) only the windows holding an input
    or the promise, as the coordinator's next-event advance does. The outputs, in order."""
    outputs: list[dict[str, Any]] = []
    while session.now < until:
        if skip:
            due = [e["time_us"] for e in events if e["time_us"] > session.now]
            if session.promise is not None:
                due.append(session.promise)
            if not due or min(due) > until:
                break
            target = _window_end(min(due))
        else:
            target = session.now + QUANTUM_US
        outputs += session.advance(target, _in_window(events, session.now, target))
    return outputs


def _compare(expected: list[dict[str, Any]], got: list[dict[str, Any]], how: str) -> None:
    """Outputs as the coordinator orders them (by time, same-time ones as emitted) must be the same."""
    left = [protocol.canonical(e) for e in sorted(expected, key=lambda e: e["time_us"])]
    right = [protocol.canonical(e) for e in sorted(got, key=lambda e: e["time_us"])]
    for index, (a, b) in enumerate(zip(left, right)):
        if a != b:
            raise CaseFailed(f"{how}: output {index} differs: {_short(a, 70)} vs {_short(b, 70)}")
    if len(left) != len(right):
        raise CaseFailed(f"{how}: {len(left)} vs {len(right)} outputs (first extra: "
                         f"{_short((left if len(left) > len(right) else right)[min(len(left), len(right))], 70)})")


# -- the cases --------------------------------------------------------------------------------------------------


class Probe:
    """What a case gets: fresh sessions of the target (closed by the runner), the config and the other fields for
    INIT (node_id, seed, endpoints)."""

    def __init__(self, target: Target, workdir: Path, config: dict[str, Any], watchdog_s: float,
                 init_fields: dict[str, Any] | None = None, validator: Validator | None = None) -> None:
        self.target = target
        self.workdir = workdir
        self.config = config
        self.init_fields = init_fields
        self.watchdog_s = watchdog_s
        self.validator = validator or Validator()
        self.sessions: list[ServiceSession] = []
        self.ready: dict[str, Any] | None = None  # the READY of the first case, for the capability cases

    def session(self) -> ServiceSession:
        try:
            session = ServiceSession(self.target, self.workdir, len(self.sessions), watchdog_s=self.watchdog_s,
                                     validator=self.validator, init_fields=self.init_fields)
        except OSError as error:
            raise CaseFailed(f"could not start {self.target.label}: {error}") from None
        self.sessions.append(session)
        return session

    def started(self) -> ServiceSession:
        session = self.session()
        session.init(self.config)
        return session

    def close(self) -> None:
        for session in self.sessions:
            session.close()
        self.sessions.clear()


Case = Callable[[Probe], "str | None"]  # raises CaseFailed; returns SKIP when the capability is not declared


def case_init_ready(probe: Probe) -> None:
    session = probe.session()
    ready = session.init(probe.config)
    if ready["capabilities"] != sorted(set(ready["capabilities"])):
        raise CaseFailed(f"READY capabilities must be sorted and unique, got {ready['capabilities']}")
    probe.ready = ready


def case_advance_done(probe: Probe) -> None:
    session = probe.started()
    events = script_events()
    session.advance(1000, [])
    session.advance(2000, _in_window(events, 1000, 2000))
    session.advance(3000, _in_window(events, 2000, 3000))
    target = 10_000 if session.next_event else 4000  # a jump over quanta: only a next-event service gets one
    session.advance(target, _in_window(events, 3000, target))


def case_stdout_protocol_only(probe: Probe) -> None:
    session = probe.started()  # a banner before READY fails here: READY must be the first line
    events = script_events()
    drive(session, events, 10_000, skip=False)
    code = session.shutdown()  # anything written after the last reply shows up here
    if code != 0:
        raise CaseFailed(f"exited with code {code} after SHUTDOWN")


def case_error_bad_json(probe: Probe) -> None:
    session = probe.started()
    session.expect_error(b"{this is not JSON\n", "bad_json")
    session.advance(1000, [])


def case_error_unknown_type(probe: Probe) -> None:
    session = probe.started()
    session.expect_error({"type": "CONFORMANCE_PROBE"}, "unknown_type")
    session.advance(1000, [])


def case_error_advance_before_init(probe: Probe) -> None:
    session = probe.session()
    session.expect_error(protocol.encode_advance(1000, []), "not_initialized")
    session.init(probe.config)
    session.advance(1000, [])


def case_error_time_backwards(probe: Probe) -> None:
    session = probe.started()
    session.advance(2000, [])
    session.expect_error(session.advance_line(1000, []), "time_backwards")
    session.advance(3000, [])


def case_long_line(probe: Probe) -> None:
    session = probe.started()
    blob = "x" * LONG_LINE_BYTES
    event = {"type": "reading", "time_us": 1000, "source": "conformance-a", "seq": 0, "sent_us": 0,
             "data": {"blob": blob}}
    session.advance(1000, [event])
    session.advance(2000, [])


def _declared(probe: Probe, capability: str) -> bool:
    if probe.ready is None:
        raise CaseFailed("no READY to read the capabilities from (see init-ready)")
    if capability == "next_event":
        return probe.ready.get("next_event") is True
    return capability in probe.ready["capabilities"]


def case_promises_kept(probe: Probe) -> str | None:
    if not _declared(probe, "next_event"):
        return SKIP
    events = script_events()
    stepped = drive(probe.started(), events, HORIZON_US, skip=False)
    skipped = drive(probe.started(), events, HORIZON_US, skip=True)
    _compare(stepped, skipped, "driven window by window and with skipping")
    return None


def case_snapshot_restore(probe: Probe) -> str | None:
    if not _declared(probe, "snapshot"):
        return SKIP
    events = script_events()
    skip = probe.ready is not None and probe.ready.get("next_event") is True
    whole = drive(probe.started(), events, HORIZON_US, skip=skip)
    first = probe.started()
    before = drive(first, events, SNAPSHOT_AT_US, skip=skip)
    snapshot = first.request(protocol.snapshot_message(first.now), "SNAPSHOT_STATE")
    if snapshot["time_us"] != first.now:
        raise CaseFailed(f"answered SNAPSHOT {first.now} us with SNAPSHOT_STATE for {snapshot['time_us']} us")
    code = first.shutdown()
    if code != 0:
        raise CaseFailed(f"exited with code {code} after SHUTDOWN")
    second = probe.started()
    # Its first ADVANCE after RESTORE carries a barrier group's `members` again (§15), as INIT left them to send.
    restored = second.request(protocol.restore_message(SNAPSHOT_AT_US, snapshot["state"]), "RESTORED")
    if restored["time_us"] != SNAPSHOT_AT_US:
        raise CaseFailed(f"answered RESTORE {SNAPSHOT_AT_US} us with RESTORED for {restored['time_us']} us")
    second.now, second.promise = SNAPSHOT_AT_US, first.promise  # the coordinator keeps the promise in the checkpoint
    after = drive(second, events, HORIZON_US, skip=skip)
    _compare(whole, before + after, f"with a SNAPSHOT at {first.now} us restored into a fresh process and without")
    return None


def case_configure_unknown_key(probe: Probe) -> str | None:
    if not _declared(probe, "configure"):
        return SKIP
    session = probe.started()
    session.advance(1000, [])
    configured = session.request(protocol.configure_message(1000, {}), "CONFIGURED")
    if configured["time_us"] != 1000:
        raise CaseFailed(f"answered CONFIGURE 1000 us with CONFIGURED for {configured['time_us']} us")
    session.promise = session._checked_promise(configured, 1000)
    session.expect_error(protocol.configure_message(1000, {"conformance_no_such_key": 1}), "configure_failed")
    session.advance(2000, [])
    return None


def case_shutdown_exit_0(probe: Probe) -> None:
    session = probe.started()
    session.advance(1000, [])
    code = session.shutdown()
    if code != 0:
        raise CaseFailed(f"exited with code {code} after SHUTDOWN, expected 0")


CASES: dict[str, Case] = {
    "init-ready": case_init_ready,
    "advance-done": case_advance_done,
    "stdout-protocol-only": case_stdout_protocol_only,
    "error-bad-json": case_error_bad_json,
    "error-unknown-type": case_error_unknown_type,
    "error-advance-before-init": case_error_advance_before_init,
    "error-time-backwards": case_error_time_backwards,
    "long-line": case_long_line,
    "promises-kept": case_promises_kept,
    "snapshot-restore": case_snapshot_restore,
    "configure-unknown-key": case_configure_unknown_key,
    "shutdown-exit-0": case_shutdown_exit_0,
}


# -- running and reporting --------------------------------------------------------------------------------------


def as_target(target: Target | str | Sequence[str]) -> Target:
    """An image name (str) or a command (argv) as a Target, checked: raises UsageError when it cannot run."""
    if isinstance(target, Target):
        resolved = target
    elif isinstance(target, str):
        resolved = Target(image=target)
    else:
        resolved = Target(command=tuple(target))
    if resolved.image is not None:
        _check_image(resolved.image)
    elif not resolved.command:
        raise UsageError("conformance: give an image (cosim conformance IMAGE) or a command "
                         "(cosim conformance -- COMMAND...)")
    else:
        _check_command(resolved.command[0])
    return resolved


def _check_command(program: str) -> None:
    found = shutil.which(program) if os.sep not in program else (program if os.access(program, os.X_OK) else None)
    if found is None:
        raise UsageError(f"conformance: command not found: {program!r} (not on PATH, or not an executable file)")


def _check_image(image: str) -> None:
    from cosim.runtimes.docker.engine import check_engine, run_bounded

    check_engine()
    done = run_bounded(["image", "inspect", "--format", "{{.Id}}", image], 30)
    if done is None or done.returncode != 0:
        raise UsageError(f"conformance: no such image {image!r} on the Docker engine (build it first, e.g. with "
                         f"`cosim images`)")


def init_fields(init: Mapping[str, Any] | None, endpoints: Mapping[str, Any] | None = None,
                validator: Validator | None = None) -> dict[str, Any]:
    """INIT's node_id, seed and endpoints for the check: the defaults ("conformance", 1234567, the infrastructure's
    ``endpoints``), changed by ``init`` (--init: any of node_id, seed, endpoints; its endpoints are added to the
    infrastructure's). Raises UsageError for a field --init may not set or an INIT the schema refuses."""
    init = dict(init or {})
    unknown = sorted(set(init) - set(INIT_FIELDS))
    if unknown:
        raise UsageError(f"conformance: --init may set {', '.join(INIT_FIELDS)}, not {', '.join(unknown)} (the config "
                         f"goes in --config; the other fields of INIT are the cases' own)")
    more = init.get("endpoints", {})
    if not isinstance(more, dict):
        raise UsageError(f"conformance: --init endpoints must be a JSON object {{node_id: {{host, port}}}}, got "
                         f"{_short(more, 60)}")
    fields = {"node_id": init.get("node_id", NODE_ID), "seed": init.get("seed", SEED),
              "endpoints": {**(endpoints or {}), **more}}
    problem = (validator or Validator()).init_problem(
        protocol.init_message(fields["node_id"], fields["seed"], {}, fields["endpoints"]))
    if problem:
        raise UsageError(f"conformance: --init gives an INIT that breaks the protocol schema {problem}")
    return fields


def check_broker_node(broker: str) -> None:
    """A broker's node id (--broker-node): what INIT's endpoints and the image target's network call it."""
    if not re.fullmatch(r"[a-z][a-z0-9-]{0,39}", broker):
        raise UsageError(f"conformance: --broker-node {broker!r} is not a node id (lowercase letters, digits and "
                         f"dashes, starting with a letter, at most 40)")


@contextlib.contextmanager
def infrastructure(target: Target, workdir: Path, broker: str | None) -> Iterator[tuple[Target, dict[str, Any]]]:
    """What the service needs around it while the block runs (cosim.conformance_infra): nothing, or an MQTT broker
    named ``broker`` in INIT's endpoints. Yields (the target, on the broker's network for an image; the endpoints).
    Everything it started is removed at the end, however the block ends."""
    if broker is None:
        yield target, {}
    elif target.image is None:
        with local_broker(broker, workdir) as endpoints:
            yield target, endpoints
    else:
        with docker_broker(broker, f"cosim-conformance-{os.getpid()}-{os.urandom(3).hex()}") as (network, endpoints):
            yield replace(target, network=network), endpoints


def iter_check(target: Target | str | Sequence[str], *, config: dict[str, Any] | None = None,
               watchdog_s: float = WATCHDOG_S, cases: Sequence[str] | None = None, broker: str | None = None,
               init: Mapping[str, Any] | None = None) -> Generator[CaseResult, None, None]:
    """Run the cases one by one (``cases``: a subset, by name), yielding each result as it is known. ``broker``: the
    node id of an MQTT broker to provide (see ``infrastructure``); ``init``: INIT fields to set (``init_fields``).
    The arguments are checked at once (UsageError); the cases run as the iterator is read. Close it
    (``contextlib.closing``) to stop early: what was started is removed then."""
    resolved = as_target(target)
    if broker is not None:
        check_broker_node(broker)
    validator = Validator()
    init_fields(init, {broker: {"host": "127.0.0.1", "port": BROKER_PORT}} if broker else {}, validator)  # first
    return _run(resolved, dict(config or {}), watchdog_s, cases or list(CASES), broker, init, validator)


def _run(target: Target, config: dict[str, Any], watchdog_s: float, cases: Sequence[str], broker: str | None,
         init: Mapping[str, Any] | None, validator: Validator) -> Generator[CaseResult, None, None]:
    with tempfile.TemporaryDirectory(prefix="cosim-conformance-") as workdir, \
            infrastructure(target, Path(workdir), broker) as (checked, endpoints):
        probe = Probe(checked, Path(workdir), config, watchdog_s, init_fields(init, endpoints, validator), validator)
        for name in cases:
            try:
                outcome = CASES[name](probe)
                result = CaseResult(name, SKIP if outcome == SKIP else PASS)
            except CaseFailed as failure:
                result = CaseResult(name, FAIL, str(failure))
            finally:
                probe.close()
            yield result


def check(target: Target | str | Sequence[str], *, config: dict[str, Any] | None = None,
          watchdog_s: float = WATCHDOG_S, cases: Sequence[str] | None = None, broker: str | None = None,
          init: Mapping[str, Any] | None = None) -> list[CaseResult]:
    """Check ``target`` (an image name, or a command as a list of arguments) against every case (see
    ``iter_check``)."""
    with contextlib.closing(iter_check(target, config=config, watchdog_s=watchdog_s, cases=cases, broker=broker,
                                       init=init)) as results:
        return list(results)


def table_header(target: Target, broker: str | None = None) -> str:
    around = f" (with an MQTT broker, {broker!r} in INIT's endpoints)" if broker else ""
    return f"cosim conformance: {target.label}{around}\n  {'case':<27} result"


def table_row(result: CaseResult) -> str:
    row = f"  {result.case:<27} {result.status}"
    return row + (f"\n  {'':<27}   {result.detail}" if result.detail else "")


def table_summary(results: Sequence[CaseResult]) -> str:
    counts = {status: sum(r.status == status for r in results) for status in (PASS, FAIL, SKIP)}
    return (f"{counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped (capabilities not declared)")


def table(target: Target | str | Sequence[str], results: Sequence[CaseResult]) -> str:
    """The printable table of ``results``."""
    resolved = target if isinstance(target, Target) else (
        Target(image=target) if isinstance(target, str) else Target(command=tuple(target)))
    return "\n".join([table_header(resolved), *map(table_row, results), table_summary(results)]) + "\n"


def _json_object(value: str | dict[str, Any] | None, option: str) -> dict[str, Any] | None:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as error:
            raise UsageError(f"conformance: {option} is not JSON: {error}") from None
    if value is not None and not isinstance(value, dict):
        raise UsageError(f"conformance: {option} must be a JSON object")
    return value


def main(target: str | None, command: list[str], out: TextIO, *, config: str | dict[str, Any] | None = None,
         watchdog_s: float = WATCHDOG_S, broker: str | None = None, init: str | dict[str, Any] | None = None) -> int:
    """`cosim conformance IMAGE` / `cosim conformance -- COMMAND...`: print the table row by row; 0 when every case
    passed or was skipped, 1 on a failure. Raises UsageError (and EngineUnavailable) for a target that cannot run.
    ``config``: the INIT config (a dict, or JSON text); ``broker``: provide an MQTT broker under this node id
    (--broker); ``init``: INIT fields to set (--init, a dict or JSON text)."""
    if target and command:
        raise UsageError("conformance: give an image or a command after --, not both")
    config = _json_object(config, "--config")
    init = _json_object(init, "--init")
    resolved = as_target(target if target else command)
    rows = iter_check(resolved, config=config, watchdog_s=watchdog_s, broker=broker, init=init)
    out.write(table_header(resolved, broker) + "\n")
    out.flush()
    results = []
    try:
        # Ctrl-C or SIGTERM ends the check through its teardown (processes, containers, the broker, its network);
        # a second one meanwhile is ignored, so it cannot cut the teardown short.
        with interrupts_once(), contextlib.closing(rows):
            for result in rows:
                results.append(result)
                out.write(table_row(result) + "\n")
                out.flush()
    except KeyboardInterrupt:
        raise Interrupted(f"conformance: interrupted after {len(results)} of {len(CASES)} cases; what the check "
                          f"started is removed") from None
    out.write(table_summary(results) + "\n")
    return 1 if any(result.failed for result in results) else 0
