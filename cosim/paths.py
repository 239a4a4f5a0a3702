"""Where cosim's checkout is, how paths are shown, and how the images it builds from containers/ are named."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout: repo-only tasks (test, lock, golden)


def shown(path: Path) -> str:
    """How a path is shown to the user: relative to the current directory when it lies below it, else as given."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else Path(relative).as_posix()

# Several checkouts sharing one engine (worktrees, CI jobs) each set their own tag, so that one checkout's
# build never replaces the image another checkout's run is using.
IMAGE_TAG_ENV = "COSIM_IMAGE_TAG"
DEFAULT_IMAGE_TAG = "dev"
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")


def service_image(name: str) -> str:
    """The tag of the image cosim builds from ``containers/<name>``: ``cosim/<name>:dev`` unless
    ``$COSIM_IMAGE_TAG`` names another tag."""
    tag = os.environ.get(IMAGE_TAG_ENV) or DEFAULT_IMAGE_TAG
    if not _TAG.fullmatch(tag):
        from cosim.errors import OptionError

        raise OptionError(IMAGE_TAG_ENV, tag, "a Docker tag: letters, digits, '_', '.', '-', at most 128")
    return f"cosim/{name}:{tag}"
