"""The attach path: the engine's framed stream (demultiplexed here) and the `docker attach` fallback."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cosim.run import run
from cosim.runtimes.engine_attach import FrameReader, engine_socket
from cosim.tracediff import trace_hash

from .conftest import ROOT, cosim_resources

PIPELINE = ROOT / "tests" / "scenarios_docker" / "docker-pipeline.yaml"


def frame(stream: int, payload: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(payload).to_bytes(4, "big") + payload


def test_frames_split_anywhere_are_demultiplexed_in_order() -> None:
    stderr: list[bytes] = []
    data = frame(1, b'{"type":"READY"}\n') + frame(2, b"log line\n") + frame(1, b'{"type":') + frame(1, b'"DONE"}\n')
    data += frame(2, b"") + frame(1, b"x" * 70_000)
    for cut in (1, 3, 7, 8, 9, 20, len(data) - 1):
        reader = FrameReader(stderr.append)
        reader.feed(data[:cut])
        reader.feed(data[cut:])
        assert bytes(reader.stdout) == b'{"type":"READY"}\n{"type":"DONE"}\n' + b"x" * 70_000
        assert b"".join(stderr) == b"log line\n"
        assert not reader.frames
        stderr.clear()


def test_an_incomplete_frame_waits_for_the_rest() -> None:
    reader = FrameReader(lambda payload: None)
    reader.feed(frame(1, b"hello\n")[:10])
    assert bytes(reader.stdout) == b"" and len(reader.frames) == 10
    reader.feed(frame(1, b"hello\n")[10:])
    assert bytes(reader.stdout) == b"hello\n"


def test_engines_not_on_a_unix_socket_use_docker_attach(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    assert engine_socket() is None
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    assert engine_socket() is None


@pytest.mark.docker
def test_both_attach_paths_give_the_same_trace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                               service_images: dict[str, str]) -> None:
    api = run(PIPELINE, runtime="docker", trace_path=tmp_path / "api.jsonl")
    monkeypatch.setenv("COSIM_ATTACH", "cli")
    cli = run(PIPELINE, runtime="docker", trace_path=tmp_path / "cli.jsonl")
    assert api.trace_path.read_bytes() == cli.trace_path.read_bytes()
    assert trace_hash(api.trace_path) == trace_hash(cli.trace_path)
    facts = [json.loads(summary.metrics_path.read_text())["environment"]["attach"] for summary in (api, cli)]
    assert facts == ["engine-api", "docker-cli"]
    assert cosim_resources("cosim.scenario=docker-pipeline") == ([], [])
