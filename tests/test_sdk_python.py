"""The Python service SDK (sdk/python, cosim_service): the encoder, the Service base class and its session
in-process, then real service processes, and the `cosim new service --lang python` template rendered and tested."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import protocol_adapter
import pytest

from cosim import protocol, scaffold
from cosim_service import PROTOCOL_VERSION, Service, wire
from cosim_service.mqtt.checkpoint import ClientState
from cosim_service.mqtt.envelope import Delivery, Outgoing, envelope
from cosim_service.mqtt.recovery import Published
from tests.service_process import PYTHONPATH, ServiceProcess, advance, converse
from tests.test_protocol_schema import FROM_SERVICE, assert_valid, documented_error_codes

ROOT = Path(__file__).resolve().parent.parent
ECHO = ROOT / "containers" / "echo" / "service.py"
SDK_CHATTY = ROOT / "tests" / "services" / "sdk_chatty.py"

INIT = {"type": "INIT", "protocol": 1, "time_us": 0, "node_id": "svc", "seed": 7, "config": {"k": 1},
        "endpoints": {"broker": {"host": "127.0.0.1", "port": 1883}}}


def event(time_us: int, kind: str = "ping", **data: Any) -> dict[str, Any]:
    return {"type": kind, "time_us": time_us, "source": "src", "seq": 0, "sent_us": 0, "data": data}


# -- one encoder ------------------------------------------------------------------------------------------

TRICKY = [
    {"type": "DONE", "time_us": 1, "events": []},
    {"z": 0.1, "a": 1e-7, "m": 1.5e300, "n": -0.0, "i": 2**53 - 1, "big": 10**30, "f": 1.0, "t": True, "u": None},
    {"text": "é ü 漢字 \U0001f600 \u2028 \x00 \x1f \" \\ / \n\t", "ключ": "значение"},
    {"nested": {"b": [1, {"d": [], "c": {}}, [[["deep"]]]], "a": {"y": 2, "x": [0.333333333333333, 3.0e-5]}}},
    {"events": [{"type": "x", "time_us": 5, "data": {"features": [0.773315, 1.434895, 1.855511, 1.626872]}}]},
]


@pytest.mark.parametrize("message", TRICKY)
def test_the_copyable_adapter_encodes_the_same_bytes_as_the_sdk(message: dict[str, Any]) -> None:
    assert protocol_adapter.encode(message) == wire.encode(message)
    assert protocol.encode(message) == wire.encode(message).encode("utf-8")
    assert wire.encode(message) == json.dumps(message, sort_keys=True, separators=(",", ":"),
                                              ensure_ascii=False) + "\n"


def test_the_coordinator_uses_the_sdk_codec() -> None:
    assert protocol.canonical is wire.canonical and protocol.decode is wire.decode
    assert protocol.VERSION == PROTOCOL_VERSION


@pytest.mark.parametrize("value", [float("nan"), float("inf"), {"x": [float("-inf")]}])
def test_nan_and_infinity_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        wire.encode({"v": value})


@pytest.mark.parametrize(("raw", "detail"), [
    (b"\xff{}", "line is not UTF-8 (byte 0)"),
    ("{nope", "line is not JSON (Expecting property name enclosed in double quotes at column 2)"),
    ('{"v": NaN}', "line is not strict JSON (NaN is not valid JSON)"),
    ('{"v": 1E400}', "line is not strict JSON (1E400 is out of range)"),
])
def test_parse_line_says_what_is_wrong(raw: bytes | str, detail: str) -> None:
    with pytest.raises(wire.DecodeError, match="^" + detail.replace("(", r"\(").replace(")", r"\)") + "$"):
        wire.parse_line(raw)


# -- the Service base class, in-process -------------------------------------------------------------------


class Recorder(Service):
    """Records every hook call; replies with what the test queued."""

    capabilities = ("b", "a")
    reconfigurable = ("k", "rate")

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.replies: list[list[dict[str, Any]]] = []
        self.wake: int | None = None

    def init(self, node_id: str, seed: int, config: dict[str, Any]) -> dict[str, str]:
        self.calls.append(("init", node_id, seed, config, dict(self.endpoints), self.now_us, self.restart))
        return {"lib": "1.0"}

    def advance(self, until_us: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.calls.append(("advance", self.now_us, until_us, [e["time_us"] for e in events]))
        return self.replies.pop(0) if self.replies else []

    def wakeup(self, after_us: int) -> int | None:
        return self.wake

    def configure(self, changes: dict[str, Any]) -> None:
        super().configure(changes)
        if changes.get("rate", 1) < 0:
            raise ValueError("rate must be >= 0")
        self.calls.append(("configure", self.now_us, changes))

    def endpoints_changed(self, endpoints: dict[str, Any]) -> None:
        self.calls.append(("endpoints", endpoints))

    def snapshot(self) -> dict[str, Any]:
        return {"calls": len(self.calls)}

    def restore(self, state: Any) -> None:
        self.calls.append(("restore", state))

    def shutdown(self) -> None:
        self.calls.append(("shutdown",))


def ready(service: Service) -> Service:
    reply = service.protocol_session.handle(dict(INIT))
    assert reply is not None and reply["type"] == "READY", reply
    return service


def test_init_reaches_the_hook_and_ready_declares_what_the_service_overrides() -> None:
    service = Recorder()
    service.wake = 5000
    reply = service.protocol_session.handle(dict(INIT))
    assert reply == {"type": "READY", "time_us": 0, "protocol": 1, "capabilities": ["a", "b", "configure", "snapshot"],
                     "next_event": True, "next_us": 5000, "info": {"lib": "1.0"}}
    assert service.calls == [("init", "svc", 7, {"k": 1}, INIT["endpoints"], 0, None)]
    assert (service.node_id, service.seed, dict(service.config)) == ("svc", 7, {"k": 1})


def test_a_plain_service_declares_nothing_and_refuses_what_it_did_not_declare() -> None:
    service = ready(Service())
    session = service.protocol_session
    assert session.capabilities == [] and not session.next_event
    assert session.handle(advance(1000)) == {"type": "DONE", "time_us": 1000, "events": []}  # no next_us
    for message in ({"type": "CONFIGURE", "time_us": 1000, "config": {"x": 1}}, {"type": "SNAPSHOT", "time_us": 1000},
                    {"type": "RESTORE", "time_us": 0, "state": {}}):
        reply = session.handle(message)
        assert reply is not None and (reply["error"], reply["fatal"]) == ("unsupported", False)


def test_advance_gets_the_window_sorted_and_outputs_are_stamped_and_held() -> None:
    service = ready(Recorder())
    service.replies = [[{"type": "now"}, {"type": "later", "time_us": 2500}], []]
    done = service.protocol_session.handle(advance(1000, [event(900), event(300)]))
    assert service.calls[-1] == ("advance", 0, 1000, [300, 900])
    assert done == {"type": "DONE", "time_us": 1000, "events": [{"type": "now", "time_us": 1000}], "next_us": 2500}
    done = service.protocol_session.handle(advance(3000))
    assert service.calls[-1] == ("advance", 1000, 3000, [])
    assert done == {"type": "DONE", "time_us": 3000, "events": [{"type": "later", "time_us": 2500}]}


def test_the_promise_is_the_earliest_of_wakeup_and_held_outputs() -> None:
    service = ready(Recorder())
    service.wake = 9000
    service.replies = [[{"type": "held", "time_us": 4000}]]
    assert service.protocol_session.handle(advance(1000))["next_us"] == 4000  # type: ignore[index]
    assert service.protocol_session.handle(advance(5000))["next_us"] == 9000  # type: ignore[index]


def test_a_wakeup_not_after_the_window_is_fatal() -> None:
    service = ready(Recorder())
    service.wake = 1000
    reply = service.protocol_session.handle(advance(1000))
    assert reply is not None and (reply["error"], reply["fatal"]) == ("bad_wakeup", True)
    assert service.protocol_session.exit_code == 1


def test_configure_merges_accepted_keys_and_refuses_unknown_ones_unchanged() -> None:
    service = ready(Recorder())
    session = service.protocol_session
    session.handle(advance(1000))
    reply = session.handle({"type": "CONFIGURE", "time_us": 3000, "config": {"rate": 2}})
    assert reply == {"type": "CONFIGURED", "time_us": 3000}
    assert service.calls[-1] == ("configure", 3000, {"rate": 2}) and service.config == {"k": 1, "rate": 2}
    assert service.now_us == 3000  # the clock moves to the window the change applies from
    for changes, words in (({"treshold": 1}, "unknown config keys ['treshold']; reconfigurable: k, rate"),
                           ({"rate": -1}, "rate must be >= 0")):
        reply = session.handle({"type": "CONFIGURE", "time_us": 4000, "config": changes})
        assert reply is not None and (reply["error"], reply["fatal"]) == ("configure_failed", False)
        assert words in reply["detail"]
        assert service.config == {"k": 1, "rate": 2} and service.now_us == 3000
    reply = session.handle({"type": "CONFIGURE", "time_us": 4000, "endpoints": {"broker": None}})
    assert reply == {"type": "CONFIGURED", "time_us": 4000} and service.calls[-1] == ("endpoints", {"broker": None})
    assert service.endpoints == {"broker": None}


def test_snapshot_wraps_the_service_state_and_restore_gives_it_back() -> None:
    service = ready(Recorder())
    service.replies = [[{"type": "held", "time_us": 2500}]]
    service.protocol_session.handle(advance(1000))
    snapshot = service.protocol_session.handle({"type": "SNAPSHOT", "time_us": 1000})
    assert snapshot == {"type": "SNAPSHOT_STATE", "time_us": 1000, "state": {
        "held": [{"type": "held", "time_us": 2500}], "members": [], "config": {"k": 1},
        "endpoints": INIT["endpoints"], "service": {"calls": 2}}}
    fresh = ready(Recorder())
    reply = fresh.protocol_session.handle({"type": "RESTORE", "time_us": 1000, "state": snapshot["state"]})
    assert reply == {"type": "RESTORED", "time_us": 1000} and fresh.calls[-1] == ("restore", {"calls": 2})
    assert fresh.protocol_session.handle(advance(3000))["events"] == [{"type": "held", "time_us": 2500}]  # type: ignore[index]


class Grouped(Service):
    barrier_publishes = "on_input"

    def barrier_group(self) -> str:
        return "broker"

    def advance(self, until_us: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{"type": "seen", "data": {"peers": self.peers, "members": self.members}}]


def test_a_barrier_group_member_sees_peers_and_members() -> None:
    service = Grouped()
    reply = service.protocol_session.handle(dict(INIT))
    assert reply is not None and (reply["barrier_group"], reply["barrier_publishes"]) == ("broker", "on_input")
    first = service.protocol_session.handle(advance(1000, peers=["a"], members=["a", "svc"]))
    second = service.protocol_session.handle(advance(2000, peers=[]))
    assert first["events"][0]["data"] == {"peers": ["a"], "members": ["a", "svc"]}  # type: ignore[index]
    assert second["events"][0]["data"] == {"peers": [], "members": ["a", "svc"]}  # type: ignore[index]


class Failing(Service):
    def __init__(self, where: str, output: Any = None) -> None:
        self.where, self.output = where, output

    def init(self, node_id: str, seed: int, config: dict[str, Any]) -> None:
        if self.where == "init":
            raise RuntimeError("no model file")

    def advance(self, until_us: int, events: list[dict[str, Any]]) -> Any:
        if self.where == "advance":
            raise RuntimeError("boom")
        return self.output


@pytest.mark.parametrize(("line", "error"), [
    ("not json", "bad_json"), (b"\xff\n", "bad_json"), ('{"type": "ADVANCE", "time_us": NaN}', "bad_json"),
    ("[1, 2]", "bad_message"), ('{"time_us": 0}', "bad_message"), ('{"type": "HELLO"}', "unknown_type"),
    ('{"type": "INIT"}', "bad_message"),
])
def test_malformed_input_is_answered_with_a_non_fatal_error(line: str | bytes, error: str) -> None:
    service = Service()
    reply = json.loads(service.protocol_session.receive(line))  # type: ignore[arg-type]
    assert (reply["type"], reply["error"], reply["fatal"]) == ("ERROR", error, False)
    assert service.protocol_session.exit_code is None


def test_order_errors_leave_the_state_unchanged() -> None:
    service = Service()
    session = service.protocol_session
    assert session.handle(advance(1000))["error"] == "not_initialized"  # type: ignore[index]
    ready(service)
    assert session.handle(dict(INIT))["error"] == "already_initialized"  # type: ignore[index]
    session.handle(advance(2000))
    assert session.handle(advance(1000))["error"] == "time_backwards"  # type: ignore[index]
    assert session.handle(advance(3000, [event(2000)]))["error"] == "event_outside_window"  # type: ignore[index]
    assert session.current_time_us == 2000 and session.exit_code is None


@pytest.mark.parametrize(("service", "message", "error"), [
    (Service(), {**INIT, "protocol": 2}, "protocol_version"),
    (Failing("init"), INIT, "init_failed"),
    (Failing("advance"), advance(1000), "callback_failed"),
    (Failing("", [{"no": "type"}]), advance(1000), "bad_output"),
    (Failing("", [{"type": "x", "time_us": 0}]), advance(1000), "bad_output"),
    (Failing("", [{"type": "x", "data": float("nan")}]), advance(1000), "bad_output"),
])
def test_fatal_errors_end_the_service(service: Service, message: dict[str, Any], error: str) -> None:
    session = service.protocol_session
    if message["type"] != "INIT":
        ready(service)
    reply = json.loads(session.receive(json.dumps(message)) or "{}")
    assert (reply["type"], reply["error"], reply["fatal"]) == ("ERROR", error, True), reply
    assert session.exit_code == 1


def test_a_plain_advance_is_answered_as_when_it_is_parsed() -> None:
    """A canonical ADVANCE without events, as bytes, takes the fast path (no JSON parse, the reply as bytes); as
    text it is parsed and handled: the replies are the same bytes. Empty DONEs, outputs, held outputs and promises,
    a target in the past, a leading zero, a wake-up that is not after the window (fatal)."""
    targets = [b"1000", b"2000", b"3000", b"1000", b"05000", b"4000", b"5000"]
    lines = [b'{"events":[],"time_us":' + target + b',"type":"ADVANCE"}\n' for target in targets]

    def conversation(fast: bool) -> list[bytes | None]:
        service = Recorder()
        service.wake = 4500
        service.replies = [[], [{"type": "out", "time_us": 1900}, {"type": "held", "time_us": 3200}]]
        ready(service)
        session = service.protocol_session
        if fast:
            return [session.receive_bytes(line) for line in lines]
        return [None if reply is None else reply.encode() for reply in map(session.receive, map(bytes.decode, lines))]

    replies = conversation(fast=True)
    assert replies == conversation(fast=False)
    assert [json.loads(reply or b"")["type"] for reply in replies] == ["DONE", "DONE", "DONE", "ERROR", "ERROR",
                                                                       "DONE", "ERROR"]


def test_shutdown_and_end_of_input_call_the_hook_and_exit_0() -> None:
    for messages, replies in (([INIT, advance(1000), {"type": "SHUTDOWN"}], ["READY", "DONE"]), ([INIT], ["READY"])):
        service = Recorder()
        stdin = io.StringIO("".join(json.dumps(m) + "\n" for m in messages))
        stdout = io.StringIO()
        assert service.serve(stdin, stdout) == 0
        assert service.calls[-1] == ("shutdown",)
        assert [json.loads(line)["type"] for line in stdout.getvalue().splitlines()] == replies


def test_every_error_code_of_the_session_is_documented() -> None:
    source = (ROOT / "sdk" / "python" / "cosim_service" / "session.py").read_text(encoding="utf-8")
    codes = set(re.findall(r'(?:ProtocolError|_hook)\(\s*"([a-z_]+)"', source))
    assert codes == set(documented_error_codes())


def test_every_reply_of_a_conversation_validates_against_the_schema() -> None:
    service = Recorder()
    service.wake = 2500
    service.replies = [[{"type": "out", "time_us": 900, "data": {"x": [1.5, "é"]}}, {"type": "held", "time_us": 2200}]]
    session = service.protocol_session
    messages = [INIT, advance(1000, [event(500)]), {"type": "CONFIGURE", "time_us": 1000, "config": {"rate": 2}},
                {"type": "CONFIGURE", "time_us": 1000, "config": {"nope": 1}}, {"type": "SNAPSHOT", "time_us": 1000},
                advance(500), {"type": "HELLO"}, advance(3000)]
    for message in messages:
        reply = session.receive(json.dumps(message))
        assert reply is not None and reply.endswith("\n") and reply.count("\n") == 1
        assert_valid(wire.decode(reply.encode()), FROM_SERVICE)


# -- real processes ---------------------------------------------------------------------------------------


def test_a_stray_print_goes_to_stderr_not_the_protocol_stream() -> None:
    replies, stderr = converse(SDK_CHATTY, [INIT, advance(1000, [event(500)]), advance(2000), {"type": "SHUTDOWN"}])
    assert [r["type"] for r in replies] == ["READY", "DONE", "DONE"]
    assert replies[1]["events"] == [{"type": "said", "time_us": 1000, "data": {"events": 1}}]
    assert "sdk_chatty: stray print in init for svc" in stderr
    assert "sdk_chatty: stray print while advancing to 2000" in stderr


def test_snapshot_restore_into_a_fresh_process_continues_as_without() -> None:
    """echo (on the SDK) with ticks: checkpointed at 3 ms and resumed in a new process, the same ticks follow."""
    config = {"tick_us": 1000}
    with ServiceProcess(ECHO) as straight:
        straight.init(config, seed=5)
        expected = [straight.advance(t) for t in (1000, 3000, 4000, 6000)]
    with ServiceProcess(ECHO) as first:
        first.init(config, seed=5)
        assert [first.advance(t) for t in (1000, 3000)] == expected[:2]
        state = first.request({"type": "SNAPSHOT", "time_us": 3000})
        assert state["type"] == "SNAPSHOT_STATE"
    with ServiceProcess(ECHO) as second:
        second.init(config, seed=5)
        assert second.request({"type": "RESTORE", "time_us": 3000, "state": state["state"]}) == \
            {"type": "RESTORED", "time_us": 3000}
        assert [second.advance(t) for t in (4000, 6000)] == expected[2:]
        assert second.shutdown() == 0


# -- the template of `cosim new service NAME --lang python` -----------------------------------------------


def render_template(experiment: Path, name: str) -> Path:
    """What `cosim new service NAME --lang python` writes into an experiment: services/NAME/ and the template's
    tests in tests/, {{name}} replaced; returns the service's folder."""
    for sub in ("scenarios", "services"):
        (experiment / sub).mkdir(parents=True)
    return scaffold.new_service(name, lang="python", start=experiment, out=io.StringIO())


