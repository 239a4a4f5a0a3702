"""The core's parts on their own: a node's slot and what a checkpoint takes of it, and the capabilities a
service's READY declares, parsed once into a value."""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path

import pytest

from cosim.core.slots import NodeSlot, ProcessSlot, Slots, kept, saved, saved_fields
from cosim.nodes import MODEL_CAPABILITIES, Capabilities, SinkModel


def test_a_checkpoint_takes_every_saved_field_of_a_slot_and_gives_it_back() -> None:
    assert ProcessSlot.SAVED == ("restarts", "lost", "down")  # an infrastructure node's
    assert NodeSlot.SAVED == ("restarts", "lost", "down", "next_seq", "promise", "config")  # a driven node's
    slots = Slots({"sink": SinkModel("sink")}, ["broker"])
    sink = slots["sink"]
    sink.next_seq, sink.promise, sink.config = 7, 123000, {"threshold": 0.5}
    slots.crashed(slots.process("broker"))
    state = slots.snapshot()
    assert state["broker"]["down"] is True and state["sink"]["next_seq"] == 7 and slots.down == 1
    again = Slots({"sink": SinkModel("sink")}, ["broker"])
    again.restore(state)
    assert again.snapshot() == state and again.down == 1
    assert again.restarted(again.process("broker")) == 0 and again.process("broker").restarts == 1
    assert again.down == 0
    with pytest.raises(ValueError, match=r"node 'sink': a checkpoint's slot has \['next_seq'\], expected"):
        again["sink"].restore({"next_seq": 1})


def test_a_slot_field_that_says_neither_saved_nor_kept_is_refused() -> None:
    @dataclass
    class Careless:
        counted: int = saved(default=0)
        cached: int = kept("rebuilt after a resume", default=0)
        forgotten: int = 0

    with pytest.raises(TypeError, match=r"Careless fields \['forgotten'\] say neither saved\(\) nor kept\(why\)"):
        saved_fields(Careless)
    kept_fields = {"id", "node", "index", "process", "stepped", "group", "always_publishes", "runs_ahead", "ahead",
                   "woken"}
    assert {item.name for item in fields(NodeSlot)} == set(NodeSlot.SAVED) | kept_fields


def test_ready_is_parsed_once_into_capabilities() -> None:
    ready = {"type": "READY", "capabilities": ["configure", "snapshot"], "next_event": True,
             "barrier_group": "broker", "barrier_publishes": "on_input"}
    assert Capabilities.from_ready(ready) == Capabilities(frozenset({"configure", "snapshot"}), configure=True,
                                                          snapshot=True, next_event=True, barrier_group="broker",
                                                          publishes_on_input_only=True, process=True)
    assert Capabilities.from_ready({"type": "READY"}) == Capabilities(process=True)
    assert Capabilities.from_ready({"capabilities": "configure"}) == ("answered READY with capabilities 'configure'; "
                                                                     "expected a list of strings")
    assert Capabilities.from_ready({"next_event": 1}) == "answered READY with next_event 1; expected true or false"
    assert Capabilities.from_ready({"barrier_publishes": "never"}) == (
        "answered READY with barrier_publishes 'never'; expected 'always' or 'on_input'")
    assert SinkModel("sink").capabilities is MODEL_CAPABILITIES and not MODEL_CAPABILITIES.process


def test_a_transport_line_is_read_whatever_its_fills_bring(tmp_path: Path) -> None:
    """LineStream.receive: a fill that brings nothing (the attach transport's exit watch), half a line, two lines
    at once: each receive gives exactly the next whole line."""
    from cosim.transport import LineStream

    class Chunks(LineStream):
        def __init__(self, chunks: list[bytes]) -> None:
            super().__init__("chunks", tmp_path / "chunks.log", None, None)
            self.chunks = chunks

        def _fill(self, timeout_s: float) -> None:
            self._buffer += self.chunks.pop(0)

    stream = Chunks([b"", b'{"a":', b'1}\n', b"", b"second\nthird\n", b"\n"])
    deadline = time.monotonic() + 10
    assert [stream.receive(deadline) for _ in range(4)] == [b'{"a":1}', b"second", b"third", b""]


def test_a_pipe_transport_line_is_read_whatever_its_reads_bring(tmp_path: Path) -> None:
    """PipeTransport.receive: a read that brings one whole line (returned as read), a line in two reads, two lines in
    one read (the second without another poll), and a last line cut off by the end of the stream."""
    import sys

    from cosim.transport import PipeTransport, TransportClosed

    writer = tmp_path / "writer.py"
    writer.write_text(
        "import os, sys, time\n"
        "def go():\n"
        "    sys.stdin.buffer.readline()\n"
        "os.write(1, b'{\"a\":1}\\n'); go()\n"
        "os.write(1, b'{\"b\":'); time.sleep(0.05); os.write(1, b'2}\\n'); go()\n"
        "os.write(1, b'second\\nthird\\n'); go()\n"
        "os.write(1, b'cut off')\n", encoding="utf-8")
    transport = PipeTransport("writer", [sys.executable, str(writer)], log_path=tmp_path / "writer.log")
    try:
        deadline = time.monotonic() + 10
        received = [transport.receive(deadline)]
        transport.send(b"go\n")
        received.append(transport.receive(deadline))
        transport.send(b"go\n")
        received += [transport.receive(deadline), transport.receive(deadline)]
        transport.send(b"go\n")
        assert received == [b'{"a":1}', b'{"b":2}', b"second", b"third"]
        with pytest.raises(TransportClosed):
            transport.receive(deadline)
    finally:
        transport.close(grace_s=1.0)
