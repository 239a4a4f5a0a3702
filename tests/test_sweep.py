"""`cosim sweep`: the grid, the written-out variants (each repeatable by hand with the same trace hash), parallel
and resumable runs, a failing variant, the results, the statistics and the report."""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cosim import sweep as sweeping
from cosim.errors import OptionError, SweepError, SweepRunsFailed, UsageError
from cosim.run import run
from cosim.stats import t_interval, t_quantile
from cosim.sweep_stats import summarise
from cosim.tracediff import trace_hash

from .conftest import ROOT, wait_until

SCENARIO = ROOT / "tests" / "scenarios_local" / "sweep.yaml"
SETS = ["network.default_link.loss=0,0.3", "nodes.echo.config.tick_us=5000,10000"]
MEASURE_MODULE = '''
from cosim.trace import Delivered


def ticks(trace):
    """A user's measure: the echo's ticks that reached the sink."""
    return {"ticks_at_sink": sum(1 for r in trace.of(Delivered) if r.type == "tick" and r.dest == "sink")}
'''


@contextlib.contextmanager
def working_directory(path: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def quiet_sweep(directory: Path, **settings: Any) -> sweeping.SweepResult:
    with working_directory(directory):
        return sweeping.sweep(str(SCENARIO), out_stream=io.StringIO(), progress=False, runtime="local", **settings)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, sweeping.SweepResult]:
    """2 parameters x 2 values x 3 seeds, two at a time, with a measure of the user's."""
    directory = tmp_path_factory.mktemp("sweep")
    (directory / "my_measures.py").write_text(MEASURE_MODULE, encoding="utf-8")
    result = quiet_sweep(directory, seeds="1-3", sets=SETS, jobs=2, measures=["my_measures:ticks"])
    return directory, result


# -- the grid and its errors ----------------------------------------------------------------------------------------


def test_seeds_are_ranges_and_lists() -> None:
    assert sweeping.parse_seeds("1-3,7,2") == [1, 2, 3, 7]
    assert sweeping.parse_seeds("5") == [5]
    assert sweeping.parse_seeds([4, 2]) == [4, 2]
    for bad in ("3-1", "a", "1-", "-2", ""):
        with pytest.raises(OptionError, match="--seeds"):
            sweeping.parse_seeds(bad)


def test_the_grid_is_the_product_first_parameter_slowest() -> None:
    variants = sweeping.grid([sweeping.parse_set("a.b=1,2"), sweeping.parse_set("c=x,0.5,true")])
    assert [v.id for v in variants] == [f"v{i}" for i in range(1, 7)]
    assert [v.parameters for v in variants[:4]] == [
        (("a.b", 1), ("c", "x")), (("a.b", 1), ("c", 0.5)), (("a.b", 1), ("c", True)), (("a.b", 2), ("c", "x"))]
    assert sweeping.grid([]) == [sweeping.Variant("v1", ())]  # seeds only
    with pytest.raises(SweepError, match="more than once"):
        sweeping.grid([("a", [1]), ("a", [2])])
    with pytest.raises(OptionError, match="--set"):
        sweeping.parse_set("nodes.echo.config.tick_us")
    with pytest.raises(SweepError, match="the seeds are --seeds"):
        sweeping.plan(str(SCENARIO), sets=["seed=1,2"])


def test_paths_go_into_lists_by_node_id_and_link_target() -> None:
    document: dict[str, Any] = {"nodes": [{"id": "a", "links": [{"to": "b", "loss": 0}]}, {"id": "b"}]}
    sweeping.set_path(document, "nodes.a.links.b.loss", 0.5)
    sweeping.set_path(document, "nodes.b.config.delay_us", 7)
    sweeping.set_path(document, "network.default_link.loss", 0.1)  # a mapping on the way may be missing
    assert document == {"nodes": [{"id": "a", "links": [{"to": "b", "loss": 0.5}]}, {"id": "b", "config": {"delay_us": 7}}],
                        "network": {"default_link": {"loss": 0.1}}}
    with pytest.raises(SweepError, match=r"no 'ecoh' in nodes; did you mean 'echo'\?") as error:
        sweeping.set_path({"nodes": [{"id": "echo"}]}, "nodes.ecoh.config.x", 1)
    assert "\n" not in str(error.value)
    with pytest.raises(SweepError, match="seed is 3, not a mapping"):
        sweeping.set_path({"seed": 3}, "seed.x", 1)


