"""A stand-in for the ns-3 segment worker (cosim.segments.worker) that speaks its real protocol without ns-3: each
segment is one shared medium that serialises its packets first come, first served, at a fixed rate per byte (so
contention shows: the more senders, the longer the wait), with a bounded queue (drops: ``queue_full``).

Deterministic and independent of where it is stopped: every send is placed on its medium when it is received (sends
come in time order), so the arrivals depend only on the sends.

Test hooks (environment): FAKE_SEGMENT_WORKER_HANG_AT_US=T with FAKE_SEGMENT_WORKER_PID_FILE=path: at the first run
until >= T it writes its pid to the file and waits to be killed (a test kills it for real).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

RATES_BPS = {"lrwpan": 250_000, "wifi": 6_000_000}  # the radios' fixed rate here; csma/p2p: their data_rate
HEADER_BYTES = {"lrwpan": 30, "wifi": 60, "csma": 46, "p2p": 30}
QUEUE = {"lrwpan": 4, "wifi": 20}  # csma/p2p: their queue_packets
UNITS = {"bps": 1, "kbps": 1_000, "Mbps": 1_000_000, "Gbps": 1_000_000_000}


def rate_bps(segment: dict[str, Any]) -> int:
    text = segment.get("data_rate")
    if text is None:
        return RATES_BPS[segment["medium"]]
    for unit in ("kbps", "Mbps", "Gbps", "bps"):
        if text.endswith(unit):
            return int(float(text[: -len(unit)]) * UNITS[unit])
    raise ValueError(f"bad data_rate {text!r}")


class Medium:
    def __init__(self, segment: dict[str, Any]) -> None:
        medium = segment["medium"]
        if medium not in HEADER_BYTES:
            raise ValueError(f"segment {segment.get('id')!r}: unknown medium {medium!r}")
        self.rate = rate_bps(segment)
        self.header = HEADER_BYTES[medium]
        self.delay_ns = segment.get("delay_us", 0) * 1000
        self.queue = segment.get("queue_packets", QUEUE.get(medium, 100))
        self.starts: list[int] = []  # start times (ns) of the packets accepted, for the queue length
        self.free_ns = 0

    def send(self, time_us: int) -> tuple[int, str | None]:
        """(time in us, None) of the arrival, or (time, reason) of the drop."""
        now = time_us * 1000
        waiting = sum(1 for start in self.starts if start > now)
        if waiting >= self.queue:
            return time_us, "queue_full"
        start = max(now, self.free_ns)
        self.starts = [s for s in self.starts if s > now] + [start]
        return start, None

    def transmit(self, start_ns: int, size: int) -> int:
        end = start_ns + (size + self.header) * 8 * 1_000_000_000 // self.rate
        self.free_ns = end
        return -(-(end + self.delay_ns) // 1000)  # rounded up to the us


def main() -> int:
    hang_at = int(os.environ.get("FAKE_SEGMENT_WORKER_HANG_AT_US", "-1"))
    pid_file = os.environ.get("FAKE_SEGMENT_WORKER_PID_FILE")
    media: dict[str, Medium] = {}
    pending: list[tuple[int, int, str | None]] = []  # (at_us, pid, reason or None)

    def reply(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
        sys.stdout.flush()

    for line in sys.stdin:
        message = json.loads(line)
        op = message["op"]
        try:
            if op == "init":
                media = {segment["id"]: Medium(segment) for segment in message["segments"]}
                pending = []
                print(f"fake segment worker: {len(media)} segment(s)", file=sys.stderr, flush=True)
                reply({"op": "ready", "ns3": "fake", "modules": [],
                       "segments": [{"id": s["id"], "nodes": s["nodes"]} for s in message["segments"]]})
            elif op == "run":
                until = message["until_us"]
                if 0 <= hang_at <= until and pid_file:
                    with open(pid_file + ".tmp", "w") as out:
                        out.write(str(os.getpid()))
                    os.replace(pid_file + ".tmp", pid_file)
                    print("fake segment worker: waiting to be killed", file=sys.stderr, flush=True)
                    while True:
                        signal.pause()
                for pid, time_us, segment_id, _source, _dest, size in message["sends"]:
                    medium = media[segment_id]
                    start, reason = medium.send(time_us)
                    if reason is not None:
                        pending.append((start, pid, reason))
                    else:
                        pending.append((medium.transmit(start, size), pid, None))
                pending.sort()
                done = [entry for entry in pending if entry[0] <= until]
                pending = [entry for entry in pending if entry[0] > until]
                reply({"op": "ran", "now_us": until,
                       "arrivals": [[pid, at] for at, pid, reason in done if reason is None],
                       "drops": [[pid, at, reason] for at, pid, reason in done if reason is not None],
                       "next_us": pending[0][0] if pending else None})
            elif op == "shutdown":
                return 0
            else:
                raise ValueError(f"unknown op {op!r}")
        except (KeyError, ValueError) as exc:
            reply({"op": "error", "message": str(exc)})
            print(f"fake segment worker: {exc}", file=sys.stderr, flush=True)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