def test_the_template_renders_a_service_whose_own_test_passes(tmp_path: Path) -> None:
    folder = render_template(tmp_path, "heat-alarm")
    assert sorted(p.name for p in folder.iterdir()) == ["Dockerfile", "requirements.txt", "service.py"]
    for path in [*folder.iterdir(), tmp_path / "tests" / "test_heat_alarm_service.py"]:
        assert "{{" not in path.read_text(), path
    dockerfile = (folder / "Dockerfile").read_text()
    for line in ("ARG BASE_IMAGE", "FROM ${BASE_IMAGE}", "COPY .cosim/wheels/",
                 "--no-index --find-links /wheels cosim-service", "COPY service.py /app/", "USER 10001:10001",
                 'ENTRYPOINT ["/opt/venv/bin/python", "-u", "/app/service.py"]'):
        assert line in dockerfile
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_heat_alarm_service.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": PYTHONPATH})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout


# -- the MQTT client's typed parts ------------------------------------------------------------------------


def test_an_envelope_is_canonical_json_of_the_outgoing_message() -> None:
    message = Outgoing("cosim/s/t", "t", 1500, "s", 3, {"x": [1.5, "é"]})
    raw = envelope(message, "gw", 7, 2000)
    assert raw == wire.canonical({"type": "t", "time_us": 1500, "source": "s", "seq": 3, "data": {"x": [1.5, "é"]},
                                  "node": "gw", "node_seq": 7, "window_us": 2000}).encode()


def test_a_client_checkpoint_survives_json() -> None:
    state = ClientState(node_seq=4, members=["a", "b"], delays=[(-1, 0), (5000, 2000)],
                        queue=[Delivery(3000, "a", 1, "cosim/x", {"data": 1})], last_seq={"b": 2, "a": 1}, epoch=1,
                        outbox=[Published(1000, 2000, "cosim/x", b'{"k":1}'), Published(1000, 2000, "b", None)])
    saved = json.loads(wire.canonical(state.to_json()))
    assert ClientState.from_json(saved) == state
