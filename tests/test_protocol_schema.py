"""The written protocol (docs/protocol.md, schemas/protocol.schema.json, docs/trace-format.md) against the code.

Both ends are checked: what cosim.protocol and the coordinator write to a service, and what the adapter (and the
services built on it, or on nothing at all: the Node.js and jq sketches in docs/protocol.md) write back.
"""

from __future__ import annotations

import importlib.util
import json
import re
from collections import deque
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import protocol_adapter
import pytest
from jsonschema import Draft202012Validator
from protocol_adapter import CoordinatorProtocolAdapter
from referencing import Registry, Resource

from cosim import protocol
from cosim.coordinator import Coordinator
from cosim.errors import NodeFailure
from cosim.loading import load
from cosim.run import build_nodes, run
from cosim.seeds import node_seed
from cosim.trace import RECORD_KINDS, TraceWriter, base_manifest
from cosim.tracediff import hashed_line
from cosim.transport import TransportClosed
from cosim_service import Service, Session
from tests.service_process import ROOT, ServiceProcess
from tests.skip_policy import host_tool

SCHEMA_PATH = ROOT / "schemas" / "protocol.schema.json"
PROTOCOL_DOC = ROOT / "docs" / "protocol.md"
TRACE_DOC = ROOT / "docs" / "trace-format.md"
ECHO = ROOT / "containers" / "echo" / "service.py"

SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
REGISTRY = Registry().with_resource(SCHEMA["$id"], Resource.from_contents(SCHEMA))

COORDINATOR_TYPES = ("INIT", "ADVANCE", "CONFIGURE", "SNAPSHOT", "RESTORE", "SHUTDOWN")
SERVICE_TYPES = ("READY", "DONE", "CONFIGURED", "SNAPSHOT_STATE", "RESTORED", "ERROR")


def validator(definition: str | None = None) -> Draft202012Validator:
    """The whole schema, or one of its $defs."""
    ref = SCHEMA["$id"] + (f"#/$defs/{definition}" if definition else "")
    return Draft202012Validator({"$ref": ref}, registry=REGISTRY)


MESSAGE = validator()
FROM_COORDINATOR = validator("coordinator_message")
FROM_SERVICE = validator("service_message")


def assert_valid(message: Any, direction: Draft202012Validator = MESSAGE) -> None:
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in direction.iter_errors(message)]
    assert not errors, f"{message!r} does not validate:\n" + "\n".join(errors)
    # Valid for its own type and no other: the top-level oneOf is decided by `type`.
    matches = [kind for kind in COORDINATOR_TYPES + SERVICE_TYPES if validator(kind).is_valid(message)]
    assert matches == [message["type"]]
    protocol.canonical(message)  # strict JSON: no NaN/Infinity anywhere


def strict_line(line: bytes | str) -> Any:
    """Decode one wire line the way the coordinator does (strict JSON, one line, newline-terminated)."""
    raw = line.encode("utf-8") if isinstance(line, str) else line
    assert raw.endswith(b"\n") and raw.count(b"\n") == 1, raw
    return protocol.decode(raw)


