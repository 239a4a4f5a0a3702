"""The trace writer's queued event records: written by hand around the payload's JSON, they must be exactly the
canonical encoding of the record, in the order they were queued among the other records, and counted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosim import protocol
from cosim import trace as tracing
from cosim.trace import TraceWriter

PAYLOADS = [{"value": 1}, {"z": [1.5, None, True], "a": "ünïcode \u2028 \"quoted\" \\"}, None, "text", 12, -0.0, 1e-07, []]


def queue_every_kind(writer: TraceWriter, data: object) -> list[dict[str, object]]:
    """One record of each kind around one payload cell; the records the lines must encode, in queue order."""
    cell: tracing.PayloadCell = [data, None]
    kind_json = protocol.canonical("tick/1")
    writer.queue.append((tracing.SENT, cell, 7, "echo-1", 1020, kind_json))
    writer.queue.append((tracing.UNROUTABLE, cell, 8, "echo-1", 1040, kind_json))
    writer.queue.append((tracing.DROPPED, cell, "sink", "loss", 7, "echo-1", 1020, kind_json))
    writer.queue.append((tracing.DELIVERED, cell, "sink", 1020, 7, "echo-1", 2020, kind_json))
    common = {"data": data, "source": "echo-1", "type": "tick/1"}
    return [{**common, "record": "sent", "seq": 7, "time_us": 1020},
            {**common, "record": "unroutable", "seq": 8, "time_us": 1040},
            {**common, "record": "dropped", "dest": "sink", "reason": "loss", "seq": 7, "time_us": 1020},
            {**common, "record": "delivered", "dest": "sink", "sent_us": 1020, "seq": 7, "time_us": 2020}]


def test_every_queued_kind_is_written_as_its_canonical_record(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "t.jsonl", {})
    expected = [record for data in PAYLOADS for record in queue_every_kind(writer, data)]
    writer.close()
    lines = (tmp_path / "t.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    assert lines == [protocol.canonical(record) for record in expected]
    assert [json.loads(line) for line in lines] == expected


def test_queued_records_keep_their_place_among_the_others_and_are_counted(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "t.jsonl", {"name": "x"})
    writer.header()
    queue_every_kind(writer, {"value": 1})
    assert writer.counts == {"sent": 1, "unroutable": 1, "dropped": 1, "delivered": 1}  # counting drains
    queue_every_kind(writer, {"value": 2})
    writer.write({"record": "action", "time_us": 3000, "action": "heal"})  # drains the queue first
    queue_every_kind(writer, {"value": 3})
    writer.error(4000, "echo-1", "node_failure", "gone")  # drains, then counts in the error record
    writer.close()
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text(encoding="utf-8").split("\n")[:-1]]
    kinds = [record["record"] for record in records]
    assert kinds == ["header", *["sent", "unroutable", "dropped", "delivered"] * 2, "action",
                     "sent", "unroutable", "dropped", "delivered", "error"]
    assert [record["data"]["value"] for record in records if record["record"] == "sent"] == [1, 2, 3]
    assert records[-1]["counts"] == {"sent": 3, "unroutable": 3, "dropped": 3, "delivered": 3, "action": 1}


def test_a_payload_is_encoded_once_for_all_its_records(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "t.jsonl", {})
    cell: tracing.PayloadCell = [{"b": 2, "a": 1}, None]
    writer.queue.append((tracing.SENT, cell, 0, "s", 10, '"t"'))
    writer.drain()
    assert cell[1] == '{"a":1,"b":2}'
    cell[0] = {"changed": True}  # a later record uses the JSON of the first: the payload as it was sent
    writer.queue.append((tracing.DELIVERED, cell, "d", 10, 0, "s", 1010, '"t"'))
    writer.close()
    lines = (tmp_path / "t.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    assert [json.loads(line)["data"] for line in lines] == [{"a": 1, "b": 2}] * 2


def test_a_record_the_trace_cannot_carry_ends_its_batch_and_the_error_record_follows(tmp_path: Path) -> None:
    writer = TraceWriter(tmp_path / "t.jsonl", {})
    writer.header()
    for value in (1.0, float("nan"), 3.0):  # e.g. an in-process model's reading: NaN is not JSON
        writer.queue.append((tracing.SENT, [{"value": value}, None], 0, "sensor", 10, '"reading"'))
    with pytest.raises(ValueError):
        writer.drain()
    writer.error(1000, "sensor", "internal_error", "ValueError: Out of range float values are not JSON compliant")
    writer.close()
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text(encoding="utf-8").split("\n")[:-1]]
    assert [record["record"] for record in records] == ["header", "sent", "error"]
    assert records[1]["data"] == {"value": 1.0} and records[-1]["counts"]["sent"] == 1
