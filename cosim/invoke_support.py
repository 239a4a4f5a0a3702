"""Two fixes to invoke's parser for cosim's tasks, applied on import (cosim.tasks imports this module).

- Optional positional arguments (`invoke up [SCENARIO]`): invoke only has required positionals; a positional
  argument with a default is never filled from the command line. ``optional_positional`` marks a task's
  positionals as optional; a task left without them receives None (the task then applies its own default)
  instead of a parse error.
- `--help`/`-h` after a task name (`cosim up --help`, `cosim diff -h`): invoke gives a task's missing positional
  argument the next word before it looks for its own flags, so `--help` became the scenario's file name. Here
  `--help`/`-h` right after a task name always asks for the task's help, and a task asked for help needs none of
  its positionals. Likewise an unknown option there is reported as one (`No idea what '--nope' is!`), not
  taken for a file name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from invoke.parser.parser import ParseMachine

_OPTIONAL: set[tuple[str, str]] = set()  # (task name, argument name)
_HELP_FLAGS = ("--help", "-h")
_original_complete_context = ParseMachine.complete_context
_original_handle = ParseMachine.handle


def _help_flag(machine: ParseMachine) -> Any:
    """The core `--help` argument of this parse, or None (a parse without core flags)."""
    initial = machine.initial
    return initial.flags.get("--help") if initial is not None else None


def _handle(self: ParseMachine, token: str) -> None:
    help_flag = _help_flag(self)
    if (help_flag is not None and token in _HELP_FLAGS and self.current_state != "unknown"
            and self.context is not None and self.context.name and token not in self.context.flags
            and not self.waiting_for_flag_value):
        help_flag.value = self.context.name  # what invoke itself does for `TASK --help` once positionals are given
        return
    if (token.startswith("-") and token != "-" and self.current_state != "unknown" and self.context is not None
            and self.context.missing_positional_args and not self.waiting_for_flag_value
            and token.partition("=")[0] not in self.context.flags
            and token.partition("=")[0] not in self.context.inverse_flags):
        self.error(f"No idea what {token!r} is!")  # an unknown option, not the missing positional's value
    _original_handle(self, token)


def _complete_context(self: ParseMachine) -> None:
    if self.context is not None:
        help_flag = _help_flag(self)
        asked_for_help = help_flag is not None and help_flag.value == self.context.name
        for argument in self.context.positional_args:
            if argument.value is None and (asked_for_help or (self.context.name, argument.name) in _OPTIONAL):
                argument.value = ""  # "not given": the task turns it into its default (or only its help is shown)
    _original_complete_context(self)


ParseMachine.handle = _handle  # type: ignore[method-assign]  # the patch this module exists for (docstring)
ParseMachine.complete_context = _complete_context  # type: ignore[method-assign]  # (as above)


def optional_positional(*names: str) -> Callable[[Any], Any]:
    """Decorator for an invoke Task (apply above @task): its positional ``names`` may be omitted."""

    def mark(task: Any) -> Any:
        for name in names:
            _OPTIONAL.add((task.name, name))
        return task

    return mark
