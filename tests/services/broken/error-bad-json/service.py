"""Broken on purpose (error-bad-json): a malformed line ends it with a traceback instead of an ERROR reply."""

import json

from base import Service, main


class Fragile(Service):
    def on_line(self, line):
        json.loads(line)  # raises on malformed JSON: the process dies
        return super().on_line(line)


main(Fragile())
