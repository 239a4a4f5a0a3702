"""`cosim conformance` (cosim/conformance.py) against real processes: every bundled service (as a command and as an
image; the MQTT ones with the broker --broker provides) and the Node template pass every case, leaving nothing
running; each service of tests/services/broken/<case>/ (broken on purpose, one rule each) fails that case, by name;
bad targets and options are refused with one line. The image-based checks need Docker."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cosim import conformance, scaffold
from cosim.errors import Interrupted, UsageError
from tests.skip_policy import host_tool

from .conftest import ROOT

BROKEN = ROOT / "tests" / "services" / "broken"
ECHO = [sys.executable, str(ROOT / "containers" / "echo" / "service.py")]
ECHO_CONFIG = {"tick_us": 700}  # ticks: the promise and snapshot cases then have something to compare
WATCHDOG_S = 5.0
BROKER = "mqtt-broker"
# Every bundled service: (its INIT config, the broker it needs). The gateway as the default scenario configures it
# (its messages come back through the broker, stamped broker_delay_us later); the aggregator as it comes.
BUNDLED = {
    "echo": (ECHO_CONFIG, None),
    "ml-inference": ({"threshold": 0.5, "processing_delay_us": 2_000}, None),
    "mqtt-gateway": ({"broker": BROKER, "topic": "plant/{source}/vibration", "subscribe": ["plant/+/vibration"],
                      "qos": 1, "broker_delay_us": 500}, BROKER),
    "cloud-aggregator": ({"broker": BROKER, "quiet_us": 250_000}, BROKER),
}

# the case each broken service breaks -> what its failure says
BROKEN_CASES = {
    "init-ready": "READY capabilities must be sorted and unique, got ['snapshot', 'configure']",
    "advance-done": "answered DONE for 4000 us, expected 10000 us",
    "stdout-protocol-only": "wrote a line on stdout that is not protocol JSON: 'debug: got reading at 1500'",
    "error-bad-json": "ended without answering the line '{this is not JSON' (stdout closed; exit code 1)",
    "error-unknown-type": "answered CONFORMANCE_PROBE with ERROR unsupported_message (fatal: false), expected ERROR "
                          "unknown_type (fatal: false)",
    "error-advance-before-init": "answered ADVANCE 1000 us with DONE, expected ERROR not_initialized (fatal: false)",
    "error-time-backwards": "answered ADVANCE 1000 us with DONE, expected ERROR time_backwards (fatal: false)",
    "long-line": "answered ADVANCE 1000 us with ERROR bad_json",
    "promises-kept": "driven window by window and with skipping: output 0 differs",
    "snapshot-restore": "with a SNAPSHOT at 300000 us restored into a fresh process and without: output 6 differs",
    "configure-unknown-key": "answered CONFIGURE 1000 us with CONFIGURED, expected ERROR configure_failed",
    "shutdown-exit-0": "exited with code 3 after SHUTDOWN, expected 0",
}


@pytest.fixture
def node() -> str:
    return host_tool("node")


def render_node_template(directory: Path, name: str = "threshold") -> Path:
    """An experiment in ``directory`` with the service ``name`` as `cosim new service NAME --lang node` writes it
    (services/NAME/, its tests in tests/); returns the service's folder."""
    for sub in ("scenarios", "services"):
        (directory / sub).mkdir()
    return scaffold.new_service(name, lang="node", start=directory, out=io.StringIO())


def assert_all_pass(results: list[conformance.CaseResult]) -> None:
    assert [r.case for r in results] == list(conformance.CASES)
    assert [(r.case, r.status, r.detail) for r in results if r.status != "pass"] == []


def bundled_command(name: str) -> list[str]:
    return [sys.executable, str(ROOT / "containers" / name / "service.py")]


