"""The ``cosim`` command (a console script): an invoke Program over cosim's task collection (cosim.tasks).

``cosim up X.yaml --runtime local``, ``cosim --list``, ``cosim up --help`` work from any directory; paths are
taken from where you stand. It is the same collection ``invoke`` runs from a tasks.py that imports it.
"""

from __future__ import annotations

import os
import sys

from invoke import Program

from cosim import __version__
from cosim.tasks import namespace

program = Program(namespace=namespace, name="cosim", binary="cosim", version=__version__)


def main() -> None:
    try:
        program.run()
    except BrokenPipeError:  # `cosim --help | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
