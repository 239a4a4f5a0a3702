"""The schedule in virtual time (cosim.schedule): the loader's rules, the router's changes, and runs on the local
runtime with every action kind (reconfigure, link, partition, heal, crash, restart) and `during:` windows."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from cosim import trace as traces
from cosim.errors import ScenarioError, UnsupportedAction
from cosim.loading import load
from cosim.network import Delivery, Drop, Router
from cosim.run import run
from cosim.schedule import Crash, Heal, Restart
from tests.conftest import CONTAINERS, ROOT
from tests.test_protocol_schema import check_trace_against_the_documentation

ECHO = CONTAINERS / "echo"

BASE = f"""
name: sched
seed: 7
duration_us: 20_000
quantum_us: 1_000
nodes:
  - {{id: sensor, kind: sensor, period_us: 1_000, links: [{{to: svc, latency_us: 1_000}}]}}
  - {{id: svc, kind: service, build: {ECHO}, replicas: 2, config: {{tick_us: 5_000}}}}
  - {{id: out, kind: sink}}
routes:
  - {{from: sensor, to: [svc]}}
  - {{from: svc, to: [out]}}
"""


def write(tmp_path: Path, schedule: str, base: str = BASE, name: str = "s.yaml") -> Path:
    path = tmp_path / name
    path.write_text(base + ("schedule:\n" + schedule if schedule else ""), encoding="utf-8")
    return path


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# -- the loader ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("item, expected", [
    ("{at_us: 3_000, crash: nobody}", "schedule[0].crash: unknown node 'nobody'"),
    ("{at_us: 3_500, heal: true}", "schedule[0].at_us: at_us 3500 is not on the quantum grid (1000 us)"),
    ("{at_us: 20_000, heal: true}", "schedule[0].at_us: at_us 20000 is not before the end of the run (20000 us)"),
    ("{at_us: 3_000, restart: svc-1}", "schedule[0].restart: restart of 'svc-1' at 3000 us without an earlier crash"),
    ("{at_us: 3_000, crash: out}", "schedule[0].crash: 'out' is a sink, an in-process model with no process to crash"),
    ("{at_us: 3_000, crash: sensor}", "'sensor' is a sensor, an in-process model with no process to crash"),
    ("{at_us: 3_000, reconfigure: sensor, config: {gain: 2}}",
     "schedule[0].config.gain: unknown config key 'gain' for 'sensor', an in-process sensor (accepted: period_us, "
     "event_type)"),
    ("{at_us: 3_000, reconfigure: out, config: {x: 1}}", "unknown config key 'x' for 'out', an in-process sink (it "
                                                          "accepts none)"),
    ("{at_us: 3_000, partition: [[sensor, svc-1], [svc-1]]}",
     "schedule[0].partition[1][0]: 'svc-1' is named twice in the partition (also in group 0)"),
    ("{at_us: 3_000, crash: svc}", "schedule[0].crash: 'svc' is a replicated service; name one replica (svc-1, svc-2)"),
    ("{at_us: 3_000, reconfigure: svc, config: {tick_us: 1}}", "'svc' is a replicated service; name one replica"),
    ("{at_us: 3_000, heal: true, crash: svc-1}", "schedule[0]: an action needs exactly one of reconfigure, link, "
                                                 "partition, heal, crash, restart; found heal, crash"),
    ("{at_us: 3_000}", "found none"),
    ("{at_us: 3_000, crash: svc-1, config: {a: 1}}", "`config` belongs to a `reconfigure` action, not to `crash`"),
    ("{at_us: 3_000, link: {from: sensor, to: svc}, set: {latency_us: 10}}",
     "schedule[0].set.latency_us: latency 10 us is shorter than the quantum 1000 us"),
    ("{at_us: 3_000, link: {from: sensor, to: svc}, set: {los: 0.1}}", "unknown key 'los'; did you mean 'loss'?"),
    ("{at_us: 3_000, reconfigure: svc-1}", "a reconfigure action needs `config`"),
    ("{at_us: 3_000, heal: false}", "schedule[0].heal: expected True"),
    ("{at_us: 3_000, crashh: svc-1}", "unknown key 'crashh'; did you mean 'crash'?"),
    ("{at_us: 3_000, reconfigure: svc-1, config: {}}", "schedule[0].config: must not be empty"),
    ("{at_us: 3_000, link: {from: svc-1, to: svc}, set: {loss: 0.2}}", "`from` and `to` both name svc-1"),
    ("{at_us: 3_000, partition: [[sensor]]}", "schedule[0].partition: needs at least 2 items"),
])
def test_bad_schedules_are_refused_clearly(tmp_path: Path, item: str, expected: str) -> None:
    path = write(tmp_path, f"  - {item}\n")
    with pytest.raises(ScenarioError) as caught:
        load(path)
    message = str(caught.value)
    assert expected in message
    assert message.startswith(f"{path}:{BASE.count(chr(10)) + 2}:")  # the file and the line of the action
    assert len(message.splitlines()) == 1


def test_crashing_a_node_twice_without_a_restart_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "  - {at_us: 3_000, crash: svc-1}\n  - {at_us: 4_000, crash: svc-1}\n")
    with pytest.raises(ScenarioError, match=r"schedule\[1\].crash: 'svc-1' is crashed again at 4000 us while it is "
                                            r"still down; restart it first"):
        load(path)


def test_a_route_window_must_not_be_empty(tmp_path: Path) -> None:
    base = BASE.replace("{from: sensor, to: [svc]}", "{from: sensor, to: [svc], during: [{from_us: 5000, to_us: 5000}]}")
    with pytest.raises(ScenarioError, match=r"routes\[0\].during\[0\]: window \[5000, 5000\) us is empty"):
        load(write(tmp_path, "", base))


def test_the_schedule_is_ordered_by_time_then_file_order_and_knows_its_next_action(tmp_path: Path) -> None:
    scenario = load(write(tmp_path, "  - {at_us: 6_000, restart: svc-1}\n  - {at_us: 2_000, crash: svc-1}\n"
                                    "  - {at_us: 6_000, heal: true}\n"))
    schedule = scenario.schedule
    assert schedule.actions == (Crash(2_000, "svc-1"), Restart(6_000, "svc-1"), Heal(6_000))
    assert schedule.due(6_000) == (Restart(6_000, "svc-1"), Heal(6_000))
    assert schedule.due(5_000) == ()
    assert [schedule.next_time(t) for t in (0, 2_000, 2_001, 6_000, 6_001)] == [2_000, 2_000, 6_000, 6_000, None]


def test_links_and_partitions_may_name_a_replicated_service_meaning_every_replica(tmp_path: Path) -> None:
    scenario = load(write(tmp_path, "  - {at_us: 1_000, link: {from: sensor, to: svc}, set: {loss: 0.5}}\n"
                                    "  - {at_us: 2_000, partition: [[sensor], [svc]]}\n"))
    manifest = scenario.schedule.manifest()
    assert [(a["from"], a["to"]) for a in manifest[:2]] == [("sensor", "svc-1"), ("sensor", "svc-2")]
    assert manifest[2] == {"at_us": 2_000, "action": "partition", "groups": [["sensor"], ["svc-1", "svc-2"]]}


# -- the router --------------------------------------------------------------------------------------------


def test_link_changes_apply_to_later_sends_and_partitions_drop_until_healed(tmp_path: Path) -> None:
    router = Router(load(write(tmp_path, "")))
    assert router.transmit("sensor", "svc-1", 1_000) == Delivery("svc-1", 2_000)
    router.set_link("sensor", "svc-1", {"latency_us": 7_000})
    assert router.transmit("sensor", "svc-1", 2_000) == Delivery("svc-1", 9_000)
    router.partition([["sensor"], ["svc-1"]])
    assert router.transmit("sensor", "svc-1", 3_000) == Drop("svc-1", "partition")
    assert router.transmit("sensor", "svc-2", 3_000) == Delivery("svc-2", 4_000)  # not on either side: untouched
    router.heal()
    assert router.transmit("sensor", "svc-1", 4_000) == Delivery("svc-1", 11_000)  # the latency change stays


# -- runs on the local runtime ------------------------------------------------------------------------------

EVERY_ACTION = """\
  - {at_us: 3_000, reconfigure: svc-1, config: {tick_us: 1_000}}
  - {at_us: 4_000, link: {from: sensor, to: svc-1}, set: {latency_us: 3_000}}
  - {at_us: 8_000, partition: [[sensor], [svc]]}
  - {at_us: 10_000, heal: true}
  - {at_us: 10_000, crash: svc-2}
  - {at_us: 14_000, restart: svc-2}
  - {at_us: 14_000, reconfigure: sensor, config: {period_us: 2_000}}
