"""Shared fixtures: the repository root and a protocol client for service subprocesses."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTAINERS = ROOT / "containers"
if str(CONTAINERS) not in sys.path:
    sys.path.insert(0, str(CONTAINERS))  # protocol_adapter is importable as in an image


@pytest.fixture
def root() -> Path:
    return ROOT
