"""memory-hog: a well-behaved protocol service (stdlib only) until virtual time ``hog_at_us`` (INIT config), when it
allocates ``hog_mb`` MB, touching every page, in 4 MB steps: under a smaller memory limit the kernel kills it for
memory in the middle of that window (its DONE never comes)."""

import json
import sys


def write(message: dict) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main() -> int:
    config: dict = {}
    held = []
    for line in sys.stdin:
        message = json.loads(line)
        kind = message.get("type")
        if kind == "INIT":
            config = message["config"]
            write({"type": "READY", "protocol": 1, "time_us": 0, "capabilities": []})
        elif kind == "ADVANCE":
            if message["time_us"] >= config.get("hog_at_us", 1 << 62):
                for step in range(config.get("hog_mb", 0) // 4):
                    held.append(bytearray(b"\x01") * (4 << 20))  # written, so the pages are really there
                    print(f"memory-hog: holding {4 * (step + 1)} MB", file=sys.stderr, flush=True)
            write({"type": "DONE", "time_us": message["time_us"], "events": []})
        elif kind == "SHUTDOWN":
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