def test_every_variant_is_validated_before_anything_runs(tmp_path: Path) -> None:
    with pytest.raises(SweepError) as error:
        quiet_sweep(tmp_path, seeds="1", sets=["network.default_link.loss=0,2"])
    message = str(error.value)
    assert "\n" not in message and "variant v2 (network.default_link.loss=2)" in message
    assert "network.default_link.loss" in message
    assert not list(tmp_path.glob("sweeps/*/runs/*/trace.jsonl"))  # nothing ran
    with pytest.raises(SweepError, match="no 'gateway' in nodes"):
        quiet_sweep(tmp_path, seeds="1", sets=["nodes.gateway.config.broker_delay_us=1,2"])


def test_a_sweep_file_says_the_same_as_the_options(tmp_path: Path) -> None:
    sweep_file = tmp_path / "experiment.yaml"
    sweep_file.write_text(f"scenario: {SCENARIO}\nseeds: 1-3\nparameters:\n  network.default_link.loss: [0, 0.3]\n"
                          "  nodes.echo.config.tick_us: [5000, 10000]\nbaseline: v2\njobs: 2\n", encoding="utf-8")
    from_file = sweeping.plan(sweep_file=str(sweep_file))
    from_options = sweeping.plan(str(SCENARIO), seeds="1-3", sets=SETS, jobs=2)
    assert from_file.variants == from_options.variants and from_file.seeds == from_options.seeds == [1, 2, 3]
    assert (from_file.baseline, from_file.jobs) == ("v2", 2)
    assert sweeping.plan(str(SCENARIO), sets=SETS, baseline="network.default_link.loss=0.3,nodes.echo.config."
                                                              "tick_us=5000").baseline == "v3"


# -- a real sweep (local runtime) -----------------------------------------------------------------------------------


def test_twelve_rows_each_repeatable_by_hand(swept: tuple[Path, sweeping.SweepResult], tmp_path: Path) -> None:
    directory, result = swept
    out = directory / "sweeps" / "sweep-echo"
    with (out / "results.csv").open(encoding="utf-8") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 12 and {row["status"] for row in table} == {"ok"}
    assert {(row["network.default_link.loss"], row["nodes.echo.config.tick_us"]) for row in table} == {
        ("0", "5000"), ("0", "10000"), ("0.3", "5000"), ("0.3", "10000")}
    assert sorted(int(row["seed"]) for row in table) == [1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3]
    assert all(int(row["delivered"]) > 0 for row in table)
    assert all(int(row["ticks_at_sink"]) > 0 for row in table if row["network.default_link.loss"] == "0")
    assert {int(row["dropped.loss"]) for row in table if row["network.default_link.loss"] == "0"} == {0}
    # Each written-out scenario, run on its own from another directory, gives the trace hash of the sweep.
    for row, spec in zip(table, result.runs):
        assert row["run"] == spec.name and row["trace_sha256"] == trace_hash(directory / spec.trace)
        standalone = tmp_path / f"{spec.name}.jsonl"
        with working_directory(tmp_path):
            run(directory / spec.scenario, runtime="local", trace_path=standalone, watchdog_s=20.0)
        assert trace_hash(standalone) == row["trace_sha256"], spec.name
    # Common random numbers: one seed's runs differ only where the parameters make them.
    assert len({row["trace_sha256"] for row in table}) == 12


