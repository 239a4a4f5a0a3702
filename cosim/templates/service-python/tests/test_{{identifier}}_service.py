"""Tests of {{name}}: the service run as a process and spoken to over the real cosim protocol (JSON lines).

`cosim new service` puts this file in the experiment's tests/: run ``python -m pytest tests`` there (cosim
installs the SDK, cosim_service, that service.py imports).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

SERVICE = Path(__file__).resolve().parent.parent / "services" / "{{name}}" / "service.py"  # this file: tests/

INIT = {"type": "INIT", "protocol": 1, "time_us": 0, "node_id": "{{name}}", "seed": 1,
        "config": {"threshold": 0.9}, "endpoints": {}}


def reading(time_us: int, value: float, seq: int = 0) -> dict[str, Any]:
    return {"type": "reading", "time_us": time_us, "source": "sensor", "seq": seq, "sent_us": time_us - 1000,
            "data": {"value": value}}


def converse(*messages: dict[str, Any]) -> list[dict[str, Any]]:
    """The replies of a fresh service process to ``messages`` (then SHUTDOWN); it must exit 0."""
    lines = "".join(json.dumps(m) + "\n" for m in [*messages, {"type": "SHUTDOWN"}])
    done = subprocess.run([sys.executable, "-u", str(SERVICE)], input=lines, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]  # stdout carries protocol lines only


def test_ready_declares_next_event_configure_and_snapshot() -> None:
    [ready] = converse(INIT)
    assert ready["type"] == "READY" and ready["protocol"] == 1
    assert {"configure", "snapshot"} <= set(ready["capabilities"])
    assert ready["next_event"] is True and ready["next_us"] == 250_000  # the first heartbeat


def test_a_reading_over_the_threshold_raises_an_alarm_at_its_time() -> None:
    _, done = converse(INIT, {"type": "ADVANCE", "time_us": 2000,
                              "events": [reading(1000, 0.5), reading(1500, 0.95, seq=1)]})
    assert done["type"] == "DONE" and done["time_us"] == 2000
    assert done["events"] == [{"type": "alarm", "time_us": 1500,
                               "data": {"value": 0.95, "threshold": 0.9, "from": "sensor"}}]
    assert done["next_us"] == 250_000


def test_heartbeats_in_a_long_window_and_a_reconfigure() -> None:
    _, done, refused, configured, later = converse(
        INIT, {"type": "ADVANCE", "time_us": 500_000, "events": [reading(1000, 0.99)]},
        {"type": "CONFIGURE", "time_us": 500_000, "config": {"treshold": 0.5}},
        {"type": "CONFIGURE", "time_us": 500_000, "config": {"heartbeat_us": 100_000}},
        {"type": "ADVANCE", "time_us": 600_000, "events": []})
    assert [(e["type"], e["time_us"]) for e in done["events"]] == [
        ("alarm", 1000), ("heartbeat", 250_000), ("heartbeat", 500_000)]
    assert refused["type"] == "ERROR" and refused["error"] == "configure_failed" and "treshold" in refused["detail"]
    assert configured == {"type": "CONFIGURED", "time_us": 500_000, "next_us": 600_000}
    assert later["events"] == [{"type": "heartbeat", "time_us": 600_000, "data": {"beat": 3, "alarms": 1}}]


def test_snapshot_and_restore_into_a_fresh_process() -> None:
    _, _, snapshot = converse(INIT, {"type": "ADVANCE", "time_us": 250_000, "events": [reading(1000, 0.99)]},
                              {"type": "SNAPSHOT", "time_us": 250_000})
    assert snapshot["type"] == "SNAPSHOT_STATE"
    _, restored, done = converse(INIT, {"type": "RESTORE", "time_us": 250_000, "state": snapshot["state"]},
                                 {"type": "ADVANCE", "time_us": 500_000, "events": []})
    assert restored == {"type": "RESTORED", "time_us": 250_000}
    assert done["events"] == [{"type": "heartbeat", "time_us": 500_000, "data": {"beat": 2, "alarms": 1}}]
