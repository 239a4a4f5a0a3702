"""The MQTT gateway against a real local Mosquitto broker (no Docker), over the real protocol."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import paho.mqtt
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.service_process import ROOT, ServiceProcess, advance

SERVICE = ROOT / "containers" / "mqtt-gateway" / "service.py"
LOCAL_CONF = ROOT / "containers" / "mqtt-broker" / "mosquitto-local.conf"
# Debian installs the broker in /usr/sbin, which is not on every user's PATH.
MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/local/sbin:/usr/sbin")
DEADLINE_S = 10.0


def _broker_version() -> str | None:
    """What the local broker announces on $SYS/broker/version ("mosquitto version X"), from its -h banner."""
    if MOSQUITTO is None:
        return None
    banner = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout.splitlines()
    return banner[0].strip() if banner else None


BROKER_VERSION = _broker_version()


def needs_mosquitto(test: Callable[..., Any]) -> Callable[..., Any]:
    skip = pytest.mark.skipif(MOSQUITTO is None, reason="needs `mosquitto` on the host (apt-get install mosquitto)")
    return pytest.mark.mosquitto(skip(test))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A local mosquitto on a free port, started with the command line the local runtime uses."""

    def __init__(self, log_path: Path, port: int | None = None) -> None:
        assert MOSQUITTO is not None
        self.port = port or free_port()
        self.log = open(log_path, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(LOCAL_CONF), "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + DEADLINE_S
        while True:  # until it accepts TCP connections; waiting on the process doubles as the pause
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"mosquitto did not accept connections on {self.port} within {DEADLINE_S}s")
            try:
                code = self.proc.wait(timeout=0.05)
            except subprocess.TimeoutExpired:
                continue
            raise AssertionError(f"mosquitto exited with {code}: {log_path.read_text(errors='replace')[-1000:]}")

    @property
    def endpoints(self) -> dict[str, Any]:
        return {"mqtt-broker": {"host": "127.0.0.1", "port": self.port}}

    def restart(self) -> None:
        """Kill the broker and start a fresh one on the same port (its clients see the connection drop)."""
        self.kill()
        self.log.close()
        self.__init__(Path(self.log.name), port=self.port)  # type: ignore[misc]

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=DEADLINE_S)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=DEADLINE_S)
            except subprocess.TimeoutExpired:
                self.kill()
        self.log.close()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if MOSQUITTO is None:
        pytest.skip("needs `mosquitto` on the host (apt-get install mosquitto)")
    running = Broker(tmp_path / "mosquitto.log")
    try:
        yield running
    finally:
        running.stop()


class Client:
    """A plain paho client in the test: an independent subscriber or an external publisher."""

    def __init__(self, port: int, client_id: str) -> None:
        self.cond = threading.Condition()
        self.connected = False
        self.subacks: set[int] = set()
        self.messages: list[tuple[str, bytes]] = []
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.wait(lambda: self.connected, "CONNACK")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        with self.cond:
            self.connected = not reason.is_failure
            self.cond.notify_all()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, properties: Any) -> None:
        with self.cond:
            self.subacks.add(mid)
            self.cond.notify_all()

    def _on_message(self, client: Any, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append((msg.topic, bytes(msg.payload)))
            self.cond.notify_all()

    def wait(self, predicate: Callable[[], bool], what: str) -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, DEADLINE_S), f"test client: no {what} within {DEADLINE_S}s"

    def subscribe(self, topic_filter: str) -> None:
        _, mid = self.client.subscribe(topic_filter, qos=1)
        self.wait(lambda: mid in self.subacks, "SUBACK")

    def publish(self, topic: str, payload: bytes) -> None:
        """QoS 1, returns once the broker has acknowledged it."""
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=DEADLINE_S)
        assert info.is_published(), f"test client: no PUBACK for {topic} within {DEADLINE_S}s"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def event(time_us: int, source: str, seq: int, kind: str = "temp", **data: Any) -> dict[str, Any]:
    return {"type": kind, "time_us": time_us, "source": source, "seq": seq, "sent_us": time_us - 1, "data": data}


def received(time_us: int, source: str, seq: int, origin_us: int, kind: str = "temp", *, node: str = "gw",
             **data: Any) -> dict[str, Any]:
    return {"type": "mqtt_received", "time_us": time_us,
            "data": {"topic": f"cosim/{source}/{kind}", "payload": data,
                     "origin": {"node": node, "source": source, "seq": seq, "time_us": origin_us, "type": kind}}}


