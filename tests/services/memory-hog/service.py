"""memory-hog: a well-behaved protocol service (stdlib only) that hogs what the machine gives it (INIT config):

- memory: from virtual time ``hog_at_us`` on, it allocates ``hog_mb`` MB more in each window, touching every
  page, in 4 MB steps: under a smaller memory limit the kernel kills it for memory in the middle of a window (its
  DONE never comes);
- log space: in every window it writes ``log_bytes`` to its stderr, carrying on when those writes fail (as a
  service whose logging swallows errors does): only the one who keeps its log can tell that the log is lost."""

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
            if config.get("log_bytes"):
                try:
                    sys.stderr.write(f"memory-hog: window to {message['time_us']} us ".ljust(config["log_bytes"] - 1, ".") + "\n")
                    sys.stderr.flush()
                except OSError:
                    pass
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