def left_running() -> list[str]:
    """What a check of this process left: its mosquitto processes (children of this process), its containers and
    networks (named cosim-conformance-<this pid>-...; other checks on a shared engine are not ours)."""
    mosquittos = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            name, rest = stat.read_text().split("(", 1)[1].rsplit(")", 1)
        except (OSError, ValueError):
            continue  # gone meanwhile
        state, parent = rest.split()[:2]
        if name == "mosquitto" and int(parent) == os.getpid():  # a zombie too: started and never waited for
            mosquittos.append(f"mosquitto pid {stat.parent.name} ({state})")
    if not shutil.which("docker"):
        return mosquittos
    prefix = f"name=cosim-conformance-{os.getpid()}-"

    def docker_names(*command: str, field: str) -> list[str]:
        done = subprocess.run(["docker", *command, "--filter", prefix, "--format", f"{{{{.{field}}}}}"],
                              capture_output=True, text=True, check=True)
        return [f"{command[0]} {name}" for name in done.stdout.split()]

    return mosquittos + docker_names("ps", "-a", field="Names") + docker_names("network", "ls", field="Name")


@pytest.mark.parametrize("name", list(BUNDLED))
def test_every_bundled_service_passes_every_case_as_a_command(name: str) -> None:
    config, broker = BUNDLED[name]
    if broker:
        host_tool("mosquitto")
    assert_all_pass(conformance.check(bundled_command(name), config=config, broker=broker, watchdog_s=WATCHDOG_S))
    assert left_running() == []


@pytest.mark.docker
@pytest.mark.parametrize("name", list(BUNDLED))
def test_every_bundled_service_passes_every_case_as_an_image(name: str, service_images: dict[str, str]) -> None:
    from cosim.service_sources import service_image

    config, broker = BUNDLED[name]
    assert_all_pass(conformance.check(service_image(name), config=config, broker=broker, watchdog_s=WATCHDOG_S))
    assert left_running() == []


# A service that speaks the protocol by hand and answers ERROR when INIT or an ADVANCE is not what a coordinator
# sends to the only member of a barrier group (docs/protocol.md §12) with the INIT fields of --init.
BARRIER_MEMBER = r"""
import json, sys

PUBLISHES = sys.argv[1]
node, first, now = None, True, 0
for line in sys.stdin:
    message = json.loads(line)
    kind, problem = message["type"], None
    if kind == "INIT":
        node = message["node_id"]
        if (node, message["seed"], message["endpoints"]) != ("probe-7", 42, {"db": {"host": "db.example", "port": 5432}}):
            reply = {"type": "ERROR", "error": "init_failed", "fatal": True, "detail": json.dumps(message)}
        else:
            reply = {"type": "READY", "protocol": 1, "time_us": 0, "capabilities": [], "barrier_group": "db",
                     "barrier_publishes": PUBLISHES}
    elif kind == "ADVANCE":
        peers = [node] if PUBLISHES == "always" or message["events"] else []
        if message.get("peers") != peers:
            problem = f"peers {message.get('peers')}, expected {peers}"
        elif message.get("members") != ([node] if first else None):
            problem = f"members {message.get('members')} in ADVANCE {message['time_us']}"
        elif message["time_us"] <= now:
            problem = "time_backwards"
        first = False
        if problem:
            reply = {"type": "ERROR", "error": "time_backwards" if problem == "time_backwards" else "bad_message",
                     "fatal": False, "detail": problem}
        else:
            now = message["time_us"]
            reply = {"type": "DONE", "time_us": now, "events": []}
    elif kind == "SHUTDOWN":
        break
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
"""


@pytest.mark.parametrize("publishes", ["always", "on_input"])
def test_a_barrier_group_member_is_alone_in_its_group_and_gets_the_init_fields_of_init(publishes: str,
                                                                                        tmp_path: Path) -> None:
    (tmp_path / "member.py").write_text(BARRIER_MEMBER, encoding="utf-8")
    init = {"node_id": "probe-7", "seed": 42, "endpoints": {"db": {"host": "db.example", "port": 5432}}}
    results = conformance.check([sys.executable, str(tmp_path / "member.py"), publishes], init=init,
                                watchdog_s=WATCHDOG_S, cases=["init-ready", "advance-done", "error-time-backwards"])
    assert [(r.case, r.status, r.detail) for r in results if r.status != "pass"] == []


def test_an_mqtt_service_without_a_broker_fails_init_ready_pointing_at_broker() -> None:
    [result] = conformance.check(bundled_command("mqtt-gateway"), watchdog_s=WATCHDOG_S, cases=["init-ready"])
    assert result.failed
    assert "ERROR init_failed: ValueError: no endpoint {host, port} for broker node 'mqtt-broker'" in result.detail
    assert result.detail.endswith("(INIT had no endpoints: a service that needs an MQTT broker gets one with "
                                  "--broker, other infrastructure with --init)")