def gateway(broker: Broker, **config: Any) -> ServiceProcess:
    svc = ServiceProcess(SERVICE)
    ready = svc.init({"connect_timeout_s": 5, "barrier_timeout_s": 5, **config}, node_id="gw", endpoints=broker.endpoints)
    assert ready == {"type": "READY", "time_us": 0, "protocol": 1, "capabilities": ["configure", "mqtt", "snapshot"], "barrier_group": "mqtt-broker", "barrier_publishes": "on_input", "next_event": True,
                     "info": {"paho-mqtt": paho.mqtt.__version__, "broker": BROKER_VERSION}}, svc.stderr()
    return svc


@needs_mosquitto
def test_published_events_come_back_stamped_in_canonical_order(broker: Broker) -> None:
    with gateway(broker, broker_delay_us=10) as svc:
        done = svc.advance(1000, [event(300, "s2", 0, v=2), event(300, "s1", 4, v=1), event(100, "s3", 0, v=3),
                                  event(300, "s1", 5, "hum", v={"nested": [1, 2]})])
        assert done == {"type": "DONE", "time_us": 1000, "events": [
            # (delivery time, publishing node, its publication order): inputs are published in time order
            received(110, "s3", 0, 100, v=3),
            received(310, "s2", 0, 300, v=2),
            received(310, "s1", 4, 300, v=1),
            received(310, "s1", 5, 300, "hum", v={"nested": [1, 2]}),
        ]}
        assert svc.advance(2000) == {"type": "DONE", "time_us": 2000, "events": []}
        assert svc.shutdown() == 0


@needs_mosquitto
def test_only_topics_matching_the_subscriptions_come_back(broker: Broker) -> None:
    with gateway(broker, subscribe=["sensors/+/temp"], topic="sensors/{source}/{type}") as svc:
        done = svc.advance(1000, [event(100, "a", 0, v=1), event(200, "a", 1, "hum", v=2)])
        assert done["events"] == [{"type": "mqtt_received", "time_us": 100, "data": {
            "topic": "sensors/a/temp", "payload": {"v": 1},
            "origin": {"node": "gw", "source": "a", "seq": 0, "time_us": 100, "type": "temp"}}}]
        assert svc.shutdown() == 0


@needs_mosquitto
def test_configure_moves_topic_subscriptions_and_delay_from_then_on(broker: Broker) -> None:
    with gateway(broker, subscribe=["sensors/#"], topic="sensors/{source}") as svc:
        first = svc.advance(1000, [event(100, "a", 0, v=1)])
        assert [(e["data"]["topic"], e["time_us"]) for e in first["events"]] == [("sensors/a", 100)]
        reply = svc.request({"type": "CONFIGURE", "time_us": 1000,
                             "config": {"topic": "plant/{source}", "subscribe": ["plant/#"], "broker_delay_us": 300}})
        assert reply == {"type": "CONFIGURED", "time_us": 1000}, svc.stderr()
        second = svc.advance(2000, [event(1100, "a", 1, v=2)])
        assert [(e["data"]["topic"], e["time_us"]) for e in second["events"]] == [("plant/a", 1400)]
        bad = svc.request({"type": "CONFIGURE", "time_us": 2000, "config": {"broker": "other"}})
        assert bad["error"] == "configure_failed" and "cannot change during a run" in bad["detail"]
        assert svc.shutdown() == 0


def _run(broker: Broker) -> list[dict[str, Any]]:
    windows = [(1000, [event(10 * i + 5, f"s{i % 3}", i, v=i) for i in range(20)]),
               (2000, [event(1000 + 7 * i + 1, f"s{i % 4}", 100 + i, "hum", v=-i) for i in range(30)]),
               (3000, [])]
    with gateway(broker, broker_delay_us=250) as svc:
        dones = [svc.advance(t, events) for t, events in windows]
        assert svc.shutdown() == 0
    return dones


@needs_mosquitto
def test_two_runs_give_identical_done_lists(broker: Broker) -> None:
    first, second = _run(broker), _run(broker)
    assert first == second
    assert [len(d["events"]) for d in first] == [20, 30, 0]
    times = [e["time_us"] for d in first for e in d["events"]]
    assert times == sorted(times)


