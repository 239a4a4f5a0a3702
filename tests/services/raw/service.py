"""raw: a service written without protocol_adapter.py (stdlib only, as one in another language would be), which
breaks one rule of the protocol on purpose. What it breaks comes from INIT's config ``{"break": ...}``; the
coordinator's own checks (cosim.nodes, cosim.protocol.check_outputs) must catch each one.

Otherwise it behaves: READY (whose ``info`` reports its RAW_* environment variables and its arguments), then a DONE with one ``tick`` event at the end of every window, then exit 0 on
SHUTDOWN.
"""

import json
import os
import sys
import threading


def write(message) -> None:
    sys.stdout.write((message if isinstance(message, str) else json.dumps(message, separators=(",", ":"))) + "\n")
    sys.stdout.flush()


def done(target: int, current: int, rule: str) -> object:
    """The reply to an ADVANCE from ``current`` to ``target``, broken as ``rule`` says."""
    events = [{"type": "tick", "time_us": target, "data": {}}]
    if rule == "done-time":
        return {"type": "DONE", "time_us": target + 1, "events": events}
    if rule == "event-after-window":
        events = [{"type": "tick", "time_us": target + 1, "data": {}}]
    elif rule == "event-before-window":
        events = [{"type": "tick", "time_us": current, "data": {}}]
    elif rule == "event-time-not-integer":
        events = [{"type": "tick", "time_us": str(target), "data": {}}]
    elif rule == "event-not-object":
        events = [42]
    elif rule == "event-without-type":
        events = [{"time_us": target, "data": {}}]
    elif rule == "events-not-list":
        events = {"tick": target}
    elif rule == "non-object-line":
        return "[1,2,3]"
    elif rule == "not-json":
        return "tick at " + str(target)
    elif rule == "number-out-of-range":  # valid JSON syntax, but no finite number: the trace could not carry it
        return f'{{"events":[{{"data":{{"value":1E400}},"time_us":{target},"type":"tick"}}],"time_us":{target},"type":"DONE"}}'
    elif rule == "wrong-reply-type":
        return {"type": "READY", "protocol": 1, "time_us": 0, "capabilities": []}
    return {"type": "DONE", "time_us": target, "events": events}


def main() -> int:
    rule = ""
    current = 0
    for line in sys.stdin:
        message = json.loads(line)
        kind = message.get("type")
        if kind == "INIT":
            rule = message["config"].get("break", "")
            print(f"raw: breaking {rule!r}", file=sys.stderr, flush=True)
            # What the service was started with, as it sees it (its RAW_* environment and its arguments).
            seen = {"env": {k: v for k, v in os.environ.items() if k.startswith("RAW_")}, "argv": sys.argv[1:]}
            write({"type": "READY", "protocol": 2 if rule == "ready-protocol" else 1, "time_us": 0,
                   "capabilities": [], "info": seen})
        elif kind == "ADVANCE":
            write(done(message["time_us"], current, rule))
            current = message["time_us"]
        elif kind == "SHUTDOWN":
            if rule == "no-exit-after-shutdown":
                threading.Event().wait()  # never exits by itself: the coordinator must notice and kill it
            return 5 if rule == "exit-code-after-shutdown" else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