def interrupt_after_init_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C in the second case (as SIGINT raises it in the main thread)."""
    def interrupted(probe: conformance.Probe) -> None:
        probe.started()  # a process connected to the broker when it comes
        raise KeyboardInterrupt

    monkeypatch.setitem(conformance.CASES, "advance-done", interrupted)


def test_ctrl_c_stops_the_local_broker_and_the_service(monkeypatch: pytest.MonkeyPatch) -> None:
    host_tool("mosquitto")
    interrupt_after_init_ready(monkeypatch)
    out = io.StringIO()
    with pytest.raises(Interrupted, match=r"^conformance: interrupted after 1 of 12 cases; what the check started is "
                                          r"removed$"):
        conformance.main(None, bundled_command("mqtt-gateway"), out, broker=BROKER, watchdog_s=WATCHDOG_S)
    assert "with an MQTT broker, 'mqtt-broker' in INIT's endpoints" in out.getvalue().splitlines()[0]
    assert left_running() == []


@pytest.mark.docker
def test_ctrl_c_removes_the_broker_container_its_network_and_the_service(
        monkeypatch: pytest.MonkeyPatch, service_images: dict[str, str]) -> None:
    from cosim.service_sources import service_image

    interrupt_after_init_ready(monkeypatch)
    with pytest.raises(Interrupted):
        conformance.main(service_image("mqtt-gateway"), [], io.StringIO(), broker=BROKER, watchdog_s=WATCHDOG_S)
    assert left_running() == []


def test_the_node_template_passes_every_case(node: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The command runs where `cosim conformance` is typed, and finds the SDK (require("cosim-service")) by itself.
    monkeypatch.chdir(render_node_template(tmp_path))
    monkeypatch.delenv("NODE_PATH", raising=False)
    assert_all_pass(conformance.check([node, "service.js"], watchdog_s=WATCHDOG_S))


def test_the_node_templates_own_tests_pass(node: str, tmp_path: Path) -> None:
    """The tests that `cosim new service NAME --lang node` writes into the experiment's tests/, run as a user would."""
    render_node_template(tmp_path)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "tests/test_threshold_service.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "4 passed" in done.stdout


def test_the_correct_base_of_the_broken_services_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(BROKEN))
    assert_all_pass(conformance.check([sys.executable, str(BROKEN / "base.py")], watchdog_s=WATCHDOG_S))


def test_every_case_has_a_broken_service() -> None:
    assert sorted(BROKEN_CASES) == sorted(conformance.CASES)
    assert sorted(path.name for path in BROKEN.iterdir() if path.is_dir() and path.name != "__pycache__") == \
        sorted(conformance.CASES)


@pytest.mark.parametrize("case", list(BROKEN_CASES))
def test_a_service_broken_on_purpose_fails_its_case(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(BROKEN))  # the Node ones find the SDK without help (see the template test)
    script = BROKEN / case / "service.py"
    command = [sys.executable, str(script)] if script.exists() else [host_tool("node"), str(BROKEN / case / "service.js")]
    # init-ready first: the capability cases read the READY it got
    results = conformance.check(command, watchdog_s=WATCHDOG_S, cases=list(dict.fromkeys(["init-ready", case])))
    failed = {r.case: r.detail for r in results if r.failed}
    assert case in failed, results
    assert BROKEN_CASES[case] in failed[case]


def test_main_prints_the_table_and_exits_1_naming_the_failed_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(BROKEN))
    out = io.StringIO()
    code = conformance.main(None, [sys.executable, str(BROKEN / "shutdown-exit-0" / "service.py")], out)
    lines = out.getvalue().splitlines()
    assert code == 1
    assert lines[0].startswith("cosim conformance: ") and lines[0].endswith("shutdown-exit-0/service.py")
    rows = {line.split()[0]: line.split()[1] for line in lines[2:-1] if line.startswith("  ") and line.split()[0] in
            conformance.CASES}
    assert rows["shutdown-exit-0"] == "FAIL" and rows["init-ready"] == "pass"
    assert "    exited with code 3 after SHUTDOWN, expected 0" in out.getvalue()
    assert lines[-1].endswith("failed, 0 skipped (capabilities not declared)")


