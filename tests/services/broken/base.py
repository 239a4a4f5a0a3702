"""A correct protocol service written without any SDK (stdlib only), for tests/test_conformance.py: the services in
tests/services/broken/<case>/ each subclass it and break the one rule that case checks.

It echoes every input as ``seen`` at its delivery time, and emits a ``tick`` every TICK_US of virtual time carrying
a counter (state a snapshot must carry). It declares next-event advance (its promise is its next tick),
"configure" (the one key ``tick_us``) and "snapshot".
"""

from __future__ import annotations

import json
import sys
from typing import Any, BinaryIO

TICK_US = 100_000


class Service:
    capabilities = ["configure", "snapshot"]

    def __init__(self) -> None:
        self.initialized = False
        self.now = 0
        self.tick_us = TICK_US
        self.ticks = 0
        self.out: BinaryIO = sys.stdout.buffer

    # -- writing

    def write(self, message: dict[str, Any]) -> None:
        self.out.write(json.dumps(message, sort_keys=True, separators=(",", ":")).encode() + b"\n")
        self.out.flush()

    def error(self, code: str, detail: str) -> None:
        self.write({"type": "ERROR", "error": code, "detail": detail, "fatal": False})

    # -- behaviour

    def wakeup(self, target: int) -> int:
        return (target // self.tick_us + 1) * self.tick_us

    def outputs(self, current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = [{"type": "seen", "time_us": e["time_us"], "data": e.get("data")} for e in events]
        for at in range((current // self.tick_us + 1) * self.tick_us, target + 1, self.tick_us):
            self.ticks += 1
            out.append({"type": "tick", "time_us": at, "data": {"n": self.ticks}})
        return out

    # -- the requests

    def on_init(self, message: dict[str, Any]) -> None:
        if self.initialized:
            return self.error("already_initialized", "INIT received twice")
        self.initialized = True
        self.tick_us = message.get("config", {}).get("tick_us", TICK_US)
        self.write({"type": "READY", "protocol": 1, "time_us": 0, "capabilities": self.capabilities,
                    "next_event": True, "next_us": self.wakeup(0)})

    def on_advance(self, message: dict[str, Any]) -> None:
        if not self.initialized:
            return self.error("not_initialized", "ADVANCE before INIT")
        target = message["time_us"]
        if target < self.now:
            return self.error("time_backwards", f"ADVANCE to {target} us, already at {self.now} us")
        events = self.outputs(self.now, target, message.get("events", []))
        self.now = target
        self.write({"type": "DONE", "time_us": target, "events": events, "next_us": self.wakeup(target)})

    def on_configure(self, message: dict[str, Any]) -> None:
        unknown = sorted(set(message.get("config", {})) - {"tick_us"})
        if unknown:
            return self.error("configure_failed", f"unknown config keys {unknown}")
        self.tick_us = message.get("config", {}).get("tick_us", self.tick_us)
        self.now = message["time_us"]
        self.write({"type": "CONFIGURED", "time_us": self.now, "next_us": self.wakeup(self.now)})

    def on_snapshot(self, message: dict[str, Any]) -> None:
        self.write({"type": "SNAPSHOT_STATE", "time_us": self.now, "state": self.snapshot()})

    def snapshot(self) -> dict[str, Any]:
        return {"ticks": self.ticks, "tick_us": self.tick_us}

    def on_restore(self, message: dict[str, Any]) -> None:
        self.ticks, self.tick_us = message["state"]["ticks"], message["state"]["tick_us"]
        self.now = message["time_us"]
        self.write({"type": "RESTORED", "time_us": self.now})

    def on_shutdown(self) -> int:
        return 0

    def on_line(self, line: bytes) -> int | None:
        """Handle one line; an exit code when the service must end."""
        try:
            message = json.loads(line)
        except ValueError as exc:
            self.error("bad_json", f"not JSON: {exc}")
            return None
        handler = {"INIT": self.on_init, "ADVANCE": self.on_advance, "CONFIGURE": self.on_configure,
                   "SNAPSHOT": self.on_snapshot, "RESTORE": self.on_restore}.get(message.get("type"))
        if message.get("type") == "SHUTDOWN":
            return self.on_shutdown()
        if handler is None:
            self.error("unknown_type", f"unknown type {message.get('type')!r}")
            return None
        handler(message)
        return None

    def read_line(self) -> bytes:
        return sys.stdin.buffer.readline()

    def serve(self) -> int:
        while True:
            line = self.read_line()
            if not line:
                return 0
            if not line.strip():
                continue
            code = self.on_line(line)
            if code is not None:
                return code


def main(service: Service) -> None:
    sys.exit(service.serve())


if __name__ == "__main__":
    main(Service())