@needs_mosquitto
def test_broker_delay_crossing_the_window_lands_in_the_next_done(broker: Broker) -> None:
    with gateway(broker, broker_delay_us=600) as svc:
        assert svc.advance(1000, [event(300, "s", 0, v=0), event(800, "s", 1, v=1)]) == {
            # the message due at 1400 is known: the gateway promises to emit it then (next-event advance)
            "type": "DONE", "time_us": 1000, "events": [received(900, "s", 0, 300, v=0)], "next_us": 1400}
        assert svc.advance(2000) == {"type": "DONE", "time_us": 2000, "events": [received(1400, "s", 1, 800, v=1)]}
        assert svc.shutdown() == 0


@needs_mosquitto
def test_an_independent_subscriber_sees_the_messages_through_the_broker(broker: Broker) -> None:
    watcher = Client(broker.port, "test-watcher")
    try:
        watcher.subscribe("cosim/#")
        with gateway(broker) as svc:
            svc.advance(1000, [event(100, "s1", 0, v=1), event(200, "s2", 7, "hum", v="x")])
            watcher.wait(lambda: len(watcher.messages) == 3, "3 messages")
            assert svc.shutdown() == 0
        assert watcher.messages == [
            ("cosim/s1/temp", b'{"data":{"v":1},"node":"gw","node_seq":0,"seq":0,"source":"s1","time_us":100,'
                              b'"type":"temp","window_us":1000}'),
            ("cosim/s2/hum", b'{"data":{"v":"x"},"node":"gw","node_seq":1,"seq":7,"source":"s2","time_us":200,'
                             b'"type":"hum","window_us":1000}'),
            ("cosim/_barrier/gw", b'{"epoch":0,"node":"gw","target_us":1000}'),
        ]
    finally:
        watcher.close()


@needs_mosquitto
def test_a_message_from_an_external_publisher_appears_in_the_next_window(broker: Broker) -> None:
    outsider = Client(broker.port, "test-outsider")
    try:
        with gateway(broker) as svc:
            assert svc.advance(1000) == {"type": "DONE", "time_us": 1000, "events": []}
            outsider.publish("cosim/ext/x", b'{"a":1}')
            outsider.publish("cosim/ext/a", b"hello")
            outsider.publish("cosim/ext/n", b"NaN")  # not standard JSON: kept as text
            outsider.publish("cosim/ext/b", b"\xffz")  # not UTF-8: escaped
            outsider.publish("elsewhere/x", b"not subscribed")
            done = svc.advance(2000, [event(1500, "s", 0, v=1)])
            assert done == {"type": "DONE", "time_us": 2000, "events": [
                received(1500, "s", 0, 1500, v=1),
                {"type": "mqtt_received", "time_us": 2000, "data": {"topic": "cosim/ext/a", "payload": "hello", "origin": None, "external": True}},
                {"type": "mqtt_received", "time_us": 2000, "data": {"topic": "cosim/ext/b", "payload": "\\xffz", "origin": None, "external": True}},
                {"type": "mqtt_received", "time_us": 2000, "data": {"topic": "cosim/ext/n", "payload": "NaN", "origin": None, "external": True}},
                {"type": "mqtt_received", "time_us": 2000, "data": {"topic": "cosim/ext/x", "payload": {"a": 1}, "origin": None, "external": True}},
            ]}
            assert svc.advance(3000) == {"type": "DONE", "time_us": 3000, "events": []}
            assert svc.shutdown() == 0
    finally:
        outsider.close()


def test_unreachable_broker_fails_init_naming_host_and_port() -> None:
    port = free_port()  # nothing listens there
    with ServiceProcess(SERVICE) as svc:
        reply = svc.init({"connect_timeout_s": 1}, node_id="gw",
                         endpoints={"mqtt-broker": {"host": "127.0.0.1", "port": port}})
        assert reply["type"] == "ERROR" and reply["error"] == "init_failed" and reply["fatal"] is True
        assert f"MQTT broker 127.0.0.1:{port} not reachable within 1s" in reply["detail"]
        assert "Connection refused" in reply["detail"]
        assert svc.proc.wait(timeout=DEADLINE_S) == 1


def test_missing_broker_endpoint_fails_init() -> None:
    with ServiceProcess(SERVICE) as svc:
        reply = svc.init({"broker": "mq"}, node_id="gw", endpoints={"other": {"host": "h", "port": 1}})
        assert reply["error"] == "init_failed"
        assert "no endpoint {host, port} for broker node 'mq' in INIT endpoints (have ['other'])" in reply["detail"]
        assert svc.proc.wait(timeout=DEADLINE_S) == 1


