"""`cosim conformance` (cosim/conformance.py) against real processes: the bundled echo service and the Node template
pass every case; each service of tests/services/broken/<case>/ (broken on purpose, one rule each) fails that case,
by name; bad targets are refused with one line. The image-based checks need Docker."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from cosim import conformance, scaffold
from cosim.errors import UsageError
from tests.skip_policy import host_tool

from .conftest import ROOT

BROKEN = ROOT / "tests" / "services" / "broken"
ECHO = [sys.executable, str(ROOT / "containers" / "echo" / "service.py")]
ECHO_CONFIG = {"tick_us": 700}  # ticks: the promise and snapshot cases then have something to compare
WATCHDOG_S = 5.0

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


def test_the_echo_service_passes_every_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTHONPATH", str(ROOT / "containers"))
    assert_all_pass(conformance.check(ECHO, config=ECHO_CONFIG, watchdog_s=WATCHDOG_S))


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


def _conformance_containers() -> list[str]:
    done = subprocess.run(["docker", "ps", "-aq", "--filter", "label=cosim.run=conformance"], capture_output=True,
                          text=True, check=True)
    return done.stdout.split()


@pytest.mark.docker
def test_the_echo_image_passes_every_case_and_leaves_no_container() -> None:
    from cosim.runtimes.docker.engine import check_engine
    from cosim.runtimes.docker.service_images import ensure_images, service_spec

    check_engine()
    spec = service_spec("echo")
    ensure_images([spec])
    before = set(_conformance_containers())
    assert_all_pass(conformance.check(spec.tag, config=ECHO_CONFIG, watchdog_s=WATCHDOG_S))
    assert set(_conformance_containers()) <= before


@pytest.mark.docker
def test_a_missing_image_is_refused_in_one_line() -> None:
    with pytest.raises(UsageError, match=r"^conformance: no such image 'cosim/no-such-image:nothing' on the Docker"):
        conformance.main("cosim/no-such-image:nothing", [], io.StringIO())
