"""chatty: a test service whose code print()s to stdout, which the adapter must keep off the protocol stream."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from protocol_adapter import serve


def on_init(message: Mapping[str, Any]) -> None:
    print(f"chatty: stray print in on_init for {message.get('node_id')}")


def advance(current: int, target: int, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    print(f"chatty: stray print while advancing to {target}")
    return [{"type": "said", "data": {"events": len(events)}}]


if __name__ == "__main__":
    serve(advance, on_init=on_init)