"""


@pytest.fixture(scope="module")
def every_action(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    tmp_path = tmp_path_factory.mktemp("every-action")
    base = BASE.replace("{from: sensor, to: [svc]}", "{from: sensor, to: [svc], during: [{from_us: 0, to_us: 17_000}]}")
    scenario = write(tmp_path, EVERY_ACTION, base)
    completed = run(scenario, runtime="local", trace_path=tmp_path / "t.jsonl", watchdog_s=20.0)
    assert completed.result.actions and completed.result.dropped["node_down"] > 0
    return completed.trace_path, records(completed.trace_path)


def test_each_applied_action_is_one_record_at_its_virtual_time(every_action: tuple[Path, list[dict[str, Any]]]) -> None:
    _, trace = every_action
    actions = [r for r in trace if r["record"] == "action"]
    assert [(a["time_us"], a["action"]) for a in actions] == [
        (3_000, "reconfigure"), (4_000, "link"), (8_000, "partition"), (10_000, "heal"), (10_000, "crash"),
        (14_000, "restart"), (14_000, "reconfigure")]
    restart = actions[5]
    lost = [r for r in trace if r["record"] == "dropped" and r["reason"] == "node_down"]
    assert restart == {"record": "action", "time_us": 14_000, "action": "restart", "node": "svc-2", "restart": 1,
                       "lost": len(lost)}
    assert lost and all(r["dest"] == "svc-2" and 10_000 < r["at_us"] <= 14_000 for r in lost)
    # Actions come before the window's deliveries: the trace stays in time order.
    times = [r.get("at_us", r["time_us"]) for r in trace[1:-1] if r["record"] in ("action", "delivered", "dropped")
             and (r["record"] != "dropped" or r["reason"] == "node_down")]
    assert times == sorted(times)
    header = trace[0]
    assert header["schedule"][0] == {"at_us": 3_000, "action": "reconfigure", "node": "svc-1",
                                     "config": {"tick_us": 1_000}}
    assert trace[-1]["counts"]["action"] == 7
    check_trace_against_the_documentation(every_action[0])  # every field of every record is in trace-format.md


def test_actions_change_what_happens_from_their_time_on(every_action: tuple[Path, list[dict[str, Any]]]) -> None:
    _, trace = every_action
    sent = [r for r in trace if r["record"] == "sent"]
    ticks = {source: [r["time_us"] for r in sent if r["source"] == source and r["type"] == "tick"]
             for source in ("svc-1", "svc-2")}
    assert ticks["svc-1"][:3] == [4_000, 5_000, 6_000]  # reconfigured at 3 ms: a tick every 1 ms (was 5 ms)
    assert ticks["svc-2"] == [5_000, 10_000, 15_000, 20_000]  # crashed 10-14 ms: its clock resumed at 14 ms
    delivered = [r for r in trace if r["record"] == "delivered" and r["source"] == "sensor"]
    to_svc1 = {r["sent_us"]: r["time_us"] - r["sent_us"] for r in delivered if r["dest"] == "svc-1"}
    assert to_svc1[1_000] == 1_000 and to_svc1[5_000] == 3_000  # the link's latency changed at 4 ms
    partitioned = [r for r in trace if r["record"] == "dropped" and r["reason"] == "partition"]
    assert sorted({r["time_us"] for r in partitioned}) == [9_000, 10_000]  # sent after 8 ms and up to the heal
    readings = [r["time_us"] for r in sent if r["source"] == "sensor"]
    assert readings[-4:] == [14_000, 15_000, 17_000, 19_000]  # period 2 ms from 14 ms: after the next reading
    filtered = [r for r in trace if r["record"] == "filtered"]
    assert [(r["time_us"], r["dest"]) for r in filtered] == [(17_000, "svc"), (19_000, "svc")]  # during: [0, 17 ms)


def test_a_run_with_a_schedule_is_reproducible_and_reads_back(every_action: tuple[Path, list[dict[str, Any]]],
                                                              tmp_path: Path) -> None:
    path, _ = every_action
    again = run(path.parent / "s.yaml", runtime="local", trace_path=tmp_path / "again.jsonl", watchdog_s=20.0)
    assert again.trace_path.read_bytes() == path.read_bytes()
    read = traces.read(path)
    assert [a.action for a in read.of(traces.Action)][:2] == ["reconfigure", "link"]
    assert read.of(traces.Filtered) and read.footer is not None
    assert len(read.to_dataframe()) == len(read.records) - len(read.of(traces.Action))


def test_the_report_lists_the_actions_and_the_drops_by_reason(every_action: tuple[Path, list[dict[str, Any]]]) -> None:
    from cosim.report import write_report

    html = write_report(every_action[0]).read_text(encoding="utf-8")
    assert "<h2>Schedule</h2>" in html and "restart svc-2 (restart 1; " in html and "schedule action" in html
    assert "partition sensor | svc-1, svc-2" in html and "node_down" in html


def test_a_scenario_without_a_schedule_keeps_its_trace_format(tmp_path: Path) -> None:
    completed = run(write(tmp_path, ""), runtime="local", trace_path=tmp_path / "t.jsonl", watchdog_s=20.0)
    trace = records(completed.trace_path)
    assert "schedule" not in trace[0]
    assert set(trace[-1]["counts"]) == {"sent", "delivered", "dropped", "unroutable"}
    assert {r["record"] for r in trace[1:-1]} <= {"sent", "delivered", "dropped", "unroutable"}


def test_reconfiguring_a_service_without_the_capability_fails_before_the_first_step(tmp_path: Path) -> None:
    service = tmp_path / "plain"
    service.mkdir()
    (service / "Dockerfile").write_text("FROM scratch\n", encoding="utf-8")
    (service / "service.py").write_text(
        "from protocol_adapter import serve\nserve(lambda current, target, events: [])\n", encoding="utf-8")
    shutil.copy(CONTAINERS / "protocol_adapter.py", tmp_path / "protocol_adapter.py")
    base = BASE.replace(str(ECHO), str(service)).replace(", config: {tick_us: 5_000}", "")
    path = write(tmp_path, "  - {at_us: 5_000, reconfigure: svc-2, config: {x: 1}}\n", base)
    with pytest.raises(UnsupportedAction) as caught:
        run(path, runtime="local", trace_path=tmp_path / "t.jsonl", watchdog_s=20.0)
    assert "reconfigure of 'svc-2' at 5000 us, but the service did not declare the 'configure' capability" in str(caught.value)
    assert caught.value.exit_code == 2
    trace = records(tmp_path / "t.jsonl")
    assert [r["record"] for r in trace] == ["header", "error"]
    assert (trace[-1]["node"], trace[-1]["error"]) == ("svc-2", "unsupported_action")


def test_a_config_the_service_refuses_fails_the_run_naming_node_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "  - {at_us: 5_000, reconfigure: svc-1, config: {tick: 1}}\n")
    with pytest.raises(Exception) as caught:
        run(path, runtime="local", trace_path=tmp_path / "t.jsonl", watchdog_s=20.0)
    message = str(caught.value)
    assert "node 'svc-1'" in message and "configure_failed" in message and "unknown config keys ['tick']" in message
    assert "CONFIGURE at 5000 us" in message


# -- infrastructure: the MQTT broker crashes and comes back (local Mosquitto) --------------------------------

BROKER_CRASH = Path(__file__).parent / "scenarios_schedule" / "broker-crash.yaml"


def check_broker_crash(trace: list[dict[str, Any]]) -> None:
    """What tests/scenarios_schedule/broker-crash.yaml must show, on either runtime."""
    actions = [(r["time_us"], r["action"]) for r in trace if r["record"] == "action"]
    assert actions == [(300_000, "reconfigure"), (400_000, "reconfigure"), (400_000, "reconfigure"),
                       (500_000, "crash"), (1_000_000, "restart")]
    sent = [r for r in trace if r["record"] == "sent"]
    forwarded = [r for r in sent if r["type"] == "mqtt_received"]
    lost = [r for r in sent if r["type"] == "mqtt_lost"]
    # The new topic from 0.3 s on; the broker delay is 2 ms from 0.4 s on (0.5 ms before).
    assert {r["data"]["topic"] for r in forwarded if r["data"]["origin"]["time_us"] > 300_000} == {"site/pump-1"}
    assert {r["time_us"] - r["data"]["origin"]["time_us"] for r in forwarded} == {500, 2_000}
    # Down from 0.5 s to 1 s: each reading that reached the gateway then is reported lost, none forwarded.
    assert lost and all(500_000 < r["time_us"] <= 1_000_000 and r["data"]["reason"] == "broker_down" for r in lost)
    assert not [r for r in forwarded if 500_000 < r["data"]["origin"]["time_us"] <= 1_000_000]
    assert [r for r in forwarded if r["data"]["origin"]["time_us"] > 1_000_000]  # back after the restart
    verdicts = [r for r in trace if r["record"] == "delivered" and r["dest"] == "alerts"]
    anomalies = {r["data"]["sampled_us"] for r in verdicts if r["data"]["label"] == "anomaly"}
    assert not anomalies & set(range(600_000, 800_000)) and anomalies & set(range(1_500_000, 1_700_000))
    assert trace[-1]["record"] == "footer"


def test_the_broker_crashes_and_comes_back_and_the_gateway_resumes(tmp_path: Path) -> None:
    completed = run(BROKER_CRASH, runtime="local", trace_path=tmp_path / "t.jsonl", watchdog_s=30.0)
    check_broker_crash(records(completed.trace_path))


MULTI_SITE_CHAOS = """\
schedule:
  - {at_us: 1_200_000, crash: mqtt-broker}
  - {at_us: 1_400_000, restart: mqtt-broker}
  - {at_us: 1_500_000, crash: gateway-b-1}
  - {at_us: 2_500_000, restart: gateway-b-1}
  - {at_us: 3_200_000, crash: mqtt-broker}
  - {at_us: 3_600_000, restart: mqtt-broker}
  - {at_us: 3_700_000, reconfigure: gateway-b-2, config: {broker_delay_us: 3_000}}