@needs_mosquitto
def test_a_broker_that_does_not_come_back_fails_the_next_advance(broker: Broker) -> None:
    svc = ServiceProcess(SERVICE)
    assert svc.init({"connect_timeout_s": 2, "barrier_timeout_s": 3}, node_id="gw", endpoints=broker.endpoints)["type"] == "READY"
    with svc:
        assert svc.advance(1000, [event(100, "s", 0, v=0)])["events"] == [received(100, "s", 0, 100, v=0)]
        broker.kill()
        # The disconnect (or, at worst, the barrier watchdog) turns the next ADVANCE into a fatal ERROR; the
        # harness's own receive deadline fails the test if no reply comes at all.
        reply = svc.advance(2000, [event(1100, "s", 1, v=1)])
        assert reply["type"] == "ERROR" and reply["error"] == "callback_failed" and reply["fatal"] is True
        assert f"MQTT broker 127.0.0.1:{broker.port}" in reply["detail"] and "did not come back" in reply["detail"]
        assert svc.proc.wait(timeout=DEADLINE_S) == 1


@needs_mosquitto
@pytest.mark.parametrize("delay_us", [300, 1500])  # due in the same window; due in the next (still in flight)
def test_two_gateways_survive_a_broker_restart_with_the_same_stream(broker: Broker, delay_us: int) -> None:
    uninterrupted = _cross_publishing_run(broker, delay_us=delay_us)
    restarted = _cross_publishing_run(broker, restart_after=12, delay_us=delay_us)
    assert restarted == uninterrupted
    assert len(restarted["gw-a"]) == 30 * 7 - (7 if delay_us > 1000 else 0)  # the last window's are due after it


# -- several protocol-driven clients on one broker ------------------------------------------------


def gateways(broker: Broker, ids: list[str], **config: Any) -> list[ServiceProcess]:
    started = []
    for node_id in ids:
        svc = ServiceProcess(SERVICE)
        ready = svc.init({"connect_timeout_s": 5, "barrier_timeout_s": 5, **config}, node_id=node_id,
                         endpoints=broker.endpoints)
        assert ready["type"] == "READY" and ready["barrier_group"] == "mqtt-broker", svc.stderr()
        started.append(svc)
    return started


