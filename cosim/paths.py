"""Where cosim's checkout is, and how paths are shown."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout: repo-only tasks (test, lock, golden)


def shown(path: Path) -> str:
    """How a path is shown to the user: relative to the current directory when it lies below it, else as given."""
    relative = os.path.relpath(path)
    return path.as_posix() if relative.startswith("..") else Path(relative).as_posix()
