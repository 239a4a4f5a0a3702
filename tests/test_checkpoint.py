"""Checkpoint, resume and fork on the local runtime: a run checkpointed at T and resumed gives the uninterrupted
run's trace byte for byte (every bundled scenario); bad checkpoints and options are refused with one message
before anything starts; a fork continues from T with its variant's config and names its parent."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cosim import checkpoint, protocol
from cosim.errors import CheckpointError, OptionError, OutputWriteError, UnsupportedAction, UsageError
from cosim.run import CompletedRun, resume, run
from cosim.trace import read
from tests.conftest import ROOT, assert_same_simulation

PIPELINE = ROOT / "tests" / "scenarios_local" / "pipeline.yaml"
ECHO = ROOT / "containers" / "echo"
BURST = ROOT / "tests" / "services" / "burst.py"


def checkpointed(scenario: Path, tmp_path: Path, at: str, *, stop: bool = False,
                 name: str = "ck") -> tuple[CompletedRun, list[Path]]:
    written: list[Path] = []
    done = run(scenario, runtime="local", trace_path=tmp_path / f"{name}.jsonl", checkpoint_at=at,
               stop_after_checkpoint=stop, checkpoint_dir=tmp_path / "checkpoints",
               checkpoint_written=lambda path, size, seconds: written.append(path))
    return done, written


def pipeline_variant(tmp_path: Path, **changes: Any) -> Path:
    """The pipeline scenario with ``changes`` merged in (its service built from containers/echo)."""
    doc = yaml.safe_load(PIPELINE.read_text())
    for node in doc["nodes"]:
        if node["id"] == "echo":
            node["build"] = str(ECHO)
    for key, value in changes.items():
        if callable(value):
            value(doc)
        else:
            doc[key] = value
    path = tmp_path / "variant.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


# -- the property ----------------------------------------------------------------------------------------------


def test_checkpoint_then_resume_is_the_uninterrupted_run(tmp_path: Path) -> None:
    plain = run(PIPELINE, runtime="local", trace_path=tmp_path / "plain.jsonl")
    done, written = checkpointed(PIPELINE, tmp_path, "50000,120000")
    # Taking checkpoints does not change the run.
    assert_same_simulation(plain.trace_path, done.trace_path)
    assert [path.name for path in written] == ["local-pipeline-50000us.checkpoint.json",
                                               "local-pipeline-120000us.checkpoint.json"]
    for index, path in enumerate(written):
        resumed = resume(path, runtime="local", trace_path=tmp_path / f"resumed-{index}.jsonl")
        assert_same_simulation(plain.trace_path, resumed.trace_path)
        assert resumed.sinks == plain.sinks  # the in-process sink's events before T came back too
    document = json.loads(written[0].read_text())
    assert document["format"] == checkpoint.FORMAT
    assert document["sha256"] == checkpoint.content_sha256(document["content"])
    assert document["content"]["time_us"] == 50000
    assert set(document["content"]["state"]["nodes"]) == {"sensor-a", "sensor-b", "echo-1", "echo-2", "sink"}


def as_format_1(document: dict[str, Any]) -> dict[str, Any]:
    """A format-2 checkpoint as cosim wrote it before format 2: the per-node fields in the coordinator's maps."""
    state = document["content"]["state"]
    slots = state.pop("slots")
    driven = state["nodes"]
    state["coordinator"].update(
        next_seq={node: slots[node]["next_seq"] for node in driven},
        promises={node: slot["promise"] for node, slot in slots.items() if slot["promise"] is not None},
        configs={node: slots[node]["config"] for node in driven},
        restarts={node: slot["restarts"] for node, slot in slots.items() if slot["restarts"]},
        lost={})
    document["format"] = "cosim-checkpoint/1"
    document["sha256"] = checkpoint.content_sha256(document["content"])
    return document


@pytest.mark.parametrize("advance", ["next-event", "fixed"])
def test_a_format_1_checkpoint_is_read_and_resumes_as_the_uninterrupted_run(tmp_path: Path, advance: str) -> None:
    plain = run(PIPELINE, runtime="local", trace_path=tmp_path / "plain.jsonl", advance=advance)
    written: list[Path] = []
    run(PIPELINE, runtime="local", trace_path=tmp_path / "ck.jsonl", advance=advance, checkpoint_at="60000",
        checkpoint_dir=tmp_path / "checkpoints", checkpoint_written=lambda path, size, seconds: written.append(path))
    document = json.loads(written[0].read_text())
    assert document["format"] == "cosim-checkpoint/2"
    assert set(document["content"]["state"]["slots"]["echo-1"]) == {"next_seq", "promise", "config", "restarts",
                                                                     "lost", "down"}
    old = tmp_path / "old.checkpoint.json"
    old.write_text(json.dumps(as_format_1(document)))
    content, _ = checkpoint.read(old)
    assert content["state"]["slots"] == json.loads(written[0].read_text())["content"]["state"]["slots"]
    resumed = resume(old, runtime="local", trace_path=tmp_path / "resumed.jsonl")
    assert_same_simulation(plain.trace_path, resumed.trace_path)


