"""Broken on purpose (error-advance-before-init): it advances without having been initialised."""

from base import Service, main


class Eager(Service):
    def on_advance(self, message):
        self.initialized = True
        super().on_advance(message)


main(Eager())
