"""Broken on purpose (configure-unknown-key): it accepts CONFIGURE with any key, silently ignoring what it does
not know."""

from base import Service, main


class Lenient(Service):
    def on_configure(self, message):
        super().on_configure({**message, "config": {k: v for k, v in message.get("config", {}).items()
                                                    if k == "tick_us"}})


main(Lenient())
