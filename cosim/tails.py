"""The last lines of something (a command's output, a log file): what error messages quote. One helper each."""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path


def last_lines(text: str, count: int) -> str:
    """The last ``count`` lines of ``text``, without leading or trailing blank space ("" for none)."""
    return "\n".join(text.strip().splitlines()[-count:]) if count > 0 else ""


LOG_SCAN_LINES = 200  # how far back a log's tail looks for the start of the stack trace it cuts into
TRACE_TAIL_LINES = 40  # a tail widened to the start of a stack trace: at most this many lines
LINE_CHARS = 500  # a longer line (e.g. a minified source line in a Node trace) is cut short

_PYTHON_TRACE = re.compile(r"Traceback \(most recent call last\):\s*$")
_NODE_LOCATION = re.compile(r"\S:\d+\s*$")  # "/app/index.js:12", above the source line and its caret
_CARET = re.compile(r"\s*\^+\s*$")
_FRAME = re.compile(r"\s+(File |at )")


def _trace_opening(lines: list[str], index: int) -> int:
    """How many lines the stack trace starting at ``index`` opens with before its indented frames (Python: the
    "Traceback" line; Node: the file:line, the source line, the caret and the error message), 0 for no trace."""
    if _PYTHON_TRACE.match(lines[index]):
        return 1
    if _NODE_LOCATION.search(lines[index]) and index + 2 < len(lines) and _CARET.match(lines[index + 2]):
        message = next((i for i in range(index + 3, len(lines)) if lines[i].strip()), len(lines) - 1)
        return message - index + 1
    return 0


def log_tail(text: str, count: int) -> str:
    """The last ``count`` lines of a log; when they cut into a stack trace, from the trace's first line on (a Node
    error's file:line and source line, Python's "Traceback ..."), at most TRACE_TAIL_LINES lines with the middle
    frames left out. Each line at most LINE_CHARS characters."""
    if count <= 0:
        return ""
    lines = text.rstrip().lstrip("\r\n").splitlines()[-max(count, LOG_SCAN_LINES):]
    start = max(0, len(lines) - count)
    kept = lines[start:]
    for index in range(start - 1, -1, -1):
        opening = _trace_opening(lines, index)
        if not opening:
            continue
        # Only the trace the tail cuts into: nothing but its indented frames between its opening and the tail.
        if all(line[:1].isspace() for line in lines[index + opening:start]):
            kept = lines[index:]
            if len(kept) > max(count, TRACE_TAIL_LINES):
                left_out = len(kept) - max(count, TRACE_TAIL_LINES) + 1
                # resume at a frame's first line (Python: "File ...", Node: "at ...") if one is near
                left_out += next((skip for skip in range(3) if opening + left_out + skip < len(kept)
                                  and _FRAME.match(kept[opening + left_out + skip])), 0)
                kept = kept[:opening] + [f"    ... ({left_out} lines left out)"] + kept[opening + left_out:]
        break
    return "\n".join(line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + " ..." for line in kept)


def file_tail(path: Path, count: int) -> str:
    """The tail of a text file (``log_tail``: the last ``count`` lines, widened to the start of a stack trace);
    empty when it does not exist."""
    try:
        with path.open("r", encoding="utf-8", errors="replace") as handle:
            return log_tail("".join(deque(handle, maxlen=max(count, LOG_SCAN_LINES))), count)
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
