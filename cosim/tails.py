"""The last lines of something (a command's output, a log file): what error messages quote. One helper each."""

from __future__ import annotations

import re
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


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_BUILD_NOISE = (" ---> ", "Removing intermediate container", "Sending build context", "Successfully ")


def build_output_tail(text: str, lines: int = 15) -> str:
    """The last meaningful lines of docker's output: no colours, deprecation banner or layer bookkeeping."""
    kept = []
    skipping = False
    for line in _ANSI.sub("", text).splitlines():
        if line.startswith("DEPRECATED: The legacy builder"):
            skipping = True
            continue
        if skipping and (line.startswith(" ") or not line.strip()):
            continue
        skipping = False
        if line.strip() and not line.startswith(_BUILD_NOISE):
            kept.append(line.rstrip())
    return "\n".join("    " + line for line in last_lines("\n".join(kept), lines).splitlines())
