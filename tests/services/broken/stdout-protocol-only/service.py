"""Broken on purpose (stdout-protocol-only): a debug print() on stdout for every input event."""

from base import Service, main


class Chatty(Service):
    def outputs(self, current, target, events):
        for event in events:
            print(f"debug: got {event['type']} at {event['time_us']}", flush=True)
        return super().outputs(current, target, events)


main(Chatty())
