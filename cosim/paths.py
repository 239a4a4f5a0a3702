"""Where cosim's checkout is: the repository root that holds scenarios/, schemas/, containers/ and compose/."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
