"""Broken on purpose (advance-done): it takes every window to be one quantum (1000 us) long, so its DONE after a
jump over several quanta names the wrong time."""

from base import Service, main


class OneQuantum(Service):
    def on_advance(self, message):
        if self.initialized and message["time_us"] > self.now:
            message = {**message, "time_us": self.now + 1000}
        super().on_advance(message)


main(OneQuantum())
