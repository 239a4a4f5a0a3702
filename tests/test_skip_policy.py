"""The skip policy (tests/skip_policy.py) on a probe test, in a pytest subprocess: a skip fails CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

PROBE = '''
import pytest

def test_needs_a_tool():
    pytest.skip("needs `frobnicate` on the host (apt-get install frobnicate)")

@pytest.mark.skipif(True, reason="needs `jq` on the host (apt-get install jq)")
def test_marked():
    pass

def test_fine():
    assert True
'''


def run_probe(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    probe = tmp_path / "test_probe.py"
    probe.write_text(PROBE, encoding="utf-8")
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "COSIM_NO_SKIP", "COSIM_ALLOW_SKIP")}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "tests.skip_policy", "-q", "-p", "no:cacheprovider",
                           "--rootdir", str(tmp_path), str(probe)], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**clean, **env})


def test_skips_are_skips_outside_ci(tmp_path: Path) -> None:
    done = run_probe(tmp_path)
    assert done.returncode == 0, done.stdout
    assert "1 passed, 2 skipped" in done.stdout


@pytest.mark.parametrize("env", [{"CI": "true"}, {"COSIM_NO_SKIP": "1"}], ids=["CI", "COSIM_NO_SKIP"])
def test_a_skip_fails_in_ci_naming_what_is_missing(tmp_path: Path, env: dict[str, str]) -> None:
    done = run_probe(tmp_path, **env)
    assert done.returncode == 1, done.stdout
    assert "1 passed" in done.stdout and "skipped" not in done.stdout.splitlines()[-1]
    assert "skips are not allowed here (CI=true or COSIM_NO_SKIP=1): needs `frobnicate` on the host" in done.stdout
    assert "needs `jq` on the host (apt-get install jq)" in done.stdout


def test_a_skip_can_be_allowed_by_name(tmp_path: Path) -> None:
    done = run_probe(tmp_path, CI="true", COSIM_ALLOW_SKIP="test_needs_a_tool,test_marked")
    assert done.returncode == 0, done.stdout
    assert "1 passed, 2 skipped" in done.stdout
