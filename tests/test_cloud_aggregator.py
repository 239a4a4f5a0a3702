"""The cloud aggregator's episode rule, on the messages its MQTT client hands it (no broker needed here; the
multi-site tests run it for real)."""

from __future__ import annotations

import importlib.util
from typing import Any

from tests.service_process import ROOT

_SPEC = importlib.util.spec_from_file_location("cloud_aggregator", ROOT / "containers" / "cloud-aggregator" / "service.py")
assert _SPEC is not None and _SPEC.loader is not None
aggregator = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(aggregator)


def verdict(time_us: int, sensor: str, sampled_us: int, label: str = "anomaly", external: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {"topic": "site-a/inference-1/inference_result",
                            "payload": {"sensor": sensor, "sampled_us": sampled_us, "window": sampled_us // 1000,
                                        "label": label, "score": 0.9},
                            "origin": None if external else {"node": "gateway-a", "source": "inference-1", "seq": 0,
                                                             "time_us": time_us - 1000, "type": "inference_result"}}
    if external:
        data["external"] = True
    return {"type": "mqtt_received", "time_us": time_us, "data": data}


def test_one_alert_per_episode_whatever_the_arrival_order() -> None:
    service = aggregator.CloudAggregator()
    service.apply_config({"quiet_us": 500_000})  # its own config keys (the CONFIGURE hook needs a broker)
    messages = [
        verdict(1_010_000, "p1", 1_050_000),  # opens an episode
        verdict(1_011_000, "p1", 1_000_000),  # earlier window, arriving later: same episode
        verdict(1_060_000, "p1", 1_100_000, label="normal"),
        verdict(1_400_000, "p1", 1_400_000),  # within quiet_us of the latest flagged one: same episode
        verdict(1_500_000, "p2", 1_450_000),  # another sensor: its own episode
        verdict(3_000_000, "p1", 2_950_000),  # more than quiet_us later: a new episode
        verdict(3_100_000, "p3", 3_000_000, external=True),  # outside virtual time: never an alert
    ]
    alerts = [a for a in map(service._consider, messages) if a is not None]
    assert [(a["time_us"], a["data"]["sensor"], a["data"]["sampled_us"], a["data"]["episode"]) for a in alerts] == [
        (1_010_000, "p1", 1_050_000, 1), (1_500_000, "p2", 1_450_000, 1), (3_000_000, "p1", 2_950_000, 2)]
    assert alerts[0]["data"]["via"] == "gateway-a"
