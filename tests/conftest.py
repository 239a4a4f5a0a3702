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


SERVICE_IMAGES = ("echo", "mqtt-broker", "mqtt-gateway", "ml-inference")


@pytest.fixture(scope="session")
def service_images() -> dict[str, str]:
    """Every service image, built once per session when missing or stale ({tag: image id}).

    Needs the Docker engine: tests using it carry @pytest.mark.docker. Without an engine they fail loudly
    rather than skip, so a CI machine that lost Docker cannot pass silently.
    """
    from cosim.engine import check_engine
    from cosim.images import ImageSpec, ensure_images

    check_engine()
    return ensure_images(ImageSpec(tag=f"cosim/{name}:dev", service_dir=CONTAINERS / name) for name in SERVICE_IMAGES)


def cosim_resources(label: str) -> tuple[list[str], list[str]]:
    """Container and network ids carrying ``label`` (e.g. "cosim.scenario=default")."""
    import subprocess

    def ids(*command: str) -> list[str]:
        done = subprocess.run(["docker", *command, "--filter", f"label={label}", "-q"], capture_output=True,
                              text=True, check=True)
        return done.stdout.split()

    return ids("ps", "-a"), ids("network", "ls")
