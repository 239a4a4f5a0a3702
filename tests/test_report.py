"""`invoke report`: the HTML report of real (local-runtime) runs, checked as HTML and in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from cosim import cli
from cosim.errors import CosimError, TraceReadError
from cosim.metrics import speedups
from cosim.report import report_path, write_report
from cosim.run import CompletedRun, run
from cosim.trace import read
from tests.browser import assert_report_renders, open_page

ROOT = Path(__file__).resolve().parent.parent
DEFAULT = ROOT / "scenarios" / "default.yaml"
PIPELINE = ROOT / "tests" / "scenarios_local" / "pipeline.yaml"
FAILING = ROOT / "tests" / "scenarios_local" / "failing.yaml"

# Anything a page could fetch from elsewhere: the report must have none of it (it opens offline).
EXTERNAL = re.compile(r"<script|<link|<img|<iframe|\bsrc=|url\((?!#)|href=\"(?!#)|@import", re.I)


def svg_count(page: str) -> int:
    return len(re.findall(r"<svg\b", page))


@pytest.fixture(scope="module")
def default_run(tmp_path_factory: pytest.TempPathFactory) -> CompletedRun:
    if shutil.which("mosquitto") is None and not Path("/usr/sbin/mosquitto").exists():
        pytest.fail("mosquitto is missing: ./inv test installs it as root (apt-get install mosquitto)")
    return run(DEFAULT, runtime="local", trace_path=tmp_path_factory.mktemp("report") / "default.jsonl")


@pytest.fixture(scope="module")
def failed_trace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    trace = tmp_path_factory.mktemp("report-failed") / "failing.jsonl"
    with pytest.raises(CosimError, match="node 'echo'"):
        run(FAILING, runtime="local", trace_path=trace)
    return trace


@pytest.mark.mosquitto
def test_report_of_the_default_scenario(default_run: CompletedRun) -> None:
    written = write_report(default_run.trace_path)
    assert written == default_run.trace_path.with_name("default.report.html") == report_path(default_run.trace_path)
    page = written.read_text(encoding="utf-8")
    # timeline, latency per link, end to end per sensor, drops per link, anomalies and their detection
    assert svg_count(page) == 5
    assert EXTERNAL.search(page) is None, EXTERNAL.search(page)
    for section in ("Manifest", "Metrics", "Event timeline", "Virtual latency per route", "Drops and losses per link",
                    "Anomaly detection", "ADVANCE → DONE"):
        assert f">{section}" in page, section
    header = default_run.trace_path.read_text(encoding="utf-8").split("\n", 1)[0]
    assert re.search(r'"scenario_sha256":"([0-9a-f]{64})"', header).group(1) in page  # type: ignore[union-attr]
    assert "Completed: 10 s of virtual time in 10000 steps" in page
    # every injected anomaly of the scenario is listed with its outcome
    assert page.count("<td>detected</td>") + page.count("<td>MISSED</td>") == 3
    assert "fan-1 → gateway" in page and "p99 ms" in page


@pytest.mark.mosquitto
def test_report_is_the_same_for_the_same_trace_and_metrics(default_run: CompletedRun, tmp_path: Path) -> None:
    first = write_report(default_run.trace_path, output=tmp_path / "a.html").read_bytes()
    again = write_report(default_run.trace_path, output=tmp_path / "b.html").read_bytes()
    assert first == again  # no dates, no random ids in the SVG


@pytest.mark.mosquitto
@pytest.mark.parametrize("scenario", sorted((ROOT / "scenarios").glob("*.yaml")), ids=lambda path: path.stem)
def test_report_of_every_bundled_scenario(scenario: Path, tmp_path: Path) -> None:
    summary = run(scenario, runtime="local", trace_path=tmp_path / f"{scenario.stem}.jsonl")
    page = write_report(summary.trace_path).read_text(encoding="utf-8")
    # Every bundled scenario monitors vibration; one with network segments adds its ns-3 latency per sender.
    assert svg_count(page) == 5 + bool(summary.scenario.segments) and "Anomaly detection" in page
    injected = sum(len(node.anomalies) for node in summary.scenario.nodes if hasattr(node, "anomalies"))
    assert page.count("<td>detected</td>") + page.count("<td>MISSED</td>") == injected > 0


def test_report_of_a_scenario_without_sensors_has_no_vibration_parts(tmp_path: Path) -> None:
    summary = run(PIPELINE, runtime="local", trace_path=tmp_path / "pipeline.jsonl")
    page = write_report(summary.trace_path).read_text(encoding="utf-8")
    assert "Anomaly detection" not in page and "end to end" not in page
    assert svg_count(page) == 3  # timeline, latency per link, drops per link


def test_report_of_a_failed_run_shows_where_and_why(failed_trace: Path) -> None:
    page = write_report(failed_trace).read_text(encoding="utf-8")
    assert "This run failed</b> at node <b>echo</b>: <code>node_failure</code> at virtual time 0.002 s" in page
    assert "ended without answering" in page
    assert "run failed (node_failure)" in page  # the failure marked on the timeline
    assert "Completed" not in page


def test_invoke_up_prints_the_report_path(tmp_path: Path) -> None:
    trace = tmp_path / "pipeline.jsonl"
    out = _Out()
    cli.up(str(PIPELINE), runtime="local", trace=str(trace), progress=False, out=out)  # type: ignore[arg-type]
    last = out.text.rstrip("\n").splitlines()[-1]
    assert last == f"  report:  {tmp_path / 'pipeline.report.html'}"
    assert (tmp_path / "pipeline.report.html").is_file()


def test_the_report_drawn_during_the_teardown_is_the_one_drawn_after_it(tmp_path: Path) -> None:
    """`cosim up` draws the report while the runtime tears down, its metrics added once written: the same bytes
    as `cosim report` of the finished run."""
    trace = tmp_path / "pipeline.jsonl"
    cli.up(str(PIPELINE), runtime="local", trace=str(trace), progress=False, out=_Out())  # type: ignore[arg-type]
    drawn = (tmp_path / "pipeline.report.html").read_bytes()
    assert write_report(trace, output=tmp_path / "after.html").read_bytes() == drawn


def test_while_stopping_is_called_once_with_the_whole_trace_and_never_for_a_failed_run(tmp_path: Path) -> None:
    seen: list[tuple[Path, str, bool]] = []

    def while_stopping(trace_path: Path, scenario: Any) -> None:
        seen.append((trace_path, scenario.name, read(trace_path).footer is not None))

    run(PIPELINE, runtime="local", trace_path=tmp_path / "ok.jsonl", while_stopping=while_stopping)
    assert seen == [(tmp_path / "ok.jsonl", "local-pipeline", True)]
    with pytest.raises(CosimError, match="node 'echo'"):
        run(FAILING, runtime="local", trace_path=tmp_path / "failed.jsonl", while_stopping=while_stopping)
    assert len(seen) == 1


def test_summary_metrics_and_report_name_the_same_two_speed_ups(tmp_path: Path) -> None:
    """Virtual seconds per wall second of the step loop and of the whole run (start and teardown included): the
    same names, values and direction in the summary, the metrics file and the report."""
    trace = tmp_path / "pipeline.jsonl"
    out = _Out()
    cli.up(str(PIPELINE), runtime="local", trace=str(trace), progress=False, out=out)  # type: ignore[arg-type]
    metrics = json.loads((tmp_path / "pipeline.metrics.json").read_text(encoding="utf-8"))
    # (the wall times are written rounded to the microsecond)
    assert metrics["speedup_step_loop"] == pytest.approx(metrics["virtual_s"] / metrics["step_loop_s"], rel=1e-4)
    assert metrics["speedup_whole_run"] == pytest.approx(metrics["virtual_s"] / metrics["wall_s"], rel=1e-4)
    assert metrics["speedup_step_loop"] > metrics["speedup_whole_run"] > 0  # the loop is a part of the run
    assert "real_time_factor" not in metrics
    speed = next(line for line in out.text.splitlines() if line.startswith("  speed-up: "))
    assert re.fullmatch(r"  speed-up: step loop [\d.]+x real time \(\d+\.\d\d s wall\); "
                        r"whole run [\d.]+x real time \(\d+\.\d\d s wall, with start and teardown\)", speed), speed
    page = (tmp_path / "pipeline.report.html").read_text(encoding="utf-8")
    for name, text in speedups(metrics):
        assert f"{name} {text}" in speed and f"<tr><th>speed-up, {name}</th><td>{text}</td></tr>" in page


def test_a_failed_invoke_up_prints_its_report(tmp_path: Path) -> None:
    out = _Out()
    with pytest.raises(CosimError, match="node 'echo'"):
        cli.up(str(FAILING), runtime="local", trace=str(tmp_path / "f.jsonl"), progress=False, out=out)  # type: ignore[arg-type]
    assert out.text == f"  report:  {tmp_path / 'f.report.html'}\n"
    assert "This run failed" in (tmp_path / "f.report.html").read_text(encoding="utf-8")


def test_report_of_a_malformed_trace_names_file_and_line(tmp_path: Path) -> None:
    trace = tmp_path / "bad.jsonl"
    trace.write_text('{"record":"header","format":"cosim-trace/1"}\nnot json\n', encoding="utf-8")
    with pytest.raises(TraceReadError, match=re.escape(f"{trace}:1: 'header' record has no 'scenario' field")):
        cli.report(str(trace))


@pytest.mark.browser
@pytest.mark.mosquitto
def test_report_renders_in_chromium(default_run: CompletedRun, failed_trace: Path, tmp_path: Path) -> None:
    assert_report_renders(write_report(default_run.trace_path), tmp_path / "default.png", charts=5)
    assert_report_renders(write_report(failed_trace), tmp_path / "failing.png", charts=3)


@pytest.mark.browser
def test_the_browser_check_catches_errors(tmp_path: Path) -> None:
    """The check above can fail: a page with a console error and a missing image is caught."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><title>x</title><svg></svg><img src="missing.png">'
                    '<script>console.error("broken")</script>', encoding="utf-8")
    result = open_page(page.as_uri())
    assert result.svg_count == 1
    assert any("console: broken" in error for error in result.errors)
    assert any("missing.png" in error for error in result.errors)


class _Out:
    def __init__(self) -> None:
        self.text = ""

    def write(self, text: str) -> int:
        self.text += text
        return len(text)
