"""No silent skips in CI: with CI=true or COSIM_NO_SKIP=1, a test that skips fails instead, naming what was
missing (the skip's reason). A skip that is wanted is allowed by name: COSIM_ALLOW_SKIP=<part of the test id>[,...].

Loaded by tests/conftest.py; tests/test_skip_policy.py runs it on a probe test in a pytest subprocess.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Generator
from typing import Any

import pytest

SBIN_DIRS = "/usr/local/sbin:/usr/sbin:/sbin"  # daemons such as mosquitto live here, not on every user's PATH

# What the suite needs on the host, and how to get it (Debian/Ubuntu); CI installs all of it.
HOST_TOOLS = {
    "mosquitto": "apt-get install mosquitto",
    "node": "apt-get install nodejs",
    "jq": "apt-get install jq",
}


def strict() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("COSIM_NO_SKIP") == "1"


def host_tool(name: str) -> str:
    """The path of a host program the test needs; skips (a failure in CI) naming it and how to install it."""
    found = shutil.which(name) or shutil.which(name, path=SBIN_DIRS)
    if found is None:
        pytest.skip(f"needs `{name}` on the host ({HOST_TOOLS[name]})")
    return found


def _allowed(nodeid: str) -> bool:
    return any(part.strip() and part.strip() in nodeid for part in os.environ.get("COSIM_ALLOW_SKIP", "").split(","))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[Any]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if not (report.skipped and strict()) or hasattr(report, "wasxfail") or _allowed(item.nodeid):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = (f"skipped, and skips are not allowed here (CI=true or COSIM_NO_SKIP=1): "
                       f"{reason.removeprefix('Skipped: ')}\n"
                       f"Install the missing prerequisite, or allow this skip with COSIM_ALLOW_SKIP=<part of its id>.")
