"""Open a page in headless Chromium (Debian's `chromium`) over the DevTools protocol on a pipe.

``--remote-debugging-pipe``: Chromium reads commands on fd 3 and writes replies and events on fd 4, each a JSON
message ended by a NUL byte. No websocket library and no port. The page's console errors, uncaught exceptions
and failed loads (Log.entryAdded, e.g. a missing image) are collected; a full-page screenshot is taken.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMEOUT_S = 60.0


@dataclass
class PageResult:
    svg_count: int
    title: str
    errors: list[str] = field(default_factory=list)  # console errors, exceptions, failed loads
    screenshot: Path | None = None
    probe: Any = None  # the value of open_page's ``probe`` expression, evaluated in the page


def chromium() -> str:
    found = shutil.which("chromium")
    assert found, "chromium is missing: ./inv test installs it as root (apt-get install chromium)"
    return found


class _DevTools:
    def __init__(self, process: subprocess.Popen[bytes], write_fd: int, read_fd: int) -> None:
        self.process, self.write_fd, self.read_fd = process, write_fd, read_fd
        self.buffer = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self.next_id += 1
        message: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self.write_fd, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self.next_id:
                assert "error" not in reply, f"{method}: {reply['error']}"
                return reply.get("result", {})

    def wait_for(self, method: str) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            message = self._receive()
            if message.get("method") == method:
                return message

    def _receive(self) -> dict[str, Any]:
        deadline = time.monotonic() + TIMEOUT_S
        while b"\0" not in self.buffer:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "chromium did not answer within the deadline"
            ready, _, _ = select.select([self.read_fd], [], [], remaining)
            if ready:
                chunk = os.read(self.read_fd, 1 << 20)
                assert chunk, f"chromium closed the DevTools pipe (exit {self.process.poll()})"
                self.buffer += chunk
        raw, self.buffer = self.buffer.split(b"\0", 1)
        message = json.loads(raw)
        if "method" in message:
            self.events.append(message)
        return message


def open_page(url: str, screenshot: Path | None = None, width: int = 1200, probe: str | None = None) -> PageResult:
    commands_read, commands_write = os.pipe()
    replies_read, replies_write = os.pipe()

    def onto_fds_3_and_4() -> None:  # in the child: the pipe ends where --remote-debugging-pipe expects them
        commands, replies = os.dup(commands_read), os.dup(replies_write)  # copies first: either may be fd 3 or 4
        os.dup2(commands, 3)
        os.dup2(replies, 4)
        os.set_inheritable(3, True)
        os.set_inheritable(4, True)

    # Removed below, once Chromium's helpers are gone (one writing into it after the browser exits fails a removal).
    with tempfile.TemporaryDirectory(prefix="cosim-chromium-", ignore_cleanup_errors=True) as profile:
        arguments = [chromium(), "--headless", "--disable-gpu", "--remote-debugging-pipe", f"--user-data-dir={profile}",
                     "--no-first-run", "--hide-scrollbars", f"--window-size={width},900", "about:blank"]
        if os.geteuid() == 0:
            arguments.insert(1, "--no-sandbox")  # Chromium refuses to run its sandbox as root
        process = subprocess.Popen(arguments, preexec_fn=onto_fds_3_and_4, close_fds=False, start_new_session=True,
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(commands_read)
        os.close(replies_write)
        devtools = _DevTools(process, commands_write, replies_read)
        try:
            target = devtools.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = devtools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                devtools.send(f"{domain}.enable", session=session)
            devtools.send("Page.navigate", {"url": url}, session=session)
            devtools.wait_for("Page.loadEventFired")
            evaluate = lambda expression: devtools.send(  # noqa: E731
                "Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=session)["result"]["value"]
            result = PageResult(svg_count=evaluate("document.querySelectorAll('svg').length"),
                                title=evaluate("document.title"))
            if probe is not None:
                result.probe = evaluate(probe)
            if screenshot is not None:
                height = evaluate("document.documentElement.scrollHeight")
                devtools.send("Emulation.setDeviceMetricsOverride",
                              {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session=session)
                shot = devtools.send("Page.captureScreenshot", {"format": "png"}, session=session)
                screenshot.write_bytes(base64.b64decode(shot["data"]))
                result.screenshot = screenshot
            for event in devtools.events:
                params = event.get("params", {})
                if event["method"] == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
                    result.errors.append("console: " + " ".join(str(a.get("value", a.get("description")))
                                                                for a in params.get("args", [])))
                elif event["method"] == "Runtime.exceptionThrown":
                    result.errors.append("exception: " + params["exceptionDetails"].get("text", ""))
                elif event["method"] == "Log.entryAdded" and params["entry"].get("level") == "error":
                    result.errors.append(f"log: {params['entry'].get('text')} {params['entry'].get('url', '')}")
            try:
                devtools.send("Browser.close")
            except AssertionError:
                pass  # the pipe may close before the reply arrives
            return result
        finally:
            os.close(commands_write)
            os.close(replies_read)
            if process.poll() is None:
                process.kill()
            process.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its helpers (renderer, crash handler), if still running
            _remove_profile(Path(profile))


def _remove_profile(profile: Path, timeout_s: float = 30.0) -> None:
    """Remove Chromium's profile directory; a killed helper may still finish a write, so try until it is gone."""
    deadline = time.monotonic() + timeout_s
    while profile.exists():
        shutil.rmtree(profile, ignore_errors=True)
        if time.monotonic() > deadline:
            raise AssertionError(f"cannot remove Chromium's profile directory {profile} within {timeout_s:g} s")


def assert_report_renders(report: Path, screenshot: Path, *, charts: int) -> PageResult:
    """The report opens in Chromium without a single error, shows ``charts`` SVG charts, and screenshots."""
    result = open_page(report.resolve().as_uri(), screenshot)
    assert result.errors == [], f"{report} logged errors in Chromium: {result.errors}"
    assert result.svg_count == charts, f"{report}: {result.svg_count} charts rendered, expected {charts}"
    assert result.title.startswith("cosim report: ")
    data = screenshot.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 20_000, "the screenshot is not a rendered page"
    return result
