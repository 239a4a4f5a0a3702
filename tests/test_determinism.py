"""The determinism gate and the trace diff: proof that runs agree, and the first divergence when they don't."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cosim.determinism import NotDeterministic, gate, plan
from cosim.errors import OptionError
from cosim.tracediff import compare, print_comparison, trace_hash

from .conftest import ROOT, cosim_resources

LOCAL = ROOT / "tests" / "scenarios_local"
LEAKY = LOCAL / "leaky.yaml"
PIPELINE = LOCAL / "pipeline.yaml"


def invoke(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def test_plan_alternates_runtimes_for_both_and_refuses_nonsense() -> None:
    assert plan(3, "docker") == ["docker"] * 3
    assert plan(2, "both") == ["local", "docker", "local", "docker"]
    assert plan(1, "both") == ["local", "docker"]  # one run on each runtime is a comparison
    with pytest.raises(OptionError, match="^--runs 1: expected a whole number of at least 2"):
        plan(1, "local")
    with pytest.raises(OptionError, match="^--runtime 'podman': expected one of docker, local, swarm, both$"):
        plan(3, "podman")


def test_gate_passes_for_a_deterministic_scenario(tmp_path: Path) -> None:
    out = io.StringIO()
    runs = gate(str(PIPELINE), runs=3, runtime="local", out_dir=tmp_path, out=out)
    assert len({run.hash for run in runs}) == 1
    assert [run.trace.name for run in runs] == [f"local-pipeline-{n}-local.jsonl" for n in (1, 2, 3)]
    lines = out.getvalue().splitlines()
    assert [line.split(":")[0] for line in lines[:3]] == ["run 1 ( local)", "run 2 ( local)", "run 3 ( local)"]
    assert all(runs[0].hash in line for line in lines[:3])
    assert lines[3] == "PASS: 3 runs of 'local-pipeline' gave identical traces"
    # Same runtime, same machine: the files themselves are byte-identical.
    assert runs[0].trace.read_bytes() == runs[1].trace.read_bytes() == runs[2].trace.read_bytes()


def test_gate_catches_a_service_that_reads_the_wall_clock(tmp_path: Path) -> None:
    out = io.StringIO()
    with pytest.raises(NotDeterministic, match="1 of 1 runs differ from run 1"):
        gate(str(LEAKY), runs=2, runtime="local", out_dir=tmp_path, out=out)
    text = out.getvalue()
    assert "FAIL: run 2 (local) differs from run 1 (local)" in text
    # The first divergent record is the leaky service's first reading, at 5000 us of virtual time.
    assert "first divergent record: #" in text and "virtual time 5000 us, node 'clock'" in text
    assert "data.value  run1=" in text
    first, second = (tmp_path / f"local-leaky-{n}-local.jsonl" for n in (1, 2))
    divergence = compare(first, second).divergence
    assert divergence is not None and divergence.a is not None and divergence.b is not None
    assert (divergence.a["record"], divergence.a["source"], divergence.a["type"]) == ("sent", "clock", "reading")
    assert divergence.a["data"] != divergence.b["data"]
    assert len(divergence.context) == 3  # the records before it, identical in both runs


def test_determinism_task_exit_codes(tmp_path: Path) -> None:
    passing = invoke("determinism", str(PIPELINE), "--runtime", "local", "--runs", "2")
    assert passing.returncode == 0, passing.stderr
    assert "PASS: 2 runs" in passing.stdout
    failing = invoke("determinism", str(LEAKY), "--runtime", "local", "--runs", "2")
    assert failing.returncode == 1
    assert "FAIL" in failing.stdout and "node 'clock'" in failing.stdout
    assert "Traceback" not in failing.stdout + failing.stderr


def _header_with(path: Path, target: Path, **environment: object) -> Path:
    lines = path.read_text(encoding="utf-8").splitlines()
    header = json.loads(lines[0])
    header["environment"] = {**header["environment"], **environment}
    lines[0] = json.dumps(header, sort_keys=True, separators=(",", ":"))
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target


def test_diff_reports_environment_apart_from_the_records(tmp_path: Path) -> None:
    runs = gate(str(PIPELINE), runs=2, runtime="local", out_dir=tmp_path, out=io.StringIO())
    other = _header_with(runs[0].trace, tmp_path / "other-machine.jsonl", runtime="docker", images={"x:dev": "sha256:1"})
    assert trace_hash(other) == runs[0].hash  # the environment is not hashed
    comparison = compare(runs[0].trace, other)
    assert comparison.identical
    assert comparison.environment == {"images.x:dev": (None, "sha256:1"), "runtime": ("local", "docker")}
    out = io.StringIO()
    print_comparison(comparison, out)
    assert "environment (not hashed" in out.getvalue() and "records: identical" in out.getvalue()
    result = invoke("diff", str(runs[0].trace), str(other))
    assert result.returncode == 0 and "records: identical" in result.stdout


def test_diff_of_a_truncated_trace_names_where_it_ends(tmp_path: Path) -> None:
    runs = gate(str(PIPELINE), runs=2, runtime="local", out_dir=tmp_path, out=io.StringIO())
    lines = runs[1].trace.read_text(encoding="utf-8").splitlines()
    short = tmp_path / "short.jsonl"
    short.write_text("\n".join(lines[:10]) + "\n", encoding="utf-8")
    divergence = compare(runs[0].trace, short).divergence
    assert divergence is not None and divergence.index == 10 and divergence.b is None
    result = invoke("diff", str(runs[0].trace), str(short))
    assert result.returncode == 1
    assert "first divergent record: #10 (line 11)" in result.stdout and "(trace ends here)" in result.stdout
    assert result.stderr.strip() == "cosim: error: the traces differ (first divergent record above)"


@pytest.mark.docker
def test_default_scenario_passes_the_gate_through_docker(tmp_path: Path, service_images: dict[str, str]) -> None:
    out = io.StringIO()
    runs = gate(str(ROOT / "scenarios" / "default.yaml"), runs=3, runtime="docker", out_dir=tmp_path, out=out)
    assert len({run.hash for run in runs}) == 1, out.getvalue()
    assert "PASS: 3 runs of 'default'" in out.getvalue()
    headers = [json.loads(run.trace.read_text(encoding="utf-8").splitlines()[0]) for run in runs]
    environment = headers[0]["environment"]
    assert environment["runtime"] == "docker"
    assert environment["images"] == {tag: service_images[tag] for tag in environment["images"]}
    assert set(environment["services"]) == {"gateway", "inference"}
    assert environment["services"]["gateway"]["broker"].startswith("mosquitto version")
    assert "onnxruntime" in environment["services"]["inference"]
    assert cosim_resources("cosim.scenario=default") == ([], [])


@pytest.mark.docker
def test_both_runtimes_agree_through_the_gate(tmp_path: Path, service_images: dict[str, str]) -> None:
    out = io.StringIO()
    scenario = ROOT / "tests" / "scenarios_docker" / "docker-pipeline.yaml"
    runs = gate(str(scenario), runs=2, runtime="both", out_dir=tmp_path, out=out)
    assert [run.runtime for run in runs] == ["local", "docker", "local", "docker"]
    assert len({run.hash for run in runs}) == 1, out.getvalue()
    assert out.getvalue().splitlines()[-1] == "PASS: 4 runs of 'docker-pipeline' gave identical traces"
    # Same runtime: byte-identical files. Across runtimes: only the header's environment block differs.
    assert runs[0].trace.read_bytes() == runs[2].trace.read_bytes()
    assert runs[1].trace.read_bytes() == runs[3].trace.read_bytes()
    comparison = compare(runs[0].trace, runs[1].trace)
    assert comparison.identical and comparison.environment["runtime"] == ("local", "docker")
    assert cosim_resources("cosim.scenario=docker-pipeline") == ([], [])


# -- the hash and the diff follow the bytes ----------------------------------------------------------------------

HEADER = {"record": "header", "format": "cosim-trace/1", "scenario": "bytes", "seed": 1,
          "environment": {"runtime": "local"}}


def _trace(path: Path, text: str, *, newline: bytes = b"\n", final: bool = True) -> Path:
    """A two-record trace whose second record carries ``text``, with the given line ends."""
    records = [HEADER, {"record": "sent", "time_us": 1000, "source": "s", "seq": 0, "type": "t", "data": {"text": text}}]
    lines = [json.dumps(r, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8") for r in records]
    path.write_bytes(newline.join(lines) + (newline if final else b""))
    return path


# Pairs of traces that differ in their bytes (`cmp` says so) and that str.splitlines() made look identical.
BYTE_PAIRS = {
    "u2028-vs-u2029": ({"text": "a\u2028b"}, {"text": "a\u2029b"}),
    "u0085-vs-u2028": ({"text": "a\u0085b"}, {"text": "a\u2028b"}),
    "crlf": ({"newline": b"\r\n"}, {}),
    "no-final-newline": ({"final": False}, {}),
}


@pytest.mark.parametrize("case", list(BYTE_PAIRS))
def test_traces_that_differ_in_bytes_are_different(tmp_path: Path, case: str) -> None:
    options_a, options_b = BYTE_PAIRS[case]
    a = _trace(tmp_path / "a.jsonl", **{"text": "a\u2028b", **options_a})
    b = _trace(tmp_path / "b.jsonl", **{"text": "a\u2028b", **options_b})
    assert a.read_bytes() != b.read_bytes()
    assert trace_hash(a) != trace_hash(b)  # what the determinism gate compares
    comparison = compare(a, b)
    assert not comparison.identical
    out = io.StringIO()
    print_comparison(comparison, out)
    assert "records: identical" not in out.getvalue()
    result = invoke("diff", str(a), str(b))
    assert result.returncode == 1, result.stdout + result.stderr
    assert "first divergent record" in result.stdout
    assert result.stderr.strip() == "cosim: error: the traces differ (first divergent record above)"


def test_a_line_separator_inside_a_payload_is_one_record(tmp_path: Path) -> None:
    a = _trace(tmp_path / "a.jsonl", "a\u2028b\u2029c\u0085d\re")
    same = _trace(tmp_path / "same.jsonl", "a\u2028b\u2029c\u0085d\re")
    assert trace_hash(a) == trace_hash(same) and compare(a, same).identical
    # The hash is that of the bytes (minus the environment block), so `sha256sum` of an environment-free copy agrees.
    bare = tmp_path / "bare.jsonl"
    header, rest = a.read_bytes().split(b"\n", 1)
    stripped = {k: v for k, v in json.loads(header).items() if k != "environment"}
    bare.write_bytes(json.dumps(stripped, sort_keys=True, separators=(",", ":")).encode() + b"\n" + rest)
    import hashlib
    assert trace_hash(a) == hashlib.sha256(bare.read_bytes()).hexdigest()


def test_a_crlf_difference_is_shown_as_bytes(tmp_path: Path) -> None:
    a = _trace(tmp_path / "a.jsonl", "x")
    b = _trace(tmp_path / "b.jsonl", "x", newline=b"\r\n")
    divergence = compare(a, b).divergence
    assert divergence is not None and divergence.index == 0
    out = io.StringIO()
    print_comparison(compare(a, b), out)
    assert "equal as JSON but their bytes differ" in out.getvalue() and "\\r'" in out.getvalue()
    cut = _trace(tmp_path / "cut.jsonl", "x", final=False)
    out = io.StringIO()
    print_comparison(compare(a, cut), out)
    assert "trace B does not end with a newline" in out.getvalue()


def test_an_empty_trace_hashes_as_its_bytes(tmp_path: Path) -> None:
    import hashlib

    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    assert trace_hash(empty) == hashlib.sha256(b"").hexdigest()
    newline = tmp_path / "newline.jsonl"
    newline.write_bytes(b"\n")
    assert trace_hash(newline) == hashlib.sha256(b"\n").hexdigest()


def _first_divergence_line(a: Path, b: Path) -> str:
    out = io.StringIO()
    print_comparison(compare(a, b), out)
    return next(line.strip() for line in out.getvalue().splitlines() if "first divergent record" in line)


def test_the_divergent_record_is_named_by_its_kind_never_none(tmp_path: Path) -> None:
    """A record without a node or a virtual time (the header, the footer) is named by its kind, not "node None"."""
    a = _trace(tmp_path / "a.jsonl", "x")
    header = {**HEADER, "compose_sha256": "99ebe6"}
    b = tmp_path / "b.jsonl"
    b.write_bytes(b"\n".join(json.dumps(r, sort_keys=True, separators=(",", ":")).encode() for r in (
        header, json.loads(a.read_bytes().splitlines()[1]))) + b"\n")
    assert _first_divergence_line(a, b) == "first divergent record: #0 (line 1), 'header' record, no virtual time"
    footer = tmp_path / "footer.jsonl"
    footer.write_bytes(a.read_bytes().splitlines()[0] + b'\n{"end_us":0,"record":"footer","status":"ok"}\n')
    assert _first_divergence_line(a, footer) == ("first divergent record: #1 (line 2), 'sent' record in A, "
                                                 "'footer' record in B, virtual time 1000 us, node 's'")
    other = _trace(tmp_path / "other.jsonl", "y")
    assert _first_divergence_line(a, other) == ("first divergent record: #1 (line 2), 'sent' record, "
                                                "virtual time 1000 us, node 's'")
