"""Tests of the service {{name}} ({{lang}}), written by `cosim new service`. Run them from the experiment:
`invoke test` or `python -m pytest tests`. They drive cosim as you do, through its command line."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

from cosim import trace

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "services" / "{{name}}"
SCENARIO = ROOT / "scenarios" / "{{name}}.yaml"


def cosim(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cosim", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_{{identifier}}_runs_in_its_scenario(tmp_path: Path) -> None:
    """scenarios/{{name}}.yaml runs on the local runtime and the sink receives what {{name}} sends."""
    path = tmp_path / "{{name}}.jsonl"
    result = cosim("up", str(SCENARIO), "--runtime", "local", "--quiet", "--trace", str(path))
    assert result.returncode == 0, result.stderr
    run = trace.read(path)
    assert run.footer is not None
    received = [record for record in run.of(trace.Delivered) if record.dest == "{{name}}-sink"]
    assert received, "the sink received nothing from {{name}}"
    assert all(record.source == "{{name}}" for record in received)


@pytest.mark.skipif(importlib.util.find_spec("cosim.conformance") is None,
                    reason="this cosim has no `cosim conformance`")
def test_{{identifier}}_speaks_the_protocol() -> None:
    """`cosim conformance` drives the service through every case of the protocol."""
    result = cosim("conformance", "--", *{{test_command}}, cwd=SERVICE)
    assert result.returncode == 0, result.stdout + result.stderr
