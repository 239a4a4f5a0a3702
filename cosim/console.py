"""The ``cosim`` command (a console script): an invoke Program over cosim's task collection (cosim.tasks).

``cosim up X.yaml --runtime local``, ``cosim --list``, ``cosim up --help`` work from any directory; paths are
taken from where you stand. It is the same collection ``invoke`` runs from a tasks.py that imports it.
"""

from __future__ import annotations

import os
import re
import sys

from invoke import Program

from cosim import __version__
from cosim.tasks import namespace

# The core options `cosim --help` lists; invoke's others (for tasks that run shell commands: --echo, --pty,
# --dry, ...) still work, but say nothing about cosim.
SHOWN_CORE_OPTIONS = {"--help", "--list", "--version", "--debug", "--print-completion-script"}


class CosimProgram(Program):
    def print_help(self) -> None:
        print(f"Usage: {self.binary} [--core-opts] <subcommand> [--subcommand-opts] ...")
        print(f"       {self.binary} <subcommand> --help   (a subcommand's options)\n")
        print("Core options:\n")
        self.print_columns([(flags, text) for flags, text in self.initial_context.help_tuples()
                            if SHOWN_CORE_OPTIONS & set(re.findall(r"--[a-z-]+", flags))])
        self.list_tasks()


program = CosimProgram(namespace=namespace, name="cosim", binary="cosim", version=__version__)


def main() -> None:
    try:
        program.run()
    except BrokenPipeError:  # `cosim --help | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
