"""sdk_chatty: a service on the SDK whose code print()s to stdout, which Service.run() must keep off the protocol."""

from __future__ import annotations

from typing import Any

from cosim_service import Service


class Chatty(Service):
    def init(self, node_id: str, seed: int, config: dict[str, Any]) -> None:
        print(f"sdk_chatty: stray print in init for {node_id}")

    def advance(self, until_us: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        print(f"sdk_chatty: stray print while advancing to {until_us}")
        return [{"type": "said", "data": {"events": len(events)}}]


if __name__ == "__main__":
    Chatty().run()
