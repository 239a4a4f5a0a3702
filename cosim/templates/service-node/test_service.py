"""Tests of {{name}}: `node service.js` as a subprocess, driven over the real protocol (run: pytest)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cosim.conformance import ServiceSession, Target, check

HERE = Path(__file__).resolve().parent.parent / "services" / "{{name}}"  # `cosim new service` puts this file in tests/
SERVICE = ("node", str(HERE / "service.js"))

if shutil.which("node") is None:
    pytest.skip("needs `node` on the host (apt-get install nodejs)", allow_module_level=True)


@pytest.fixture
def service(tmp_path: Path):
    """service.js as a fresh process; `require("cosim-service")` finds cosim's Node SDK (NODE_PATH, set by cosim)."""
    session = ServiceSession(Target(command=SERVICE), tmp_path, 0)
    yield session
    session.close()


def reading(time_us: int, value: float, seq: int = 0) -> dict:
    return {"type": "reading", "time_us": time_us, "source": "sensor", "seq": seq, "sent_us": time_us - 1000,
            "data": {"value": value}}


def test_a_reading_above_the_threshold_raises_an_alarm(service: ServiceSession) -> None:
    service.init({"threshold": 2.0})
    outputs = service.advance(1000, [reading(500, 1.5, 0), reading(900, 3.0, 1)])
    assert outputs == [{"type": "alarm", "time_us": 900,
                        "data": {"from": "sensor", "value": 3.0, "threshold": 2.0, "count": 1}}]


def test_a_heartbeat_every_250_ms_is_promised_and_kept(service: ServiceSession) -> None:
    ready = service.init({})
    assert ready["next_event"] is True and ready["next_us"] == 250_000
    outputs = service.advance(500_000, [])  # next-event advance: one ADVANCE over many quanta
    assert [(e["type"], e["time_us"]) for e in outputs] == [("heartbeat", 250_000), ("heartbeat", 500_000)]
    assert service.promise == 750_000


def test_the_threshold_can_change_during_a_run_and_other_keys_are_refused(service: ServiceSession) -> None:
    service.init({"threshold": 5})
    service.advance(1000, [])
    assert service.request({"type": "CONFIGURE", "time_us": 1000, "config": {"threshold": 0.5}}, "CONFIGURED")
    service.expect_error({"type": "CONFIGURE", "time_us": 1000, "config": {"treshold": 1}}, "configure_failed")
    assert [e["type"] for e in service.advance(2000, [reading(1500, 1.0)])] == ["alarm"]


def test_it_passes_cosim_conformance() -> None:
    results = check(SERVICE)
    assert [(r.case, r.detail) for r in results if r.failed] == []
    assert not [r.case for r in results if r.status != "pass"], "every capability is declared"
