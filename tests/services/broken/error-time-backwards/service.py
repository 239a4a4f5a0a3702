"""Broken on purpose (error-time-backwards): it accepts an ADVANCE to a time before the one it has reached."""

from base import Service, main


class Rewinds(Service):
    def on_advance(self, message):
        self.now = min(self.now, message["time_us"])
        super().on_advance(message)


main(Rewinds())
