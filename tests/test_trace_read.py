"""cosim.trace.read: typed records from real (local-runtime) traces, and clear errors for files that are not traces."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest

from cosim import protocol
from cosim import trace as traces
from cosim.errors import CosimError, TraceReadError
from cosim.run import CompletedRun, run
from cosim.trace import Delivered, Dropped, Footer, Header, RunError, Sent, Unroutable

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "tests" / "scenarios_local" / "pipeline.yaml"
FAILING = ROOT / "tests" / "scenarios_local" / "failing.yaml"


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory: pytest.TempPathFactory) -> CompletedRun:
    return run(PIPELINE, runtime="local", trace_path=tmp_path_factory.mktemp("read") / "pipeline.jsonl")


def raw_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_bytes().decode("utf-8").split("\n") if line]


def test_read_gives_every_record_typed(pipeline_run: CompletedRun) -> None:
    trace = traces.read(pipeline_run.trace_path)
    raw = raw_records(pipeline_run.trace_path)
    assert isinstance(trace.header, Header)
    assert trace.header.scenario == "local-pipeline" and trace.header.seed == 42
    assert trace.header.nodes == raw[0]["nodes"] and trace.header.environment == raw[0]["environment"]
    assert len(trace.records) == len(raw) - 2
    assert [type(r).__name__.lower() for r in trace.records] == [r["record"] for r in raw[1:-1]]
    for record, original in zip(trace.records, raw[1:-1]):
        fields = {key: value for key, value in dataclasses.asdict(record).items()
                  if value is not None or key in original}  # (the optional fields a record may lack: segment, ...)
        assert {**fields, "record": original["record"]} == original  # nothing lost or renamed
    assert isinstance(trace.end, Footer) and trace.footer is trace.end and trace.error is None
    assert trace.footer.counts == {kind: len(trace.of(cls)) for kind, cls in
                                   (("sent", Sent), ("delivered", Delivered), ("dropped", Dropped),
                                    ("unroutable", Unroutable))}
    assert trace.of(Dropped), "the pipeline's lossy links drop some events"
    delivered = trace.of(Delivered)[0]
    assert delivered.latency_us == delivered.time_us - delivered.sent_us >= 1000  # at least one quantum
    with pytest.raises(dataclasses.FrozenInstanceError):
        delivered.time_us = 0  # type: ignore[misc]


def test_read_a_failed_run(tmp_path: Path) -> None:
    path = tmp_path / "failing.jsonl"
    with pytest.raises(CosimError):
        run(FAILING, runtime="local", trace_path=path)
    trace = traces.read(path)
    assert trace.footer is None
    assert isinstance(trace.error, RunError)
    assert (trace.error.node, trace.error.error, trace.error.time_us) == ("echo", "node_failure", 2000)


def test_to_dataframe(pipeline_run: CompletedRun) -> None:
    pytest.importorskip("pandas", reason="pandas is pinned in requirements.lock; ./inv installs it")
    trace = traces.read(pipeline_run.trace_path)
    frame = trace.to_dataframe()
    assert len(frame) == len(trace.records)
    assert list(frame.columns) == ["record", "time_us", "source", "seq", "type", "dest", "sent_us", "latency_us",
                                   "reason", "data", "segment", "arrived_us"]
    assert frame["segment"].isna().all() and frame["arrived_us"].isna().all()  # no network segments here
    assert (frame["record"] == "dropped").sum() == len(trace.of(Dropped))
    delivered = frame[frame["record"] == "delivered"]
    assert (delivered["latency_us"] == delivered["time_us"] - delivered["sent_us"]).all()
    assert frame[frame["record"] == "sent"]["latency_us"].isna().all()


def test_lines_are_split_on_newline_only(pipeline_run: CompletedRun, tmp_path: Path) -> None:
    """Payloads may hold U+2028, U+0085, \\r, \\x1c...: written raw by canonical JSON, never a record boundary."""
    lines = pipeline_run.trace_path.read_bytes().decode("utf-8").split("\n")
    index = next(i for i, line in enumerate(lines) if '"record":"sent"' in line)
    record = json.loads(lines[index])
    record["data"] = {"text": "a\u2028b\u2029c\u0085d\x1ce\x0bf"}
    lines[index] = protocol.canonical(record)
    assert "\u2028" in lines[index]
    path = tmp_path / "separators.jsonl"
    path.write_bytes("\n".join(lines).encode("utf-8"))
    trace = traces.read(path)
    assert len(trace.records) == len(traces.read(pipeline_run.trace_path).records)
    assert trace.records[index - 1].data == record["data"]


def header_line() -> str:
    return protocol.canonical({"record": "header", "format": "cosim-trace/1", "scenario": "s", "scenario_sha256": "0",
                               "compose_sha256": "0", "seed": 1, "duration_us": 10, "quantum_us": 1, "nodes": {},
                               "protocol": 1, "cosim": "0.1.0"})


SENT = '{"data":null,"record":"sent","seq":0,"source":"a","time_us":1,"type":"t"}'
FOOTER = '{"counts":{},"end_us":10,"in_flight":0,"record":"footer","status":"ok","steps":10}'


@pytest.mark.parametrize(("content", "message"), [
    ("", "empty file, not a trace"),
    ("{}\n", ":1: not a trace record (no 'record' field)"),
    (SENT + "\n", ":1: the first record must be the header, not 'sent'"),
    ('{"record":"header","format":"cosim-trace/9"}\n', ":1: format 'cosim-trace/9' is not 'cosim-trace/1'"),
    ("{header}\n" + SENT + "\nnot json\n", ":3: not a JSON record"),
    ("{header}\n" + SENT.replace('"seq":0,', "") + "\n", ":2: 'sent' record has no 'seq' field"),
    ("{header}\n" + SENT.replace('"time_us":1', '"time_us":"1"') + "\n", ':2: field \'time_us\' must be an integer, not "1"'),
    ("{header}\n" + SENT.replace('"sent"', '"sentt"') + "\n", ":2: unknown record kind 'sentt'"),
    ("{header}\n" + FOOTER + "\n" + SENT + "\n", ":3: a 'sent' record after the run's last (footer) record"),
])
def test_malformed_traces_are_named_by_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content.replace("{header}", header_line()), encoding="utf-8")
    with pytest.raises(TraceReadError, match=re.escape(f"{path}{message}" if message.startswith(":") else f"{path}: {message}")):
        traces.read(path)


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(TraceReadError, match=re.escape(f"{tmp_path / 'none.jsonl'}: no such trace file")):
        traces.read(tmp_path / "none.jsonl")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(TraceReadError, match="cannot be read as a trace"):
        traces.read(binary)


def test_a_trace_cut_short_has_no_end(pipeline_run: CompletedRun, tmp_path: Path) -> None:
    lines = pipeline_run.trace_path.read_bytes().split(b"\n")
    path = tmp_path / "cut.jsonl"
    path.write_bytes(b"\n".join(lines[:10]) + b"\n")
    trace = traces.read(path)
    assert trace.end is None and len(trace.records) == 9
