"""Lookahead: a service that no route leads to gets its next ADVANCE as soon as its DONE is in, so it computes the
next window while the coordinator routes this one. The trace must not change: same records, same footer, same
error record when such a service fails, in both advance modes. Real processes (local runtime) and containers."""

from __future__ import annotations

from pathlib import Path

import pytest

from cosim.errors import NodeError
from cosim.run import CompletedRun, run
from cosim.trace import Sent, read

from .conftest import ROOT

ECHO = (ROOT / "containers" / "echo").as_posix()
TICKER = (ROOT / "tests" / "services" / "ticker.py").as_posix()


def sources_and_a_relay(tmp_path: Path, *, source_config: str = "{tick_us: 300}", schedule: str = "",
                        stepped: bool = True) -> Path:
    """Two pure sources (an echo that ticks and declares next-event; with ``stepped``, a ticker that does not, a
    local process only), a relay fed by the first, a sink for everything; a lossy, jittery link from the relay."""
    stepped_source = f"""  - id: stepped-source
    kind: service
    build: {ECHO}
    local_command: ["{{python}}", "-u", "{TICKER}"]
    config: {{tick_us: 7000}}
""" if stepped else ""
    path = tmp_path / "lookahead.yaml"
    path.write_text(f"""name: lookahead
seed: 11
duration_us: 200000
quantum_us: 1000
nodes:
  - {{id: source, kind: service, build: {ECHO}, config: {source_config}}}
{stepped_source}  - {{id: relay, kind: service, build: {ECHO}, links: [{{to: sink, latency_us: 1500, jitter_us: 900, loss: 0.1}}]}}
  - {{id: sink, kind: sink}}
routes:
  - {{from: source, to: [relay, sink]}}
{"  - {from: stepped-source, to: [sink]}" + chr(10) if stepped else ""}  - {{from: relay, to: [sink]}}
{schedule}""", encoding="utf-8")
    return path


def lookahead_and_lockstep(scenario: Path, tmp_path: Path, mode: str, runtime: str = "local",
                           expect_failure: type[Exception] | None = None) -> dict[bool, tuple[Path, CompletedRun | None]]:
    results: dict[bool, tuple[Path, CompletedRun | None]] = {}
    for lookahead in (True, False):
        trace = tmp_path / f"{runtime}-{mode}-{'ahead' if lookahead else 'lockstep'}.jsonl"
        if expect_failure is None:
            results[lookahead] = (trace, run(scenario, runtime=runtime, trace_path=trace, advance=mode,
                                             watchdog_s=60.0, lookahead=lookahead))
        else:
            with pytest.raises(expect_failure):
                run(scenario, runtime=runtime, trace_path=trace, advance=mode, watchdog_s=5.0, lookahead=lookahead)
            results[lookahead] = (trace, None)
    return results


def records(trace: Path) -> list[bytes]:
    """Every line but the header's (its environment names the run's containers and processes)."""
    return trace.read_bytes().split(b"\n")[1:]


@pytest.mark.parametrize("mode", ["fixed", "next-event"])
def test_pure_sources_run_ahead_with_byte_identical_records(mode: str, tmp_path: Path) -> None:
    runs = lookahead_and_lockstep(sources_and_a_relay(tmp_path), tmp_path, mode)
    (ahead_trace, ahead), (lockstep_trace, lockstep) = runs[True], runs[False]
    assert ahead is not None and lockstep is not None
    assert records(ahead_trace) == records(lockstep_trace)
    assert ahead.metrics.advances == lockstep.metrics.advances  # the same ADVANCEs, some sent earlier
    assert lockstep.metrics.advances_ahead == 0
    # Both sources run ahead, every ADVANCE after their first; the relay has input, so it never does.
    advanced = {node: stats["count"] for node, stats in ahead.metrics.round_trip.items()}
    assert ahead.metrics.advances_ahead == advanced["source"] - 1 + advanced["stepped-source"] - 1 > 0
    ticks = [record for record in read(ahead_trace).of(Sent) if record.source == "source"]
    assert len(ticks) == 200000 // 300


@pytest.mark.parametrize("mode", ["fixed", "next-event"])
def test_a_source_that_exits_in_a_window_it_was_sent_ahead_to_fails_as_in_lockstep(mode: str, tmp_path: Path) -> None:
    scenario = sources_and_a_relay(tmp_path, source_config="{tick_us: 300, exit_at_us: 120500}")
    runs = lookahead_and_lockstep(scenario, tmp_path, mode, expect_failure=NodeError)
    ahead_lines, lockstep_lines = records(runs[True][0]), records(runs[False][0])
    assert ahead_lines == lockstep_lines
    error = read(runs[True][0]).error
    assert error is not None and error.node == "source" and error.time_us == 120000


def test_a_run_with_a_schedule_keeps_every_service_in_lockstep(tmp_path: Path) -> None:
    scenario = sources_and_a_relay(tmp_path, schedule="""schedule:
  - {at_us: 50000, reconfigure: source, config: {tick_us: 500}}
""")
    completed = run(scenario, runtime="local", trace_path=tmp_path / "scheduled.jsonl", watchdog_s=60.0)
    assert completed.metrics.advances_ahead == 0


@pytest.mark.docker
def test_pure_sources_run_ahead_in_docker_with_the_local_records(tmp_path: Path) -> None:
    scenario = sources_and_a_relay(tmp_path, stepped=False)
    local = run(scenario, runtime="local", trace_path=tmp_path / "local.jsonl", watchdog_s=60.0, lookahead=False)
    docker = run(scenario, runtime="docker", trace_path=tmp_path / "docker.jsonl", watchdog_s=60.0)
    assert docker.metrics.advances_ahead > 0
    assert records(tmp_path / "docker.jsonl") == records(tmp_path / "local.jsonl")
    assert local.result.counts == docker.result.counts
