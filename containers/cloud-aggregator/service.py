"""cloud-aggregator: a cloud-side MQTT subscriber that turns the edge's verdicts into one alert per anomaly episode.

It subscribes (through the shared broker, in virtual time: see cosim_service.mqtt) to the verdicts the
edge gateways publish, and keeps per sensor the latest sampling time flagged as an anomaly. A verdict labelled
``anomaly`` whose window was sampled more than ``quiet_us`` after the latest flagged one (or the first one) opens
an episode: the service emits ``anomaly_alert`` at the verdict's delivery time. Later verdicts of the same
episode (and ones that arrive out of sampling order) only count. Every decision depends on virtual time and
the delivery order, never on the wall clock.

Config (all optional; the MQTT ones as for mqtt-gateway):
  broker, qos, broker_delay_us, connect_timeout_s, barrier_timeout_s
  subscribe   verdict topic filters (["+/+/inference_result"])
  quiet_us    gap in sampling time that separates two episodes of one sensor (500000)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cosim_service.mqtt import MqttService


class CloudAggregator(MqttService):
    capabilities = ("aggregator", "mqtt")
    default_filters = ["+/+/inference_result"]
    reconfigurable = MqttService.reconfigurable | {"quiet_us"}

    def __init__(self) -> None:
        super().__init__()
        self.quiet_us = 500_000
        self.latest_flagged: dict[str, int] = {}  # sensor -> latest sampled_us labelled anomaly
        self.episodes: dict[str, int] = {}  # sensor -> alerts so far

    def apply_config(self, config: Mapping[str, Any]) -> None:
        self.quiet_us = int(config.get("quiet_us", self.quiet_us))
        if self.quiet_us < 0:
            raise ValueError(f"quiet_us must be >= 0, got {self.quiet_us}")

    def snapshot_own(self) -> Any:
        return {"latest_flagged": dict(sorted(self.latest_flagged.items())), "episodes": dict(sorted(self.episodes.items()))}

    def restore_own(self, saved: Any) -> None:
        self.latest_flagged = dict(saved["latest_flagged"])
        self.episodes = dict(saved["episodes"])

    def advance(self, until_us: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if until_us == self.now_us:
            return []
        alerts = []
        for message in self.step(until_us, []):
            alert = self._consider(message)
            if alert is not None:
                alerts.append(alert)
        return alerts

    def _consider(self, message: dict[str, Any]) -> dict[str, Any] | None:
        data = message["data"]
        verdict = data.get("payload")
        if data.get("origin") is None or not isinstance(verdict, dict) or verdict.get("label") != "anomaly":
            return None  # outside virtual time, or not a flagged verdict
        sensor, sampled = verdict.get("sensor"), verdict.get("sampled_us")
        if not isinstance(sensor, str) or not isinstance(sampled, int):
            return None
        latest = self.latest_flagged.get(sensor)
        self.latest_flagged[sensor] = sampled if latest is None else max(latest, sampled)
        if latest is not None and sampled <= latest + self.quiet_us:
            return None  # the same episode
        self.episodes[sensor] = self.episodes.get(sensor, 0) + 1
        return {"type": "anomaly_alert", "time_us": message["time_us"], "data": {
            "sensor": sensor, "sampled_us": sampled, "window": verdict.get("window"), "score": verdict.get("score"),
            "episode": self.episodes[sensor], "topic": data["topic"], "via": data["origin"]["node"]}}


if __name__ == "__main__":
    CloudAggregator().run()
