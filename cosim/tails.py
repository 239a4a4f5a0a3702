"""The last lines of something (a command's output, a log file): what error messages quote. One helper each."""

from __future__ import annotations

from collections import deque
from pathlib import Path


def last_lines(text: str, count: int) -> str:
    """The last ``count`` lines of ``text``, without leading or trailing blank space ("" for none)."""
    return "\n".join(text.strip().splitlines()[-count:]) if count > 0 else ""


def file_tail(path: Path, count: int) -> str:
    """The last ``count`` lines of a text file, as written (empty when it does not exist)."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            return "".join(deque(handle, maxlen=count))
    except OSError:
        return ""