def test_a_checkpoint_resumes_from_another_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    relative = PIPELINE.relative_to(ROOT)  # as a user types it, from the project's directory
    plain = run(relative, runtime="local", trace_path=tmp_path / "plain.jsonl")
    _, written = checkpointed(relative, tmp_path, "60000")
    assert json.loads(written[0].read_text())["content"]["scenario"]["path"] == str(relative)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # where `tests/scenarios_local/pipeline.yaml` means nothing
    resumed = resume(written[0], runtime="local", trace_path=tmp_path / "resumed.jsonl")
    assert_same_simulation(plain.trace_path, resumed.trace_path)


@pytest.mark.parametrize("name, at", [("default", 5_000_000), ("chaos", 4_700_000), ("multi-site", 2_500_000),
                                      ("replicas", 2_500_000), ("multi-site-stress", 2_500_000),
                                      ("distributed", 3_000_000)])
def test_every_bundled_scenario_resumes_byte_identical(tmp_path: Path, name: str, at: int) -> None:
    """Through the MQTT broker (a fresh one on resume), ONNX Runtime, the schedule's changes before T. The run
    that takes the checkpoint goes on to the end (that taking one changes nothing is checked above and by
    `invoke determinism --checkpoint-at`): the resumed run must give its trace."""
    scenario = ROOT / "scenarios" / f"{name}.yaml"
    whole, written = checkpointed(scenario, tmp_path, str(at))
    footer = read(whole.trace_path).footer
    assert footer is not None and footer.status == "ok" and footer.end_us == whole.scenario.duration_us
    resumed = resume(written[0], runtime="local", trace_path=tmp_path / "resumed.jsonl")
    assert_same_simulation(whole.trace_path, resumed.trace_path)


def test_a_run_stopped_after_its_checkpoint(tmp_path: Path) -> None:
    plain = run(PIPELINE, runtime="local", trace_path=tmp_path / "plain.jsonl")
    stopped, written = checkpointed(PIPELINE, tmp_path, "60000,90000", stop=True)
    trace = read(stopped.trace_path)
    assert trace.footer is not None
    assert (trace.footer.status, trace.footer.end_us, trace.footer.steps) == ("stopped", 90000, 90)
    assert len(written) == 2
    resumed = resume(written[1], runtime="local", trace_path=tmp_path / "r.jsonl")
    assert_same_simulation(plain.trace_path, resumed.trace_path)


def test_chaos_checkpoint_after_the_restart(tmp_path: Path) -> None:
    """After a crash and restart: the restart count and the events lost are part of the coordinator's state."""
    scenario = ROOT / "scenarios" / "chaos.yaml"
    plain = run(scenario, runtime="local", trace_path=tmp_path / "plain.jsonl")
    _, written = checkpointed(scenario, tmp_path, "7000000", stop=True)
    resumed = resume(written[0], runtime="local", trace_path=tmp_path / "resumed.jsonl")
    assert_same_simulation(plain.trace_path, resumed.trace_path)
    assert resumed.result.actions == plain.result.actions


# -- bad input: one message each, nothing started -------------------------------------------------------------


