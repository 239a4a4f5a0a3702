"""A client's checkpoint state: what its next windows depend on, as JSON (docs/protocol.md §15).

Taken at a window boundary after the client settled (every message published so far has arrived and is queued:
nothing is left in flight in the broker). Subscriptions and topics are config: INIT sets them up again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cosim_service.mqtt.envelope import Delivery
from cosim_service.mqtt.recovery import Published


@dataclass
class ClientState:
    node_seq: int  # our next message's number
    members: list[str]  # the barrier group, sorted
    delays: list[tuple[int, int]]  # (since_us, broker_delay_us)
    queue: list[Delivery]  # messages received, not yet due (sorted)
    last_seq: dict[str, int]  # per publisher: the last node_seq taken
    epoch: int  # the barrier epoch
    outbox: list[Published]  # what a peer may still need after a broker restart

    def to_json(self) -> dict[str, Any]:
        return {"node_seq": self.node_seq, "members": self.members, "delays": [list(d) for d in self.delays],
                "queue": [[d.time_us, d.node, d.node_seq, d.topic, d.envelope] for d in self.queue],
                "last_seq": dict(sorted(self.last_seq.items())), "epoch": self.epoch,
                "outbox": [[c, t, topic, None if p is None else p.decode("utf-8")] for c, t, topic, p in self.outbox]}

    @classmethod
    def from_json(cls, saved: Mapping[str, Any]) -> ClientState:
        return cls(node_seq=int(saved["node_seq"]), members=list(saved["members"]),
                   delays=[(int(since), int(delay)) for since, delay in saved["delays"]],
                   queue=[Delivery(t, node, seq, topic, envelope) for t, node, seq, topic, envelope in saved["queue"]],
                   last_seq={node: int(seq) for node, seq in saved["last_seq"].items()}, epoch=int(saved["epoch"]),
                   outbox=[Published(c, t, topic, None if p is None else p.encode("utf-8"))
                           for c, t, topic, p in saved["outbox"]])
