"""The bench's scenarios, written as YAML files into the bench's temporary directory: echo services (the bundled
``containers/echo``), a sink, and a sensor, the MQTT broker and gateways where a row needs them."""

from __future__ import annotations

from pathlib import Path

from cosim.resources import data_path

CONTAINERS = data_path("containers")


def step_scenario(directory: Path, name: str, *, services: int, steps: int, quantum_us: int = 1000,
              tick_us: int | None = None, through_gateway: bool = False, gateways: int = 1,
              one_per_site: bool = False) -> Path:
    """A benchmark scenario: ``services`` echo nodes; with ``tick_us``, echo-1 emits a tick every tick_us that
    goes to a sink (through the MQTT gateway and broker if asked: ``gateways`` replicas, ticks spread over them
    round-robin, every gateway subscribed to all of them)."""
    lines = [f"name: {name}", "seed: 1", f"duration_us: {steps * quantum_us}", f"quantum_us: {quantum_us}", "nodes:"]
    echo = (CONTAINERS / "echo").as_posix()
    for index in range(services):
        config = f", config: {{tick_us: {tick_us}}}" if tick_us is not None and index == 0 else ""
        if one_per_site:  # a Swarm node each (the local test cluster labels node i site=site-<i>)
            config += f", placement: ['node.labels.site == site-{index + 1}']"
        lines.append(f"  - {{id: echo-{index + 1}, kind: service, build: {echo}{config}}}")
    routes = []
    if tick_us is not None:
        lines.append("  - {id: sink, kind: sink}")
        if through_gateway:
            lines += [
                "  - {id: mqtt-broker, kind: infrastructure, build: " + (CONTAINERS / "mqtt-broker").as_posix()
                + ", port: 1883, local_command: [mosquitto, -c, mosquitto-local.conf, -p, '{port}']}",
                "  - {id: gateway, kind: service, build: " + (CONTAINERS / "mqtt-gateway").as_posix()
                + f", replicas: {gateways}, config: {{broker: mqtt-broker, broker_delay_us: {quantum_us}}}}}",
            ]
            routes = ["  - {from: echo-1, to: [gateway], events: [tick]}", "  - {from: gateway, to: [sink]}"]
        else:
            routes = ["  - {from: echo-1, to: [sink], events: [tick]}"]
    if routes:
        lines += ["routes:", *routes]
    path = directory / f"{name}.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def workload(directory: Path, name: str, *, services: int, duration_us: int, period_us: int | None,
              tick_us: int | None = None) -> Path:
    """A next-event workload: ``services`` echo nodes; a sensor every ``period_us`` to echo-1, whose echoes go to a
    sink; with ``tick_us``, every echo node also ticks to the sink (busy every quantum when tick_us = quantum)."""
    echo = (CONTAINERS / "echo").as_posix()
    lines = [f"name: {name}", "seed: 1", f"duration_us: {duration_us}", "quantum_us: 1000", "nodes:"]
    for index in range(services):
        config = f", config: {{tick_us: {tick_us}}}" if tick_us else ""
        lines.append(f"  - {{id: echo-{index + 1}, kind: service, build: {echo}{config}}}")
    lines.append("  - {id: sink, kind: sink}")
    routes = [f"  - {{from: echo-{index + 1}, to: [sink]}}" for index in range(services)]
    if period_us is not None:
        # The generic `uniform` model: the workload measures the step loop, not the synthesis of a signal.
        lines.append(f"  - {{id: sensor, kind: sensor, model: uniform, period_us: {period_us}}}")
        routes.append("  - {from: sensor, to: [echo-1]}")
    path = directory / f"{name}.yaml"
    path.write_text("\n".join(lines + ["routes:", *routes]) + "\n", encoding="utf-8")
    return path