@pytest.fixture(scope="module")
def taken(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("taken")
    _, written = checkpointed(PIPELINE, directory, "100000", stop=True)
    return written[0]


def rewritten(source: Path, target: Path, change: Any, *, rehash: bool = True) -> Path:
    document = json.loads(source.read_text())
    change(document)
    if rehash:
        document["sha256"] = checkpoint.content_sha256(document["content"])
    target.write_text(json.dumps(document))
    return target


def edit_time(document: dict[str, Any]) -> None:
    document["content"]["state"]["nodes"]["sensor-a"]["window"] += 1


@pytest.mark.parametrize("make, expected", [
    (lambda src, dst: rewritten(src, dst, edit_time, rehash=False), "edited or damaged"),
    (lambda src, dst: (dst.write_bytes(src.read_bytes()[:5000]), dst)[1], "truncated or not JSON"),
    (lambda src, dst: rewritten(src, dst, lambda d: d.update(format="cosim-checkpoint/0")),
     "checkpoint format 'cosim-checkpoint/0'; this cosim reads 'cosim-checkpoint/1'"),
    (lambda src, dst: rewritten(src, dst, lambda d: d["content"].update(protocol=protocol.VERSION + 1)),
     "cannot be resumed here"),
    (lambda src, dst: rewritten(src, dst, lambda d: d["content"].update(cosim="0.0.1")), "written by cosim '0.0.1'"),
    (lambda src, dst: rewritten(src, dst, lambda d: d["content"]["scenario"].update(sha256="0" * 64)),
     "another scenario"),
    (lambda src, dst: dst, "no such checkpoint file"),
], ids=["hash", "truncated", "format", "protocol", "cosim", "other-scenario", "missing"])
def test_bad_checkpoint_is_refused_before_anything_starts(taken: Path, tmp_path: Path, make: Any,
                                                          expected: str) -> None:
    bad = make(taken, tmp_path / "bad.checkpoint.json")
    trace = tmp_path / "resumed.jsonl"
    with pytest.raises(CheckpointError) as caught:
        resume(bad, runtime="local", trace_path=trace)
    assert expected in str(caught.value) and str(bad) in str(caught.value)
    assert "\n" not in str(caught.value)
    assert not trace.exists()  # nothing started, nothing written


@pytest.mark.parametrize("value, expected", [
    ("1500", "on the quantum grid (multiples of 1000)"),
    ("201000", "in (0, 200000]"),
    ("0", "in (0, 200000]"),
    ("soon", "comma-separated"),
])
def test_checkpoint_time_off_the_grid_or_beyond_the_duration(tmp_path: Path, value: str, expected: str) -> None:
    with pytest.raises(OptionError) as caught:
        checkpointed(PIPELINE, tmp_path, value)
    assert f"--checkpoint-at {value!r}" in str(caught.value) and expected in str(caught.value)
    assert not (tmp_path / "ck.jsonl").exists()


def test_checkpoint_while_a_node_is_down_is_refused(tmp_path: Path) -> None:
    with pytest.raises(OptionError, match="gateway crashed by the schedule and not restarted by 6200000 us"):
        checkpointed(ROOT / "scenarios" / "chaos.yaml", tmp_path, "6200000")


def test_stop_after_checkpoint_needs_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="--stop-after-checkpoint needs --checkpoint-at"):
        run(PIPELINE, runtime="local", trace_path=tmp_path / "t.jsonl", stop_after_checkpoint=True)


def test_service_without_the_capability_fails_before_the_first_step(tmp_path: Path) -> None:
    def burst_service(doc: dict[str, Any]) -> None:
        doc["nodes"].append({"id": "burst", "kind": "service", "build": str(ECHO),
                             "local_command": ["{python}", "-u", str(BURST)]})
    scenario = pipeline_variant(tmp_path, nodes=burst_service)
    with pytest.raises(UnsupportedAction) as caught:
        checkpointed(scenario, tmp_path, "100000")
    assert caught.value.node == "burst" and "did not declare the 'snapshot' capability" in str(caught.value)
    trace = read(tmp_path / "ck.jsonl")
    assert trace.error is not None and trace.error.time_us == 0 and not trace.records  # not one step simulated


# -- fork ------------------------------------------------------------------------------------------------------


def test_fork_continues_with_the_variant_and_names_its_parent(taken: Path, tmp_path: Path) -> None:
    def faster_ticks(doc: dict[str, Any]) -> None:
        next(node for node in doc["nodes"] if node["id"] == "echo")["config"] = {"tick_us": 5000}
    variant = pipeline_variant(tmp_path, nodes=faster_ticks)
    parent = (taken.parent.parent / "ck.jsonl").read_text().split("\n")
    forked = resume(taken, runtime="local", trace_path=tmp_path / "fork.jsonl", scenario_path=variant)
    lines = forked.trace_path.read_text().split("\n")
    header = json.loads(lines[0])
    document = json.loads(taken.read_text())
    assert header["forked_from"] == {"checkpoint_sha256": document["sha256"], "time_us": 100000,
                                     "scenario_sha256": document["content"]["scenario"]["sha256"]}
    # Up to T, the parent's records; after T, ticks every 5 ms instead of 10 ms.
    before = parent[1:-2]  # without the header and the "stopped" footer
    assert lines[1:1 + len(before)] == before
    ticks = [json.loads(line)["time_us"] for line in lines[1 + len(before):]
             if line and json.loads(line).get("type") == "tick" and json.loads(line)["record"] == "sent"]
    assert ticks and all(t % 5000 == 0 for t in ticks) and any(t % 10000 for t in ticks)


