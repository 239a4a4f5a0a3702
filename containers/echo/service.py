"""echo: a small test service. Echoes every input event and, when asked, misbehaves on cue.

It declares next-event time advance: its wake-ups are its next tick and its next cue, so a run skips the windows
in which it has nothing to do, with the same trace as one that steps it every quantum.

Config (all optional):
  tick_us:     emit a ``tick`` event every tick_us of virtual time, with a seeded random value
  exit_at_us:  exit with code ``exit_code`` (default 3) when advanced past this time
  hang_at_us:  stop answering when advanced past this time
  garbage_at_us: print a non-protocol line on stdout instead of DONE
  raise_at_us: raise an exception in the callback

Reconfigurable during a run (the schedule's `reconfigure`): any of the keys above; e.g. a new tick_us takes
effect from the window it arrives in (ticks stay on multiples of tick_us).
Checkpoints (SNAPSHOT/RESTORE): its config and its random generator.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Mapping
from typing import Any

from cosim_service import Service

CONFIG_KEYS = ("tick_us", "exit_at_us", "exit_code", "hang_at_us", "garbage_at_us", "raise_at_us")
CUES = ("exit_at_us", "hang_at_us", "garbage_at_us", "raise_at_us")
_CUE_KEYS = frozenset(CUES)  # most runs set none: one test per window instead of one per cue


class Echo(Service):
    capabilities = ("echo",)
    reconfigurable = CONFIG_KEYS

    def __init__(self) -> None:
        self.rng = random.Random(0)

    def init(self, node_id: str, seed: int, config: dict[str, Any]) -> None:
        self.rng = random.Random(seed)

    def configure(self, changes: dict[str, Any]) -> None:
        super().configure(changes)  # unknown keys refused
        tick = changes.get("tick_us", 1)
        if tick is not None and (not isinstance(tick, int) or isinstance(tick, bool) or tick < 0):
            raise ValueError(f"tick_us must be an integer >= 0 (0 or null: no ticks), got {tick!r}")

    def snapshot(self) -> dict[str, Any]:
        """A checkpoint: the config as it is now and the random generator's state (the ticks' values)."""
        version, internal, gauss = self.rng.getstate()
        return {"config": self.config, "rng": [version, list(internal), gauss]}

    def restore(self, state: Mapping[str, Any]) -> None:
        version, internal, gauss = state["rng"]
        self.rng.setstate((version, tuple(internal), gauss))

    def _passes(self, key: str, target: int) -> bool:
        at = self.config.get(key)
        return at is not None and self.now_us < at <= target

    def wakeup(self, after_us: int) -> int | None:
        """The next time after ``after_us`` at which echo acts on its own: its next tick or its next cue."""
        config = self.config
        tick = config.get("tick_us")
        if _CUE_KEYS.isdisjoint(config):  # (most runs: no cues)
            return (after_us // tick + 1) * tick if tick else None
        times = [config[key] for key in CUES if config.get(key) is not None and config[key] > after_us]
        if tick:
            times.append((after_us // tick + 1) * tick)
        return min(times, default=None)

    def advance(self, until_us: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        config = self.config
        if not _CUE_KEYS.isdisjoint(config):
            self._cues(until_us)
        out = [{"type": "echo", "time_us": e["time_us"],
                "data": {"of": e.get("type"), "from": e.get("source"), "data": e.get("data")}} for e in events] \
            if events else []
        tick = config.get("tick_us")
        if tick:
            first = (self.now_us // tick + 1) * tick
            for t in range(first, until_us + 1, tick):
                out.append({"type": "tick", "time_us": t, "data": {"value": self.rng.randrange(1_000_000)}})
        return out

    def _cues(self, until_us: int) -> None:
        """Misbehave as configured, when a cue falls in the window."""
        config = self.config
        if self._passes("exit_at_us", until_us):
            print(f"echo: exiting with {config.get('exit_code', 3)} as configured", file=sys.stderr, flush=True)
            os._exit(int(config.get("exit_code", 3)))
        if self._passes("hang_at_us", until_us):
            print("echo: hanging as configured", file=sys.stderr, flush=True)
            sys.stdin.read()  # blocks until the coordinator goes away; never answers
            os._exit(0)
        if self._passes("garbage_at_us", until_us):
            print("echo: writing garbage on stdout as configured", file=sys.stderr, flush=True)
            os.write(1, b"this is not a protocol message\n")
        if self._passes("raise_at_us", until_us):
            raise RuntimeError("echo: failing as configured")


if __name__ == "__main__":
    Echo().run()
