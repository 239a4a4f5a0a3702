"""The ``cosim`` command (a console script): an invoke Program over cosim's task collection (cosim.tasks).

``cosim up X.yaml --runtime local``, ``cosim --list``, ``cosim up --help`` work from any directory; paths are
taken from where you stand. It is the same collection ``invoke`` runs from a tasks.py that imports it.

`cosim up` with long options only (the common form) is read here without invoke (``fast_arguments``, from the
signature of cosim.verbs.up, the function the invoke task wraps): importing invoke costs a fifth of a short local
run. Anything else (short options, --help, core options) goes to invoke.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from typing import Any

from cosim import __version__

# The core options `cosim --help` lists; invoke's others (for tasks that run shell commands: --echo, --pty,
# --dry, ...) still work, but say nothing about cosim.
SHOWN_CORE_OPTIONS = {"--help", "--list", "--version", "--debug", "--print-completion-script"}


def __getattr__(name: str) -> Any:
    if name == "program":  # ``cosim.console.program``: made on first use (it imports invoke)
        return _program()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _program() -> Any:
    """The invoke Program over cosim's tasks (imported only for a command the fast path does not read)."""
    from invoke import Program

    from cosim.tasks import namespace

    class CosimProgram(Program):
        def print_help(self) -> None:
            print(f"Usage: {self.binary} [--core-opts] <subcommand> [--subcommand-opts] ...")
            print(f"       {self.binary} <subcommand> --help   (a subcommand's options)\n")
            print("Core options:\n")
            self.print_columns([(flags, text) for flags, text in self.initial_context.help_tuples()
                                if SHOWN_CORE_OPTIONS & set(re.findall(r"--[a-z-]+", flags))])
            self.list_tasks()

    return CosimProgram(namespace=namespace, name="cosim", binary="cosim", version=__version__)


def fast_arguments(argv: list[str]) -> tuple[Any, dict[str, Any]] | None:
    """``cosim VERB [POSITIONAL] --option value --flag ...`` for a verb of cosim.verbs.FAST, read without invoke:
    the verb's function and its keyword arguments; None for anything else (short or unknown options, --help, core
    options before the verb), which invoke then reads as always."""
    if not argv:
        return None
    from cosim.verbs import FAST

    found = FAST.get(argv[0])
    if found is None:
        return None
    function, positionals = found
    # The options and their defaults, from the function itself (inspect.signature would import inspect: 10% of
    # a short run); the verbs' parameters are plain positional-or-keyword ones, each with a default but ``c``.
    code, defaults = function.__code__, function.__defaults__ or ()
    names = code.co_varnames[:code.co_argcount]
    parameters = dict(zip(names[len(names) - len(defaults):], defaults))
    arguments: dict[str, Any] = {}
    waiting = list(positionals)
    words = iter(argv[1:])
    for word in words:
        if not word.startswith("--"):
            if word.startswith("-") or not waiting:
                return None
            arguments[waiting.pop(0)] = word
            continue
        name, equals, value = word[2:].partition("=")
        name = name.replace("-", "_")
        if name not in parameters or name in arguments or name in positionals:
            return None
        default = parameters[name]
        if isinstance(default, bool):
            if equals or default:
                return None  # (a flag takes no value; --no-X of a flag that defaults to true: invoke's)
            arguments[name] = True
            continue
        if not equals:
            following = next(words, None)
            if following is None or following.startswith("-"):
                return None
            value = following
        arguments[name] = value
    return function, arguments


def _run_fast(function: Any, arguments: dict[str, Any], end: Any = sys.exit) -> None:
    """Run a verb read by ``fast_arguments``; its user error (invoke's Exit, made by ``cosim.verbs.call``) ends
    the command as invoke would end it: the message on stderr, the exit code. ``end(code)`` ends it."""
    try:
        function(None, **arguments)
    except Exception as exc:
        exceptions = sys.modules.get("invoke.exceptions")
        if exceptions is None or not isinstance(exc, exceptions.Exit):
            raise
        if exc.message:
            print(exc.message, file=sys.stderr)
        end(exc.code)
    else:
        end(0)


def _exit(code: int) -> None:
    """End the process once the verb is done: its files are closed and its processes and containers gone, so
    only the interpreter's teardown of every module and object is left, 20 to 40 ms of a short run for nothing.
    The exit handlers still run and the standard streams are flushed."""
    import atexit

    atexit._run_exitfuncs()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:  # (the reader left: as main's handler)
        code = code or 1
    os._exit(code)


def main(*, fast_exit: bool = True) -> None:
    """The command; ``fast_exit=False`` returns (or raises SystemExit) instead of ending the process at once
    after a verb read without invoke (for a caller that looks at the process afterwards)."""
    try:
        fast = fast_arguments(sys.argv[1:])
        if fast is not None:
            _run_fast(*fast, end=_exit if fast_exit else sys.exit)
        else:
            _program().run()
    except BrokenPipeError:  # `cosim --help | head`: the reader left; no traceback, and none at exit either
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
