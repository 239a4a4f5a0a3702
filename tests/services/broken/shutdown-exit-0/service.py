"""Broken on purpose (shutdown-exit-0): it ends with exit code 3 on SHUTDOWN."""

from base import Service, main


class ExitsThree(Service):
    def on_shutdown(self):
        return 3


main(ExitsThree())
