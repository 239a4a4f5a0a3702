"""The bench's mosaik peer (run by the interpreter of a venv with mosaik 3.6, never imported by cosim): the sparse
shape of cosim's bench in mosaik. A 1 Hz source (one uniform random value per reading, seeded) -> an echo simulator
in a process of its own (as cosim's echo service is) -> a sink, 600 s virtual in 1 ms ticks (cosim's quantum);
source and sink in the world's process (as cosim's in-process sensor and sink models).

    python mosaik_world.py [DURATION_S]     the world: prints the readings the sink received
    python mosaik_world.py echo ADDR        the echo simulator (mosaik starts it so)
"""

from __future__ import annotations

import random
import sys
from typing import Any

import mosaik_api_v3  # type: ignore[import-not-found]  # (only in the bench's mosaik venv)

TICKS_PER_S = int(__import__("os").environ.get("TICKS", "1000"))

SOURCE_META = {"api_version": "3.0", "type": "time-based",
               "models": {"Source": {"public": True, "params": [], "attrs": ["value"]}}}
ECHO_META = {"api_version": "3.0", "type": "time-based",
             "models": {"Echo": {"public": True, "params": [], "attrs": ["value", "echo"]}}}
SINK_META = {"api_version": "3.0", "type": "time-based",
             "models": {"Sink": {"public": True, "params": [], "attrs": ["echo"]}}}


class Source(mosaik_api_v3.Simulator):
    def __init__(self) -> None:
        super().__init__(SOURCE_META)
        self.rng = random.Random(1)
        self.value = 0.0

    def create(self, num: int, model: str, **params: Any) -> list[dict[str, str]]:
        return [{"eid": "source", "type": model}]

    def step(self, time: int, inputs: dict[str, Any], max_advance: int) -> int:
        self.value = self.rng.random()
        return time + TICKS_PER_S

    def get_data(self, outputs: dict[str, Any]) -> dict[str, Any]:
        return {"source": {"value": self.value}}


class Echo(mosaik_api_v3.Simulator):
    def __init__(self) -> None:
        super().__init__(ECHO_META)
        self.echo: dict[str, Any] | None = None

    def create(self, num: int, model: str, **params: Any) -> list[dict[str, str]]:
        return [{"eid": "echo", "type": model}]

    def step(self, time: int, inputs: dict[str, Any], max_advance: int) -> int:
        self.echo = {"of": "value", "data": next(iter(inputs["echo"]["value"].values()))}
        return time + TICKS_PER_S

    def get_data(self, outputs: dict[str, Any]) -> dict[str, Any]:
        return {"echo": {"echo": self.echo}}


RECEIVED: list[Any] = []  # what the sink received (it runs in the world's process)


class Sink(mosaik_api_v3.Simulator):
    def __init__(self) -> None:
        super().__init__(SINK_META)

    def create(self, num: int, model: str, **params: Any) -> list[dict[str, str]]:
        return [{"eid": "sink", "type": model}]

    def step(self, time: int, inputs: dict[str, Any], max_advance: int) -> int:
        RECEIVED.extend(inputs["sink"]["echo"].values())
        return time + TICKS_PER_S

    def get_data(self, outputs: dict[str, Any]) -> dict[str, Any]:
        return {}


def world(duration_s: int, echo_in_process: bool = False) -> int:
    import mosaik  # type: ignore[import-not-found]

    config: dict[str, dict[str, str]] = {"Source": {"python": "__main__:Source"}, "Sink": {"python": "__main__:Sink"},
              "Echo": ({"python": "__main__:Echo"} if echo_in_process
                       else {"cmd": f"{sys.executable} {__file__} echo %(addr)s"})}
    with mosaik.World(config, time_resolution=1 / TICKS_PER_S, skip_greetings=True) as scenario:
        source = scenario.start("Source").Source()
        echo = scenario.start("Echo").Echo()
        sink = scenario.start("Sink").Sink()
        scenario.connect(source, echo, "value")
        scenario.connect(echo, sink, "echo")
        scenario.run(until=duration_s * TICKS_PER_S, print_progress=False)
    return len(RECEIVED)


if __name__ == "__main__":
    if sys.argv[1:2] == ["echo"]:
        del sys.argv[1]
        mosaik_api_v3.start_simulation(Echo())
    else:
        print(world(int(sys.argv[1]) if len(sys.argv) > 1 else 600, "--echo-in-process" in sys.argv))