def test_the_installed_command_repeats_a_run(swept: tuple[Path, sweeping.SweepResult], tmp_path: Path) -> None:
    directory, result = swept
    spec = result.runs[-1]
    cosim = Path(sys.executable).with_name("cosim")
    done = subprocess.run([str(cosim), "up", "scenario.yaml", "--runtime", "local", "--quiet", "--trace",
                           str(tmp_path / "by-hand.jsonl")], cwd=directory / spec.directory, capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert trace_hash(tmp_path / "by-hand.jsonl") == trace_hash(directory / spec.trace)


def test_a_rerun_skips_every_complete_run(swept: tuple[Path, sweeping.SweepResult]) -> None:
    directory, first = swept
    again = quiet_sweep(directory, seeds="1-3", sets=SETS, jobs=2, measures=["my_measures:ticks"])
    assert [outcome.status for outcome in again.outcomes] == ["skipped"] * 12
    assert again.table == first.table


def test_summary_and_report(swept: tuple[Path, sweeping.SweepResult]) -> None:
    directory, result = swept
    out = directory / "sweeps" / "sweep-echo"
    cells = summarise(result.sweep, result.table)
    delivered = {cell.variant: cell for cell in cells if cell.measure == "delivered"}
    v1 = [row["delivered"] for row in result.table if row["variant"] == "v1"]
    v3 = [row["delivered"] for row in result.table if row["variant"] == "v3"]
    assert delivered["v1"].interval == t_interval(v1) and delivered["v1"].difference is None
    assert delivered["v3"].difference == t_interval([b - a for a, b in zip(v1, v3)])  # paired by seed
    assert delivered["v3"].difference.high < 0  # 30% loss delivers fewer events, for every seed
    with (out / "summary.csv").open(encoding="utf-8") as handle:
        assert len(list(csv.DictReader(handle))) == len(cells)
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "http://" not in page.replace("http://www.w3.org", "") and "<script" not in page
    from cosim.sweep_stats import headline

    assert page.count("<figure><svg") == len(headline(cells)) * 2  # one chart per measure and swept parameter
    assert "ticks_at_sink" in page and "Student" in page


# The charts per measure heading, in the rendered page: {heading: number of SVG charts until the next heading}.
CHARTS_PER_HEADING = """(() => { const out = {}; let heading = null;
  for (const element of document.querySelectorAll('h2, figure > svg')) {
    if (element.tagName === 'H2') { heading = element.textContent; out[heading] = 0; } else { out[heading] += 1; } }
  return out; })()"""


@pytest.mark.browser
def test_the_report_renders_in_chromium(swept: tuple[Path, sweeping.SweepResult]) -> None:
    """The sweep report opens in headless Chromium without an error, one chart per measure and swept parameter."""
    from cosim.sweep_stats import headline

    from .browser import open_page

    directory, result = swept
    report = directory / "sweeps" / "sweep-echo" / "report.html"
    page = open_page(report.resolve().as_uri(), probe=CHARTS_PER_HEADING)
    assert page.errors == [] and page.title == "cosim sweep: sweep-echo"
    measures = headline(summarise(result.sweep, result.table))
    assert len(measures) >= 3 and page.svg_count == len(measures) * len(SETS)
    assert {heading: count for heading, count in page.probe.items() if count} == {m: len(SETS) for m in measures}


def test_a_failing_run_is_reported_and_the_rest_kept(tmp_path: Path) -> None:
    from cosim import cli

    stream = io.StringIO()
    with working_directory(tmp_path), pytest.raises(SweepRunsFailed, match="2 of 4 run"):
        cli.sweep(str(SCENARIO), seeds="1,2", sets=["nodes.echo.config.exit_at_us=null,20000"], jobs=2,
                  runtime="local", progress=False, out=stream, watchdog_s=20.0)
    with (tmp_path / "sweeps" / "sweep-echo" / "results.csv").open(encoding="utf-8") as handle:
        table = {row["run"]: row for row in csv.DictReader(handle)}
    assert {name: row["status"] for name, row in table.items()} == {
        "v1-seed-1": "ok", "v1-seed-2": "ok", "v2-seed-1": "failed", "v2-seed-2": "failed"}
    assert "node 'echo'" in table["v2-seed-1"]["error"] and "exit code 3" in table["v2-seed-1"]["error"]
    assert table["v2-seed-1"]["node_failures"] == "1" and table["v2-seed-1"]["trace_sha256"]
    assert "v2-seed-2: node 'echo'" in stream.getvalue()


def test_ctrl_c_keeps_the_finished_runs_and_the_same_command_continues(tmp_path: Path) -> None:
    import signal

    command = [str(Path(sys.executable).with_name("cosim")), "sweep", str(SCENARIO), "--seeds", "1-30", "--set",
               "nodes.echo.config.tick_us=5000,10000", "--jobs", "2", "--quiet"]  # 60 runs: still running at Ctrl-C
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)  # Ctrl-C reaches a terminal's whole process group
    runs = tmp_path / "sweeps" / "sweep-echo" / "runs"
    wait_until(lambda: len(list(runs.glob("*/trace.metrics.json"))) >= 2, process, "two runs ending")
    os.killpg(process.pid, signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "the sweep was interrupted" in stderr and "Traceback" not in stderr + stdout
    with (tmp_path / "sweeps" / "sweep-echo" / "results.csv").open(encoding="utf-8") as handle:
        statuses = {row["run"]: row["status"] for row in csv.DictReader(handle)}
    finished = {name for name, status in statuses.items() if status == "ok"}
    assert len(finished) >= 2 and set(statuses.values()) <= {"ok", "interrupted", "failed"}
    assert "interrupted" in statuses.values()
    again = quiet_sweep(tmp_path, seeds="1-30", sets=["nodes.echo.config.tick_us=5000,10000"], jobs=2)
    assert {o.run for o in again.outcomes if o.status == "skipped"} >= finished
    assert {row["status"] for row in again.table} == {"ok"}


# -- statistics on known numbers ------------------------------------------------------------------------------------


def test_t_quantiles_match_the_tables() -> None:
    for df, expected in ((1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (9, 2.2621572), (19, 2.0930241),
                         (29, 2.0452296), (120, 1.9799304)):
        assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)
    assert t_quantile(0.025, 9) == pytest.approx(-2.2621572, abs=1e-6)
    assert t_quantile(0.95, 10) == pytest.approx(1.8124611, abs=1e-6)


def test_t_interval_on_known_numbers() -> None:
    interval = t_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert interval is not None and interval.mean == 3.0 and interval.n == 5
    half = 2.7764451 * math.sqrt(2.5) / math.sqrt(5)  # s^2 = 2.5
    assert (interval.low, interval.high) == (pytest.approx(3.0 - half, abs=1e-6), pytest.approx(3.0 + half, abs=1e-6))
    single = t_interval([4.0])
    assert single is not None and single.low is None and single.mean == 4.0
    assert t_interval([]) is None
    constant = t_interval([2.0, 2.0, 2.0])
    assert constant is not None and (constant.low, constant.high) == (2.0, 2.0)


def test_paired_differences_use_the_common_seeds_only() -> None:
    plan = sweeping.Plan(SCENARIO, "x", [1, 2, 3], sweeping.grid([("p", [0, 1])]), Path("out"))
    table = [{"variant": "v1", "seed": s, "status": "ok", "m": m} for s, m in ((1, 10.0), (2, 20.0), (3, 30.0))]
    table += [{"variant": "v2", "seed": 1, "status": "ok", "m": 11.0}, {"variant": "v2", "seed": 2, "status": "ok",
                                                                         "m": 23.0},
              {"variant": "v2", "seed": 3, "status": "failed"}]
    cells = {cell.variant: cell for cell in summarise(plan, table)}
    assert cells["v2"].values == ((1, 11.0), (2, 23.0))
    difference = cells["v2"].difference
    assert difference is not None and difference.n == 2 and difference.mean == 2.0
    assert difference.high == pytest.approx(2.0 + 12.7062047 * math.sqrt(2.0) / math.sqrt(2), abs=1e-6)


# -- Docker ---------------------------------------------------------------------------------------------------------


@pytest.mark.docker
def test_a_docker_sweep_gives_the_local_hashes(tmp_path: Path) -> None:
    """Two runs at once on one engine (separate compose projects), the same trace hashes as on the local runtime.
    The runs build the echo image themselves when it is missing (one build, under cosim's build lock)."""
    settings: dict[str, Any] = {"seeds": "1", "sets": ["nodes.echo.config.tick_us=5000,10000"], "jobs": 2}
    with working_directory(tmp_path):
        docker = sweeping.sweep(str(SCENARIO), out_stream=io.StringIO(), progress=False, runtime="docker",
                                out="docker", **settings)
        local = sweeping.sweep(str(SCENARIO), out_stream=io.StringIO(), progress=False, runtime="local",
                               out="local", **settings)
    assert [o.status for o in docker.outcomes] == ["ok", "ok"], [o.error for o in docker.outcomes]
    assert docker.table == local.table  # parameters, seeds, trace hashes and measures


@pytest.fixture(scope="module")
def three_node_swarm(service_images: dict[str, str]) -> Iterator[Any]:
    from .test_swarm_runtime import _module_cluster

    yield from _module_cluster(3, "sw")


@pytest.mark.docker
@pytest.mark.swarm
def test_a_swarm_sweep_spreads_over_the_nodes_with_the_local_hashes(three_node_swarm: Any, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Three runs at once on a three-node test Swarm, each its own stack: the tasks land on more than one node (the
    trace headers' environment says where), and every run has the local runtime's trace hash."""
    import json

    from cosim.runtimes.swarm.nodes import CONTEXT_ENV

    from .test_swarm_runtime import assert_nothing_left

    monkeypatch.setenv(CONTEXT_ENV, three_node_swarm.manager.name)
    settings: dict[str, Any] = {"seeds": "1-3", "sets": ["nodes.echo.config.tick_us=5000,10000"], "jobs": 3}
    with working_directory(tmp_path):
        swarm = sweeping.sweep(str(SCENARIO), out_stream=io.StringIO(), progress=False, runtime="swarm", out="swarm",
                               **settings)
        local = sweeping.sweep(str(SCENARIO), out_stream=io.StringIO(), progress=False, runtime="local", out="local",
                               **settings)
    assert [o.status for o in swarm.outcomes] == ["ok"] * 6, [o.error for o in swarm.outcomes]
    assert swarm.table == local.table  # parameters, seeds, trace hashes and measures
    placed = {json.loads((tmp_path / spec.trace).read_bytes().split(b"\n", 1)[0])["environment"]["nodes"]["echo"]
              for spec in swarm.runs}
    assert len(placed) > 1 and placed <= set(three_node_swarm.contexts), placed
    assert_nothing_left(three_node_swarm)


# -- --fork-at ------------------------------------------------------------------------------------------------------


def test_fork_at_runs_each_prefix_once_and_forks_every_variant(tmp_path: Path) -> None:
    from cosim.run import resume

    settings: dict[str, Any] = {"seeds": "1,2", "sets": ["nodes.echo.config.tick_us=5000,10000",
                                                         "network.default_link.loss=0,0.3"], "jobs": 2,
                                "fork_at": "20000"}
    result = quiet_sweep(tmp_path, **settings)
    assert [o.status for o in result.outcomes] == ["ok"] * 8, [o.error for o in result.outcomes]
    out = tmp_path / "sweeps" / "sweep-echo"
    for planned in result.runs:
        prefix = (out / "prefix" / f"seed-{planned.seed}" / "trace.jsonl").read_text(encoding="utf-8").split("\n")
        branch = (tmp_path / planned.trace).read_text(encoding="utf-8").split("\n")
        assert '"status":"stopped"' in prefix[-2]
        before = prefix[1:-2]  # the prefix's records up to T, without its header and its "stopped" footer
        assert before and branch[1:1 + len(before)] == before, planned.name
        assert '"forked_from"' in branch[0]
    # Each branch equals the full run of its variant with the changes scheduled at T (scheduled.yaml, beside it):
    # every record but the schedule's `action` records, the footer without its count of them.
    from cosim.sweep_fork import SCHEDULED, comparable_records

    for planned in result.runs:
        scheduled = tmp_path / planned.directory / SCHEDULED
        full = tmp_path / f"full-{planned.name}.jsonl"
        with working_directory(tmp_path):
            run(scheduled, runtime="local", trace_path=full, watchdog_s=20.0)
        actions = [line for line in full.read_text(encoding="utf-8").split("\n") if '"record":"action"' in line]
        assert actions and all('"time_us":20000' in line for line in actions), planned.name
        assert comparable_records(full) == comparable_records(tmp_path / planned.trace), planned.name
    # By hand, as the written-out file says: the same trace hash.
    last = result.runs[-1]
    checkpoint = out / "prefix" / f"seed-{last.seed}" / "prefix-20000us.checkpoint.json"
    assert f"cosim resume ../../prefix/seed-{last.seed}/prefix-20000us.checkpoint.json --scenario scenario.yaml" in (
        tmp_path / last.scenario).read_text(encoding="utf-8")
    with working_directory(tmp_path):
        resume(checkpoint, runtime="local", trace_path=tmp_path / "by-hand.jsonl", scenario_path=tmp_path / last.scenario)
    assert trace_hash(tmp_path / "by-hand.jsonl") == run_hash(result, last.name)
    again = quiet_sweep(tmp_path, **settings)
    assert [o.status for o in again.outcomes] == ["skipped"] * 8


def test_fork_at_with_replicas_node_links_and_the_duration(tmp_path: Path) -> None:
    """The scheduled full run names each replica (a reconfigure acts on one process), every link that uses the changed
    default, a node's own link, and takes the variant's duration; the branch's records equal it."""
    from cosim.sweep_fork import SCHEDULED, comparable_records

    scenario = ROOT / "tests" / "scenarios_local" / "pipeline.yaml"
    sets = ["nodes.echo.config.tick_us=20000", "network.default_link.loss=0.2",
            "nodes.sensor-b.links.echo.latency_us=3000", "duration_us=240000"]
    with working_directory(tmp_path):
        result = sweeping.sweep(str(scenario), out_stream=io.StringIO(), progress=False, runtime="local", seeds="3",
                                sets=sets, fork_at="100000")
    assert [o.status for o in result.outcomes] == ["ok"], [o.error for o in result.outcomes]
    branch = result.runs[0]
    scheduled = tmp_path / branch.directory / SCHEDULED
    document = yaml.safe_load(scheduled.read_text(encoding="utf-8"))
    assert document["duration_us"] == 240000 and document["seed"] == 3
    assert {a["at_us"] for a in document["schedule"]} == {100000}
    reconfigures = [a for a in document["schedule"] if "reconfigure" in a]
    replicas = sorted(a["reconfigure"] for a in reconfigures)
    assert len(replicas) == 2 and all(r.startswith("echo-") for r in replicas)
    assert all(a["config"] == {"tick_us": 20000} for a in reconfigures)
    links = [a for a in document["schedule"] if "link" in a]
    assert {(a["link"]["from"], str(a["set"])) for a in links} == {
        ("sensor-a", "{'loss': 0.2}"), ("sensor-b", "{'latency_us': 3000}"), *((r, "{'loss': 0.2}") for r in replicas)}
    full = tmp_path / "full.jsonl"
    with working_directory(tmp_path):
        run(scheduled, runtime="local", trace_path=full, watchdog_s=20.0)
    assert comparable_records(full) == comparable_records(tmp_path / branch.trace)


def run_hash(result: sweeping.SweepResult, name: str) -> str:
    return next(row["trace_sha256"] for row in result.table if row["run"] == name)


def test_fork_at_refuses_what_a_fork_cannot_change(tmp_path: Path) -> None:
    with pytest.raises(SweepError, match=r"--set nodes.sensor.period_us cannot change at a fork") as error:
        sweeping.plan(str(SCENARIO), sets=["nodes.sensor.period_us=1000,2000"], fork_at="20000")
    assert "\n" not in str(error.value)
    with pytest.raises(OptionError, match="--fork-at"):
        sweeping.plan(str(SCENARIO), sets=["nodes.echo.config.tick_us=1,2"], fork_at="1500")  # off the quantum grid
    assert sweeping.forkable("nodes.pump-1.links.gateway.loss") and sweeping.forkable("duration_us")
    assert not sweeping.forkable("nodes.echo") and not sweeping.forkable("seed")


# -- built-in measures ----------------------------------------------------------------------------------------------


def test_builtin_measures_of_a_vibration_run(tmp_path: Path) -> None:
    """tests/scenarios_local/pipeline.yaml: vibration sensors with 2 injected anomalies, echo (no classifier) and
    a sink: every anomaly missed, drops by reason, per-route latencies, nothing failed."""
    from cosim.sweep_measures import measure

    scenario = ROOT / "tests" / "scenarios_local" / "pipeline.yaml"
    with working_directory(tmp_path):
        done = run(scenario, runtime="local", trace_path=tmp_path / "t.jsonl", watchdog_s=20.0)
    values = measure(done.trace_path, scenario)
    assert (values["detections_found"], values["detections_missed"], values["false_positives"]) == (0, 2, 0)
    assert values["delivered"] == done.result.counts["delivered"] and values["dropped.loss"] == values["dropped"] > 0
    assert values["latency_p50_us"] <= values["latency_p95_us"] <= values["latency_p99_us"]
    assert values["latency_p95_us[sensor-b>echo-1]"] >= 2300  # that link's latency, jitter on top
    assert (values["node_failures"], values["completed"]) == (0, 1)
    with pytest.raises(UsageError, match="built-in measure"):
        measure(done.trace_path, scenario, [lambda trace: {"sent": 1}])
