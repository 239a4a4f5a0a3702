"""Tests of what the Node.js service {{name}} does, written by `cosim new service {{name}} --lang node`: its
services/{{name}}/service.js runs as a subprocess (`node service.js`), driven over the real protocol. Run them from
the experiment: `python -m pytest tests`."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cosim.conformance import ServiceSession, Target

SERVICE = Path(__file__).resolve().parent.parent / "services" / "{{name}}" / "service.js"

if shutil.which("node") is None:
    pytest.skip("needs `node` on the host (apt-get install nodejs)", allow_module_level=True)


@pytest.fixture
def service(tmp_path: Path):
    """service.js as a fresh process; cosim puts its Node SDK on NODE_PATH (`require("cosim-service")`)."""
    session = ServiceSession(Target(command=("node", str(SERVICE))), tmp_path, 0)
    yield session
    session.close()


def reading(time_us: int, value: float, seq: int = 0) -> dict:
    return {"type": "reading", "time_us": time_us, "source": "sensor", "seq": seq, "sent_us": time_us - 1000,
            "data": {"value": value}}


def test_a_reading_over_the_threshold_raises_an_alarm(service: ServiceSession) -> None:
    service.init({"threshold": 0.5})
    outputs = service.advance(1000, [reading(500, 0.25, 0), reading(900, 0.75, 1)])
    assert outputs == [{"type": "alarm", "time_us": 900, "data": {"value": 0.75, "threshold": 0.5, "from": "sensor"}}]


def test_a_heartbeat_every_250_ms_is_promised_and_kept(service: ServiceSession) -> None:
    ready = service.init({})
    assert ready["next_event"] is True and ready["next_us"] == 250_000
    outputs = service.advance(500_000, [reading(1000, 0.95)])  # next-event advance: one ADVANCE over many quanta
    assert [(e["type"], e["time_us"], e["data"]) for e in outputs] == [
        ("alarm", 1000, {"value": 0.95, "threshold": 0.9, "from": "sensor"}),
        ("heartbeat", 250_000, {"beat": 1, "alarms": 1}), ("heartbeat", 500_000, {"beat": 2, "alarms": 1})]
    assert service.promise == 750_000


def test_the_config_can_change_during_a_run_and_unknown_keys_are_refused(service: ServiceSession) -> None:
    service.init({"threshold": 5})
    service.advance(1000, [])
    configured = service.request({"type": "CONFIGURE", "time_us": 1000, "config": {"threshold": 0.5,
                                                                                  "heartbeat_us": 2000}}, "CONFIGURED")
    assert configured["next_us"] == 2000  # the new heartbeat period moves the promise
    service.expect_error({"type": "CONFIGURE", "time_us": 1000, "config": {"treshold": 1}}, "configure_failed")
    outputs = service.advance(2000, [reading(1500, 0.75)])
    assert [e["type"] for e in outputs] == ["alarm", "heartbeat"]


def test_unknown_config_keys_stop_it_at_init(service: ServiceSession) -> None:
    service.send({"type": "INIT", "protocol": 1, "time_us": 0, "node_id": "{{name}}", "seed": 1,
                  "config": {"treshold": 0.5}, "endpoints": {}})
    reply = service.receive("INIT")
    assert (reply["type"], reply["error"], reply["fatal"]) == ("ERROR", "init_failed", True)
    assert "unknown config keys treshold" in reply["detail"]
