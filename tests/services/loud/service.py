"""loud: a well-behaved protocol service (stdlib only) that writes ``log_bytes`` (INIT config) to its stderr in
every window: its log outgrows a small disk. It carries on when its own stderr writes fail (as a service whose
logging swallows errors does): only the one who keeps the log can tell that it is lost."""

import json
import sys


def write(message: dict) -> None:
    sys.stdout.write(json.dumps(message, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def main() -> int:
    config: dict = {}
    for line in sys.stdin:
        message = json.loads(line)
        kind = message.get("type")
        if kind == "INIT":
            config = message["config"]
            write({"type": "READY", "protocol": 1, "time_us": 0, "capabilities": []})
        elif kind == "ADVANCE":
            try:
                sys.stderr.write(f"loud: window to {message['time_us']} us ".ljust(config.get("log_bytes", 0) - 1, ".") + "\n")
                sys.stderr.flush()
            except OSError:
                pass
            write({"type": "DONE", "time_us": message["time_us"], "events": []})
        elif kind == "SHUTDOWN":
            return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
