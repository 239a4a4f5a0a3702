"""Broken on purpose (long-line): it reads its input in lines of at most 64 KiB, so a longer line is cut in pieces."""

import sys

from base import Service, main


class ShortLines(Service):
    def read_line(self):
        return sys.stdin.buffer.readline(1 << 16)


main(ShortLines())