def test_schema_is_valid_json_schema_2020_12() -> None:
    Draft202012Validator.check_schema(SCHEMA)
    assert SCHEMA["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    for name in COORDINATOR_TYPES + SERVICE_TYPES:
        assert SCHEMA["$defs"][name]["properties"]["type"] == {"const": name}


def test_both_ends_and_the_schema_speak_the_same_version() -> None:
    assert protocol.VERSION == protocol_adapter.PROTOCOL_VERSION == SCHEMA["$defs"]["protocol_version"]["const"]


# -- coordinator -> service ------------------------------------------------------------------------------------

def _delivered(time_us: int, source: str, seq: int, sent_us: int, data: Any) -> dict[str, Any]:
    """An input event shaped exactly as Coordinator._due builds it."""
    return {"type": "reading", "time_us": time_us, "source": source, "seq": seq, "sent_us": sent_us, "data": data}


@pytest.mark.parametrize("message", [
    protocol.init_message("echo", 1, {}, {}),
    protocol.init_message("ml-inference-2", node_seed(2**53 - 1, "ml-inference-2"),
                          {"threshold": 0.5, "nested": {"list": [1, 2.5, None]}},
                          {"broker": {"host": "mqtt-broker", "port": 1883}}),
    protocol.init_message("gw", 2**53 - 1, {"ü": "ß"}, {"broker": {"host": "127.0.0.1", "port": 41234}}),
    protocol.advance_message(1000, []),
    protocol.advance_message(2000, [_delivered(1500, "sensor", 0, 500, {"v": 1}),
                                    _delivered(1500, "sensor-b", 3, 400, None)]),
    protocol.advance_message(3000, [], ["gw-a", "gw-b-1"], ["cloud", "gw-a", "gw-b-1", "gw-b-2"]),
    protocol.advance_message(4000, [], []),
    protocol.SHUTDOWN,
], ids=["init-minimal", "init-full", "init-max-seed", "advance-empty", "advance-events", "advance-group-first",
        "advance-group", "shutdown"])
def test_messages_from_cosim_protocol_validate(message: dict[str, Any]) -> None:
    assert_valid(strict_line(protocol.encode(message)), FROM_COORDINATOR)


# -- service -> coordinator, from the adapter ------------------------------------------------------------------

INIT = protocol.init_message("svc", 7, {"k": 1}, {})


def _adapter(callback: protocol_adapter.Callback | None = None, **kwargs: Any) -> CoordinatorProtocolAdapter:
    return CoordinatorProtocolAdapter(callback or (lambda current, target, events: []), **kwargs)


def _ready(callback: protocol_adapter.Callback | None = None, **kwargs: Any) -> CoordinatorProtocolAdapter:
    adapter = _adapter(callback, **kwargs)
    assert adapter.handle(INIT)["type"] == "READY"
    return adapter


def _wire(reply: dict[str, Any] | None) -> Any:
    """The reply as the adapter writes it, read back as the coordinator reads it."""
    assert reply is not None
    return strict_line(protocol_adapter.encode(reply))


def test_adapter_ready_validates() -> None:
    ready = _wire(_adapter(capabilities=["mqtt", "echo"]).handle(INIT))
    assert_valid(ready, FROM_SERVICE)
    assert ready == {"type": "READY", "protocol": 1, "time_us": 0, "capabilities": ["echo", "mqtt"]}
    assert_valid(_wire(_adapter().handle(INIT)), FROM_SERVICE)  # no capabilities: []


def test_a_barrier_group_is_declared_in_ready_and_its_peers_reach_the_callback() -> None:
    calls: list[tuple[Any, Any]] = []

    def callback(current: int, target: int, events: list[dict[str, Any]], *, peers: Any, members: Any) -> list[Any]:
        calls.append((peers, members))
        return []

    adapter = _adapter(callback, barrier_group=lambda: "mqtt-broker", barrier_publishes="on_input")  # type: ignore[arg-type]
    ready = _wire(adapter.handle(INIT))
    assert_valid(ready, FROM_SERVICE)
    assert ready["barrier_group"] == "mqtt-broker" and ready["barrier_publishes"] == "on_input"
    for message in (protocol.advance_message(1000, [], ["a"], ["a", "b"]), protocol.advance_message(2000, [], [])):
        assert_valid(_wire(adapter.handle(strict_line(protocol.encode(message)))), FROM_SERVICE)
    assert calls == [(["a"], ["a", "b"]), ([], ["a", "b"])]  # members: the latest list received
    bad = adapter.handle({"type": "ADVANCE", "time_us": 3000, "events": [], "peers": "a"})
    assert bad is not None and bad["error"] == "bad_message" and "peers must be a list" in bad["detail"]


def test_adapter_done_with_events_validates() -> None:
    def callback(current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = [{"type": "echo", "time_us": e["time_us"], "data": {"of": e["data"]}} for e in events]
        out.append({"type": "tick"})  # no time_us: the adapter stamps the target
        out.append({"type": "late", "time_us": target + 1500, "data": None})  # held for a later DONE
        return out

    adapter = _ready(callback)
    first = _wire(adapter.handle(protocol.advance_message(
        1000, [_delivered(400, "sensor", 0, 1, {"x": 1.5}), _delivered(900, "a-1", 4, 2, None)])))
    assert_valid(first, FROM_SERVICE)
    assert [(e["type"], e["time_us"]) for e in first["events"]] == [("echo", 400), ("echo", 900), ("tick", 1000)]
    second = _wire(adapter.handle(protocol.advance_message(2000, [])))
    assert_valid(second, FROM_SERVICE)
    third = _wire(adapter.handle(protocol.advance_message(3000, [])))
    assert_valid(third, FROM_SERVICE)
    assert ("late", 2500) in [(e["type"], e["time_us"]) for e in third["events"]]  # the held output, in its window
    empty = _wire(_ready().handle(protocol.advance_message(1000, [])))
    assert_valid(empty, FROM_SERVICE)
    assert empty == {"type": "DONE", "time_us": 1000, "events": []}


def _raise(*args: Any) -> Any:
    raise RuntimeError("boom")


def test_configure_merges_new_keys_and_a_restart_resumes_the_clock() -> None:
    seen: list[Any] = []
    adapter = _adapter(on_configure=seen.append)
    ready = _wire(adapter.handle(INIT))
    assert_valid(ready, FROM_SERVICE)
    assert ready["capabilities"] == ["configure"]  # declared by the adapter when there is a hook
    assert adapter.handle(protocol.advance_message(1000, []))["type"] == "DONE"
    message = protocol.configure_message(1000, {"x": 3}, {"broker": None})
    assert_valid(strict_line(protocol.encode(message)), FROM_COORDINATOR)
    reply = _wire(adapter.handle(message))
    assert_valid(reply, FROM_SERVICE)
    assert reply == {"type": "CONFIGURED", "time_us": 1000}
    assert seen == [message] and adapter.config == {"k": 1, "x": 3} and adapter.endpoints == {"broker": None}
    restarted = _adapter()
    init = protocol.init_message("svc", 7, {}, {}, time_us=6000, restart=1)
    assert_valid(strict_line(protocol.encode(init)), FROM_COORDINATOR)
    assert restarted.handle(init)["type"] == "READY" and restarted.current_time_us == 6000
    late = restarted.handle({"type": "ADVANCE", "time_us": 7000, "events": [_delivered(5000, "s", 0, 1, None)]})
    assert late is not None and late["error"] == "event_outside_window"  # its window starts at 6000 us


def _backwards() -> dict[str, Any] | None:
    adapter = _ready()
    assert adapter.handle(protocol.advance_message(2000, []))["type"] == "DONE"
    return adapter.handle(protocol.advance_message(1000, []))


# (code, how to provoke it). Every code the adapter can produce appears here (checked below).
ERROR_CASES: list[tuple[str, str, Callable[[], dict[str, Any] | None]]] = [
    ("bad_json", "not-json", lambda: _adapter().handle_line("{not json\n")),
    ("bad_json", "truncated", lambda: _ready().handle_line('{"type":"ADVANCE","time_us":1000,')),
    ("bad_message", "not-an-object", lambda: _adapter().handle(["INIT"])),
    ("bad_message", "no-type", lambda: _adapter().handle({"time_us": 0})),
    ("bad_message", "init-time", lambda: _adapter().handle({**INIT, "time_us": 5})),
    ("bad_message", "init-config", lambda: _adapter().handle({**INIT, "config": [1]})),
    ("bad_message", "advance-time", lambda: _ready().handle({"type": "ADVANCE", "time_us": "1000", "events": []})),
    ("bad_message", "advance-events", lambda: _ready().handle({"type": "ADVANCE", "time_us": 1000, "events": {}})),
    ("unknown_type", "ping", lambda: _ready().handle({"type": "PING"})),
    ("not_initialized", "advance-first", lambda: _adapter().handle(protocol.advance_message(1000, []))),
    ("already_initialized", "init-twice", lambda: _ready().handle(INIT)),
    ("time_backwards", "backwards", _backwards),
    ("bad_event", "event-time",
     lambda: _ready().handle({"type": "ADVANCE", "time_us": 1000, "events": [{"time_us": None}]})),
    ("event_outside_window", "late-event",
     lambda: _ready().handle(protocol.advance_message(1000, [_delivered(1001, "s", 0, 1, None)]))),
    ("protocol_version", "v2", lambda: _adapter().handle({**INIT, "protocol": 2})),
    ("init_failed", "hook-raises", lambda: _adapter(on_init=_raise).handle(INIT)),
    ("callback_failed", "callback-raises", lambda: _ready(_raise).handle(protocol.advance_message(1000, []))),
    ("bad_output", "in-the-past", lambda: _ready(lambda c, t, e: [{"type": "x", "time_us": c}]).handle(
        protocol.advance_message(1000, []))),
    ("bad_output", "no-type",
     lambda: _ready(lambda c, t, e: [{"data": {}}]).handle(protocol.advance_message(1000, []))),
    ("configure_failed", "configure-hook-raises",
     lambda: _ready(on_configure=_raise).handle(protocol.configure_message(0, {"k": 2}))),
    ("unsupported", "configure-without-hook", lambda: _ready().handle(protocol.configure_message(0, {"k": 2}))),
    ("bad_message", "configure-in-the-past",
     lambda: _ready(on_configure=lambda m: None).handle(protocol.configure_message(-1, {}))),
    ("bad_message", "restart-without-count", lambda: _adapter().handle({**INIT, "time_us": 5, "restart": 0})),
    ("bad_wakeup", "wakeup-in-the-window",
     lambda: _ready(wakeup=lambda target: target or None).handle(protocol.advance_message(1000, []))),
    ("snapshot_failed", "snapshot-hook-raises",
     lambda: _ready(on_snapshot=_raise, on_restore=lambda s: None).handle(protocol.snapshot_message(0))),
    ("restore_failed", "restore-hook-raises",
     lambda: _ready(on_snapshot=lambda: {}, on_restore=_raise).handle(protocol.restore_message(5000, {"service": 1}))),
    ("unsupported", "snapshot-without-hooks", lambda: _ready().handle(protocol.snapshot_message(0))),
    ("bad_message", "snapshot-at-another-time",
     lambda: _ready(on_snapshot=lambda: {}, on_restore=lambda s: None).handle(protocol.snapshot_message(1000))),
]


def test_snapshot_and_restore_carry_the_state_into_a_fresh_adapter() -> None:
    """SNAPSHOT_STATE holds the adapter's held outputs, config and the hook's state; RESTORE after INIT puts them
    back and sets the clock: the fresh adapter then answers the next window as the old one would have."""
    kept: dict[str, Any] = {}

    def delayed(current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"type": "late", "time_us": target + 1500}]  # held past the window

    old = _adapter(delayed, on_snapshot=lambda: {"n": 7}, on_restore=kept.update, on_configure=lambda m: None)
    ready = old.handle(INIT)
    assert_valid(ready, FROM_SERVICE)
    assert ready["capabilities"] == ["configure", "snapshot"]
    old.handle(protocol.configure_message(0, {"x": 1}))
    assert old.handle(protocol.advance_message(1000, []))["events"] == []
    request = protocol.snapshot_message(1000)
    assert_valid(strict_line(protocol.encode(request)), FROM_COORDINATOR)
    state = _wire(old.handle(request))
    assert_valid(state, FROM_SERVICE)
    assert state["state"]["service"] == {"n": 7} and state["state"]["held"] == [{"type": "late", "time_us": 2500}]
    fresh = _adapter(delayed, on_snapshot=lambda: {}, on_restore=kept.update, on_configure=lambda m: None)
    fresh.handle(INIT)
    restore = protocol.restore_message(1000, state["state"])
    assert_valid(strict_line(protocol.encode(restore)), FROM_COORDINATOR)
    restored = _wire(fresh.handle(restore))
    assert_valid(restored, FROM_SERVICE)
    assert restored == {"type": "RESTORED", "time_us": 1000}
    assert kept == {"n": 7} and fresh.current_time_us == 1000 and fresh.config == old.config
    assert fresh.handle(protocol.advance_message(3000, [])) == old.handle(protocol.advance_message(3000, []))


def documented_error_codes() -> dict[str, bool]:
    """code -> fatal, from the table in docs/protocol.md section 7.1."""
    section = PROTOCOL_DOC.read_text(encoding="utf-8").split("### 7.1", 1)[1].split("###", 1)[0]
    rows = re.findall(r"^\|\s*`([a-z_]+)`\s*\|\s*(yes|no)\s*\|", section, re.MULTILINE)
    return {code: fatal == "yes" for code, fatal in rows}


@pytest.mark.parametrize("code,provoke", [(code, provoke) for code, _, provoke in ERROR_CASES],
                         ids=[f"{code}-{case}" for code, case, _ in ERROR_CASES])
def test_adapter_errors_validate_and_match_the_documented_table(code: str, provoke: Callable[[], Any]) -> None:
    reply = _wire(provoke())
    assert_valid(reply, FROM_SERVICE)
    assert reply["error"] == code
    assert reply["fatal"] is documented_error_codes()[code]
    assert reply["detail"] and "\n" not in reply["detail"]


def test_every_adapter_error_code_is_documented_and_tested() -> None:
    source = (ROOT / "containers" / "protocol_adapter.py").read_text(encoding="utf-8")
    raised = set(re.findall(r'ProtocolError\(\s*"([a-z_]+)"', source))
    assert raised == set(documented_error_codes()) == {code for code, _, _ in ERROR_CASES}


# -- malformed messages --------------------------------------------------------------------------------------

DONE_OK = {"type": "DONE", "time_us": 1000, "events": [{"type": "echo", "time_us": 1000, "data": {}}]}
ADVANCE_OK = protocol.advance_message(1000, [_delivered(500, "sensor", 0, 1, {})])


@pytest.mark.parametrize("definition,message,keyword,path", [
    pytest.param("DONE", {**DONE_OK, "events": [{"type": "echo", "data": {}}]}, "required", ["events", 0],
                 id="done-event-without-time"),
    pytest.param("DONE", {**DONE_OK, "events": [{"type": "", "time_us": 1000}]}, "pattern", ["events", 0, "type"],
                 id="done-event-empty-type"),
    pytest.param("DONE", {**DONE_OK, "events": [{"type": "echo", "time_us": 10.5}]}, "type", ["events", 0, "time_us"],
                 id="done-event-float-time"),
    pytest.param("DONE", {**DONE_OK, "events": [{"type": "echo", "time_us": 1000, "data": [1, 2]}]}, "type", ["events", 0, "data"],
                 id="done-event-list-data"),
    pytest.param("DONE", {**DONE_OK, "time_us": 0}, "minimum", ["time_us"], id="done-at-zero"),
    pytest.param("DONE", {**DONE_OK, "note": "hi"}, "additionalProperties", [], id="done-extra-field"),
    pytest.param("ERROR", {"type": "ERROR", "error": "bad_json", "detail": "x"}, "required", [],
                 id="error-without-fatal"),
    pytest.param("ERROR", {"type": "ERROR", "error": "bad_json", "detail": "x", "fatal": "no"}, "type", ["fatal"],
                 id="error-fatal-not-boolean"),
    pytest.param("ERROR", {"type": "ERROR", "error": "Bad JSON", "detail": "x", "fatal": False}, "pattern", ["error"],
                 id="error-code-not-snake-case"),
    pytest.param("READY", {"type": "READY", "protocol": 2, "time_us": 0, "capabilities": []}, "const", ["protocol"],
                 id="ready-protocol-2"),
    pytest.param("READY", {"type": "READY", "protocol": 1, "time_us": 0}, "required", [],
                 id="ready-without-capabilities"),
    pytest.param("READY", {"type": "READY", "protocol": 1, "time_us": 0, "capabilities": ["a", "a"]}, "uniqueItems", ["capabilities"],
                 id="ready-duplicate-capabilities"),
    pytest.param("INIT", {**INIT, "seed": 2**53}, "maximum", ["seed"], id="init-seed-beyond-53-bits"),
    pytest.param("INIT", {**INIT, "seed": -1}, "minimum", ["seed"], id="init-negative-seed"),
    pytest.param("INIT", {**INIT, "time_us": 1000}, "const", ["time_us"], id="init-time-not-zero"),
    pytest.param("INIT", {**INIT, "endpoints": {"broker": {"host": "b"}}}, "required", ["endpoints", "broker"],
                 id="init-endpoint-without-port"),
    pytest.param("INIT", {k: v for k, v in INIT.items() if k != "config"}, "required", [], id="init-without-config"),
    pytest.param("ADVANCE", {**ADVANCE_OK, "events": [{k: v for k, v in ADVANCE_OK["events"][0].items() if k != "seq"}]},
     "required", ["events", 0], id="advance-event-without-seq"),
    pytest.param("ADVANCE", {**ADVANCE_OK, "events": [{**ADVANCE_OK["events"][0], "data": "text"}]}, "type", ["events", 0, "data"],
                 id="advance-event-string-data"),
    pytest.param("ADVANCE", {**ADVANCE_OK, "events": [{**ADVANCE_OK["events"][0], "extra": 1}]}, "additionalProperties", ["events", 0],
                 id="advance-event-extra-field"),
    pytest.param("ADVANCE", {"type": "ADVANCE", "time_us": 1000}, "required", [], id="advance-without-events"),
    pytest.param("SHUTDOWN", {"type": "SHUTDOWN", "flush": True}, "additionalProperties", [],
                 id="shutdown-extra-field"),
])
def test_malformed_messages_are_rejected_for_the_right_reason(definition: str, message: dict[str, Any], keyword: str,
                                                              path: list[Any]) -> None:
    errors = list(validator(definition).iter_errors(message))
    assert [(e.validator, list(e.absolute_path)) for e in errors] == [(keyword, path)], errors
    assert not MESSAGE.is_valid(message)


@pytest.mark.parametrize("message", [
    {"type": "PING"}, {"time_us": 0}, [], "SHUTDOWN", {"type": "shutdown"},
    {"type": "DONE", "time_us": 1000, "events": [], "capabilities": []},  # a READY field on a DONE
])
def test_messages_of_no_known_type_are_rejected(message: Any) -> None:
    assert not MESSAGE.is_valid(message)


# -- whole sessions -------------------------------------------------------------------------------------------

def _session(service: ServiceProcess, config: dict[str, Any], *, probe_bad_json: bool = True) -> list[dict[str, Any]]:
    """INIT, several ADVANCEs with events, a survivable ERROR, SHUTDOWN; every reply validated."""
    replies = [service.init(config, node_id="echo", seed=node_seed(42, "echo"),
                            endpoints={"broker": {"host": "127.0.0.1", "port": 1883}})]
    replies.append(service.advance(1000, []))
    replies.append(service.advance(2000, [_delivered(1500, "a", 0, 400, {"v": [1, 2.5]}),
                                          _delivered(1500, "b", 0, 300, None),
                                          _delivered(2000, "a", 1, 900, {"ü": "€"})]))
    if probe_bad_json:
        error = service.request("this is not json")
        assert_valid(error, FROM_SERVICE)
        assert error["error"] == "bad_json" and error["fatal"] is False
    replies.append(service.advance(3000, [_delivered(2001, "a", 2, 1001, {})]))
    for reply in replies:
        assert_valid(reply, FROM_SERVICE)
    assert [r["type"] for r in replies] == ["READY", "DONE", "DONE", "DONE"]
    assert service.shutdown() == 0
    assert service.proc.stdout is not None
    assert service.proc.stdout.read() == b"", "a service must write nothing after SHUTDOWN"
    return replies


def test_a_whole_echo_session_writes_only_valid_lines() -> None:
    with ServiceProcess(ECHO) as service:
        replies = _session(service, {"tick_us": 700})
    ticks = [e["time_us"] for r in replies if r["type"] == "DONE" for e in r["events"] if e["type"] == "tick"]
    assert ticks == [700, 1400, 2100, 2800]
    echoes = [e["time_us"] for r in replies if r["type"] == "DONE" for e in r["events"] if e["type"] == "echo"]
    assert echoes == [1500, 1500, 2000, 2001]


def _sketch(language: str) -> str:
    """The code block of the given language in docs/protocol.md (there is exactly one)."""
    text = PROTOCOL_DOC.read_text(encoding="utf-8")
    blocks = re.findall(rf"^```{language}\n(.*?)^```", text, re.MULTILINE | re.DOTALL)
    assert len(blocks) == 1, f"expected one ```{language} block in docs/protocol.md"
    return blocks[0]


def _sketch_command(language: str, directory: Path) -> list[str]:
    if language == "javascript":
        node = host_tool("node")
        path = directory / "echo.js"
        path.write_text(_sketch("javascript"), encoding="utf-8")
        return [node, str(path)]
    jq = host_tool("jq")
    path = directory / "echo.jq"
    path.write_text(_sketch("jq"), encoding="utf-8")
    return [jq, "-cn", "--unbuffered", "-f", str(path)]


@pytest.mark.parametrize("language", ["javascript", "jq"])
def test_the_documented_sketches_in_other_languages_speak_the_protocol(language: str, tmp_path: Path) -> None:
    command = _sketch_command(language, tmp_path)
    with ServiceProcess(command=command) as service:
        # The jq sketch ends at malformed input (as documented), so it is not probed with any.
        replies = _session(service, {}, probe_bad_json=language != "jq")
    assert [len(r["events"]) for r in replies if r["type"] == "DONE"] == [0, 3, 1]


# -- the coordinator's real session, in process ----------------------------------------------------------------

class AdapterTransport:
    """A Transport whose far end is an adapter or an SDK session in this process; records every line in both
    directions."""

    def __init__(self, name: str, adapter: CoordinatorProtocolAdapter | Session) -> None:
        self.name = name
        self.adapter = adapter
        self.to_service: list[bytes] = []
        self.from_service: list[bytes] = []
        self._replies: deque[bytes] = deque()

    def send(self, line: bytes) -> None:
        self.to_service.append(line)
        if isinstance(self.adapter, Session):
            text = self.adapter.receive(line)
        else:
            reply = self.adapter.handle_line(line.decode("utf-8"))
            text = None if reply is None else protocol_adapter.encode(reply)
        if text is not None:
            out = text.encode("utf-8")
            self.from_service.append(out)
            self._replies.append(out)

    def receive(self, deadline: float) -> bytes:
        if not self._replies:
            raise TransportClosed("no reply")
        return self._replies.popleft().rstrip(b"\n")

    def exit_code(self) -> int | None:
        return self.adapter.exit_code

    def wait_exit(self, deadline: float) -> int | None:
        return self.adapter.exit_code

    def log_tail(self, lines: int = 15) -> str:
        return ""

    def close(self, grace_s: float = 0.0) -> None:
        pass


def _echo_module() -> Any:
    """containers/echo/service.py as a fresh module."""
    spec = importlib.util.spec_from_file_location("echo_service_in_process", ECHO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SCENARIO = """\
name: protocol-spec
seed: 11
duration_us: {duration}
quantum_us: 1000
nodes:
  - id: sensor
    kind: sensor
    period_us: 700
    event_type: reading
  - id: echo
    kind: service
    build: {echo_dir}
    config: {config}
{local_command}  - id: delay
    kind: service
    build: {echo_dir}
  - id: sink
    kind: sink
routes:
  - {{from: sensor, to: [echo, delay]}}
  - {{from: echo, to: [sink], events: [echo]}}
  - {{from: delay, to: [sink], events: [processed]}}
network:
  default_link: {{latency_us: 1000, jitter_us: 800, loss: 0.15}}
"""


def _scenario(tmp_path: Path, name: str, *, duration: int = 12000, local_command: list[str] | None = None,
              config: str = "{tick_us: 1300}") -> Path:
    path = tmp_path / f"{name}.yaml"
    command = f"    local_command: [{', '.join(local_command)}]\n" if local_command else ""
    path.write_text(SCENARIO.format(duration=duration, echo_dir=ECHO.parent, local_command=command,
                                    config=config), encoding="utf-8")
    return path


def test_every_line_of_a_coordinator_run_validates(tmp_path: Path) -> None:
    scenario = load(_scenario(tmp_path, "in-process"))
    class SteppedEcho(_echo_module().Echo):  # type: ignore[name-defined,misc]
        wakeup = Service.wakeup  # no promise: without next-event advance, it is stepped every quantum


    def delay(current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # A modelled 2.5 ms processing time: the adapter holds each output until its window.
        return [{"type": "processed", "time_us": e["time_us"] + 2500, "data": {"seq": e["seq"]}} for e in events]

    transports = {
        "echo": AdapterTransport("echo", SteppedEcho().protocol_session),  # the SDK's session
        "delay": AdapterTransport("delay", CoordinatorProtocolAdapter(delay)),
    }
    # The run's own node factory, over a stand-in runtime whose transports are in-process adapters.
    nodes = build_nodes(scenario, SimpleNamespace(transport=transports.__getitem__), watchdog_s=5)  # type: ignore[arg-type]
    trace_path = tmp_path / "in-process.jsonl"
    writer = TraceWriter(trace_path, base_manifest(scenario.name, scenario.sha256, scenario.seed, scenario.duration_us,
                                                   scenario.quantum_us, {node.id: node.kind for node in scenario.nodes},
                                                   compose_sha256="0" * 64))
    endpoints = {"mqtt-broker": {"host": "mqtt-broker", "port": 1883}}
    Coordinator(scenario, nodes, writer, endpoints=endpoints).run()
    writer.close()

    for transport in transports.values():
        sent = [strict_line(line) for line in transport.to_service]
        received = [strict_line(line) for line in transport.from_service]
        for message in sent:
            assert_valid(message, FROM_COORDINATOR)
        for message in received:
            assert_valid(message, FROM_SERVICE)
        assert [m["type"] for m in sent] == ["INIT"] + ["ADVANCE"] * scenario.steps + ["SHUTDOWN"]
        assert [m["type"] for m in received] == ["READY"] + ["DONE"] * scenario.steps
        assert sent[0]["endpoints"] == endpoints and sent[0]["seed"] == node_seed(11, transport.name)
        assert any(m["events"] for m in sent[1:-1]) and any(m["events"] for m in received[1:])
        for advance in sent[1:-1]:  # the documented input order
            keys = [(e["time_us"], e["source"], e["seq"]) for e in advance["events"]]
            assert keys == sorted(keys)
    delayed = [e for m in transports["delay"].from_service for e in strict_line(m).get("events", [])]
    inputs = [e for m in transports["delay"].to_service for e in strict_line(m).get("events", [])]
    assert [e["time_us"] for e in delayed] == [e["time_us"] + 2500 for e in inputs
                                               if e["time_us"] + 2500 <= scenario.duration_us]
    check_trace_against_the_documentation(trace_path)


# -- the trace, against docs/trace-format.md -------------------------------------------------------------------

def documented_trace_fields(optional: bool = False) -> dict[str, set[str]]:
    """record kind -> its fields, from the tables under each ### `kind` heading of docs/trace-format.md; with
    ``optional``, only the fields whose meaning starts "Only" (present in some records of that kind)."""
    fields: dict[str, set[str]] = {}
    text = TRACE_DOC.read_text(encoding="utf-8") + "\n##"
    for heading, body in re.findall(r"^### `([a-z]+)`[^\n]*\n(.*?)(?=^##)", text, re.MULTILINE | re.DOTALL):
        rows = [line.split("|") for line in body.splitlines() if line.startswith("| `")]
        fields[heading] = {name for cells in rows if not optional or cells[3].strip().startswith("Only")
                           for name in re.findall(r"`([a-z_0-9]+)`", cells[1])}
    return fields


def check_trace_against_the_documentation(path: Path) -> list[dict[str, Any]]:
    documented, optional = documented_trace_fields(), documented_trace_fields(optional=True)
    assert set(documented) == set(RECORD_KINDS)
    lines = path.read_bytes().splitlines(keepends=True)
    records = [strict_line(line) for line in lines]
    for line, record in zip(lines, records):
        assert line == (protocol.canonical(record) + "\n").encode("utf-8"), "not canonical JSON"
        kind = record["record"]
        assert documented[kind] - optional[kind] <= set(record) <= documented[kind], record
    assert records[0]["record"] == "header" and records[-1]["record"] in ("footer", "error")
    return records


@pytest.mark.parametrize("language", ["javascript", "jq"])
def test_traces_are_the_same_whatever_language_the_service_is_written_in(tmp_path: Path, language: str) -> None:
    """The Python echo against the Node.js or the jq sketch from docs/protocol.md (no ticks: the sketches have
    none). One language each, so that a missing `node` does not take the jq comparison with it."""
    traces = {}
    for name, command in (("python", None), (language, _sketch_command(language, tmp_path))):
        scenario = _scenario(tmp_path, name, local_command=command, config="{}")
        trace = tmp_path / f"{name}.jsonl"
        run(scenario, runtime="local", trace_path=trace, watchdog_s=20)
        records = check_trace_against_the_documentation(trace)
        assert {r["record"] for r in records} >= {"sent", "delivered", "dropped", "unroutable", "footer"}
        # The header names the scenario file's hash. The sketches don't declare next-event advance (the Python
        # echo does): only the footer's executed counts may differ, every record is the same.
        traces[name] = [hashed_line(line, index, across_modes=True)
                        for index, line in enumerate(trace.read_bytes().split(b"\n")) if index]
    assert traces[language] == traces["python"]


def test_a_failed_run_ends_with_a_documented_error_record(tmp_path: Path) -> None:
    scenario = _scenario(tmp_path, "failing", config="{tick_us: 1300, raise_at_us: 4500}")
    trace = tmp_path / "failing.jsonl"
    with pytest.raises(NodeFailure, match="callback_failed"):
        run(scenario, runtime="local", trace_path=trace, watchdog_s=20)
    records = check_trace_against_the_documentation(trace)
    assert records[-1]["record"] == "error"
    assert records[-1]["error"] == "node_failure" and records[-1]["node"] == "echo"
    assert records[-1]["time_us"] == 4000  # the last completed step


# -- one seed range everywhere: 0 ... 2**53 - 1 ------------------------------------------------------------------

SEED_MAX = 2**53 - 1  # every JSON parser (JavaScript numbers, jq) reads integers up to here exactly


def test_one_seed_range_in_the_schemas_the_derivation_and_the_docs() -> None:
    scenario_schema = json.loads((ROOT / "schemas" / "scenario.schema.json").read_text(encoding="utf-8"))
    init_seed = SCHEMA["$defs"]["INIT"]["properties"]["seed"]
    assert (init_seed["minimum"], init_seed["maximum"]) == (0, SEED_MAX)
    scenario_seed = scenario_schema["properties"]["seed"]
    assert (scenario_seed["minimum"], scenario_seed["maximum"]) == (0, SEED_MAX)
    assert max(node_seed(SEED_MAX, f"n{i}") for i in range(200)) <= SEED_MAX
    documented = [int(seed) for seed in re.findall(r'"seed":(\d+)', PROTOCOL_DOC.read_text(encoding="utf-8"))]
    assert documented and all(seed <= SEED_MAX for seed in documented), documented
    assert "0 … 2⁵³−1" in PROTOCOL_DOC.read_text(encoding="utf-8")


def test_the_documented_example_session_is_what_the_echo_service_answers() -> None:
    """docs/protocol.md §10 claims a real exchange: replay every → line and expect each ← line byte for byte."""
    section = PROTOCOL_DOC.read_text(encoding="utf-8").split("## 10.", 1)[1].split("```", 2)[1]
    lines = [line for line in section.splitlines() if line.startswith(("→ ", "← "))]
    assert lines[0].startswith("→ ") and '"type":"INIT"' in lines[0]
    with ServiceProcess(ECHO) as service:
        for line in lines:
            direction, text = line.split(" ", 1)
            if direction == "→":
                service.send(text)
            else:
                assert protocol.canonical(service.receive()) == text
        assert lines[-1] == '→ {"type":"SHUTDOWN"}'
        assert service.proc.wait(timeout=service.timeout_s) == 0
