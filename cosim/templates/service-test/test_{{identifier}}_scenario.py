"""The service {{name}} ({{lang}}) in its scenario, written by `cosim new service`: scenarios/{{name}}.yaml runs on
the local runtime through the `cosim` command, as you run it. Run the tests from the experiment: `invoke test` or
`python -m pytest tests`."""

import subprocess
import sys
from pathlib import Path

from cosim import trace

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "scenarios" / "{{name}}.yaml"


def test_{{identifier}}_runs_in_its_scenario(tmp_path: Path) -> None:
    """The run succeeds and the sink receives what {{name}} sends (its heartbeats, and its alarms)."""
    path = tmp_path / "{{name}}.jsonl"
    result = subprocess.run([sys.executable, "-m", "cosim", "up", str(SCENARIO), "--runtime", "local", "--quiet",
                             "--trace", str(path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    run = trace.read(path)
    assert run.footer is not None
    received = [record for record in run.of(trace.Delivered) if record.dest == "{{name}}-sink"]
    assert received, "the sink received nothing from {{name}}"
    assert all(record.source == "{{name}}" for record in received)
