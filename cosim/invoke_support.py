"""Optional positional arguments for invoke tasks (`invoke up [SCENARIO]`).

invoke only has required positionals: a positional argument with a default is never filled from the command
line. ``optional_positional`` marks a task's positionals as optional; a task left without them receives None
(the task then applies its own default) instead of a parse error.
"""

from __future__ import annotations

from typing import Any, Callable

from invoke.parser.parser import ParseMachine

_OPTIONAL: set[tuple[str, str]] = set()  # (task name, argument name)
_original_complete_context = ParseMachine.complete_context


def _complete_context(self: ParseMachine) -> None:
    if self.context is not None:
        for argument in self.context.positional_args:
            if argument.value is None and (self.context.name, argument.name) in _OPTIONAL:
                argument.value = ""  # "not given": the task turns it into its default
    _original_complete_context(self)


ParseMachine.complete_context = _complete_context  # type: ignore[method-assign]


def optional_positional(*names: str) -> Callable[[Any], Any]:
    """Decorator for an invoke Task (apply above @task): its positional ``names`` may be omitted."""

    def mark(task: Any) -> Any:
        for name in names:
            _OPTIONAL.add((task.name, name))
        return task

    return mark