def step_all(services: dict[str, ServiceProcess], time_us: int, inputs: dict[str, list[dict[str, Any]]],
             members: list[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """One coordinator step: ADVANCE to every client first (peers: those with inputs), then every DONE."""
    peers = sorted(node for node in services if inputs.get(node))
    extra = {"members": members} if members is not None else {}
    for node, svc in services.items():
        svc.send(advance(time_us, inputs.get(node, []), peers=peers, **extra))
    dones = {node: svc.receive() for node, svc in services.items()}
    for node, done in dones.items():
        assert done["type"] == "DONE", f"{node}: {done}"
    return {node: done["events"] for node, done in dones.items()}


def _cross_publishing_run(broker: Broker, windows: int = 30, restart_after: int | None = None,
                          delay_us: int = 300) -> dict[str, list[dict[str, Any]]]:
    """Two gateways subscribe to each other's topics and publish in the same windows."""
    ids = ["gw-a", "gw-b"]
    services = dict(zip(ids, gateways(broker, ids, topic="plant/{source}/v", subscribe=["plant/#"],
                                      broker_delay_us=delay_us)))
    seen: dict[str, list[dict[str, Any]]] = {node: [] for node in ids}
    try:
        for k in range(1, windows + 1):
            inputs = {"gw-a": [event(k * 1000 - 900 + i * 37, f"a{i}", k * 10 + i, "v", x=i) for i in range(4)],
                      "gw-b": [event(k * 1000 - 900 + i * 37, f"b{i}", k * 10 + i, "v", x=-i) for i in range(3)]}
            for node, events in step_all(services, k * 1000, inputs, members=ids if k == 1 else None).items():
                seen[node].extend(events)
            if k == restart_after:
                broker.restart()
        for svc in services.values():
            assert svc.shutdown() == 0
            if restart_after is not None:  # each one noticed, reconnected and re-published
                assert "every member is back (epoch 1)" in svc.stderr()
    finally:
        for svc in services.values():
            svc.close()
    return seen


@needs_mosquitto
def test_two_gateways_publishing_on_each_others_topics_see_the_same_ordered_stream(broker: Broker) -> None:
    first, second = _cross_publishing_run(broker), _cross_publishing_run(broker)
    assert first == second
    assert first["gw-a"] == first["gw-b"]  # fan-out: both get every message, in the same order
    stream = first["gw-a"]
    assert len(stream) == 30 * 7  # every message of both, each due inside its own window (+300 us)
    keys = [(e["time_us"], e["data"]["origin"]["node"], e["data"]["origin"]["seq"]) for e in stream]
    assert [k[:2] for k in keys] == sorted(k[:2] for k in keys)
    assert {e["data"]["origin"]["node"] for e in stream} == {"gw-a", "gw-b"}


@needs_mosquitto
def test_replicas_with_a_shared_subscription_keep_each_message_once(broker: Broker) -> None:
    ids = ["gw-1", "gw-2"]
    services = dict(zip(ids, gateways(broker, ids, topic="plant/{source}/v", subscribe=["$share/gw/plant/#"])))
    kept: dict[str, list[tuple[str, int]]] = {node: [] for node in ids}
    try:
        for k in range(1, 11):
            inputs = {node: [event(k * 1000 - 500 + i, f"{node}-s", k * 10 + i, "v") for i in range(5)] for node in ids}
            for node, events in step_all(services, k * 1000, inputs, members=ids if k == 1 else None).items():
                kept[node].extend((e["data"]["origin"]["source"], e["data"]["origin"]["seq"]) for e in events)
        for svc in services.values():
            assert svc.shutdown() == 0
    finally:
        for svc in services.values():
            svc.close()
    everything = kept["gw-1"] + kept["gw-2"]
    assert len(everything) == len(set(everything)) == 2 * 10 * 5  # every message once, on one replica
    assert kept["gw-1"] and kept["gw-2"]  # and both take a share


@needs_mosquitto
def test_a_share_group_that_is_not_this_service_fails_clearly(broker: Broker) -> None:
    (svc,) = gateways(broker, ["gw-1"], subscribe=["$share/other/plant/#"])
    with svc:
        reply = svc.advance(1000, [], peers=[], members=["gw-1", "gw-2"])
        assert reply["type"] == "ERROR" and reply["error"] == "callback_failed"
        assert "$share/other/...: 'other' must be the id of this replicated service" in reply["detail"]


@needs_mosquitto
def test_a_missing_peer_barrier_fails_naming_the_peer(broker: Broker) -> None:
    (svc,) = gateways(broker, ["gw-a"], barrier_timeout_s=1)
    with svc:
        reply = svc.advance(1000, [event(100, "s", 0, v=1)], peers=["gw-a", "gw-ghost"], members=["gw-a", "gw-ghost"])
        assert reply["type"] == "ERROR" and reply["error"] == "callback_failed"
        assert "no barrier within 1s" in reply["detail"] and "gw-ghost (window ending 1000 us)" in reply["detail"]
        assert "gw-a (" not in reply["detail"]


@needs_mosquitto
def test_a_client_without_inputs_is_not_waited_for_but_still_receives(broker: Broker) -> None:
    ids = ["gw-a", "gw-b"]
    services = dict(zip(ids, gateways(broker, ids, barrier_timeout_s=2)))
    watcher = Client(broker.port, "test-watcher")
    try:
        watcher.subscribe("cosim/_barrier/#")
        first = step_all(services, 1000, {"gw-a": [event(100, "s", 0, v=1)]}, members=ids)  # peers: gw-a only
        assert first["gw-a"] == first["gw-b"] == [received(100, "s", 0, 100, node="gw-a", v=1)]
        assert step_all(services, 2000, {}) == {"gw-a": [], "gw-b": []}  # nobody publishes: no barrier at all
        for svc in services.values():
            assert svc.shutdown() == 0
        watcher.publish("cosim/_barrier/zz-test", b"{}")  # after both clients are gone: arrives after their barriers
        watcher.wait(lambda: watcher.messages[-1:] == [("cosim/_barrier/zz-test", b"{}")], "the sentinel")
        assert [topic for topic, _ in watcher.messages] == ["cosim/_barrier/gw-a", "cosim/_barrier/zz-test"]
    finally:
        watcher.close()
        for svc in services.values():
            svc.close()
