"""The service-side protocol adapter: message handling in-process, then the real thing as a subprocess."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import protocol_adapter
import pytest
from protocol_adapter import CoordinatorProtocolAdapter

from cosim import protocol
from tests.service_process import ServiceProcess, converse

ROOT = Path(__file__).resolve().parent.parent
ECHO = ROOT / "containers" / "echo" / "service.py"
CHATTY = ROOT / "tests" / "services" / "chatty.py"

INIT = {"type": "INIT", "protocol": 1, "time_us": 0, "node_id": "svc", "seed": 7, "config": {"k": 1},
        "endpoints": {"broker": {"host": "127.0.0.1", "port": 1883}}}


def advance(time_us: int, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"type": "ADVANCE", "time_us": time_us, "events": events or []}


def event(time_us: int, kind: str = "ping", **data: Any) -> dict[str, Any]:
    return {"type": kind, "time_us": time_us, "source": "src", "seq": 0, "sent_us": 0, "data": data}


class Recorder:
    """A callback that records its calls and returns whatever the test queued for the next call."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, list[dict[str, Any]]]] = []
        self.replies: list[list[dict[str, Any]]] = []

    def __call__(self, current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        self.calls.append((current, target, events))
        return self.replies.pop(0) if self.replies else []


def ready_adapter(callback: Callable[..., Any] | None = None) -> CoordinatorProtocolAdapter:
    adapter = CoordinatorProtocolAdapter(callback or Recorder(), capabilities=["b", "a"])
    assert adapter.handle(dict(INIT))["type"] == "READY"
    return adapter


def snapshot(adapter: CoordinatorProtocolAdapter) -> tuple[Any, ...]:
    return (adapter.current_time_us, adapter.initialized, adapter.node_id, adapter.seed, adapter.config,
            list(adapter._held), adapter.exit_code)


def test_versions_agree() -> None:
    assert protocol.VERSION == protocol_adapter.PROTOCOL_VERSION


# -- the happy path ---------------------------------------------------------------------------------------


def test_init_answers_ready_and_keeps_what_init_carried() -> None:
    seen: list[Any] = []
    adapter = CoordinatorProtocolAdapter(Recorder(), on_init=seen.append, capabilities=["b", "a"])
    reply = adapter.handle(dict(INIT))
    assert reply == {"type": "READY", "time_us": 0, "protocol": 1, "capabilities": ["a", "b"]}
    assert (adapter.node_id, adapter.seed, adapter.config) == ("svc", 7, {"k": 1})
    assert adapter.endpoints == {"broker": {"host": "127.0.0.1", "port": 1883}}
    assert seen == [INIT]
    assert adapter.exit_code is None


def test_advance_answers_done_with_the_callbacks_events() -> None:
    recorder = Recorder()
    adapter = ready_adapter(recorder)
    recorder.replies.append([{"type": "out", "time_us": 700, "data": {"x": 1}}])
    reply = adapter.handle(advance(1000, [event(500)]))
    assert reply == {"type": "DONE", "time_us": 1000, "events": [{"type": "out", "time_us": 700, "data": {"x": 1}}]}
    assert recorder.calls == [(0, 1000, [event(500)])]
    recorder.replies.append([])
    assert adapter.handle(advance(2000)) == {"type": "DONE", "time_us": 2000, "events": []}
    assert recorder.calls[-1] == (1000, 2000, [])
    assert adapter.current_time_us == 2000


def test_advance_to_the_current_time_is_allowed() -> None:
    adapter = ready_adapter()
    assert adapter.handle(advance(1000))["type"] == "DONE"
    assert adapter.handle(advance(1000)) == {"type": "DONE", "time_us": 1000, "events": []}


def test_outputs_without_time_are_stamped_at_the_target() -> None:
    recorder = Recorder()
    adapter = ready_adapter(recorder)
    adapter.handle(advance(1000))
    recorder.replies.append([{"type": "a"}, {"type": "b", "time_us": 1500}])
    reply = adapter.handle(advance(2000))
    assert reply["events"] == [{"type": "a", "time_us": 2000}, {"type": "b", "time_us": 1500}]


def test_outputs_beyond_the_window_are_held_until_the_window_that_contains_them() -> None:
    recorder = Recorder()
    adapter = ready_adapter(recorder)
    recorder.replies.append([{"type": "late", "time_us": 3500}, {"type": "later", "time_us": 5000},
                             {"type": "now", "time_us": 800}])
    assert adapter.handle(advance(1000))["events"] == [{"type": "now", "time_us": 800}]
    assert adapter.handle(advance(2000))["events"] == []
    assert adapter.handle(advance(3000))["events"] == []
    recorder.replies.append([{"type": "fresh", "time_us": 3600}])
    assert adapter.handle(advance(4000))["events"] == [{"type": "late", "time_us": 3500},
                                                       {"type": "fresh", "time_us": 3600}]
    assert adapter.handle(advance(4999))["events"] == []
    assert adapter.handle(advance(5000))["events"] == [{"type": "later", "time_us": 5000}]
    assert adapter._held == []


def test_events_reach_the_callback_sorted_by_time_and_stable() -> None:
    recorder = Recorder()
    adapter = ready_adapter(recorder)
    given = [event(900, n=0), event(300, n=1), event(600, n=2), event(300, n=3), event(900, n=4)]
    adapter.handle(advance(1000, given))
    assert [e["data"]["n"] for e in recorder.calls[0][2]] == [1, 3, 2, 0, 4]


def test_events_at_the_window_end_are_inside_it() -> None:
    recorder = Recorder()
    adapter = ready_adapter(recorder)
    adapter.handle(advance(1000))
    assert adapter.handle(advance(2000, [event(1001), event(2000)]))["type"] == "DONE"
    assert [e["time_us"] for e in recorder.calls[-1][2]] == [1001, 2000]


# -- errors the service survives ---------------------------------------------------------------------------


SURVIVABLE: list[tuple[str, Any, str]] = [
    ("not an object", [1, 2], "bad_message"),
    ("missing type", {"time_us": 2000}, "bad_message"),
    ("unknown type", {"type": "REWIND"}, "unknown_type"),
    ("INIT twice", dict(INIT), "already_initialized"),
    ("time backwards", advance(500), "time_backwards"),
    ("event at the window start", advance(2000, [event(1000)]), "event_outside_window"),
    ("event after the target", advance(2000, [event(2001)]), "event_outside_window"),
    ("event without time", advance(2000, [{"type": "x"}]), "bad_event"),
    ("non-integer target", {"type": "ADVANCE", "time_us": "2000", "events": []}, "bad_message"),
]


@pytest.mark.parametrize("message, error", [(m, e) for _, m, e in SURVIVABLE], ids=[i for i, _, _ in SURVIVABLE])
def test_survivable_errors_leave_state_unchanged(message: Any, error: str) -> None:
    recorder = Recorder()
    adapter = ready_adapter(recorder)
    adapter.handle(advance(1000))
    recorder.replies.append([{"type": "held", "time_us": 2500}])
    adapter.handle(advance(1500))
    before = snapshot(adapter)
    calls = len(recorder.calls)

    reply = adapter.handle(message)

    assert reply is not None and reply["type"] == "ERROR"
    assert (reply["error"], reply["fatal"]) == (error, False)
    assert reply["detail"]
    assert snapshot(adapter) == before
    assert len(recorder.calls) == calls  # the callback never saw the bad message
    # ...and the next message works as if nothing had happened.
    assert adapter.handle(advance(3000, [event(2000)])) == {
        "type": "DONE", "time_us": 3000, "events": [{"type": "held", "time_us": 2500}]}
    assert recorder.calls[-1] == (1500, 3000, [event(2000)])


def test_malformed_line_is_bad_json_and_survivable() -> None:
    adapter = ready_adapter()
    reply = adapter.handle_line("{not json\n")
    assert (reply["type"], reply["error"], reply["fatal"]) == ("ERROR", "bad_json", False)
    assert "column" in reply["detail"]
    assert adapter.exit_code is None
    assert adapter.handle_line(json.dumps(advance(1000)))["type"] == "DONE"


def test_advance_before_init_is_refused_then_init_works() -> None:
    recorder = Recorder()
    adapter = CoordinatorProtocolAdapter(recorder)
    reply = adapter.handle(advance(1000))
    assert (reply["type"], reply["error"], reply["fatal"]) == ("ERROR", "not_initialized", False)
    assert recorder.calls == [] and not adapter.initialized and adapter.exit_code is None
    assert adapter.handle(dict(INIT))["type"] == "READY"
    assert adapter.handle(advance(1000))["type"] == "DONE"


def test_survivable_errors_keep_run_going() -> None:
    lines = ["garbage", json.dumps([1]), json.dumps({"type": "NOPE"}), json.dumps(advance(1000)),
             json.dumps(INIT), "", json.dumps(INIT), json.dumps(advance(1000)), json.dumps({"type": "SHUTDOWN"}),
             json.dumps(advance(2000))]
    out = io.StringIO()
    code = CoordinatorProtocolAdapter(Recorder()).run(io.StringIO("\n".join(lines) + "\n"), out)
    replies = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 0
    assert [r.get("error", r["type"]) for r in replies] == [
        "bad_json", "bad_message", "unknown_type", "not_initialized", "READY", "already_initialized", "DONE"]


# -- fatal errors ----------------------------------------------------------------------------------------


def run_lines(adapter: CoordinatorProtocolAdapter, *messages: Any) -> tuple[int, list[dict[str, Any]]]:
    stdin = io.StringIO("".join(json.dumps(m) + "\n" for m in messages))
    out = io.StringIO()
    code = adapter.run(stdin, out)
    return code, [json.loads(line) for line in out.getvalue().splitlines()]


def test_protocol_version_mismatch_is_fatal() -> None:
    adapter = CoordinatorProtocolAdapter(Recorder())
    code, replies = run_lines(adapter, {**INIT, "protocol": 2}, dict(INIT), advance(1000))
    assert code == 1
    assert len(replies) == 1  # nothing is read after a fatal error
    assert (replies[0]["type"], replies[0]["error"], replies[0]["fatal"]) == ("ERROR", "protocol_version", True)
    assert "2" in replies[0]["detail"] and "1" in replies[0]["detail"]
    assert not adapter.initialized


def test_callback_exception_is_fatal_and_named() -> None:
    def boom(current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if target == 2000:
            raise ZeroDivisionError("model exploded")
        return [{"type": "ok"}]

    adapter = CoordinatorProtocolAdapter(boom)
    code, replies = run_lines(adapter, INIT, advance(1000), advance(2000), advance(3000))
    assert code == 1
    assert [r["type"] for r in replies] == ["READY", "DONE", "ERROR"]  # not swallowed into DONE with no events
    error = replies[-1]
    assert (error["error"], error["fatal"]) == ("callback_failed", True)
    assert "ZeroDivisionError: model exploded" in error["detail"]
    assert "test_protocol_adapter.py" in error["detail"]  # where it was raised


def test_init_hook_exception_is_fatal() -> None:
    def refuse(message: Any) -> None:
        raise KeyError("model_path")

    code, replies = run_lines(CoordinatorProtocolAdapter(Recorder(), on_init=refuse), INIT, advance(1000))
    assert code == 1
    assert [(r["type"], r["error"], r["fatal"]) for r in replies] == [("ERROR", "init_failed", True)]
    assert "KeyError" in replies[0]["detail"] and "model_path" in replies[0]["detail"]


@pytest.mark.parametrize("stamp", [1000, 400, -1, "1500"], ids=["at-current", "before-current", "negative", "string"])
def test_output_not_after_the_current_time_is_fatal(stamp: Any) -> None:
    recorder = Recorder()
    recorder.replies += [[], [{"type": "bad", "time_us": stamp}]]
    code, replies = run_lines(CoordinatorProtocolAdapter(recorder), INIT, advance(1000), advance(2000), advance(3000))
    assert code == 1
    assert [r["type"] for r in replies] == ["READY", "DONE", "ERROR"]
    assert (replies[-1]["error"], replies[-1]["fatal"]) == ("bad_output", True)
    assert repr(stamp) in replies[-1]["detail"]


def test_output_without_a_type_is_fatal() -> None:
    recorder = Recorder()
    recorder.replies.append([{"time_us": 500}])
    code, replies = run_lines(CoordinatorProtocolAdapter(recorder), INIT, advance(1000))
    assert code == 1
    assert (replies[-1]["error"], replies[-1]["fatal"]) == ("bad_output", True)


def test_shutdown_calls_the_hook_and_ends_run_with_zero() -> None:
    stopped: list[bool] = []
    adapter = CoordinatorProtocolAdapter(Recorder(), on_shutdown=lambda: stopped.append(True))
    code, replies = run_lines(adapter, INIT, advance(1000), {"type": "SHUTDOWN"}, advance(2000))
    assert code == 0
    assert [r["type"] for r in replies] == ["READY", "DONE"]  # SHUTDOWN has no reply; nothing read after it
    assert stopped == [True]


def test_end_of_input_ends_run_with_zero() -> None:
    code, replies = run_lines(CoordinatorProtocolAdapter(Recorder()), INIT, advance(1000))
    assert code == 0
    assert [r["type"] for r in replies] == ["READY", "DONE"]


def test_replies_are_canonical_lines() -> None:
    out = io.StringIO()
    CoordinatorProtocolAdapter(Recorder(), capabilities=["z"]).run(io.StringIO(json.dumps(INIT) + "\n"), out)
    line = out.getvalue()
    assert line == protocol.canonical(json.loads(line)) + "\n"


# -- the adapter as a real subprocess ------------------------------------------------------------------------


def test_echo_subprocess_speaks_the_protocol_and_exits_zero_on_shutdown() -> None:
    with ServiceProcess(ECHO) as service:
        ready = service.init({"tick_us": 400}, node_id="echo-1", seed=5)
        assert ready == {"type": "READY", "time_us": 0, "protocol": 1, "capabilities": ["configure", "echo", "snapshot"],
                         "next_event": True,
                         "next_us": 400}  # its first tick
        done = service.advance(1000, [event(700, "ping", n=1)])
        assert done["type"] == "DONE" and done["time_us"] == 1000
        assert [(e["type"], e["time_us"]) for e in done["events"]] == [("echo", 700), ("tick", 400), ("tick", 800)]
        assert done["events"][0]["data"] == {"of": "ping", "from": "src", "data": {"n": 1}}
        error = service.advance(500)
        assert (error["type"], error["error"], error["fatal"]) == ("ERROR", "time_backwards", False)
        assert service.advance(2000)["time_us"] == 2000  # still alive after a survivable error
        assert service.shutdown() == 0


def test_echo_subprocess_exits_zero_at_end_of_input() -> None:
    with ServiceProcess(ECHO) as service:
        assert service.init()["type"] == "READY"
        assert service.proc.stdin is not None
        service.proc.stdin.close()
        assert service.proc.wait(timeout=service.timeout_s) == 0


def test_echo_subprocess_exits_one_on_a_fatal_error() -> None:
    with ServiceProcess(ECHO) as service:
        service.init({"raise_at_us": 2000})
        assert service.advance(1000)["type"] == "DONE"
        error = service.advance(2000)
        assert (error["type"], error["error"], error["fatal"]) == ("ERROR", "callback_failed", True)
        assert "RuntimeError: echo: failing as configured" in error["detail"]
        assert service.proc.wait(timeout=service.timeout_s) == 1
        assert "callback_failed" in service.stderr()  # the adapter logs to stderr


def test_stray_prints_go_to_stderr_not_the_protocol_stream() -> None:
    replies, stderr = converse(CHATTY, [INIT, advance(1000, [event(500)]), advance(2000), {"type": "SHUTDOWN"}])
    assert [r["type"] for r in replies] == ["READY", "DONE", "DONE"]
    assert replies[1]["events"] == [{"type": "said", "time_us": 1000, "data": {"events": 1}}]
    assert "chatty: stray print in on_init for svc" in stderr
    assert "chatty: stray print while advancing to 2000" in stderr


def test_hot_path_lines_are_the_canonical_encoding() -> None:
    """The coordinator formats empty ADVANCEs and recognises empty DONEs by their bytes: they must be canonical."""
    import protocol_adapter

    from cosim import protocol as coordinator_protocol

    for time_us in (1, 1000, 10_000_000_000):
        assert coordinator_protocol.encode_advance(time_us, []) == coordinator_protocol.encode(
            coordinator_protocol.advance_message(time_us, []))
        assert coordinator_protocol.encode_advance(time_us, [], []) == coordinator_protocol.encode(
            coordinator_protocol.advance_message(time_us, [], []))  # a barrier-group member's idle window
        adapter_done = protocol_adapter.encode({"type": "DONE", "time_us": time_us, "events": []})
        assert protocol_adapter._EMPTY_DONE % time_us == adapter_done  # the adapter's own shortcut
        assert coordinator_protocol.empty_done(time_us) + b"\n" == adapter_done.encode()
