"""The progress line: one line redrawn in place on a terminal (a real pty), periodic plain lines otherwise."""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from cosim.cli import ProgressLine

ROOT = Path(__file__).resolve().parent.parent
PIPELINE = ROOT / "tests" / "scenarios_local" / "pipeline.yaml"
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
DEADLINE_S = 120.0


def up_command(trace: Path) -> list[str]:
    code = f"from cosim import cli; cli.up({str(PIPELINE)!r}, runtime='local', trace={str(trace)!r})"
    return [sys.executable, "-c", code]


def test_on_a_terminal_one_line_is_redrawn(tmp_path: Path) -> None:
    controller, terminal = pty.openpty()
    process = subprocess.Popen(up_command(tmp_path / "t.jsonl"), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=terminal, cwd=ROOT)
    os.close(terminal)
    captured = b""
    deadline = time.monotonic() + DEADLINE_S
    while time.monotonic() < deadline:
        ready, _, _ = select.select([controller], [], [], 1.0)
        if not ready:
            if process.poll() is not None:
                break
            continue
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        captured += chunk
    os.close(controller)
    stdout, _ = process.communicate(timeout=DEADLINE_S)
    assert process.returncode == 0, captured.decode(errors="replace")
    text = captured.decode("utf-8", errors="replace")
    plain = ANSI.sub("", text)
    assert "\r" in text  # redrawn in place
    final = plain.replace("\r\n", "\n").split("\r")[-1]
    assert re.search(r"0\.200 / 0\.2 s virtual\s+100%\s+step loop [\d.]+x real time\s+ETA 0 s", final), final
    assert "(10%)" not in plain  # not the plain periodic lines
    assert b"cosim: scenario 'local-pipeline' ran on the local runtime" in stdout


def test_without_a_terminal_periodic_lines(tmp_path: Path) -> None:
    done = subprocess.run(up_command(tmp_path / "t.jsonl"), capture_output=True, text=True, cwd=ROOT,
                          timeout=DEADLINE_S)
    assert done.returncode == 0, done.stderr
    lines = [line.strip() for line in done.stderr.splitlines()]
    # the first executed step (next-event advance: the window of the first sample, at 3 ms), then each tenth
    assert lines == ["0.003 / 0.200 s virtual (0%)"] + [f"{step * 0.02:.3f} / 0.200 s virtual ({step * 10}%)"
                                                         for step in range(1, 11)]
    assert "\x1b[" not in done.stderr and "\r" not in done.stderr


def test_terminal_line_shows_time_percent_speed_up_and_eta() -> None:
    out = io.StringIO()
    line = ProgressLine(out, terminal=True, interval_s=0.0)
    for step in range(1, 5):
        line(step * 1_000_000, 4_000_000)
    frames = [ANSI.sub("", frame).strip() for frame in out.getvalue().split("\r") if ANSI.sub("", frame).strip()]
    # The step loop's speed-up is measured from its first step: the line is drawn from the second on.
    assert len(frames) >= 3
    assert re.search(r"2\.000 / 4 s virtual\s+50%\s+step loop [\d.]+x real time\s+ETA \d+ s", frames[0]), frames[0]
    assert re.search(r"4\.000 / 4 s virtual\s+100%", frames[-1]), frames[-1]
    assert out.getvalue().endswith("\n") or out.getvalue().rstrip("\x1b[?25h").endswith("\n")