def test_main_exits_0_when_every_case_passes_and_reads_the_config_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "containers"))
    out = io.StringIO()
    assert conformance.main(None, ECHO, out, config='{"tick_us": 700}') == 0
    assert out.getvalue().splitlines()[-1] == "12 passed, 0 failed, 0 skipped (capabilities not declared)"


def test_capabilities_not_declared_are_skipped_not_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    # The ticker declares none of next_event, "snapshot" and "configure": those cases are skipped.
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "containers"))
    results = conformance.check([sys.executable, str(ROOT / "tests" / "services" / "ticker.py")],
                                watchdog_s=WATCHDOG_S, cases=["init-ready", "promises-kept", "snapshot-restore",
                                                              "configure-unknown-key"])
    assert [r.status for r in results] == ["pass"] + ["skipped (not declared)"] * 3


@pytest.mark.parametrize("target, command, message", [
    (None, ["no-such-program-for-cosim"], "conformance: command not found: 'no-such-program-for-cosim'"),
    (None, ["./no/such/file.sh"], "conformance: command not found: './no/such/file.sh'"),
    (None, [], "conformance: give an image (cosim conformance IMAGE) or a command"),
    ("cosim/echo:dev", ["python"], "conformance: give an image or a command after --, not both"),
])
def test_bad_targets_are_refused_in_one_line(target: str | None, command: list[str], message: str) -> None:
    with pytest.raises(UsageError) as error:
        conformance.main(target, command, io.StringIO())
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_a_bad_config_is_refused_in_one_line() -> None:
    with pytest.raises(UsageError, match="conformance: --config is not JSON"):
        conformance.main(None, ECHO, io.StringIO(), config="{tick_us")


@pytest.mark.parametrize("options, message", [
    ({"init": "{node_id"}, "conformance: --init is not JSON"),
    ({"init": "[1]"}, "conformance: --init must be a JSON object"),
    ({"init": '{"config": {}, "time_us": 5}'}, "conformance: --init may set node_id, seed, endpoints, not config, "
                                               "time_us (the config goes in --config"),
    ({"init": '{"endpoints": []}'}, "conformance: --init endpoints must be a JSON object {node_id: {host, port}}"),
    ({"init": '{"node_id": "Bad Id"}'}, "conformance: --init gives an INIT that breaks the protocol schema at "
                                        "node_id: 'Bad Id' does not match"),
    ({"init": '{"endpoints": {"db": {"host": "x"}}}'}, "conformance: --init gives an INIT that breaks the protocol "
                                                       "schema at endpoints/db: 'port' is a required property"),
    ({"broker": "Broker"}, "conformance: --broker-node 'Broker' is not a node id"),
])
def test_bad_infrastructure_options_are_refused_in_one_line_before_anything_starts(options: dict[str, str],
                                                                                    message: str) -> None:
    out = io.StringIO()
    with pytest.raises(UsageError) as error:
        conformance.main(None, ECHO, out, **options)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)
    assert out.getvalue() == ""


def test_the_cli_passes_the_broker_options_on() -> None:
    cosim = Path(sys.executable).parent / "cosim"
    done = subprocess.run([str(cosim), "conformance", "--broker-node", "Broker", "--", sys.executable, "x.py"],
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (1, "cosim: error: conformance: --broker-node 'Broker' is not a node id "
                                                 "(lowercase letters, digits and dashes, starting with a letter, at "
                                                 "most 40)\n")
    done = subprocess.run([str(cosim), "conformance", "--broker", "--init", '{"seed": -1}', "--", sys.executable,
                           "x.py"], capture_output=True, text=True, timeout=60, check=False)
    assert "cosim: error: conformance: --init gives an INIT that breaks the protocol schema at seed" in done.stderr


@pytest.mark.docker
def test_a_missing_image_is_refused_in_one_line() -> None:
    with pytest.raises(UsageError, match=r"^conformance: no such image 'cosim/no-such-image:nothing' on the Docker"):
        conformance.main("cosim/no-such-image:nothing", [], io.StringIO())