@pytest.mark.parametrize("change, expected", [
    ({"seed": 43}, "seed is 43, the checkpoint's scenario has 42: a fork may not change it"),
    ({"quantum_us": 500}, "quantum_us is 500"),
    ({"nodes": lambda doc: (doc["nodes"].pop(0), doc["routes"].pop(0))}, "nodes removed: sensor-a: a fork may not add, remove or change nodes"),
    ({"nodes": lambda doc: doc["nodes"].append({"id": "sink-2", "kind": "sink"})}, "nodes added: sink-2"),
], ids=["seed", "quantum", "removed", "added"])
def test_fork_that_changes_the_structure_is_refused(taken: Path, tmp_path: Path, change: dict[str, Any],
                                                    expected: str) -> None:
    variant = pipeline_variant(tmp_path, **change)
    with pytest.raises(CheckpointError) as caught:
        resume(taken, runtime="local", trace_path=tmp_path / "fork.jsonl", scenario_path=variant)
    assert expected in str(caught.value) and str(variant) in str(caught.value)
    assert not (tmp_path / "fork.jsonl").exists()


# -- the command line ------------------------------------------------------------------------------------------


def test_invoke_resume_of_an_edited_checkpoint_is_one_line(taken: Path, tmp_path: Path) -> None:
    bad = rewritten(taken, tmp_path / "edited.checkpoint.json", edit_time, rehash=False)
    done = subprocess.run([sys.executable, "-m", "invoke", "resume", str(bad), "--runtime", "local", "--trace",
                           str(tmp_path / "r.jsonl")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()] and "edited or damaged" in done.stderr
    assert "Traceback" not in done.stderr and not (tmp_path / "r.jsonl").exists()


def test_determinism_gate_resumes_each_checkpoint(tmp_path: Path) -> None:
    from cosim.determinism import gate

    results = gate(str(PIPELINE), runs=2, runtime="local", out_dir=tmp_path, checkpoint_at="50000", out=io.StringIO())
    assert [result.runtime for result in results] == ["local", "local from local checkpoint at 50000 us"] * 2
    assert len({result.hash for result in results}) == 1


def test_a_checkpoint_directory_that_cannot_be_written_stops_the_run_before_it_starts(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the checkpoint directory should be")
    with pytest.raises(OutputWriteError) as raised:
        run(PIPELINE, runtime="local", trace_path=tmp_path / "t.jsonl", checkpoint_at="50000", checkpoint_dir=blocker)
    assert str(raised.value) == f"cannot write the checkpoint directory {blocker}: Not a directory (errno 20)"
    assert not (tmp_path / "t.jsonl").exists()  # nothing started (a checkpoint failing mid-run: test_machine_failures)


@pytest.mark.parametrize("advance", ["next-event", "fixed"])
def test_a_checkpoint_at_every_window_end_in_both_advance_modes(tmp_path: Path, advance: str) -> None:
    """Next-event skips windows: a checkpoint at the end of a skipped one holds the promises, each node's own clock
    and the counts of the quanta skipped so far; resumed, it goes on exactly as the uninterrupted run."""
    times = ",".join(str(t) for t in range(1000, 13000, 1000))
    plain = run(PIPELINE, runtime="local", trace_path=tmp_path / "plain.jsonl", advance=advance)
    written: list[Path] = []
    run(PIPELINE, runtime="local", trace_path=tmp_path / "ck.jsonl", advance=advance, checkpoint_at=times,
        checkpoint_dir=tmp_path / "checkpoints", checkpoint_written=lambda path, size, seconds: written.append(path))
    assert_same_simulation(plain.trace_path, tmp_path / "ck.jsonl")
    assert len(written) == 12
    in_gaps = 0
    for index, path in enumerate(written):
        content = json.loads(path.read_text())["content"]
        assert content["advance"] == advance
        executed = content["state"]["coordinator"]["executed"]
        assert executed["steps"] + executed["skipped"] == content["time_us"] // 1000  # every quantum up to T
        in_gaps += content["state"]["step"] < content["time_us"] // 1000 and executed["steps"] == content["state"]["step"]
        resumed = resume(path, runtime="local", trace_path=tmp_path / f"resumed-{index}.jsonl")
        assert_same_simulation(plain.trace_path, resumed.trace_path)
    assert (in_gaps > 0) == (advance == "next-event")