"""


def test_four_mqtt_clients_survive_broker_restarts_and_a_member_restart_reproducibly(tmp_path: Path) -> None:
    """scenarios/multi-site.yaml (four clients in one barrier group) with two broker restarts, one of them before a
    gateway replica crashes and comes back: the barriers resume every time, and two runs are byte-identical."""
    text = (ROOT / "scenarios" / "multi-site.yaml").read_text(encoding="utf-8")
    path = tmp_path / "multi-site-chaos.yaml"
    path.write_text(text.replace("../containers/", f"{CONTAINERS}/") + MULTI_SITE_CHAOS, encoding="utf-8")
    first = run(path, runtime="local", trace_path=tmp_path / "a.jsonl", watchdog_s=30.0)
    second = run(path, runtime="local", trace_path=tmp_path / "b.jsonl", watchdog_s=30.0)
    assert first.trace_path.read_bytes() == second.trace_path.read_bytes()
    trace = records(first.trace_path)
    assert [r["action"] for r in trace if r["record"] == "action"] == [
        "crash", "restart", "crash", "restart", "crash", "restart", "reconfigure"]
    lost = [r for r in trace if r["record"] == "sent" and r["type"] == "mqtt_lost"]
    assert {r["source"] for r in lost} == {"gateway-a", "gateway-b-1", "gateway-b-2"}
    assert all(1_200_000 < r["time_us"] <= 1_400_000 or 3_200_000 < r["time_us"] <= 3_600_000 for r in lost)
    forwarded = [r["time_us"] for r in trace if r["record"] == "sent" and r["source"] == "gateway-b-1"
                 and r["type"] == "mqtt_received"]
    assert [t for t in forwarded if t > 3_600_000]  # the restarted replica is back in the group after both
    assert trace[-1]["record"] == "footer"


def test_an_unplanned_crash_still_fails_the_run_while_a_planned_one_does_not(tmp_path: Path) -> None:
    from cosim.errors import NodeFailure

    base = BASE.replace("replicas: 2, config: {tick_us: 5_000}", "replicas: 2, config: {exit_at_us: 6_000}")
    path = write(tmp_path, "  - {at_us: 3_000, crash: svc-2}\n", base)  # svc-1 exits on its own at 6 ms
    with pytest.raises(NodeFailure) as caught:
        run(path, runtime="local", trace_path=tmp_path / "t.jsonl", watchdog_s=20.0)
    assert caught.value.node == "svc-1" and caught.value.process_exit_code == 3
    trace = records(tmp_path / "t.jsonl")
    assert [r["action"] for r in trace if r["record"] == "action"] == ["crash"]
    assert (trace[-1]["record"], trace[-1]["node"], trace[-1]["error"]) == ("error", "svc-1", "node_failure")
